"""Data toolkit: synthetic identities, InsightFace RecordIO compatibility, FaceRecordIter, verification packs."""
import os
import pickle
import struct

import cv2
import mxnet as mx
import numpy as np
import pytest

from vargface.data.convert import read_lst, to_rec, unpack, write_lst, check, items_from_root
from vargface.data.iterator import FaceRecordIter
from vargface.data.recordio import read_property
from vargface.data.synth import make_synthetic, make_synthetic_rec, render
from vargface.data.verification import load_bin, make_pairs, make_synthetic_bin, write_bin
from vargface.errors import VargfaceError

IDS, PER, SIZE = 6, 5, 56


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "faces"
    make_synthetic(root, IDS, PER, size=SIZE, seed=3, progress=False)
    return root


@pytest.fixture(scope="module")
def rec(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "set"
    to_rec(str(folders), str(out), size=SIZE, progress=False)
    return out


def insightface_read(data_dir):
    """An independent reader that walks the .rec the way InsightFace's FaceImageIter does: header record 0 ->
    image range and identity records -> per-identity [first, end) -> image records (label = class id)."""
    rec = mx.recordio.MXIndexedRecordIO(str(data_dir / "train.idx"), str(data_dir / "train.rec"), "r")
    header, _ = mx.recordio.unpack(rec.read_idx(0))
    assert header.flag > 0
    imgidx = list(range(1, int(header.label[0])))
    identities = {}
    for identity in range(int(header.label[0]), int(header.label[1])):
        h, _ = mx.recordio.unpack(rec.read_idx(identity))
        identities[identity] = (int(h.label[0]), int(h.label[1]))
    images = {}
    for i in imgidx:
        h, img = mx.recordio.unpack(rec.read_idx(i))
        label = h.label if np.isscalar(h.label) else h.label[0]
        images[i] = (float(label), mx.image.imdecode(img).asnumpy(), img)
    rec.close()
    return imgidx, identities, images


def test_synth_is_deterministic_and_order_independent(tmp_path):
    a, b = render(7, 2, 3, size=SIZE), render(7, 2, 3, size=SIZE)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render(7, 2, 4, size=SIZE))
    assert not np.array_equal(a, render(8, 2, 3, size=SIZE))
    make_synthetic(tmp_path / "one", 2, 3, size=SIZE, seed=1, workers=1, progress=False)
    make_synthetic(tmp_path / "two", 2, 3, size=SIZE, seed=1, workers=2, progress=False)
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "one")
                   for d, _, fs in os.walk(tmp_path / "one") for f in fs)
    assert len(files) == 6 and files[0] == os.path.join("id_000000", "0000.jpg")
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()


def test_synth_identity_carries_the_signal():
    # difficulty 0: every image of an identity is the same face; at 1 they vary, but stay nearer their own
    # identity than another identity's mean (so there is something to learn, and something to get wrong)
    assert np.array_equal(render(0, 1, 0, SIZE, difficulty=0), render(0, 1, 5, SIZE, difficulty=0))
    assert not np.array_equal(render(0, 1, 0, SIZE), render(0, 1, 5, SIZE))
    imgs = np.array([[render(0, i, j, SIZE).astype(np.float32) for j in range(6)] for i in range(6)])
    means = imgs.mean(1)
    own = np.mean([np.abs(imgs[i] - means[i]).mean() for i in range(6)])
    other = np.mean([np.abs(imgs[i] - means[(i + 1) % 6]).mean() for i in range(6)])
    assert own < other


