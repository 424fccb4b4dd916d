"""Hostile and broken input: nothing a third-party file holds is run, every fault is a clear message."""
import contextlib
import glob
import io
import json
import os
import pickle
import re
import types

import numpy as np
import pytest

from vargface.data.verification import load_bin
from vargface.errors import VargfaceError

SIZE = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vargface.data.synth import make_synthetic_rec

    root = tmp_path_factory.mktemp("hostile") / "data"
    make_synthetic_rec(str(root), 4, 3, size=SIZE, seed=2, progress=False)
    return root


def run_cli(*args):
    """``vargface ARGS`` in this process -> (exit code, stdout, stderr)."""
    from vargface.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit:
            code = exit.code
    return types.SimpleNamespace(code=code, out=out.getvalue(), err=err.getvalue())


class RunsCommand:
    """Unpickles to os.system(...): the classic hostile pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsCodeAndReturnsAPack:
    """Unpickles by running code whose result is a valid (bins, issame) pair, so a shape check alone misses it."""

    def __init__(self, marker, pack):
        self.marker, self.pack = marker, pack

    def __reduce__(self):
        code = f"open({str(self.marker)!r}, 'w').close() or {self.pack!r}"
        return eval, (code,)


def hostile_packs(tmp_path):
    marker = tmp_path / "pwned"
    jpeg = _jpeg()
    return marker, [pickle.dumps(RunsCommand(marker)),
                    pickle.dumps(RunsCodeAndReturnsAPack(marker, ([jpeg, jpeg], [True])))]


def _jpeg():
    import cv2

    return cv2.imencode(".jpg", np.full((SIZE, SIZE, 3), 128, np.uint8))[1].tobytes()


def test_hostile_pack_is_refused_without_running_it(tmp_path):
    marker, packs = hostile_packs(tmp_path)
    for i, payload in enumerate(packs):
        path = tmp_path / f"evil{i}.bin"
        path.write_bytes(payload)
        with pytest.raises(VargfaceError, match=rf"evil{i}\.bin.*may be hostile"):
            load_bin(path)
        assert not marker.exists()


def test_wrong_structures_are_clear_errors(tmp_path):
    for i, value in enumerate([(1, 2), [b"a"], {"bins": []}, ([1, 2], [True]), ([b"a", b"b"], ["yes"])]):
        path = tmp_path / f"odd{i}.bin"
        path.write_bytes(pickle.dumps(value))
        with pytest.raises(VargfaceError, match=rf"odd{i}\.bin"):
            load_bin(path)


def test_insightface_layouts_still_load(tmp_path):
    jpeg = _jpeg()
    as_arrays = ([np.frombuffer(jpeg, np.uint8)] * 2, [np.bool_(True)])
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.bin"
        path.write_bytes(pickle.dumps(as_arrays, protocol=protocol))
        assert load_bin(path) == ([jpeg, jpeg], [True])
        path.write_bytes(pickle.dumps(([jpeg, bytearray(jpeg)], np.array([False])), protocol=protocol))
        assert load_bin(path) == ([jpeg, jpeg], [False])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny untrained embedding checkpoint: PREFIX,1."""
    import mxnet as mx

    from vargface.symbols import get_symbol
    from vargface.train.checkpoint import save_embedding

    sym = get_symbol("r50", num_layers=18, multiplier=0.125, emb_size=16, input_size=SIZE)
    mod = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    mod.bind([("data", (1, 3, SIZE, SIZE))], for_training=False)
    mod.init_params(mx.init.Xavier())
    prefix = str(tmp_path_factory.mktemp("model") / "m")
    save_embedding(prefix, 1, sym, *mod.get_params())
    return prefix + ",1"


def test_hostile_pack_through_verify_and_data_check(data_dir, model, tmp_path):
    marker, packs = hostile_packs(tmp_path)
    for payload in packs:
        (data_dir / "evil.bin").write_bytes(payload)
        try:
            result = run_cli("data", "check", "--dataset", data_dir)
            assert result.code == 1 and "may be hostile" in result.err, result.err
            result = run_cli("verify", "--model", model, "--target", data_dir / "evil.bin")
            assert result.code == 1 and "may be hostile" in result.err, result.err
        finally:
            os.remove(data_dir / "evil.bin")
        assert not marker.exists()


