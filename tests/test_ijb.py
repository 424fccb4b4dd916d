"""IJB-B/IJB-C evaluation: template pooling and test modes, the two TAR@FAR rules, 1:N rank and TPIR on hand-made
values; the meta files' errors; the per-crop pipeline; resumable, model-keyed feature files; the synthetic fixture."""
import json
import os
import shutil

import numpy as np
import pytest
from test_distill_teacher import save_tiny

from vargface.errors import VargfaceError
from vargface.eval import ijb
from vargface.eval.tar_at_far import tar_at_far_nearest, tar_from_scores
from vargface.eval.templates import open_set_identification, parse_mode, template_features
from vargface.symbols.checkpoint import parse_model_arg

# Three crops of template 1 (A and B one video, C a photo) and one crop (D) of template 2; 2-d features as
# [image half, mirror half].
RAW = np.array([[1, 0, 0, 1],    # A
                [0, 1, 0, 1],    # B
                [1, 0, 1, 0],    # C
                [0, 1, 0, 1]],   # D
               np.float32)
FACENESS = np.array([1.0, 0.5, 2.0, 1.0], np.float32)
TEMPLATES, MEDIAS = np.array([1, 1, 1, 2]), np.array([7, 7, 8, 9])


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("mode, template_1", [
    # F2 sums the halves: A (1,1), B (0,2), C (2,0); media 7 is the mean of A and B, the template the sum of media
    ("N1D0F2", [0.5 + 2, 1.5 + 0]),
    # D1 weighs by faceness first: A (1,1), B (0,1), C (4,0)
    ("N1D1F2", [0.5 + 4, 1.0 + 0]),
    # N0 removes each image's norm: A (.707,.707), B (0,1), C (1,0)
    ("N0D0F2", [0.5 * 2 ** -0.5 + 1, 0.5 * (2 ** -0.5 + 1)]),
    # F0 keeps the image half only: A (1,0), B (0,1), C (1,0)
    ("N1D0F0", [0.5 + 1, 0.5]),
    # F1 concatenates: A (1,0,0,1), B (0,1,0,1), C (1,0,1,0)
    ("N1D0F1", [0.5 + 1, 0.5, 1, 1]),
])
def test_template_features_follow_each_mode_formula(mode, template_1):
    ids, feats = template_features(RAW, FACENESS, TEMPLATES, MEDIAS, parse_mode(mode))
    assert ids.tolist() == [1, 2]
    np.testing.assert_allclose(feats[0], unit(template_1), atol=1e-6)
    template_2 = {"F0": [0, 1], "F1": [0, 1, 0, 1], "F2": [0, 2]}[mode[-2:]]
    np.testing.assert_allclose(feats[1], unit(template_2), atol=1e-6)
    # the pair's score is the dot product of the two templates
    assert feats[0] @ feats[1] == pytest.approx(unit(template_1) @ unit(template_2))


def test_modes_are_parsed_strictly():
    assert parse_mode("n0d1f1") == {"N": 0, "D": 1, "F": 1}
    for bad in ("N2D1F2", "D1N1F2", "N1D1", "N1D1F3"):
        with pytest.raises(VargfaceError, match="--mode"):
            parse_mode(bad)


def test_nearest_roc_point_and_exact_tar_differ_as_computed_by_hand():
    # 18 impostors: 0.95, 0.85 and sixteen low ones; 4 genuine: 0.9, 0.8, 0.7, 0.1
    impostors = np.r_[0.95, 0.85, np.linspace(0.0, 0.3, 16)]
    genuine = np.array([0.9, 0.8, 0.7, 0.1])
    scores = np.r_[genuine, impostors]
    labels = np.r_[np.ones(4, bool), np.zeros(18, bool)]
    # FAR 0.1 allows floor(1.8) = 1 false accept: accept above the 2nd impostor (0.85) -> only 0.9: TAR 1/4
    exact = tar_from_scores(genuine, impostors, 18, [0.1])[0]
    assert exact["tar"] == 0.25 and exact["threshold"] == 0.85
    # the ROC points have FPR k/18; 2/18 = 0.111 is nearest 0.1 (1/18 = 0.056 is not), and of its points the
    # highest TPR (3/4: 0.9, 0.8, 0.7 above 0.85's successor) is the one taken
    nearest = tar_at_far_nearest(scores, labels, [0.1])[0]
    assert nearest["fpr"] == pytest.approx(2 / 18) and nearest["tar"] == 0.75
    # at FAR 0.5 both rules agree: 9 false accepts -> above the 10th impostor; every genuine but 0.1 passes
    assert tar_from_scores(genuine, impostors, 18, [0.5])[0]["tar"] == 0.75
    assert tar_at_far_nearest(scores, labels, [0.5])[0]["tar"] == 0.75


