"""TAR@FAR over all pairs: pairs/s against this machine's own float32 GEMM rate, measured in the same run.

A pair costs 2*D flops in the matrix product, so the GEMM-bound rate is GEMM_FLOPS / (2*D) pairs/s; the target
is at least 50% of it (the rest is thresholding, the impostor buffer and the genuine mask).
Usage: python bench/tar_at_far.py [--n 30000] [--dim 512] [--tile 2048]"""
import argparse
import os
import time

from vargface.openmp import configure  # noqa: E402

configure(one_cpu_device=True)  # as `vargface` itself does on CPU
import numpy as np  # noqa: E402

from vargface.eval.tar_at_far import tar_at_far  # noqa: E402


def gemm_flops(tile, dim, repeats=5):
    """Best-of float32 np.dot rate on the same tile shape the evaluator uses."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((tile, dim), dtype=np.float32)
    b = rng.standard_normal((tile, dim), dtype=np.float32)
    out = np.empty((tile, tile), np.float32)
    np.dot(a, b.T, out=out)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.dot(a, b.T, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * tile * tile * dim / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=30000, help="images (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=512, help="feature size (default: %(default)s)")
    parser.add_argument("--tile", type=int, default=2048, help="block side (default: %(default)s)")
    parser.add_argument("--far", default="1e-8,1e-6,1e-4")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.n // 10, args.n)
    features = rng.standard_normal((args.n, args.dim), dtype=np.float32) + 0.25 * rng.standard_normal(
        (args.n // 10, args.dim), dtype=np.float32)[labels]
    fars = [float(f) for f in args.far.split(",")]
    flops_before = gemm_flops(args.tile, args.dim)
    start = time.perf_counter()
    result = tar_at_far(features, labels, fars, tile=args.tile, progress=False)
    seconds = time.perf_counter() - start
    flops = max(flops_before, gemm_flops(args.tile, args.dim))
    pairs = args.n * (args.n - 1) // 2
    rate, bound = pairs / seconds, flops / (2 * args.dim)
    print("| N | D | pairs | seconds | pairs/s | GEMM GFLOP/s | GEMM-bound pairs/s | efficiency | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.n} | {args.dim} | {pairs:.3g} | {seconds:.2f} | {rate:.3g} | {flops / 1e9:.1f} | {bound:.3g} | "
          f"{100 * rate / bound:.0f}% | >= 50% {'OK' if rate >= 0.5 * bound else 'MISSED'} |")
    print("TAR: " + ", ".join(f"{r['far']:g}: {r['tar']:.4f}" for r in result["results"]))


if __name__ == "__main__":
    main()