def test_hostile_pack_beside_train_rec_is_refused_before_training(data_dir, tmp_path):
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    marker, packs = hostile_packs(tmp_path)
    for payload in packs:
        (data_dir / "x.bin").write_bytes(payload)
        try:
            config = generate_config("r18_tiny", str(data_dir), "arcface", val_targets="x", per_batch_size=4,
                                     max_steps=1, ctx="cpu", prefix=str(tmp_path / "m"))
            with pytest.raises(VargfaceError, match="x.bin.*may be hostile"):
                fit(config, log=lambda text: None)
        finally:
            os.remove(data_dir / "x.bin")
        assert not marker.exists()


# ---- outputs: permissions, leftover temporaries, unfinished files ----------------------------------------------------
def test_outputs_honour_the_umask(tmp_path):
    from vargface.atomic import atomic_dir, atomic_path

    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700)):
        old = os.umask(mask)
        try:
            with atomic_path(tmp_path / f"f{mask}") as tmp, open(tmp, "w") as f:
                f.write("x")
            with atomic_dir(tmp_path / f"d{mask}") as tmp:
                pass
        finally:
            os.umask(old)
        assert os.stat(tmp_path / f"f{mask}").st_mode & 0o777 == file_mode
        assert os.stat(tmp_path / f"d{mask}").st_mode & 0o777 == dir_mode


def test_temporaries_of_dead_writers_are_swept(tmp_path):
    import subprocess

    from vargface.atomic import atomic_path

    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".out.bin.{dead.pid}.abc123.tmp"
    leftover.write_bytes(b"half")
    running = tmp_path / f".out.bin.{os.getppid()}.def456.tmp"  # a writer that still runs: left alone
    running.write_bytes(b"busy")
    with atomic_path(tmp_path / "out.bin") as tmp, open(tmp, "wb") as f:
        f.write(b"whole")
    assert not leftover.exists() and running.exists() and (tmp_path / "out.bin").read_bytes() == b"whole"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from test_distill_teacher import save_tiny

    from vargface.train.teacher import Teacher

    return Teacher(save_tiny(str(tmp_path_factory.mktemp("teacher") / "t"), emb_size=16, input_size=SIZE)[0])


def test_an_interrupted_teacher_cache_never_loads(data_dir, teacher, tmp_path, monkeypatch):
    import vargface.atomic
    from vargface.train.teacher_cache import TeacherCache, build_cache

    left = []

    @contextlib.contextmanager
    def killed(path):  # kill -9 while embedding: the temporary, full-sized with its header, stays behind
        tmp = str(tmp_path / ".cache.kdcache.99999.x.tmp")
        left.append(tmp)
        yield tmp

    def embed_then_die(batch, calls=[]):
        calls.append(1)
        if len(calls) == 2:
            raise SystemExit(137)
        return real_embed(batch)

    real_embed = teacher.embed
    monkeypatch.setattr(vargface.atomic, "atomic_path", killed)
    monkeypatch.setattr(teacher, "embed", embed_then_die)
    with pytest.raises(SystemExit):
        build_cache(teacher, str(data_dir), path=str(tmp_path / "cache.kdcache"), batch_size=4, progress=False)
    assert os.path.getsize(left[0]) > 0 and not (tmp_path / "cache.kdcache").exists()
    monkeypatch.undo()
    with pytest.raises(VargfaceError, match="unfinished cache"):  # even when passed explicitly
        TeacherCache(left[0], str(data_dir), teacher)


def test_damaged_teacher_cache_headers_are_clear_errors(data_dir, teacher, tmp_path):
    import struct

    from vargface.train.teacher_cache import MAGIC, TeacherCache

    for name, header in (("huge", None), ("list", b"[1, 2]"), ("keys", b'{"version": 1, "count": "many"}'),
                         ("utf", b"\xff\xfe{")):
        path = tmp_path / f"{name}.kdcache"
        length = 2 ** 60 if header is None else len(header)
        path.write_bytes(MAGIC + struct.pack("<Q", length) + (header or b"{}") + b"\0" * 64)
        with pytest.raises(VargfaceError, match=rf"{name}\.kdcache has a damaged header"):
            TeacherCache(str(path), str(data_dir), teacher)