def test_rank_and_tpir_equal_hand_computed_values():
    gallery, gallery_subjects = np.eye(3), np.array([10, 20, 30])
    probes = np.array([[0.8, 0.6, 0.0],           # subject 10: its mate first, score 0.8
                       [0.0, 0.6, 0.8],           # subject 20: subject 30 scores higher: rank 2
                       [0.28, 0.0, 0.96],         # subject 30: its mate first, score 0.96
                       [0.9, 0.43589, 0.0],       # subject 40, not in the gallery: top score 0.9
                       [0.7, 0.5, 0.50990195]])   # subject 50, not in the gallery: top score 0.7
    subjects = np.array([10, 20, 30, 40, 50])
    r = open_set_identification(probes, subjects, gallery, gallery_subjects, ranks=(1, 2), fpirs=(0.5, 1.0))
    assert (r["mated_probes"], r["non_mated_probes"], r["gallery_templates"]) == (3, 2, 3)
    assert r["rank"] == {"1": pytest.approx(2 / 3), "2": 1.0}
    # FPIR 0.5: threshold = the ceil(0.5 * 2) = 1st highest non-mated top score, 0.9: only 0.96 is above it
    assert r["tpir_at_fpir"]["0.5"] == pytest.approx(1 / 3)
    # FPIR 1.0: threshold = the 2nd, 0.7: both rank-1 mates (0.8, 0.96) are above it
    assert r["tpir_at_fpir"]["1"] == pytest.approx(2 / 3)


def test_68_landmarks_are_reduced_to_5_as_insightface_does(fixture, tmp_path):
    points = np.random.RandomState(0).uniform(0, 100, (68, 2)).astype(np.float32)
    five = ijb.five_points(points)
    np.testing.assert_allclose(five, [(points[36] + points[39]) / 2, (points[42] + points[45]) / 2, points[30],
                                      points[48], points[54]])
    # a meta line with 68 points aligns like the line with those 5
    root = tmp_path / "fx"
    shutil.copytree(fixture["root"], root)
    meta = root / "meta" / "ijbc_name_5pts_score.txt"
    lines = meta.read_text().splitlines()
    fields = lines[0].split()
    marks = np.array(fields[1:11], np.float32).reshape(5, 2)
    many = np.zeros((68, 2), np.float32)
    many[[36, 39]], many[[42, 45]] = marks[0], marks[1]
    many[30], many[48], many[54] = marks[2], marks[3], marks[4]
    lines[0] = " ".join([fields[0]] + [f"{v:g}" for v in many.reshape(-1)] + [fields[-1]])
    meta.write_text("\n".join(lines) + "\n")
    images = ijb.Images(ijb.open_layout(root, "IJBC"))
    np.testing.assert_allclose(images.landmarks[0], marks)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    from vargface.data.synth_ijb import make_synthetic_ijb

    root = tmp_path_factory.mktemp("ijb")
    summary = make_synthetic_ijb(root / "IJBC", "IJBC", subjects=4, templates_per_subject=3, seed=1, workers=1,
                                 progress=False)
    model = save_tiny(str(root / "model"), emb_size=16)[0]
    return dict(root=root / "IJBC", model=model, summary=summary)


def _broken(tmp_path, fixture, file, edit):
    root = tmp_path / "broken"
    shutil.copytree(fixture["root"], root)
    path = root / "meta" / file
    path.write_text(edit(path.read_text()))
    return root, path