def test_rec_is_read_by_insightface_reader(folders, rec):
    imgidx, identities, images = insightface_read(rec)
    assert read_property(rec) == (IDS, SIZE, SIZE)
    assert len(imgidx) == IDS * PER and len(identities) == IDS
    groups = items_from_root(folders)
    for (first, end), label in zip(identities.values(), range(IDS)):
        assert end - first == PER
        for key in range(first, end):
            assert images[key][0] == label
    for key, item in zip(imgidx, groups):  # same images, same order, same labels
        assert images[key][0] == item.label
        assert images[key][2] == open(item.path, "rb").read()  # stored unchanged: no re-encoding loss
        assert np.array_equal(images[key][1], cv2.imread(item.path)[..., ::-1])
    assert check(rec, progress=False)["num_faults"] == 0


def test_unpack_round_trip_keeps_images_and_labels(rec, tmp_path):
    assert unpack(rec, tmp_path / "u", progress=False) == IDS * PER
    to_rec(str(tmp_path / "u"), str(tmp_path / "again"), size=SIZE, progress=False)
    _, ids_a, imgs_a = insightface_read(rec)
    _, ids_b, imgs_b = insightface_read(tmp_path / "again")
    assert ids_a == ids_b
    assert [(v[0], v[2]) for v in imgs_a.values()] == [(v[0], v[2]) for v in imgs_b.values()]


def face2rec2_style(out, folders):
    """A .rec written the way InsightFace's face2rec2.py does it: image records with float labels first, then
    identity records, then the header record 0 written last (it needs the counts); raw mx.recordio only."""
    os.makedirs(out)
    record = mx.recordio.MXIndexedRecordIO(str(out / "train.idx"), str(out / "train.rec"), "w")
    items = items_from_root(folders)
    key, ranges = 1, []
    for label in range(IDS):
        first = key
        for item in [i for i in items if i.label == label]:
            payload = open(item.path, "rb").read()
            record.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), key, 0), payload))
            key += 1
        ranges.append((first, key))
    n = key - 1
    for c, (a, b) in enumerate(ranges):
        record.write_idx(n + 1 + c, mx.recordio.pack(mx.recordio.IRHeader(2, [a, b], 0, 0), b""))
    record.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(2, [n + 1, n + 1 + IDS], 0, 0), b""))
    record.close()
    (out / "property").write_text(f"{IDS},{SIZE},{SIZE}")
    return items


def test_face2rec2_rec_passes_check_and_feeds_iterator(folders, tmp_path):
    items = face2rec2_style(tmp_path / "theirs", folders)
    report = check(tmp_path / "theirs", progress=False)
    assert report["num_faults"] == 0 and report["identities"] == IDS and report["images"] == IDS * PER
    it = FaceRecordIter(batch_size=IDS * PER, data_shape=(3, SIZE, SIZE), path_imgrec=str(tmp_path / "theirs"
                                                                                          / "train.rec"))
    batch = next(iter(it))
    assert batch.label[0].asnumpy().tolist() == [float(i.label) for i in items]
    first = cv2.imread(items[0].path)[..., ::-1].transpose(2, 0, 1)
    assert np.array_equal(batch.data[0].asnumpy()[0], first.astype(np.float32))


def test_iterator_batches_are_deterministic_and_resumable(rec):
    kw = dict(batch_size=4, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec), shuffle=True, rand_mirror=True, seed=5)
    a, b = FaceRecordIter(**kw), FaceRecordIter(**kw, num_workers=1)
    assert a.provide_data[0].shape == (4, 3, SIZE, SIZE) and a.provide_label[0].name == "softmax_label"
    assert a.num_batches == IDS * PER // 4  # last partial batch discarded
    epoch0 = [(x.index.copy(), x.mirrored.copy(), x.data[0].asnumpy()) for x in a]
    assert [e[0].tolist() for e in epoch0] == [x.index.tolist() for x in b]
    a.reset()  # next epoch: another order, another mirror draw
    assert a.epoch == 1
    epoch1 = [x.index.tolist() for x in a]
    assert epoch1 != [e[0].tolist() for e in epoch0]
    flat = sum(epoch1, [])
    assert len(set(flat)) == len(flat) == 28 and set(flat) <= set(range(1, IDS * PER + 1))
    b.set_epoch(0, start_batch=3)  # resume mid-epoch without decoding the first 3 batches
    rest = [(x.index.tolist(), x.mirrored.tolist()) for x in b]
    assert rest == [(e[0].tolist(), e[1].tolist()) for e in epoch0[3:]]
    all_mirrored = np.concatenate([e[1] for e in epoch0])
    assert 0 < all_mirrored.sum() < len(all_mirrored)
    # a mirrored sample is the horizontal flip of the plain image of the same record
    whole = next(iter(FaceRecordIter(batch_size=IDS * PER, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec))))
    by_key = dict(zip(whole.index.tolist(), whole.data[0].asnumpy()))
    index, mirrored, data = epoch0[0]
    for k, m, x in zip(index, mirrored, data):
        assert np.array_equal(x, by_key[k][:, :, ::-1] if m else by_key[k])


