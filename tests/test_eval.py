"""Evaluation: docs/metric.md verification vs an independent NumPy re-derivation, exact TAR@FAR vs brute force
(sklearn roc_curve), LFR2019 feature files (round trip, resume), embed/compare, and the bad inputs."""
import json
import pickle
import shutil
import struct

import numpy as np
import pytest

from vargface.errors import VargfaceError

SIZE = 56  # the tiny model's input side; the .bin images are 112 so the resize path runs


def decode_nchw(bins, size):
    """Independent decoding for the re-derivation: cv2 BGR -> RGB, float32, area/bilinear resize, NCHW."""
    import cv2

    out = []
    for buf in bins:
        image = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if image.shape[0] > size
                           else cv2.INTER_LINEAR)
        out.append(image.transpose(2, 0, 1))
    return np.asarray(out, np.float32)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A shallow ResNet trained for a few SGD steps on synthetic identities, saved as a training checkpoint."""
    import mxnet as mx

    from vargface.data.images import decode_rgb
    from vargface.data.synth import synthetic_samples
    from vargface.symbols import get_symbol

    root = tmp_path_factory.mktemp("tiny")
    samples = list(synthetic_samples(6, 6, size=SIZE, seed=0, workers=1))
    x = np.stack([decode_rgb(jpeg, (SIZE, SIZE), "x") for _, jpeg in samples]).transpose(0, 3, 1, 2)
    y = np.array([label for label, _ in samples], np.float32)
    emb = get_symbol("r50", num_layers=18, multiplier=0.25, emb_size=32, input_size=SIZE)
    net = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(emb, num_hidden=6, name="fc7"), name="softmax")
    mx.random.seed(0)
    np.random.seed(0)
    module = mx.mod.Module(net, context=mx.cpu())
    train = mx.io.NDArrayIter(x.astype(np.float32), y, batch_size=12, shuffle=True, label_name="softmax_label")
    module.fit(train, num_epoch=3, optimizer="sgd", initializer=mx.init.Xavier(magnitude=2),
               optimizer_params={"learning_rate": 0.05, "momentum": 0.9, "wd": 5e-4})
    prefix = str(root / "tiny")
    arg_params, aux_params = module.get_params()
    mx.model.save_checkpoint(prefix, 3, net, arg_params, aux_params)
    return prefix, 3


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    from vargface.data.verification import make_synthetic_bin

    path = tmp_path_factory.mktemp("bin") / "synth_val.bin"
    make_synthetic_bin(path, identities=12, pairs=60, size=112, seed=3, per_identity=3, workers=1)
    return path


def accuracy_flip_numpy(embeddings, issame, folds=10):
    """Accuracy-Flip (docs/metric.md) written out independently: contiguous folds (no shuffle), thresholds
    0..3.99, first best."""
    thresholds = np.arange(0, 4, 0.01)
    dist = ((embeddings[0::2] - embeddings[1::2]) ** 2).sum(1)
    parts = np.array_split(np.arange(len(issame)), folds)
    accuracies, chosen = [], []
    for k, test in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != k])
        train_acc = [np.mean((dist[train] < t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        accuracies.append(np.mean((dist[test] < best) == issame[test]))
        chosen.append(best)
    return np.mean(accuracies), np.std(accuracies), chosen


def test_verify_matches_numpy_rederivation(tiny_model, pack):
    import mxnet as mx

    from vargface.data.verification import load_bin
    from vargface.eval.verification import verify_model

    prefix, epoch = tiny_model
    result = verify_model(prefix, epoch, [str(pack)], batch_size=16, progress=False)["synth_val"]

    # independent path: plain Module on fc1_output, image and mirror, sum, normalise, Accuracy-Flip by hand
    sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, epoch)
    bins, issame = load_bin(pack)
    images = decode_nchw(bins, SIZE)
    emb_sym = sym.get_internals()["fc1_output"]
    module = mx.mod.Module(emb_sym, label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", images.shape)], for_training=False)
    module.set_params(arg_params, aux_params, allow_extra=True)
    total = 0
    for batch in (images, images[:, :, :, ::-1].copy()):
        module.forward(mx.io.DataBatch([mx.nd.array(batch)]), is_train=False)
        total = total + module.get_outputs()[0].asnumpy().astype(np.float64)
    embeddings = total / np.linalg.norm(total, axis=1, keepdims=True)
    accuracy, std, chosen = accuracy_flip_numpy(embeddings, np.array(issame))

    assert result["pairs"] == 60
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert result["std"] == pytest.approx(std, abs=1e-12)
    assert result["fold_thresholds"] == pytest.approx(chosen)
    assert 0.4 < result["accuracy"] <= 1.0


def test_evaluate_against_numpy_and_perfect_split():
    from vargface.eval.verification import evaluate

    rng = np.random.default_rng(1)
    pairs = 203  # folds of unequal size, as KFold makes them
    issame = rng.random(pairs) < 0.5
    a = rng.normal(size=(pairs, 8))
    b = np.where(issame[:, None], a + rng.normal(0, 0.8, (pairs, 8)), rng.normal(size=(pairs, 8)))
    emb = np.empty((2 * pairs, 8))
    emb[0::2], emb[1::2] = a, b
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    result = evaluate(emb, issame)
    accuracy, std, chosen = accuracy_flip_numpy(emb, issame)
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert result["std"] == pytest.approx(std, abs=1e-12)
    assert result["fold_thresholds"] == pytest.approx(chosen)
    # identical same-pairs, opposite different-pairs: every fold is perfect
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    ideal = np.empty_like(emb)
    ideal[0::2], ideal[1::2] = unit, np.where(issame[:, None], unit, -unit)
    perfect = evaluate(ideal, issame)
    assert perfect["accuracy"] == 1.0 and perfect["std"] == 0.0
    assert [t["far"] for t in perfect["tar_at_far"]] == [0.1, 0.01]  # ~100 impostor pairs: 1e-3 unmeasurable
    assert all(t["tar"] == 1.0 for t in perfect["tar_at_far"])
    with pytest.raises(VargfaceError, match="2 per pair"):
        evaluate(emb[:-1], issame)


def brute_tar(features, labels, fars):
    """TAR@FAR from sklearn's ROC over all pairs: the best TPR among points with FPR <= FAR."""
    from sklearn.metrics import roc_curve

    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    upper = np.triu_indices(len(x), 1)
    scores = (x @ x.T)[upper]
    same = (labels[:, None] == labels[None, :])[upper]
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    return [float(tpr[fpr <= far * (1 + 1e-12)].max()) for far in fars]