@pytest.mark.parametrize("file, edit, expected", [
    ("ijbc_name_5pts_score.txt", lambda text: text[:text.rstrip().rfind(" ") - 20],
     "ijbc_name_5pts_score.txt, line {last}: expected a crop name, 5 landmarks"),
    ("ijbc_face_tid_mid.txt", lambda text: "".join(text.splitlines(True)[:-1]),
     "ijbc_face_tid_mid.txt: {lastm1} crops, but"),
    ("ijbc_template_pair_label.txt", lambda text: text + "1 999 0\n",
     "ijbc_template_pair_label.txt, line {pairs1}: template 999 is not in"),
    ("ijbc_template_pair_label.txt", lambda text: text.rstrip()[:-2] + "\n",
     "ijbc_template_pair_label.txt, line {pairs}: expected 3 integers"),
    ("ijbc_1N_probe_mixed.csv", lambda text: text + "12345,1,x.jpg\n",
     "ijbc_1N_probe_mixed.csv, line {probes1}: template 12345 is not in"),
])
def test_bad_meta_files_fail_with_one_line_naming_file_and_line(file, edit, expected, fixture, tmp_path, run_cli):
    crops = fixture["summary"]["crops"]
    probes = len((fixture["root"] / "meta" / "ijbc_1N_probe_mixed.csv").read_text().splitlines())
    root, path = _broken(tmp_path, fixture, file, edit)
    done = run_cli("ijb", "--model", fixture["model"], "--root", root, "--target", "IJBC", "--out", tmp_path / "r.json")
    message = expected.format(last=crops, lastm1=crops - 1, pairs=fixture["summary"]["pairs"],
                              pairs1=fixture["summary"]["pairs"] + 1, probes1=probes + 1)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_a_missing_crop_is_named_with_its_meta_line(fixture, tmp_path, run_cli):
    root = tmp_path / "fx"
    shutil.copytree(fixture["root"], root)
    (root / "loose_crop" / "5.jpg").unlink()
    done = run_cli("ijb", "--model", fixture["model"], "--root", root, "--target", "IJBC", "--out", tmp_path / "r.json")
    assert done.returncode == 1 and f"{root / 'loose_crop' / '5.jpg'}: no such crop (line 5 of" in done.stderr


def test_the_per_crop_pipeline_is_insightfaces(fixture):
    import cv2

    from vargface.data.images import ARCFACE_TEMPLATE
    from vargface.eval.embedder import FaceEmbedder
    from vargface.eval.templates import l2_normalise_rows

    images = ijb.Images(ijb.open_layout(fixture["root"], "IJBC"))
    image = cv2.imread(images.crop_path(0))
    crop = ijb.aligned_crop(image, images.landmarks[0])
    # the least-squares similarity onto the ArcFace template (x + 8), bilinear, border 0, then RGB
    m = _umeyama(images.landmarks[0])
    np.testing.assert_allclose(cv2.transform(images.landmarks[0][None].astype(np.float64), m)[0], ARCFACE_TEMPLATE,
                               atol=0.01)  # the fixture's landmarks are an exact similarity of the template
    expected = cv2.warpAffine(image, m, (112, 112), borderValue=0)[..., ::-1]
    assert crop.shape == (112, 112, 3) and np.abs(crop.astype(int) - expected).max() <= 1
    # [L2(net(crop)), L2(net(mirror))], the runner resizing 112 to the network's 32
    embedder = FaceEmbedder(*parse_model_arg(fixture["model"]), batch_size=4)
    row = ijb.embed_crops(embedder, [crop])[0]
    x = embedder.prepare([crop])
    np.testing.assert_allclose(row[:16], l2_normalise_rows(embedder.forward(x))[0], atol=1e-6)
    np.testing.assert_allclose(row[16:], l2_normalise_rows(embedder.forward(x[:, :, :, ::-1].copy()))[0], atol=1e-6)