def test_iterator_shards_are_disjoint_and_cover(rec):
    seen, batches = [], set()
    for part in range(3):
        it = FaceRecordIter(batch_size=4, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec), shuffle=True, seed=1,
                            part_index=part, num_parts=3, last_batch="pad")
        for x in it:
            seen += x.index[:4 - x.pad].tolist()
        discard = FaceRecordIter(batch_size=4, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec), part_index=part,
                                 num_parts=3)
        batches.add(discard.num_batches)
    assert sorted(seen) == list(range(1, IDS * PER + 1))
    assert len(batches) == 1  # same batch count per worker: dist_sync cannot hang


def test_iterator_memory_stays_bounded_on_a_256_core_host(tmp_path, monkeypatch):
    """Decode threads come from the usable cores; the prefetch does not: however many cores, at most a few batches
    are decoded ahead, each batch by several threads, in pinned memory when asked."""
    import threading
    import time
    import tracemalloc

    from vargface.data import iterator
    from vargface.data.recordio import RecReader

    make_synthetic_rec(str(tmp_path / "big"), 40, 16, size=64, seed=2, progress=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 256)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(256)), raising=False)
    threads, original = {}, RecReader.decode

    def decode(self, key, *args):
        threads.setdefault(int(key), threading.get_ident())
        return original(self, key, *args)

    monkeypatch.setattr(RecReader, "decode", decode)
    it = FaceRecordIter(batch_size=32, data_shape=(3, 64, 64), path_imgrec=str(tmp_path / "big"), shuffle=True,
                        pinned=True)
    assert it.workers == 256 and it.prefetch == iterator.PREFETCH and it.num_batches == 20
    tracemalloc.start()
    try:
        deepest, first = 0, None
        for batch in it:
            time.sleep(0.02)  # a slow consumer: the loader runs as far ahead as it may
            deepest = max(deepest, len(it._pending))
            first = batch.index.tolist() if first is None else first
            assert batch.data[0].context == mx.cpu_pinned(0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        it.close()
    assert deepest <= iterator.PREFETCH
    # the decoded arrays of the batches in flight (the old loader kept 2 x 256 batches: all 20 here)
    assert peak < (iterator.PREFETCH + 3) * it.batch_bytes(), (peak, it.batch_bytes())
    assert len({threads[key] for key in first}) > 1  # a batch is split between threads


def test_iterator_pads_last_batch(rec):
    it = FaceRecordIter(batch_size=8, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec), last_batch="pad")
    out = list(it)
    assert len(out) == 4 and out[-1].pad == 8 * 4 - IDS * PER
    assert out[-1].index[-out[-1].pad:].tolist() == out[0].index[:out[-1].pad].tolist()