def test_a_teacher_cache_is_checked_against_the_checksum_of_its_body(data_dir, teacher, tmp_path, monkeypatch):
    import errno
    import struct

    from vargface.train.teacher_cache import MAGIC, TeacherCache, build_cache, read_header

    path = build_cache(teacher, str(data_dir), path=str(tmp_path / "t.kdcache"), batch_size=4, progress=False)
    cache = TeacherCache(path, str(data_dir), teacher)
    assert np.isfinite(cache.embeddings).all()
    rebuild = (f"rebuild it with `vargface distill cache --teacher {teacher.model} --dataset {data_dir} --out {path} "
               f"--overwrite`")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # one embedding, a little off: finite, so only the checksum can tell
        f.seek(size - 4)
        value = struct.unpack("<f", f.read(4))[0]
        f.seek(size - 4)
        f.write(struct.pack("<f", value + 0.25))
    with pytest.raises(VargfaceError, match="t.kdcache is damaged: its record indices and embeddings do not "
                                            "match the checksum in its header; " + re.escape(rebuild)):
        TeacherCache(path, str(data_dir), teacher)

    header, length = read_header(path)  # a cache of the first format: no checksum
    old = json.dumps({k: v for k, v in {**header, "version": 1}.items() if k != "body"}).encode()
    with open(path, "rb") as f:
        body = f.read()[16 + length:]
    (tmp_path / "old.kdcache").write_bytes(MAGIC + struct.pack("<Q", len(old)) + old + body)
    with pytest.raises(VargfaceError, match=r"old.kdcache has no checksum over its embeddings \(an older format\); "
                                            r"rebuild it with `vargface distill cache .* --overwrite`"):
        TeacherCache(str(tmp_path / "old.kdcache"), str(data_dir), teacher)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(VargfaceError, match=r"cannot write .*new.kdcache: the disk is full \(\d[\d,]* bytes needed\)"):
        build_cache(teacher, str(data_dir), path=str(tmp_path / "new.kdcache"), batch_size=4, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["old.kdcache", "t.kdcache"]


def _dies_on_three(item):
    if item == 3:
        os._exit(9)  # as if killed
    return item * 2


def test_a_dead_worker_process_is_an_error_not_a_hang():
    from vargface.data.parallel import imap_processes

    assert list(imap_processes(_dies_on_three, [1, 2], workers=2)) == [2, 4]
    with pytest.raises(VargfaceError, match="worker process died"):
        list(imap_processes(_dies_on_three, range(10), workers=2, chunksize=2))


# ---- clear messages instead of tracebacks --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from vargface.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("faces") / "faces"
    make_synthetic(root, 3, 2, size=SIZE, progress=False)
    return root


def assert_clean_failure(result, *needles):
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err and len(result.err) < 600, result.err
    for needle in needles:
        assert needle in result.err, result.err


def test_output_under_a_file_and_unwritable_outputs(faces, tmp_path, monkeypatch):
    import errno
    import tempfile

    (tmp_path / "plain").write_text("a file")
    assert_clean_failure(run_cli("data", "rec", faces, "--out", tmp_path / "plain" / "set", "--image-size", SIZE),
                         "plain is a file, not a folder")
    for code, reason in ((errno.EACCES, "permission denied"), (errno.EROFS, "read-only")):
        def refuse(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(tempfile, "mkdtemp", refuse)
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        assert_clean_failure(run_cli("data", "rec", faces, "--out", tmp_path / "set", "--image-size", SIZE), reason)
        assert_clean_failure(run_cli("data", "pairs", faces, "--out", tmp_path / "p.bin", "--pairs", 4, "--image-size",
                                     SIZE),
                             reason, "p.bin")
        monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["plain"]


def test_a_full_disk_during_data_rec_and_checkpoints(faces, tmp_path, monkeypatch):
    import errno

    import mxnet as mx

    from vargface.train import checkpoint as ckpt

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mx.recordio.MXIndexedRecordIO, "write_idx", disk_full)
    assert_clean_failure(run_cli("data", "rec", faces, "--out", tmp_path / "set", "--image-size", SIZE), "set",
                         "disk is full")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []

    arrays = {"w": mx.nd.ones((512, 512))}  # larger than a stdio buffer: the failed write shows at once
    ckpt.save_state(str(tmp_path / "m"), {"num_update": 1, "epoch": 0, "batch": 1}, arrays, {})
    real_save = mx.nd.save
    monkeypatch.setattr(mx.nd, "save", lambda path, data: real_save("/dev/full", data))  # MXNet's own failure
    with pytest.raises(VargfaceError, match=r"m-state-00000002.params: the write was incomplete \(is the disk"):
        ckpt.save_state(str(tmp_path / "m"), {"num_update": 2, "epoch": 0, "batch": 2}, arrays, {})
    monkeypatch.undo()
    monkeypatch.setattr(ckpt.json, "dump", disk_full)
    with pytest.raises(VargfaceError, match=r"m-state.json: the disk is full"):
        ckpt.save_state(str(tmp_path / "m"), {"num_update": 3, "epoch": 0, "batch": 3}, arrays, {})
    monkeypatch.undo()
    assert ckpt.load_state(str(tmp_path / "m"))[0]["num_update"] == 1
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_damaged_inputs_are_named(data_dir, faces, tmp_path):
    lst = tmp_path / "bad.lst"
    lst.write_bytes(b"1\t" + str(faces).encode() + b"/a.jpg\t0\n1\t\xff\xfe.jpg\t0\n")
    assert_clean_failure(run_cli("data", "rec", lst, "--out", tmp_path / "out"), "bad.lst:2: not UTF-8")
    for size in (-5, 100000):
        result = run_cli("data", "rec", faces, "--out", tmp_path / "out", "--image-size", size)
        assert result.code == 2 and "--image-size" in result.err and "8..4096" in result.err
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    assert_clean_failure(run_cli("plot-log", tmp_path / "binary.jsonl", "--out", tmp_path / "c.png"), "not a JSON line")
    (tmp_path / "short.jsonl").write_text('{"type": "verify", "step": 0, "score": 0.5}\n')
    assert_clean_failure(run_cli("plot-log", tmp_path / "short.jsonl", "--out", tmp_path / "c.png"),
                         "no training lines yet", "--frequent")
    broken = tmp_path / "negative"
    import shutil

    shutil.copytree(data_dir, broken)
    lines = (broken / "train.idx").read_text().splitlines()
    key, _ = lines[2].split("\t")
    lines[2] = f"{key}\t-40"
    (broken / "train.idx").write_text("\n".join(lines) + "\n")
    assert_clean_failure(run_cli("data", "check", "--dataset", broken), f"record {key} has offset -40")
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.png").exists()


def test_training_inputs_that_cannot_work_are_named(data_dir, model, tmp_path):
    import shutil

    base = ["train", "--network", "r18_tiny", "--per-batch-size", "4", "--max-steps", "1", "--ctx", "cpu",
            "--target", ""]
    assert_clean_failure(run_cli(*base, "--dataset", tmp_path / "nonexistent", "--prefix", tmp_path / "m"),
                         "nonexistent: the folder does not exist")
    more = tmp_path / "more"
    shutil.copytree(data_dir, more)
    (more / "property").write_text("9,32,32\n")
    assert_clean_failure(run_cli(*base, "--dataset", more, "--prefix", tmp_path / "m"),
                         "says 9 classes", "has 4 identity records")
    (tmp_path / "plain").write_text("a file")
    assert_clean_failure(run_cli(*base, "--dataset", data_dir, "--prefix", tmp_path / "plain" / "m"),
                         "is a file, not a folder")
    # A checkpoint of another architecture: a few problems, then a count, not hundreds of lines.
    result = run_cli(*base, "--dataset", data_dir, "--network", "vargfacenet_tiny", "--image-size", SIZE,
                     "--pretrained", model, "--prefix", tmp_path / "v")
    assert_clean_failure(result, "does not fit the network", "more")
    assert not (tmp_path / "m-state.json").exists()


def test_a_failing_decode_thread_in_the_iterator_is_an_error(data_dir, monkeypatch):
    from vargface.data.iterator import FaceRecordIter
    from vargface.data.recordio import RecReader

    real = RecReader.decode

    def damaged(self, key, flags=1):
        if key == 3:
            raise RuntimeError("Traceback (most recent call last):\n  File \"x.cc\"\nMXNetError: bad record header")
        return real(self, key, flags)

    monkeypatch.setattr(RecReader, "decode", damaged)
    it = FaceRecordIter(path_imgrec=str(data_dir / "train.rec"), batch_size=4, data_shape=(3, SIZE, SIZE),
                        num_workers=2)
    with pytest.raises(VargfaceError, match=r"record 3 cannot be read: bad record header$"):
        for _ in it:
            pass
    it.close()


def test_a_checkpoint_with_non_finite_weights_is_refused_by_every_command(model, data_dir, faces, tmp_path):
    """NaN or inf weights (a diverged run) would give NaN embeddings and scores: one check, where checkpoints load."""
    import shutil

    import mxnet as mx

    from vargface.data.verification import make_synthetic_bin

    prefix = model.rsplit(",", 1)[0]
    arrays = mx.nd.load(prefix + "-0001.params")
    name = sorted(k for k in arrays if k.startswith("arg:") and k.endswith("_weight"))[0]
    bad = tmp_path / "bad"
    shutil.copy(prefix + "-symbol.json", str(bad) + "-symbol.json")
    make_synthetic_bin(str(tmp_path / "pack.bin"), identities=4, pairs=4, size=SIZE, seed=0, workers=1)
    image = next(faces.rglob("*.jpg"))
    (tmp_path / "list.txt").write_text(str(image.relative_to(faces)) + "\n")
    commands = {
        "verify": ["verify", "--target", tmp_path / "pack.bin", "--nfolds", 2],
        "embed": ["embed", image, "--out", tmp_path / "e.npy"],
        "compare": ["compare", image, image],
        "lfr features": ["lfr", "features", tmp_path / "list.txt", "--root", faces, "--out", tmp_path / "f.bin"],
        "export": ["export", "--out", tmp_path / "m.onnx"],
        "distill cache": ["distill", "cache", "--dataset", data_dir, "--out", tmp_path / "c.kdcache"],
        "train --pretrained": ["train", "--network", "r18_tiny", "--dataset", data_dir, "--image-size", SIZE,
                               "--per-batch-size", 4, "--max-steps", 1, "--val-targets", "", "--prefix",
                               tmp_path / "run" / "model"],
    }
    model_option = {"distill cache": "--teacher", "train --pretrained": "--pretrained"}
    for value in (float("nan"), float("inf")):
        values = arrays[name].asnumpy()
        values.flat[0] = value
        arrays[name] = mx.nd.array(values)
        mx.nd.save(str(bad) + "-0001.params", arrays)
        for command, argv in commands.items():
            result = run_cli(*argv, model_option.get(command, "--model"), f"{bad},1")
            assert_clean_failure(result, f"bad-0001.params: array '{name[4:]}' holds 1 NaN or infinite value")
    assert sorted(os.listdir(tmp_path)) == ["bad-0001.params", "bad-symbol.json", "list.txt", "pack.bin", "run"]
    assert not glob.glob(str(tmp_path / "run" / "*.params"))  # no output of any command


def test_lfr_features_on_a_full_disk_says_so(faces, model, tmp_path, monkeypatch):
    """The feature file is allocated whole before any work and written without a memory map (a store into a map on
    a full disk is a SIGBUS, with no message)."""
    import errno
    import resource
    import subprocess
    import sys

    image = next(faces.rglob("*.jpg"))
    (tmp_path / "list.txt").write_text((str(image.relative_to(faces)) + "\n") * 2000)  # 128 KB of features
    argv = ["lfr", "features", tmp_path / "list.txt", "--model", model, "--root", faces, "--out", tmp_path / "f.bin"]

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    assert_clean_failure(run_cli(*argv), "cannot write", "f.bin.partial: the disk is full (128,016 bytes needed)")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["list.txt"]

    def small_files():  # a real limit: `ulimit -f` 64 KB
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))

    limited = subprocess.run([sys.executable, "-m", "vargface"] + [str(a) for a in argv], preexec_fn=small_files,
                             capture_output=True, text=True, timeout=300)
    assert limited.returncode == 1 and "Traceback" not in limited.stderr, limited.stderr
    assert "f.bin.partial: the file would exceed the file size limit" in limited.stderr, limited.stderr
    assert sorted(os.listdir(tmp_path)) == ["list.txt"]