@pytest.mark.parametrize("tile", [37, 4096])
def test_tar_at_far_equals_brute_force(tile):
    from vargface.eval.tar_at_far import tar_at_far

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 40, 600)  # unsorted labels, identities of varying size
    centres = rng.normal(size=(40, 16))
    features = (centres[labels] + 1.2 * rng.normal(size=(600, 16))).astype(np.float32)
    fars = [1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0]
    result = tar_at_far(features, labels, fars, tile=tile, progress=False)
    n_genuine = sum(c * (c - 1) // 2 for c in np.unique(labels, return_counts=True)[1])
    assert result["n_genuine"] == n_genuine and result["n_impostors"] == 600 * 599 // 2 - n_genuine
    got = [r["tar"] for r in result["results"]]
    assert got == pytest.approx(brute_tar(features.astype(np.float64), labels, fars), abs=1e-12)
    assert got == sorted(got) and got[-1] == 1.0
    for r in result["results"]:
        assert r["false_accepts"] <= r["far"] * result["n_impostors"]


def test_tar_at_far_tie_rule():
    """Scores on a grid (exact in float32): a genuine pair tied with the threshold is rejected, and the
    threshold is the (k+1)-th highest impostor score, k = floor(FAR * impostors)."""
    from vargface.eval.tar_at_far import tar_at_far, tar_from_scores

    # tar_from_scores on hand-made scores: impostors 0.9, 0.8, 0.8, 0.5, 0.1 ...
    impostors = np.array([0.9, 0.8, 0.8, 0.5] + [0.1] * 6)
    genuine = np.array([0.95, 0.9, 0.85, 0.8, 0.7])
    by_far = {r["far"]: r for r in tar_from_scores(genuine, impostors, 10, [0.1, 0.2, 0.3, 0.4, 1.0])}
    assert by_far[0.1]["threshold"] == 0.8 and by_far[0.1]["tar"] == 0.6  # 0.8 genuine tied -> rejected
    assert by_far[0.2]["threshold"] == 0.8 and by_far[0.2]["false_accepts"] == 1  # a tie cannot be split
    assert by_far[0.3]["threshold"] == 0.5 and by_far[0.3]["tar"] == 1.0
    assert by_far[1.0]["tar"] == 1.0 and by_far[1.0]["false_accepts"] == 10

    rng = np.random.default_rng(2)
    features = rng.choice([-0.5, 0.5], size=(300, 4)).astype(np.float32)  # unit rows, scores in {0, ±.5, ±1}
    labels = rng.integers(0, 30, 300)
    fars = [1e-3, 1e-2, 0.1, 0.5]
    got = [r["tar"] for r in tar_at_far(features, labels, fars, tile=50, progress=False)["results"]]
    assert got == pytest.approx(brute_tar(features.astype(np.float64), labels, fars), abs=1e-12)


def test_top_buffer_merges_keep_the_highest():
    from vargface.eval.tar_at_far import _TopBuffer

    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=int(n)).astype(np.float32) for n in rng.integers(0, 3000, 40)]
    buf = _TopBuffer(1000)
    buf_merging = _TopBuffer(1000)
    for chunk in chunks:
        buf.add(chunk)
        buf_merging.add(chunk)
        buf_merging._merge()
        assert buf_merging.floor <= np.sort(np.concatenate(chunks))[-1000]
    expected = np.sort(np.concatenate(chunks))[-1000:]
    assert np.array_equal(np.sort(buf.values()), expected)
    assert np.array_equal(np.sort(buf_merging.values()), expected)


