"""`identify`, the MegaFace protocol: rank-k at nested gallery sizes on hand-made features, blockwise equal to
the whole matrix, noise lists, and the command on `data synth` faces through `lfr features`."""
import json

import numpy as np
import pytest
from test_distill_teacher import save_tiny

from vargface.errors import VargfaceError
from vargface.eval.identify import identify, is_noise


def at(*degrees):
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], 1).astype(np.float32)


# identity a: images at 0 and 10 degrees; b: 90, 100, 130. Trials (probe, mate) and mate scores:
# a: cos 10 twice; b: cos 10, cos 40, cos 10, cos 30, cos 40, cos 30 -> 8 trials.
PROBES, LABELS = at(0, 10, 90, 100, 130), np.array(["a", "a", "b", "b", "b"])
# distractor 0 at 5 degrees outscores both a-trials (cos 5 > cos 10) and no b-trial; distractor 1 at 120 degrees
# scores cos 30, cos 20 and cos 10 against b's three images
DISTRACTORS = at(5, 120)


@pytest.mark.parametrize("tile", [1, 2, 100])
def test_rank_k_at_nested_gallery_sizes_equals_hand_computed_values(tile):
    result = identify(PROBES, LABELS, DISTRACTORS, sizes=[1, 2], max_rank=2, tile=tile, progress=False)
    assert (result["trials"], result["identities"], result["distractors"]) == (8, 2, 2)
    # 1 distractor: the two a-trials miss at rank 1, the six b-trials hit
    assert result["results"]["1"]["rank"] == {"1": 6 / 8, "2": 1.0}
    # 2 distractors: b1's mates score cos 10 (hit) and cos 40 (< cos 30: miss); b2's cos 10 (> cos 20: hit) and
    # cos 30 (miss); b3's cos 40 and cos 30 are both below cos 10: misses. Rank 2: every trial beats the second best
    assert result["results"]["2"]["rank"] == {"1": 2 / 8, "2": 1.0}


def test_blockwise_top_k_equals_the_whole_score_matrix():
    rng = np.random.RandomState(0)
    probes, distractors = rng.randn(30, 8), rng.randn(500, 8).astype(np.float32)
    labels = np.repeat(np.arange(10), 3)
    result = identify(probes, labels, distractors, sizes=[10, 100, 500], max_rank=5, tile=37, progress=False)
    x = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    d = distractors / np.linalg.norm(distractors, axis=1, keepdims=True)
    for size in (10, 100, 500):
        against = x @ d[:size].T
        hits = {r: [] for r in range(1, 6)}
        for i in range(30):
            for j in range(30):
                if i != j and labels[i] == labels[j]:
                    above = int(np.sum(against[i] >= x[i] @ x[j]))  # distractors at least as close as the mate
                    for r in hits:
                        hits[r].append(above < r)
        for r in hits:
            assert result["results"][str(size)]["rank"][str(r)] == pytest.approx(np.mean(hits[r]), abs=1e-9)


def test_noise_lists_match_a_path_or_a_file_name_and_too_large_galleries_are_skipped():
    names = ["x/1.jpg", "x/2.jpg", "y/3.jpg"]
    assert is_noise(names, {"2.jpg", "y/3.jpg"}).tolist() == [False, True, True]
    # without distractor 0 (noise), gallery size 1 is distractor 1 alone: the a-trials hit at rank 1
    result = identify(PROBES, LABELS, DISTRACTORS, keep=np.array([False, True]), sizes=[1, 10], max_rank=1,
                      progress=False)
    assert result["results"]["1"]["rank"]["1"] == pytest.approx(4 / 8)
    assert result["skipped"] == [{"distractors": 10, "reason": "10 distractors requested, 1 available"}]
    with pytest.raises(VargfaceError, match="no identity has two probe images"):
        identify(PROBES[:3], np.array(["a", "b", "c"]), DISTRACTORS, sizes=[1], progress=False)


def test_the_command_on_synthetic_faces_through_lfr_features(tmp_path, run_cli):
    from vargface.data.synth import make_synthetic

    make_synthetic(tmp_path / "probes", identities=3, per_identity=3, size=32, seed=0, workers=1, progress=False)
    make_synthetic(tmp_path / "distractors", identities=24, per_identity=1, size=32, seed=0, first_identity=1000,
                   workers=1, progress=False)
    model = save_tiny(str(tmp_path / "model"), emb_size=16)[0]
    for name in ("probes", "distractors"):
        listed = sorted(str(p.relative_to(tmp_path / name)) for p in (tmp_path / name).rglob("*.jpg"))
        (tmp_path / f"{name}.txt").write_text("\n".join(listed) + "\n")
        done = run_cli("lfr", "features", tmp_path / f"{name}.txt", "--model", model, "--root", tmp_path / name,
                       "--out", tmp_path / f"{name}.bin")
        assert done.returncode == 0, done.stderr
    (tmp_path / "noise.txt").write_text("0000.jpg\n")  # every distractor's only image, and each probe's first
    argv = ["identify", tmp_path / "probes.bin", tmp_path / "probes.txt", tmp_path / "distractors.bin", "--sizes",
            "10,20,100", "--rank", 3, "--cmc", tmp_path / "cmc.png"]
    done = run_cli(*argv, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["probes"], result["identities"], result["trials"], result["distractors"]) == (9, 3, 18, 24)
    assert list(result["results"]) == ["10", "20"] and list(result["results"]["10"]["rank"]) == ["1", "2", "3"]
    assert result["skipped"][0]["distractors"] == 100
    assert (tmp_path / "cmc.png").read_bytes().startswith(b"\x89PNG")
    refused = run_cli(*argv)
    assert refused.returncode == 1 and "--cmc" in refused.stderr and "pass --overwrite" in refused.stderr
    noisy = run_cli(*argv[:-2], "--noise", tmp_path / "noise.txt", "--distractor-list", tmp_path / "distractors.txt")
    assert noisy.returncode == 1 and "0 distractors, fewer than the smallest gallery size" in noisy.stderr
    noisy = json.loads(run_cli(*argv[:-2], "--noise", tmp_path / "noise.txt", "--json").stdout)
    assert noisy["noise_removed"] == {"probes": 3, "distractors": 0} and noisy["trials"] == 6
    (tmp_path / "short.txt").write_text("id_000000/0000.jpg\n")
    bad = run_cli("identify", tmp_path / "probes.bin", tmp_path / "short.txt", tmp_path / "distractors.bin")
    assert bad.returncode == 1 and "PROBES has 9 rows but" in bad.stderr and "short.txt lists 1" in bad.stderr