def test_iterator_resizes_to_smaller_data_shape(rec):
    small = FaceRecordIter(batch_size=2, data_shape=(3, 28, 28), path_imgrec=str(rec))
    x = next(iter(small))
    _, _, images = insightface_read(rec)
    expected = cv2.resize(images[int(x.index[0])][1], (28, 28), interpolation=cv2.INTER_AREA)
    assert np.array_equal(x.data[0].asnumpy()[0], expected.transpose(2, 0, 1).astype(np.float32))
    with pytest.raises(VargfaceError, match="resize=False"):
        next(iter(FaceRecordIter(batch_size=2, data_shape=(3, 28, 28), path_imgrec=str(rec), resize=False)))


def test_iterator_takes_insightface_keywords_and_augments_deterministically(rec):
    kw = dict(batch_size=10, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec / "train.rec"), shuffle=True,
              rand_mirror=True, cutoff=20, color_jittering=2, mean=None, images_filter=PER)
    x, y = next(iter(FaceRecordIter(**kw))), next(iter(FaceRecordIter(**kw)))
    data = x.data[0].asnumpy()
    assert np.array_equal(data, y.data[0].asnumpy())
    assert data.dtype == np.float32 and data.min() >= 0 and data.max() <= 255
    plain = FaceRecordIter(batch_size=10, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec), shuffle=True)
    assert not np.array_equal(data, next(iter(plain)).data[0].asnumpy())
    assert (data == 128).all(axis=1).any()  # some cutoff square


def test_images_filter_drops_small_identities(rec):
    with pytest.raises(VargfaceError, match="fewer than one batch"):
        FaceRecordIter(batch_size=1, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec), images_filter=PER + 1)
    assert FaceRecordIter(batch_size=1, data_shape=(3, SIZE, SIZE), path_imgrec=str(rec),
                          images_filter=PER).num_samples == IDS * PER


def py2_pickle(bins, issame):
    """A pickle as Python 2 writes (bins, issame_list): protocol 2, images as 8-bit str (BINSTRING)."""
    out = b"\x80\x02]q\x00("
    for b in bins:
        out += b"T" + struct.pack("<i", len(b)) + b
    out += b"e]q\x01(" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e\x86q\x02."
    return out


def test_bin_compatibility(tmp_path, folders):
    jpegs = [open(p.path, "rb").read() for p in items_from_root(folders)[:4]]
    (tmp_path / "py2.bin").write_bytes(py2_pickle(jpegs, [True, False]))
    with pytest.raises(UnicodeDecodeError):  # why InsightFace's load_bin passes encoding='bytes'
        pickle.loads((tmp_path / "py2.bin").read_bytes())
    bins, issame = load_bin(tmp_path / "py2.bin")
    assert bins == jpegs and issame == [True, False]
    write_bin(tmp_path / "ours.bin", jpegs, [False, True])
    with open(tmp_path / "ours.bin", "rb") as f:
        theirs_bins, theirs_issame = pickle.load(f, encoding="bytes")  # InsightFace's load_bin
    assert list(theirs_bins) == jpegs and list(theirs_issame) == [False, True]
    assert mx.image.imdecode(theirs_bins[0]).shape == (SIZE, SIZE, 3)
    with pytest.raises(VargfaceError, match="2 images per pair"):
        (tmp_path / "bad.bin").write_bytes(pickle.dumps((jpegs[:3], [True, False])))
        load_bin(tmp_path / "bad.bin")


def test_pairs_are_balanced_and_distinct(tmp_path):
    groups = [[f"{g}/{i}" for i in range(3)] for g in range(5)]
    pairs = make_pairs(groups, 20, seed=2)
    assert pairs == make_pairs(groups, 20, seed=2)
    same = [p for p in pairs if p[2]]
    assert len(same) == 10 and len(pairs) == 20
    assert all(a.split("/")[0] == b.split("/")[0] and a != b for a, b, _ in same)
    assert all(a.split("/")[0] != b.split("/")[0] for a, b, s in pairs if not s)
    assert len({(a, b) for a, b, _ in same}) == 10
    with pytest.raises(VargfaceError, match="allow only 15"):
        make_pairs(groups, 40)
    assert make_synthetic_bin(tmp_path / "v.bin", 5, 12, size=SIZE) == 12
    bins, issame = load_bin(tmp_path / "v.bin")
    assert len(bins) == 24 and sum(issame) == 6