def test_far_errors_and_decades():
    from vargface.eval.tar_at_far import decade_fars, parse_fars, tar_at_far

    assert decade_fars(3000) == [0.1, 0.01, 0.001]
    assert decade_fars(10000) == [0.1, 0.01, 0.001, 0.0001]
    assert decade_fars(5) == []
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(20, 4)), np.repeat(np.arange(5), 4)  # 160 impostor pairs
    with pytest.raises(VargfaceError, match="FAR 0.001 needs at least 1000 impostor pairs; this set has 160"):
        tar_at_far(features, labels, [1e-3], progress=False)
    partly = tar_at_far(features, labels, [1e-3, 0.1], progress=False)
    assert [r["far"] for r in partly["results"]] == [0.1] and [s["far"] for s in partly["skipped"]] == [1e-3]
    with pytest.raises(VargfaceError, match="labels have 19"):
        tar_at_far(features, labels[:-1], [0.1], progress=False)
    with pytest.raises(VargfaceError, match="no genuine pairs"):
        tar_at_far(features, np.arange(20), [0.1], progress=False)
    with pytest.raises(VargfaceError, match="--far"):
        parse_fars("1e-3,abc")


def test_tar_at_far_cli(tmp_path, run_cli):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, 120)
    features = rng.normal(size=(10, 8))[labels] + rng.normal(size=(120, 8))
    np.save(tmp_path / "f.npy", features.astype(np.float32))
    np.save(tmp_path / "l.npy", labels)
    np.save(tmp_path / "short.npy", labels[:-2])
    done = run_cli("tar-at-far", tmp_path / "f.npy", tmp_path / "l.npy",
                   "--far", "1e-3,1e-2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [r["tar"] for r in result["results"]] == pytest.approx(brute_tar(features, labels, [1e-3, 1e-2]))
    bad = run_cli("tar-at-far", tmp_path / "f.npy", tmp_path / "short.npy")
    assert bad.returncode == 1 and "has 120 rows but LABELS" in bad.stderr and "118" in bad.stderr
    low = run_cli("tar-at-far", tmp_path / "f.npy", tmp_path / "l.npy", "--far", "1e-6")
    assert low.returncode == 1 and "FAR 1e-06 needs at least 1000000 impostor pairs" in low.stderr
    default = run_cli("tar-at-far", tmp_path / "f.npy", tmp_path / "l.npy")
    impostors = json.loads(done.stdout)["n_impostors"]
    assert default.returncode == 0, default.stderr
    assert f"skipped FAR 1e-08 needs at least 100000000 impostor pairs; this set has {impostors}" in default.stdout
    assert "TAR@FAR=1e-01" in default.stdout and "TAR@FAR=1e-03" in default.stdout  # the decades 6406 pairs resolve
    assert "TAR@FAR=1e-04" not in default.stdout


def test_verify_cli_json_and_roc(tiny_model, pack, tmp_path, run_cli):
    from vargface.eval.verification import verify_model

    prefix, epoch = tiny_model
    roc = tmp_path / "roc.png"
    done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", pack, "--per-batch-size", 7, "--json",
                   "--roc", roc)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)["synth_val"]
    direct = verify_model(prefix, epoch, [str(pack)], batch_size=32, progress=False)["synth_val"]
    assert summary["accuracy"] == pytest.approx(direct["accuracy"], abs=1e-9)
    assert summary["tar_at_far"][0]["far"] == 0.1
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", pack)
    assert text.returncode == 0 and "[synth_val] Accuracy-Flip:" in text.stdout and "TAR@FAR" in text.stdout


