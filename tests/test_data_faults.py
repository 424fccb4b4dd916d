"""Bad input to the data toolkit: each fault gives a clear message, a non-zero exit, and no half-written output."""
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from vargface.data.convert import check, to_rec
from vargface.data.iterator import FaceRecordIter
from vargface.data.synth import make_synthetic
from vargface.errors import VargfaceError

SIZE = 32


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "faces"
    make_synthetic(root, 4, 3, size=SIZE, progress=False)
    return root


@pytest.fixture
def rec(source, tmp_path):
    out = tmp_path / "set"
    to_rec(str(source), str(out), size=SIZE, progress=False)
    return out


def vargface(*args):
    """Run ``vargface data ARGS`` in this process (fast); returns an object like subprocess's result."""
    import contextlib
    import io
    import types

    from vargface.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["data", *map(str, args)])
            code = 0
        except SystemExit as exit:
            code = exit.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def offsets(rec):
    return dict(tuple(map(int, line.split("\t"))) for line in (rec / "train.idx").read_text().split("\n") if line)


def assert_check_fails(rec, *needles):
    result = vargface("check", "--dataset", rec)
    assert result.returncode == 1, result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


def test_clean_set_checks_ok(rec):
    result = subprocess.run([sys.executable, "-m", "vargface", "data", "check", "--dataset", str(rec)], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "12 images, 4 identities" in result.stdout and "ok" in result.stdout


def test_corrupt_jpeg_in_a_record(rec):
    with open(rec / "train.rec", "r+b") as f:  # overwrite record 5's JPEG SOI marker (after magic, len, IRHeader)
        f.seek(offsets(rec)[5] + 8 + 24)
        f.write(b"\0\0\0\0")
    assert_check_fails(rec, "record 5:", "does not decode as an image")
    it = FaceRecordIter(batch_size=12, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec))
    with pytest.raises(VargfaceError, match=r"train.rec: record 5 does not decode"):
        next(it)


def test_truncated_rec(rec):
    size = os.path.getsize(rec / "train.rec")
    with open(rec / "train.rec", "r+b") as f:
        f.truncate(offsets(rec)[8] + 20)
    assert size > os.path.getsize(rec / "train.rec")
    err = assert_check_fails(rec, "record 8:", "truncated")
    assert "record 9:" in err and "past the end" in err
    with pytest.raises(VargfaceError, match=r"record 9 points at offset \d+, past the end"):
        FaceRecordIter(batch_size=4, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec))


def test_idx_pointing_past_the_end(rec):
    table = offsets(rec)
    table[3] = os.path.getsize(rec / "train.rec") + 4096
    (rec / "train.idx").write_text("".join(f"{k}\t{v}\n" for k, v in table.items()))
    assert_check_fails(rec, "record 3:", "past the end")
    with pytest.raises(VargfaceError, match="train.idx: record 3 points at offset"):
        FaceRecordIter(batch_size=4, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec))


def test_missing_property(rec):
    os.remove(rec / "property")
    assert_check_fails(rec, "property: missing")
    from vargface.data.recordio import read_property

    with pytest.raises(VargfaceError, match="num_classes,height,width"):
        read_property(rec)


@pytest.mark.parametrize("content, message", [
    ("4,32,32".encode("utf-16"), "property: not UTF-8 text (invalid start byte at byte 0)"),
    (b"4,32", "property: cannot parse '4,32'"),
    (b"\x00" * 100_000, "property: cannot parse '" + "\\x00" * 14)])
def test_a_property_that_is_not_one_is_named_by_check_and_train(rec, content, message, tmp_path, run_cli):
    (rec / "property").write_bytes(content)
    assert_check_fails(rec, message, "expected one line 'num_classes,height,width'")
    train = run_cli("train", "--network", "r18_tiny", "--dataset", rec, "--image-size", SIZE, "--per-batch-size", 4,
                    "--max-steps", 1, "--val-targets", "", "--prefix", tmp_path / "run" / "model")
    assert train.returncode == 1 and message in train.stderr and "Traceback" not in train.stderr, train.stderr


def test_label_beyond_num_classes(rec):
    (rec / "property").write_text(f"3,{SIZE},{SIZE}")  # the set has 4 identities: labels 3 are out of range
    err = assert_check_fails(rec, "record 10:", "label 3 is not a class id in 0..2", "property says 3 classes")
    assert "record 9:" not in err
    it = FaceRecordIter(batch_size=12, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec))
    with pytest.raises(VargfaceError, match="record 10 has label 3, outside 0..2"):
        next(it)


