"""IJB and MegaFace-protocol evaluation at scale: `vargface ijb` on a synthetic IJB-C-layout fixture (crops/s of
the whole per-crop pipeline and of decoding + alignment alone, pair scores/s) and `vargface identify` with random
512-d distractors (time and peak memory; goal: under 10 minutes and 6 GB on 2 cores for 1M distractors and 3,500
probes).

The network is VarGFaceNet at random weights (speed does not depend on them). `identify` runs as its own process,
so its peak resident memory (memory-mapped distractor pages included) is its own.
The network's rate is measured on the first --feature-crops crops (on CPU it is the slow part and does not depend
on the fixture's size); templates and pair scores on all crops, from random features.
Usage: python bench/ijb.py [--crops 20000] [--pairs 1000000] [--distractors 1000000] [--probes 3500] [--work DIR]"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from vargface.openmp import configure  # noqa: E402

configure(one_cpu_device=True)  # as `vargface` itself does on CPU
import numpy as np  # noqa: E402

from vargface.data.parallel import default_workers  # noqa: E402

GOAL_SECONDS, GOAL_BYTES = 600, 6 * 2 ** 30
# `vargface ARGS` in a fresh process that prints its own peak resident set (VmHWM, KiB) as its last stderr line;
# ru_maxrss would also count the benchmark's own memory, which Linux carries over to a child across exec
MEASURED = ("import atexit, sys\n"
            "atexit.register(lambda: print([line.split()[1] for line in open('/proc/self/status') "
            "if line.startswith('VmHWM')][0], file=sys.stderr))\n"
            "from vargface.cli import main\n"
            "main(sys.argv[1:])\n")


def make_model(prefix):
    import mxnet as mx

    from vargface.symbols import get_symbol
    from vargface.train.checkpoint import random_params

    sym = get_symbol("vargfacenet", input_size=112)
    mx.model.save_checkpoint(prefix, 1, sym, *random_params(sym, 112))
    return f"{prefix},1"


def truncated(root, crops, into):
    """A copy of an IJB-C layout holding only its first ``crops`` crops (meta lines; the crop folder linked)."""
    os.makedirs(os.path.join(into, "meta"))
    os.symlink(os.path.abspath(os.path.join(root, "loose_crop")), os.path.join(into, "loose_crop"))
    for name in ("ijbc_name_5pts_score.txt", "ijbc_face_tid_mid.txt"):
        with open(os.path.join(root, "meta", name)) as source, open(os.path.join(into, "meta", name), "w") as out:
            out.writelines(line for _, line in zip(range(crops), source))
    return into


def bench_ijb(work, crops, pairs, feature_crops, batch, workers):
    from vargface.data.parallel import imap_ordered
    from vargface.data.synth_ijb import make_synthetic_ijb
    from vargface.eval import ijb
    from vargface.eval.embedder import FaceEmbedder
    from vargface.eval.templates import DEFAULT_MODE, pair_scores, parse_mode, template_features

    subjects = max(2, round(crops / 20))  # 5 templates of 2 x 2 frames on average each: about 20 crops a subject
    start = time.perf_counter()
    root = os.path.join(work, "IJBC")
    summary = make_synthetic_ijb(root, "IJBC", subjects, 5, pairs, workers=workers, progress=False)
    print(f"fixture: {summary['crops']} crops, {summary['templates']} templates, {summary['pairs']} pairs "
          f"({time.perf_counter() - start:.0f} s to render)", flush=True)
    images = ijb.Images(ijb.open_layout(root, "IJBC"))

    start = time.perf_counter()
    for _ in imap_ordered(lambda row: ijb._load_crop(row, images), range(len(images)), workers):
        pass
    align_rate = len(images) / (time.perf_counter() - start)

    # the network's part on the first crops only: on CPU it is the slow part, and its rate does not depend on N
    head = ijb.Images(ijb.open_layout(truncated(root, feature_crops, os.path.join(work, "head")), "IJBC"))
    embedder = FaceEmbedder(os.path.join(work, "vargfacenet"), 1, batch_size=batch)
    start = time.perf_counter()
    ijb.crop_features(embedder, head, os.path.join(work, "head.json"), workers=workers, progress=False)
    crop_rate = len(head) / (time.perf_counter() - start)

    raw = np.random.default_rng(0).standard_normal((len(images), 2 * embedder.embedding_size), dtype=np.float32)
    mode = parse_mode(DEFAULT_MODE)
    template_features(raw[:10], images.faceness[:10], images.templates[:10], images.medias[:10], mode)  # imports
    start = time.perf_counter()
    ids, feats = template_features(raw, images.faceness, images.templates, images.medias, mode)
    first, second, _ = ijb.read_pairs(images.layout, ids)
    scores = pair_scores(feats, first, second)
    pair_rate = len(scores) / (time.perf_counter() - start)
    return [("ijb: decode + align, %d threads" % workers, f"{align_rate:.0f} crops/s"),
            (f"ijb: features of {len(head)} crops, image + mirror (VarGFaceNet, batch {batch})",
             f"{crop_rate:.1f} crops/s"),
            (f"ijb: {len(images)} crops to templates, {len(scores)} pairs read and scored",
             f"{pair_rate:.3g} pairs/s")]


def bench_identify(work, distractors, probes, dim):
    rng = np.random.default_rng(0)
    path = os.path.join(work, "distractors.npy")
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(distractors, dim))
    for start in range(0, distractors, 65536):
        out[start:start + 65536] = rng.standard_normal((min(65536, distractors - start), dim), dtype=np.float32)
    out.flush()
    del out
    identities = max(2, probes // 35)  # FaceScrub-like: a few dozen images per identity
    labels = np.arange(probes) % identities
    centres = rng.standard_normal((identities, dim), dtype=np.float32)
    np.save(os.path.join(work, "probes.npy"), centres[labels] + 0.8 * rng.standard_normal((probes, dim),
                                                                                          dtype=np.float32))
    with open(os.path.join(work, "probes.txt"), "w") as handle:
        handle.write("".join(f"id{label}/{i}.jpg\n" for i, label in enumerate(labels)))
    arguments = ["identify", os.path.join(work, "probes.npy"), os.path.join(work, "probes.txt"), path, "--json"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURED, *arguments], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr)
    peak = int(done.stderr.strip().splitlines()[-1]) * 1024
    ok = seconds < GOAL_SECONDS and peak < GOAL_BYTES
    return [(f"identify: {probes} probes x {distractors} distractors ({dim}-d)",
             f"{seconds:.1f} s, peak {peak / 2 ** 30:.2f} GB (goal < 10 min, < 6 GB: {'OK' if ok else 'MISSED'})")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crops", type=int, default=20000, help="IJB fixture crops, about (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=1000000, help="template pairs (default: %(default)s)")
    parser.add_argument("--feature-crops", type=int, default=1000,
                        help="crops run through the network for its rate (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=64, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--distractors", type=int, default=1000000, help="(default: %(default)s)")
    parser.add_argument("--probes", type=int, default=3500, help="(default: %(default)s)")
    parser.add_argument("--dim", type=int, default=512, help="identify's feature size (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="decoding threads and rendering "
                        "processes (default: the usable cores)")
    parser.add_argument("--work", help="folder for the fixture and features (default: a temporary one, removed)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="vargface-bench-ijb-")
    os.makedirs(work, exist_ok=True)
    try:
        make_model(os.path.join(work, "vargfacenet"))
        rows = bench_ijb(work, args.crops, args.pairs, args.feature_crops, args.batch, args.workers)
        rows += bench_identify(work, args.distractors, args.probes, args.dim)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"| measure ({default_workers()} usable cores) | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
