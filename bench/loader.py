"""Loader speed: FaceRecordIter against the single-threaded loop of InsightFace's FaceImageIter
(MXIndexedRecordIO.read_idx + mx.image.imdecode + random mx.nd.flip + copy into the batch), on the same .rec,
112x112, batch 128; plus synthetic-face rendering speed. Prints a table. Target: loader ratio >= 2x, synth >= 500
images/s."""
import argparse
import os
import random
import tempfile
import time

from vargface.openmp import configure  # noqa: E402

configure(one_cpu_device=True)  # as `vargface` itself does on CPU

import mxnet as mx  # noqa: E402

from vargface.data.iterator import FaceRecordIter  # noqa: E402
from vargface.data.images import encode_jpeg  # noqa: E402
from vargface.data.synth import make_synthetic_rec, render  # noqa: E402


def faceimageiter_loop(data_dir, batch_size, batches):
    """What FaceImageIter.next does per batch, without its extra options."""
    rec = mx.recordio.MXIndexedRecordIO(os.path.join(data_dir, "train.idx"), os.path.join(data_dir, "train.rec"),
                                        "r")
    header, _ = mx.recordio.unpack(rec.read_idx(0))
    seq = list(range(1, int(header.label[0])))
    random.shuffle(seq)
    cur, done = 0, 0
    while done < batches:
        data = mx.nd.empty((batch_size, 3, 112, 112))
        label = mx.nd.empty((batch_size,))
        for i in range(batch_size):
            if cur >= len(seq):
                cur = 0
            h, s = mx.recordio.unpack(rec.read_idx(seq[cur]))
            cur += 1
            img = mx.image.imdecode(s)
            if random.randint(0, 1):
                img = mx.nd.flip(data=img, axis=1)
            data[i][:] = mx.nd.transpose(img.astype("float32"), axes=(2, 0, 1))
            label[i][:] = h.label
        data.wait_to_read()
        done += 1
    return done * batch_size


def ours(data_dir, batch_size, batches, workers):
    it = FaceRecordIter(batch_size=batch_size, data_shape=(3, 112, 112), path_imgrec=data_dir, shuffle=True,
                        rand_mirror=True, num_workers=workers)
    done = 0
    while done < batches:
        for batch in it:
            batch.data[0].wait_to_read()
            done += 1
            if done == batches:
                break
        it.reset()
    it.close()
    return done * batch_size


def timed(fn, *args):
    start = time.perf_counter()
    n = fn(*args)
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "rec")
        ids = max(1, args.images // 20)
        start = time.perf_counter()
        n, _ = make_synthetic_rec(data_dir, ids, 20, size=112, progress=False)
        synth = n / (time.perf_counter() - start)
        cpu_start = time.process_time()  # CPU time: a figure that holds on a busy shared machine too
        for i in range(200):
            encode_jpeg(render(0, i // 20, i % 20, 112))
        per_core = 200 / (time.process_time() - cpu_start)
        ours(data_dir, 128, 2, args.workers)  # warm the page cache and imports
        base = timed(faceimageiter_loop, data_dir, 128, args.batches)
        fast = timed(ours, data_dir, 128, args.batches, args.workers)
        single = timed(ours, data_dir, 128, args.batches, 1)
    print(f"{'what (112x112, batch 128)':44s} {'images/s':>10s}")
    print(f"{'FaceImageIter-style mx.image.imdecode loop':44s} {base:10.0f}")
    print(f"{'FaceRecordIter (1 decode thread)':44s} {single:10.0f}")
    print(f"{'FaceRecordIter (' + str(args.workers) + ' decode threads)':44s} {fast:10.0f}")
    print(f"{'ratio (target >= 2.0)':44s} {fast / base:10.2f}")
    print(f"{'synthetic faces -> .rec, wall clock (>= 500)':44s} {synth:10.0f}")
    print(f"{'synthetic faces per CPU-second (one core)':44s} {per_core:10.0f}")


if __name__ == "__main__":
    main()