def test_non_images_and_empty_folders_skip_or_strict(source, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(source, root)
    (root / "id_000001" / "notes.txt").write_text("not an image")
    os.makedirs(root / "zz_empty")
    strict = vargface("rec", root, "--out", tmp_path / "strict", "--strict")
    assert strict.returncode == 1 and "notes.txt: not an image file" in strict.stderr and "--strict" in strict.stderr
    assert not (tmp_path / "strict").exists()
    os.remove(root / "id_000001" / "notes.txt")
    strict = vargface("rec", root, "--out", tmp_path / "strict", "--strict")
    assert strict.returncode == 1 and "zz_empty: empty identity folder" in strict.stderr
    (root / "id_000001" / "notes.txt").write_text("not an image")
    loose = vargface("rec", root, "--out", tmp_path / "loose")
    assert loose.returncode == 0, loose.stderr
    assert "warning:" in loose.stderr and "notes.txt" in loose.stderr and "zz_empty" in loose.stderr
    assert check(tmp_path / "loose", progress=False)["identities"] == 4
    # an image-named file that does not decode: skipped with a warning, rejected with --strict
    (root / "id_000002" / "broken.jpg").write_bytes(b"garbage")
    os.remove(root / "id_000001" / "notes.txt")
    os.rmdir(root / "zz_empty")
    strict = vargface("rec", root, "--out", tmp_path / "strict", "--strict")
    assert strict.returncode == 1 and "broken.jpg: does not decode" in strict.stderr
    loose = vargface("rec", root, "--out", tmp_path / "loose2")
    assert loose.returncode == 0 and "broken.jpg" in loose.stderr
    assert check(tmp_path / "loose2", progress=False)["images"] == 12
    assert sorted(os.listdir(tmp_path)) == ["loose", "loose2", "root"]  # no temporary or partial outputs


def test_existing_output_refused_unless_overwrite(source, rec, tmp_path):
    before = (rec / "train.rec").read_bytes()
    not_theirs = "holds what this command does not write (property, train.idx, train.rec)"
    for args, message in ((("rec", source, "--out", rec), "holds train.rec, train.idx, property; pass --overwrite"),
                          (("synth", "--out", rec, "--identities", 2, "--per-identity", 2, "--overwrite"), not_theirs),
                          (("unpack", "--dataset", rec, "--out", rec, "--overwrite"), not_theirs),
                          (("lst", source, "--out", rec / "property"), "exists; pass --overwrite"),
                          (("pairs", source, "--out", rec / "property", "--pairs", 4), "exists; pass --overwrite")):
        result = vargface(*args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
    assert (rec / "train.rec").read_bytes() == before
    result = vargface("synth", "--out", rec, "--identities", 2, "--per-identity", 2, "--image-size", SIZE, "--rec",
                      "--overwrite")
    assert result.returncode == 0, result.stderr
    assert check(rec, progress=False)["images"] == 4
    assert sorted(os.listdir(tmp_path)) == ["set"]


def test_failed_write_leaves_nothing(tmp_path):
    from vargface.data.recordio import write_rec

    with pytest.raises(VargfaceError, match="label 2 follows label 0"):
        write_rec(tmp_path / "out", [(0, b"x"), (2, b"y")], progress=False)
    assert os.listdir(tmp_path) == []


def test_lst_faults(tmp_path, source):
    (tmp_path / "bad.lst").write_text("1\ta.jpg\n")
    result = vargface("rec", tmp_path / "bad.lst", "--out", tmp_path / "out")
    assert result.returncode == 1 and "bad.lst:1: cannot parse" in result.stderr
    (tmp_path / "gap.lst").write_text(f"1\t{source}/id_000000/0000.jpg\t0\n1\t{source}/id_000001/0000.jpg\t2\n")
    result = vargface("rec", tmp_path / "gap.lst", "--out", tmp_path / "out")
    assert result.returncode == 1 and "label 1 has no image" in result.stderr
    assert not (tmp_path / "out").exists()


def test_records_with_magic_inside_are_read(tmp_path):
    """dmlc splits a record where its data holds the RecordIO magic word; the pread reader joins the parts."""
    from vargface.data.recordio import RecReader

    magic = np.uint32(0xCED7230A).tobytes()
    payload = b"abcd" * 3 + magic + b"efgh" + magic + b"ij"
    writer = mx.recordio.MXIndexedRecordIO(str(tmp_path / "x.idx"), str(tmp_path / "x.rec"), "w")
    writer.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, 1.0, 0, 0), b"first"))
    writer.write_idx(1, payload)
    writer.close()
    with RecReader(tmp_path / "x.rec") as reader:
        assert reader.read(1) == payload and reader.read_image(0) == (1.0, b"first")