def test_verify_says_how_many_impostor_pairs_a_far_needs(tiny_model, tmp_path, run_cli):
    from vargface.data.verification import load_bin, make_synthetic_bin, write_bin

    prefix, epoch = tiny_model
    make_synthetic_bin(tmp_path / "few.bin", identities=4, pairs=10, size=SIZE, seed=0, workers=1)
    bins, issame = load_bin(tmp_path / "few.bin")
    write_bin(tmp_path / "none.bin", bins, [True] * len(issame))
    for name, line in (("few", "too few impostor pairs for FAR 0.1: 5, need 10"), ("none", "no impostor pairs")):
        done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", tmp_path / f"{name}.bin", "--nfolds", 1)
        assert done.returncode == 0 and f"[{name}] TAR@FAR: {line}\n" in done.stdout, done.stdout + done.stderr


def test_verify_cli_bad_inputs(tiny_model, pack, tmp_path, run_cli):
    prefix, epoch = tiny_model
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a pickle")
    done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", junk)
    assert done.returncode == 1 and str(junk) in done.stderr and "(bins, issame_list)" in done.stderr
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", wrong)
    assert done.returncode == 1 and "3 images for 1 pairs" in done.stderr
    undecodable = tmp_path / "undecodable.bin"
    undecodable.write_bytes(pickle.dumps(([b"not an image", b"x"], [True])))
    done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", undecodable, "--nfolds", 1)
    assert done.returncode == 1 and "undecodable.bin" in done.stderr and "image 0" in done.stderr
    for folds in (0, -3):
        done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", pack, "--nfolds", folds)
        assert done.returncode == 1 and f"--nfolds {folds}: expected a positive number" in done.stderr
    done = run_cli("verify", "--model", f"{prefix},{epoch + 7}", "--target", pack)
    assert done.returncode == 1 and f"tiny-{epoch + 7:04d}.params does not exist" in done.stderr
    done = run_cli("verify", "--model", str(tmp_path / "nowhere") + ",1", "--target", pack)
    assert done.returncode == 1 and "nowhere-symbol.json does not exist" in done.stderr
    done = run_cli("verify", "--model", prefix, "--target", pack)
    assert done.returncode == 1 and "prefix,epoch" in done.stderr
    done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", pack, "--nfolds", 61)
    assert done.returncode == 1 and "synth_val.bin: 60 pairs cannot be split into 61 folds" in done.stderr


