"""Outputs are sacred: --overwrite replaces only what a command writes, and one writer holds an output at a time
(a second writer of the same output is refused, naming the holder)."""
import os
import subprocess
import sys
import types

import pytest

from test_hostile import run_cli  # in this process -> .code, .out, .err; nests inside a command

from vargface.data.convert import check

SIZE = 32


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from test_distill_teacher import save_tiny

    from vargface.data.synth import make_synthetic, make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin

    root = tmp_path_factory.mktemp("outputs")
    make_synthetic(root / "faces", 3, 2, size=SIZE, seed=0, workers=1, progress=False)
    make_synthetic_rec(str(root / "data"), 3, 2, size=SIZE, seed=0, workers=1, progress=False)
    make_synthetic_bin(str(root / "pack.bin"), identities=4, pairs=4, size=SIZE, seed=0, workers=1)
    names = sorted(str(p.relative_to(root / "faces")) for p in (root / "faces").rglob("*.jpg"))
    (root / "list.txt").write_text("\n".join(names) + "\n")
    model = save_tiny(str(root / "model"), emb_size=16, input_size=SIZE)[0]
    return types.SimpleNamespace(root=root, faces=root / "faces", data=root / "data", pack=root / "pack.bin",
                                 list=root / "list.txt", model=model)


def snapshot(folder):
    """{relative path: bytes} of every file below ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- --overwrite replaces only the command's own files ----------------------------------------------------------
def test_data_rec_overwrite_keeps_packs_caches_and_everything_else(inputs, tmp_path):
    data = tmp_path / "data"
    assert run_cli("data", "rec", inputs.faces, "--out", data, "--size", SIZE, "--workers", 1).code == 0
    (data / "heldout.bin").write_bytes(inputs.pack.read_bytes())
    (data / "train.teacher-model-0001.kdcache").write_bytes(b"VARGKD02 a cache")
    (data / "notes.txt").write_text("where these faces come from")
    (data / "more").mkdir()
    (data / "more" / "extra.bin").write_bytes(b"another pack")
    mine = {"heldout.bin", "train.teacher-model-0001.kdcache", "notes.txt", "more/extra.bin"}
    before = snapshot(data)

    refused = run_cli("data", "rec", inputs.faces, "--out", data, "--size", 24)
    assert refused.code == 1 and "holds train.rec, train.idx, property; pass --overwrite" in refused.err
    assert snapshot(data) == before
    replaced = run_cli("data", "rec", inputs.faces, "--out", data, "--size", 24, "--workers", 1, "--overwrite")
    assert replaced.code == 0, replaced.err
    after = snapshot(data)
    assert {k: after[k] for k in mine} == {k: before[k] for k in mine}  # untouched, byte for byte
    assert set(after) == set(before) and (data / "property").read_text() == f"3,24,24\n"  # the set: replaced
    assert check(data, progress=False)["num_faults"] == 0  # the kept .bin packs are checked too
    assert sorted(os.listdir(tmp_path)) == ["data"]  # no lock, no temporary left


def test_a_set_interrupted_while_replaced_never_looks_whole(inputs, tmp_path, monkeypatch):
    """``property`` goes first and comes last: a crash between the renames leaves a set that says it is incomplete."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(inputs.data, data)
    (data / "heldout.bin").write_bytes(b"kept")
    real = os.replace

    def dies_at_the_index(src, dst):
        if os.path.basename(dst) == "train.idx":
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dies_at_the_index)
    assert run_cli("data", "synth", "--rec", "--out", data, "--identities", 2, "--per-identity", 2, "--size", SIZE,
                    "--workers", 1, "--overwrite").code == 130
    monkeypatch.undo()
    assert not (data / "property").exists() and (data / "heldout.bin").read_bytes() == b"kept"
    result = run_cli("data", "check", "--dataset", data)
    assert result.code == 1 and "property: missing" in result.err
    assert sorted(os.listdir(data)) == ["heldout.bin", "train.idx", "train.rec"]  # the temporary went too


@pytest.mark.parametrize("command", ["synth", "unpack"])
def test_image_folders_are_replaced_whole_and_never_with_anything_else(command, inputs, tmp_path):
    out = tmp_path / "faces"
    argv = {"synth": ["data", "synth", "--out", out, "--identities", 2, "--per-identity", 2, "--size", SIZE,
                      "--workers", 1],
            "unpack": ["data", "unpack", "--dataset", inputs.data, "--out", out]}[command]
    assert run_cli(*argv).code == 0
    stale = out / ("id_000099" if command == "synth" else "000099")  # an identity of an earlier, larger run
    stale.mkdir()
    (stale / "0000.jpg").write_bytes(b"old")
    assert "pass --overwrite" in run_cli(*argv).err
    assert run_cli(*argv, "--overwrite").code == 0
    assert not stale.exists() and len(os.listdir(out)) == (2 if command == "synth" else 3)

    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    before = snapshot(out)
    refused = run_cli(*argv, "--overwrite")
    assert refused.code == 1
    assert "holds what this command does not write (notes.txt, sub)" in refused.err
    assert snapshot(out) == before and (out / "sub").is_dir()