def _umeyama(src):
    """Umeyama's least-squares similarity src -> ArcFace template, written out independently of the code."""
    from vargface.data.images import ARCFACE_TEMPLATE

    src = np.asarray(src, np.float64)
    dst = ARCFACE_TEMPLATE
    sm, dm = src.mean(0), dst.mean(0)
    a = (dst - dm).T @ (src - sm) / len(src)
    u, s, vt = np.linalg.svd(a)
    d = np.ones(2)
    if np.linalg.det(a) < 0:
        d[1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / (src - sm).var(0).sum()
    return np.hstack([scale * rotation, (dm - scale * rotation @ sm)[:, None]])


def test_cli_json_has_exactly_the_keys_and_agrees_with_the_library(fixture, tmp_path, run_cli):
    out = tmp_path / "r.json"
    done = run_cli("ijb", "--model", fixture["model"], "--root", fixture["root"], "--target", "ijbc", "--out", out,
                   "--json", "--roc", tmp_path / "roc.png")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"target", "images", "templates", "pairs", "genuine", "mode", "tar_at_far",
                           "tar_at_far_exact", "identification"}
    summary = fixture["summary"]
    assert (result["images"], result["templates"], result["pairs"], result["genuine"]) == \
        (summary["crops"], summary["templates"], summary["pairs"], summary["genuine"])
    assert result["mode"] == "N1D1F2" and json.loads(out.read_text()) == result
    # 12 templates: 66 pairs, 12 genuine, 54 impostors resolve FAR 0.1 only
    assert list(result["tar_at_far"]) == ["0.1"] == list(result["tar_at_far_exact"])
    assert set(result["identification"]) == {"G1", "G2", "mean"}
    g1, g2 = result["identification"]["G1"], result["identification"]["G2"]
    assert result["identification"]["mean"]["rank"]["1"] == pytest.approx((g1["rank"]["1"] + g2["rank"]["1"]) / 2)
    assert (tmp_path / "roc.png").read_bytes().startswith(b"\x89PNG")
    # the features file beside --out, named after the checkpoint, reused by the next run (no network needed)
    cached = list(tmp_path.glob("r.features-*.bin"))
    assert len(cached) == 1 and not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.lock"))
    refused = run_cli("ijb", "--model", fixture["model"], "--root", fixture["root"], "--target", "IJBC", "--out", out)
    assert refused.returncode == 1 and "pass --overwrite" in refused.stderr
    again = run_cli("ijb", "--model", fixture["model"], "--root", fixture["root"], "--target", "IJBC", "--out", out,
                    "--overwrite", "--json", "--mode", "N0D0F2")
    assert again.returncode == 0 and json.loads(again.stdout)["mode"] == "N0D0F2"


def test_extraction_resumes_after_a_kill_and_equals_an_uninterrupted_one(fixture, tmp_path, monkeypatch):
    from vargface.eval.embedder import FaceEmbedder

    images = ijb.Images(ijb.open_layout(fixture["root"], "IJBC"))
    embedder = FaceEmbedder(*parse_model_arg(fixture["model"]), batch_size=2)  # chunks of 8 crops
    whole = np.array(ijb.crop_features(embedder, images, tmp_path / "whole.json", workers=2, progress=False))

    forward, calls = embedder.forward, []

    def dies_on_the_fifth_call(batch):
        calls.append(len(batch))
        if len(calls) == 5:
            raise KeyboardInterrupt
        return forward(batch)

    monkeypatch.setattr(embedder, "forward", dies_on_the_fifth_call)
    with pytest.raises(KeyboardInterrupt):
        ijb.crop_features(embedder, images, tmp_path / "killed.json", workers=2, progress=False)
    path = ijb.cache_path(tmp_path / "killed.json", embedder.checksum)
    assert json.loads(open(path + ".json").read())["done"] == 16 and not os.path.exists(path)
    monkeypatch.setattr(embedder, "forward", forward)
    resumed = np.array(ijb.crop_features(embedder, images, tmp_path / "killed.json", workers=1, progress=False))
    np.testing.assert_array_equal(resumed, whole)
    # a finished file is reused without running the network
    monkeypatch.setattr(embedder, "forward", None)
    np.testing.assert_array_equal(ijb.crop_features(embedder, images, tmp_path / "killed.json"), whole)


def test_features_are_keyed_on_the_model_and_checked_against_their_inputs(fixture, tmp_path):
    from vargface.eval.embedder import FaceEmbedder

    images = ijb.Images(ijb.open_layout(fixture["root"], "IJBC"))
    first = FaceEmbedder(*parse_model_arg(fixture["model"]), batch_size=8)
    other = FaceEmbedder(*parse_model_arg(save_tiny(str(tmp_path / "other"), emb_size=16, seed=5)[0]), batch_size=8)
    a = np.array(ijb.crop_features(first, images, tmp_path / "r.json", progress=False))
    b = np.array(ijb.crop_features(other, images, tmp_path / "r.json", progress=False))
    assert ijb.cache_path(tmp_path / "r.json", first.checksum) != ijb.cache_path(tmp_path / "r.json", other.checksum)
    assert not np.allclose(a, b)
    # the same file asked for with other landmarks is refused, then recomputed with overwrite
    images.landmarks = images.landmarks + 1
    with pytest.raises(VargfaceError, match="computed from other inputs \\(crops\\); pass --overwrite"):
        ijb.crop_features(first, images, tmp_path / "r.json", progress=False)
    c = np.array(ijb.crop_features(first, images, tmp_path / "r.json", overwrite=True, progress=False))
    assert c.shape == a.shape and not np.array_equal(a, c)


