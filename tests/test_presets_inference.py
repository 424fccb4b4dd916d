"""Every preset at full size (112x112) through the inference runner on CPU: one training update with in-training
verification, then `verify`, `embed`, `compare` and `lfr features` on the checkpoint it saved, all equal to what the
trainer computed. Kept cheap (a 4-pair pack, batch 2): r100 forwards about 3 images/s here."""
import json
import os

import numpy as np
import pytest

from test_symbols import FAITHFUL_PRESETS
from vargface.eval.runner import InferenceRunner
from vargface.train.config import generate_config
from vargface.train.trainer import fit

PAIRS = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vargface.data.synth import make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin

    root = tmp_path_factory.mktemp("presets") / "data"
    make_synthetic_rec(str(root), 2, 2, size=112, seed=5, workers=1, progress=False)
    make_synthetic_bin(str(root / "val.bin"), 2, PAIRS, size=112, seed=5, per_identity=2, workers=1)
    return str(root)


@pytest.fixture(scope="module")
def pack_files(data_dir, tmp_path_factory):
    """The pack's 8 images as JPEG files (their bytes as stored), in pack order."""
    from vargface.data.verification import load_bin

    root = tmp_path_factory.mktemp("pack_files")
    bins, _ = load_bin(os.path.join(data_dir, "val.bin"))
    names = [f"{i}.jpg" for i in range(len(bins))]
    for name, payload in zip(names, bins):
        (root / name).write_bytes(payload)
    return root, names


def train_recording(config, monkeypatch):
    """fit() -> (result, the embeddings of the last in-training verification round)."""
    rounds = []
    original = InferenceRunner.embed_prepared

    def recording(self, *args, **kwargs):
        rounds.append(original(self, *args, **kwargs))
        return rounds[-1]

    monkeypatch.setattr(InferenceRunner, "embed_prepared", recording)
    result = fit(config, log=lambda line: None)
    monkeypatch.setattr(InferenceRunner, "embed_prepared", original)
    return result, rounds


@pytest.mark.parametrize("preset,ctx", [(p, "cpu") for p in FAITHFUL_PRESETS] + [("y1", "cpu:0,cpu:1")])
def test_in_training_verification_equals_the_commands_on_the_saved_checkpoint(
        preset, ctx, data_dir, pack_files, tmp_path, monkeypatch, run_cli):
    # A small step: with a batch of 2, training-mode BatchNorm on the 1x1 embedding maps has near-zero variances,
    # and at lr 0.001 one update of vargfacenet_insightface grew weights to ~30 and NaN embeddings (two OpenMP
    # threads only: their rounding decides it). The test is about inference, so the update need only be non-zero.
    config = generate_config(preset, data_dir, "arcface", ctx=ctx, per_batch_size=2, max_steps=1, verbose=1,
                             lr_schedule="step", lr=1e-5, prefix=str(tmp_path / "m"))
    result, rounds = train_recording(config, monkeypatch)
    verify = [e for e in result["history"] if e["type"] == "verify"]
    assert [e["step"] for e in verify] == [0, 1] and len(rounds) == 2
    assert not np.array_equal(rounds[0], rounds[1])  # the update changed the weights the runner sees
    model = f"{result['prefix']},{result['epoch']}"
    batch = 2  # the trainer's per-device batch: oneDNN's last bits may depend on it

    done = run_cli("verify", "--model", model, "--target", os.path.join(data_dir, "val.bin"), "--nfolds", PAIRS,
                   "--per-batch-size", batch, "--ctx", ctx, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["val"]["accuracy"] == verify[-1]["val_acc"]

    root, names = pack_files
    paths = [str(root / n) for n in names]
    done = run_cli("embed", "--model", model, "--out", tmp_path / "emb.npy", "--per-batch-size", batch, "--ctx", ctx,
                   *paths)
    assert done.returncode == 0, done.stderr
    embedded = np.load(tmp_path / "emb.npy")
    assert embedded.shape == rounds[-1].shape and np.isfinite(embedded).all()
    np.testing.assert_array_equal(embedded, rounds[-1].astype(np.float32))

    done = run_cli("compare", "--model", model, "--ctx", ctx, paths[0], paths[1], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cosine"] == pytest.approx(float(embedded[0] @ embedded[1]), abs=1e-5)

    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(names) + "\n")
    done = run_cli("lfr", "features", listing, "--model", model, "--root", root, "--out",
                   tmp_path / "features.bin", "--per-batch-size", batch, "--ctx", ctx)
    assert done.returncode == 0, done.stderr
    from vargface.eval.lfr import read_features

    np.testing.assert_array_equal(read_features(tmp_path / "features.bin"), embedded)