def test_verify_on_training_data_or_a_folder_says_what_it_is(tiny_model, pack, tmp_path, run_cli):
    from vargface.data.synth import make_synthetic_rec

    prefix, epoch = tiny_model
    data = tmp_path / "data"
    make_synthetic_rec(str(data), identities=2, per_identity=2, size=SIZE, seed=0, progress=False)
    for name in ("train.rec", "train.idx", "property"):
        done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", data / name)
        assert done.returncode == 1 and done.stderr.strip().endswith(
            f"{data / name}: training data (a RecordIO set), not a verification pack of image pairs; make a pack "
            f"from held-out images with `vargface data pairs IMAGE_FOLDER --out PACK.bin`"), done.stderr
    done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", data)
    assert done.returncode == 1 and f"{data}: a folder, not a verification pack; name pack files, e.g. " \
                                    f"{data / 'lfw.bin'}" in done.stderr
    shutil.copy(pack, data / "val.bin")
    done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", data)
    assert done.returncode == 1 and f"name pack files, e.g. {data / 'val.bin'}" in done.stderr


@pytest.fixture(scope="module")
def face_files(tmp_path_factory):
    from vargface.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("faces") / "faces"
    make_synthetic(root, identities=3, per_identity=4, size=112, seed=7, workers=1, progress=False)
    return root, sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))