def test_a_second_writer_is_refused_naming_the_holder(fixture, tmp_path, run_cli):
    from vargface.locks import OutputLock

    out = tmp_path / "r.json"
    with OutputLock(out):
        done = run_cli("ijb", "--model", fixture["model"], "--root", fixture["root"], "--target", "IJBC",
                       "--out", out)
        assert done.returncode == 1 and f"another process writes {out} (pid {os.getpid()}" in done.stderr
    assert not os.path.exists(f"{out}.lock") and not list(tmp_path.glob("r.features-*"))


def test_synthetic_fixture_follows_the_layout(tmp_path):
    from vargface.data.synth_ijb import make_synthetic_ijb

    summary = make_synthetic_ijb(tmp_path / "IJBB", "IJBB", subjects=3, templates_per_subject=2, pairs=10, workers=1,
                                 progress=False)
    layout = ijb.open_layout(tmp_path / "IJBB", "IJBB")
    assert layout.has_1n and sorted(os.path.basename(p) for p in layout.galleries.values()) == \
        ["ijbb_1N_gallery_S1.csv", "ijbb_1N_gallery_S2.csv"]
    images = ijb.Images(layout)
    ids = np.unique(images.templates)
    first, second, genuine = ijb.read_pairs(layout, ids)
    assert (len(genuine), int(genuine.sum())) == (summary["pairs"], summary["genuine"]) == (10, 3)
    probes = ijb.read_subjects(layout.probes, ids, layout.templates)
    galleries = [ijb.read_subjects(p, ids, layout.templates, one_per_subject=True) for p in layout.galleries.values()]
    assert sorted(np.r_[galleries[0][1], galleries[1][1]].tolist()) == [1, 2, 3]
    assert len(probes[0]) == 3 and set(probes[1].tolist()) == {1, 2, 3}
    assert ((images.faceness > 0) & (images.faceness <= 1)).all()


@pytest.mark.parametrize("block", [1, 3, 7, 256])
def test_pair_scores_equal_the_rowwise_dot_products_in_every_grouping(block):
    """Groups of ``block`` first templates, scored against the second templates they name (a few: gathered;
    most: all of them): each pair's score is its two rows' dot product, in the pairs' own order."""
    from vargface.eval.templates import pair_scores

    rng = np.random.RandomState(4)
    feats = rng.randn(60, 8).astype(np.float32)  # 100 pairs: small groups name few, the whole batch most
    first, second = rng.randint(0, 60, 100), rng.randint(0, 60, 100)
    expected = np.einsum("ij,ij->i", feats[first], feats[second])
    np.testing.assert_allclose(pair_scores(feats, first, second, block=block), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", __import__("vargface.symbols", fromlist=["presets"]).presets())
def test_crop_features_are_the_faithful_network_on_the_crop_and_its_mirror_for_every_preset(preset):
    """IJB's per-crop features on every network: [unit(net(crop)), unit(net(mirror))] of the faithful graph, the
    crop resized by the runner's rule where the network's side is not the 112 of the aligned crops."""
    from test_inference_graph import faithful_outputs, realistic_params, relative_error

    from vargface.eval.images import to_input
    from vargface.eval.runner import InferenceRunner
    from vargface.symbols import get_symbol
    from vargface.symbols.checkpoint import input_size_of

    sym = get_symbol(preset)
    size = input_size_of(sym)
    arg, aux = realistic_params(sym, size)  # outputs of a trained network's size, far above the norm's 1e-10
    crops = np.random.RandomState(7).randint(0, 256, (2, ijb.ALIGNED_SIDE, ijb.ALIGNED_SIDE, 3), dtype=np.uint8)
    got = ijb.embed_crops(InferenceRunner(sym, arg, aux, ctx="cpu", batch_size=2), crops)
    x = to_input(crops, size)
    halves = [faithful_outputs(sym, arg, aux, images)[0] for images in (x, np.ascontiguousarray(x[:, :, :, ::-1]))]
    expected = np.concatenate([h / np.sqrt((h * h).sum(axis=1, keepdims=True) + 1e-10) for h in halves], 1)
    assert got.shape == expected.shape == (2, 2 * halves[0].shape[1])
    assert relative_error(got, expected) <= 1e-4