def test_out_dot_never_empties_the_working_directory(inputs, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    (work / "models").mkdir()
    (work / "models" / "r100-0001.params").write_bytes(b"weights")
    monkeypatch.chdir(work)
    before = snapshot(work)
    for argv in (["data", "synth", "--out", ".", "--identities", 2, "--per-identity", 2, "--size", SIZE],
                 ["data", "unpack", "--dataset", inputs.data, "--out", "."]):
        refused = run_cli(*argv, "--overwrite")
        assert refused.code == 1 and "notes.txt" in refused.err, refused.err
    assert snapshot(work) == before
    # a data set can live in it: only its three files are written (and replaced)
    for _ in range(2):
        result = run_cli("data", "rec", inputs.faces, "--out", ".", "--size", SIZE, "--workers", 1, "--overwrite")
        assert result.code == 0, result.err
    assert {k: v for k, v in snapshot(work).items() if k in before} == before
    # even an empty working directory is not swapped for a new one
    os.remove("notes.txt")
    os.remove("train.rec"), os.remove("train.idx"), os.remove("property")
    os.remove("models/r100-0001.params"), os.rmdir("models")
    refused = run_cli("data", "synth", "--out", ".", "--identities", 2, "--per-identity", 2, "--size", SIZE,
                       "--overwrite")
    assert refused.code == 1 and "is the working directory" in refused.err
    assert os.getcwd() == str(work) and os.listdir(work) == []


# ---- one writer per output ---------------------------------------------------------------------------------------
@pytest.fixture
def second_writer(monkeypatch):
    """``arm(argv)``: once the first command is under way (its first progress bar), ``vargface ARGV`` runs as a
    second writer; its result lands in the returned list."""
    from vargface import options

    results, real = [], options.progress_bar

    def arm(argv):
        def bar(*args, **kwargs):
            if not results:
                results.append(run_cli(*argv))
            return real(*args, **kwargs)

        monkeypatch.setattr(options, "progress_bar", bar)
        return results

    return arm


def assert_refused_naming_this_process(result, lock):
    assert result.code == 1, result.err
    assert f"{lock}: another process writes" in result.err
    assert f"(pid {os.getpid()} on " in result.err and "choose another --out" in result.err


WRITERS = {
    "data rec": lambda i, out: ["data", "rec", i.faces, "--out", out, "--size", SIZE, "--workers", 1],
    "data synth": lambda i, out: ["data", "synth", "--out", out, "--identities", 2, "--per-identity", 2,
                                  "--size", SIZE, "--workers", 1],
    "data synth --rec": lambda i, out: ["data", "synth", "--rec", "--out", out, "--identities", 2,
                                        "--per-identity", 2, "--size", SIZE, "--workers", 1],
    "data unpack": lambda i, out: ["data", "unpack", "--dataset", i.data, "--out", out],
    "data synth-ijb": lambda i, out: ["data", "synth-ijb", "--out", out, "--subjects", 2,
                                      "--templates-per-subject", 2, "--workers", 1],
    "distill cache": lambda i, out: ["distill", "cache", "--teacher", i.model, "--dataset", i.data, "--out", out,
                                     "--per-batch-size", 2],
    "lfr features": lambda i, out: ["lfr", "features", i.list, "--model", i.model, "--root", i.faces, "--out",
                                    out, "--per-batch-size", 2],
    "embed": lambda i, out: ["embed", "--model", i.model, "--out", out, *sorted(i.faces.rglob("*.jpg"))],
    "verify --roc": lambda i, out: ["verify", "--model", i.model, "--target", i.pack, "--nfolds", 2, "--roc", out],
}


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_two_writers_of_one_output_cannot_both_succeed(command, inputs, tmp_path, second_writer):
    out = tmp_path / "out"
    argv = WRITERS[command](inputs, out)
    second = second_writer(argv + ["--overwrite"])
    first = run_cli(*argv)
    assert first.code == 0, first.err
    assert_refused_naming_this_process(second[0], tmp_path / "out.lock")
    assert out.exists() and sorted(os.listdir(tmp_path)) == ["out"]  # the lock went with its holder


def test_a_second_lfr_features_process_is_refused(inputs, tmp_path, monkeypatch):
    """Two processes, two models, one --out: the second stops at once, naming the first."""
    from vargface import options

    out, real, seen = tmp_path / "features.bin", options.progress_bar, []

    def bar(*args, **kwargs):
        if not seen:
            seen.append(subprocess.run([sys.executable, "-m", "vargface", "lfr", "features", str(inputs.list),
                                        "--model", inputs.model, "--root", str(inputs.faces), "--out", str(out)],
                                       capture_output=True, text=True, timeout=300))
        return real(*args, **kwargs)

    monkeypatch.setattr(options, "progress_bar", bar)
    assert run_cli("lfr", "features", inputs.list, "--model", inputs.model, "--root", inputs.faces, "--out",
                    out).code == 0
    assert seen[0].returncode == 1 and f"(pid {os.getpid()} on " in seen[0].stderr, seen[0].stderr
    assert "Traceback" not in seen[0].stderr


def test_a_device_output_is_written_into_never_replaced(inputs, tmp_path):
    """``--out /dev/null`` (here a FIFO, which a test may make): a rename over it would destroy the device."""
    import stat
    import threading

    fifo = tmp_path / "sink"
    os.mkfifo(fifo)
    received = []

    def drain():
        while len(received) < 2:
            with open(fifo, "rb") as reader:
                received.append(len(reader.read()))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    for argv in (["data", "lst", inputs.faces, "--out", fifo],
                 ["lfr", "features", inputs.list, "--model", inputs.model, "--root", inputs.faces, "--out", fifo]):
        result = run_cli(*argv, "--overwrite")
        assert result.code == 0, result.err
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    reader.join(timeout=60)
    assert received[0] > 6 * len(str(inputs.faces))  # six lines naming the images,
    assert received[1] == 16 + 6 * 16 * 4  # then the header and six rows