def test_embedder_embed_compare(tiny_model, face_files, tmp_path, run_cli):
    from vargface.eval.embedder import FaceEmbedder
    from vargface.eval.images import read_image

    prefix, epoch = tiny_model
    root, names = face_files
    paths = [str(root / n) for n in names[:5]]
    embedder = FaceEmbedder(prefix, epoch, ctx="cpu:0,cpu:1", batch_size=3)
    assert embedder.input_size == SIZE and embedder.batch_size == 4 and embedder.embedding_size == 32
    images = np.stack([read_image(p, 112) for p in paths])
    emb = embedder.embed(images)
    assert emb.dtype == np.float32 and emb.shape == (5, 32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    plain, mirrored = embedder.embed(images, flip=False), embedder.embed(images[:, :, ::-1])
    assert np.allclose(emb, mirrored, atol=1e-5)  # flip-summing is mirror-invariant
    assert not np.allclose(emb, plain, atol=1e-3)

    out = tmp_path / "emb.npy"
    done = run_cli("embed", "--model", f"{prefix},{epoch}", *paths, "--out", out)
    assert done.returncode == 0, done.stderr
    assert np.allclose(np.load(out), emb, atol=1e-5)
    done = run_cli("compare", "--model", f"{prefix},{epoch}", paths[0], paths[3])
    assert done.returncode == 0, done.stderr
    said = done.stdout.strip()  # what the number is, of which images
    assert said.startswith("cosine similarity ") and f"of {paths[0]} and {paths[3]}" in said and "image + mirror" in said
    assert float(said.split()[2]) == pytest.approx(float(emb[0] @ emb[3]), abs=1e-5)
    done = run_cli("compare", "--model", f"{prefix},{epoch}", paths[0], paths[3], "--json")
    assert json.loads(done.stdout)["cosine"] == pytest.approx(float(emb[0] @ emb[3]), abs=1e-5)

    # a folder where image files are expected: refused before any work, naming it and the way to pass its files
    for command in (["embed", "--out", tmp_path / "f.npy", paths[0], root / "id_000000"],
                    ["compare", root / "id_000000", paths[0]]):
        done = run_cli(*command[:1], "--model", f"{prefix},{epoch}", *command[1:])
        assert done.returncode == 1 and done.stderr.strip().endswith(
            f"IMAGE {root / 'id_000000'} is a folder; pass image files, e.g. {root / 'id_000000' / '*.jpg'} (one "
            f"output row per file, in the order given)")
    assert not (tmp_path / "f.npy").exists()

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    done = run_cli("embed", "--model", f"{prefix},{epoch}", paths[0], broken, "--out", tmp_path / "x.npy")
    assert done.returncode == 1 and str(broken) in done.stderr and "decode" in done.stderr
    assert not (tmp_path / "x.npy").exists()
    done = run_cli("compare", "--model", f"{prefix},{epoch}", paths[0], tmp_path / "missing.jpg")
    assert done.returncode == 1 and "missing.jpg" in done.stderr


def test_lfr_features_round_trip_and_resume(tiny_model, face_files, tmp_path, run_cli):
    from vargface.eval.embedder import FaceEmbedder
    from vargface.eval.images import read_image
    from vargface.eval.lfr import extract_features, read_features, write_features

    prefix, epoch = tiny_model
    root, names = face_files
    listing = tmp_path / "filelist.txt"
    listing.write_text("\n".join(names) + "\n")
    embedder = FaceEmbedder(prefix, epoch, batch_size=4)
    expected = embedder.embed([read_image(root / n) for n in names])  # at their own side: the runner resizes

    out = tmp_path / "features.bin"
    done = run_cli("lfr", "features", listing, "--model", f"{prefix},{epoch}", "--root", root,
                   "--out", out, "--per-batch-size", 4)
    assert done.returncode == 0, done.stderr
    raw = out.read_bytes()
    assert struct.unpack("<4i", raw[:16]) == (len(names), 32, 128, 5)
    assert len(raw) == 16 + len(names) * 32 * 4
    rows = np.frombuffer(raw[16:], "<f4").reshape(len(names), 32)
    assert np.allclose(rows, expected, atol=1e-5)
    assert np.array_equal(read_features(out), rows)

    # resume: the 7th image is broken, so the first run stops after its first chunk of 4 rows
    resumed = tmp_path / "resumed.bin"
    victim = root / names[6]
    good = victim.read_bytes()
    victim.write_bytes(b"garbage")
    try:
        with pytest.raises(VargfaceError, match=names[6]):
            extract_features(embedder, str(listing), str(root), resumed, chunk=4, progress=False)
        assert not resumed.exists()
        state = json.loads((tmp_path / "resumed.bin.partial.json").read_text())
        assert state["done"] == 4
    finally:
        victim.write_bytes(good)
    computed = extract_features(embedder, str(listing), str(root), resumed, chunk=4, progress=False)
    assert computed == len(names) - 4
    assert not (tmp_path / "resumed.bin.partial").exists() and not (tmp_path / "resumed.bin.partial.json").exists()
    assert np.allclose(read_features(resumed), expected, atol=1e-5)

    write_features(tmp_path / "w.bin", expected)
    assert np.array_equal(read_features(tmp_path / "w.bin"), expected)
    (tmp_path / "cut.bin").write_bytes(raw[:-4])
    with pytest.raises(VargfaceError, match="truncated"):
        read_features(tmp_path / "cut.bin")
    with pytest.raises(VargfaceError, match="not an LFR2019 feature file"):
        read_features(listing)


def test_export_cli_tiny(tiny_model, tmp_path, run_cli):
    prefix, epoch = tiny_model
    out = tmp_path / "tiny.onnx"
    done = run_cli("export", "--model", f"{prefix},{epoch}", "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["relative_error"] <= 1e-4 and result["input_shape"] == [1, 3, SIZE, SIZE]
    assert out.exists() and [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]
    from vargface.eval.embedder import load_embedding_model
    from vargface.eval.export import mxnet_forward, onnx_forward

    batch = np.random.RandomState(2).uniform(0, 255, (3, 3, SIZE, SIZE)).astype(np.float32)
    sym, arg_params, aux_params, _ = load_embedding_model(prefix, epoch)
    assert np.allclose(onnx_forward(str(out), batch), mxnet_forward(sym, arg_params, aux_params, batch),
                       rtol=1e-4, atol=1e-4 * np.abs(mxnet_forward(sym, arg_params, aux_params, batch)).max())
    failed = run_cli("export", "--model", f"{prefix},{epoch}", "--out", tmp_path / "strict.onnx",
                     "--tolerance", "0")
    assert failed.returncode == 1 and "parity failed" in failed.stderr
    assert not (tmp_path / "strict.onnx").exists()


def test_lfr_features_decode_in_threads_ahead_of_the_device(tiny_model, face_files, tmp_path, monkeypatch):
    import threading

    from vargface.eval import images
    from vargface.eval.embedder import FaceEmbedder
    from vargface.eval.lfr import extract_features, read_features

    prefix, epoch = tiny_model
    root, names = face_files
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    embedder = FaceEmbedder(prefix, epoch, batch_size=2)
    decoded, embedded, read, embed = [], [], images.read_image, embedder.embed

    def reading(path, size=None):
        decoded.append((path, threading.get_ident()))
        return read(path, size)

    def embedding(batch, **options):
        embedded.append(len(decoded))  # images decoded when a block's embedding starts
        return embed(batch, **options)

    monkeypatch.setattr(images, "read_image", reading)
    monkeypatch.setattr(embedder, "embed", embedding)
    extract_features(embedder, str(tmp_path / "list.txt"), str(root), tmp_path / "f.bin", chunk=4, progress=False)
    assert len({thread for _, thread in decoded}) > 1 and threading.get_ident() not in {t for _, t in decoded}
    assert sorted(p for p, _ in decoded) == sorted(str(root / n) for n in names)
    assert any(count > 4 * (block + 1) for block, count in enumerate(embedded))  # the next block already decoding
    expected = FaceEmbedder(prefix, epoch, batch_size=2).embed([read(root / n) for n in names])
    np.testing.assert_allclose(read_features(tmp_path / "f.bin"), expected, atol=1e-5)  # in the list's order


def test_lfr_features_refuse_to_append_after_the_weights_or_root_change(tiny_model, face_files, tmp_path):
    import shutil

    import mxnet as mx

    from vargface.eval.embedder import FaceEmbedder
    from vargface.eval.lfr import extract_features, read_features
    from vargface.symbols.checkpoint import checkpoint_files

    source, epoch = tiny_model
    prefix = str(tmp_path / "model")
    for path, suffix in zip(checkpoint_files(source, epoch), ("-symbol.json", f"-{epoch:04d}.params")):
        shutil.copy(path, prefix + suffix)
    root, names = face_files
    listing = tmp_path / "filelist.txt"
    listing.write_text("\n".join(names) + "\n")
    out = tmp_path / "features.bin"
    victim = root / names[6]
    good = victim.read_bytes()
    victim.write_bytes(b"garbage")
    try:  # the first run stops after 4 rows: a partial file to continue
        with pytest.raises(VargfaceError, match=names[6]):
            extract_features(FaceEmbedder(prefix, epoch, batch_size=4), str(listing), str(root), out, chunk=4,
                             progress=False)
    finally:
        victim.write_bytes(good)

    params = f"{prefix}-{epoch:04d}.params"
    original = open(params, "rb").read()
    arrays = mx.nd.load(params)
    mx.nd.save(params, {k: v * 1.01 if k.startswith("arg:") else v for k, v in arrays.items()})  # same names
    with pytest.raises(VargfaceError, match=r"features.bin.partial was started with other inputs \(the model's "
                                            r"weights or graph changed\)"):
        extract_features(FaceEmbedder(prefix, epoch, batch_size=4), str(listing), str(root), out, progress=False)
    open(params, "wb").write(original)

    other_root = tmp_path / "copy"
    shutil.copytree(root, other_root)
    with pytest.raises(VargfaceError, match=r"\(the --root changed\).*remove"):
        extract_features(FaceEmbedder(prefix, epoch, batch_size=4), str(listing), str(other_root), out,
                         progress=False)
    assert not out.exists() and json.loads((tmp_path / "features.bin.partial.json").read_text())["done"] == 4

    embedder = FaceEmbedder(prefix, epoch, batch_size=4)  # the same inputs again: it continues
    assert extract_features(embedder, str(listing), str(root), out, chunk=4, progress=False) == len(names) - 4
    np.testing.assert_allclose(read_features(out), embedder.embed_files([str(root / n) for n in names]),
                               atol=1e-6)