def test_synthetic_rec_and_bin_hold_out_identities(tmp_path):
    make_synthetic_rec(tmp_path / "train", 3, 2, size=SIZE, progress=False)
    make_synthetic_bin(tmp_path / "val.bin", 3, 4, size=SIZE, per_identity=2)
    _, _, images = insightface_read(tmp_path / "train")
    train = {v[2] for v in images.values()}
    assert not train & set(load_bin(tmp_path / "val.bin")[0])


def test_lst_landmarks_align_to_arcface_template(tmp_path):
    from vargface.data.images import ARCFACE_TEMPLATE, similarity_transform

    # a face with marks at the template points, moved by a known similarity into a larger photo
    img = np.zeros((112, 112, 3), np.uint8)
    for x, y in ARCFACE_TEMPLATE:
        cv2.circle(img, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
    m = cv2.getRotationMatrix2D((56, 56), 25, 1.6)
    m[:, 2] += (60, 40)
    photo = cv2.warpAffine(img, m, (300, 260))
    marks = cv2.transform(ARCFACE_TEMPLATE[None], m)[0]
    back = similarity_transform(marks, ARCFACE_TEMPLATE)
    assert np.allclose(back @ np.r_[marks.T, np.ones((1, 5))], ARCFACE_TEMPLATE.T, atol=1e-6)
    os.makedirs(tmp_path / "img")
    cv2.imwrite(str(tmp_path / "img" / "a.png"), photo)
    line = ["0", "img/a.png", "0", "0", "0", "300", "260"] + [f"{v}" for v in marks.T.reshape(-1)]
    (tmp_path / "a.lst").write_text("\t".join(line) + "\n")
    item = read_lst(tmp_path / "a.lst")[0]
    assert np.allclose(item.landmarks, marks)
    (tmp_path / "pre.lst").write_text("\t".join(["1"] + line[1:]) + "\n")  # aligned=1: taken as it is
    assert read_lst(tmp_path / "pre.lst")[0].landmarks is None
    write_lst(tmp_path / "b.lst", [item])
    assert np.allclose(read_lst(tmp_path / "b.lst")[0].landmarks, marks, atol=1e-3)
    to_rec(str(tmp_path / "a.lst"), str(tmp_path / "out"), progress=False)
    _, _, images = insightface_read(tmp_path / "out")
    aligned = images[1][1][..., 0]
    for x, y in ARCFACE_TEMPLATE:  # each mark is back where the template puts it
        assert aligned[int(round(y)), int(round(x))] > 128
    assert aligned.mean() < 40


def test_cli_lst_rec_pairs(folders, rec, tmp_path):
    from test_data_faults import vargface

    assert vargface("lst", folders, "--out", tmp_path / "all.lst").returncode == 0
    lines = (tmp_path / "all.lst").read_text().splitlines()
    assert len(lines) == IDS * PER and lines[0].split("\t")[0] == "1" and lines[-1].endswith(f"\t{IDS - 1}")
    result = vargface("rec", tmp_path / "all.lst", "--out", tmp_path / "from_lst", "--image-size", SIZE, "--workers", 1)
    assert result.returncode == 0 and f"{IDS * PER} images of {IDS} identities" in result.stdout
    assert (tmp_path / "from_lst" / "train.rec").read_bytes() == (rec / "train.rec").read_bytes()
    result = vargface("pairs", folders, "--out", tmp_path / "p.bin", "--pairs", 10, "--image-size", 28)
    assert result.returncode == 0 and "10 pairs" in result.stdout
    bins, issame = load_bin(tmp_path / "p.bin")
    assert sum(issame) == 5 and mx.image.imdecode(bins[0]).shape == (28, 28, 3)
