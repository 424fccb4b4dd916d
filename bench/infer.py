"""Forward speed of each network preset on CPU: images/s at batch 1 and 32 (inference mode), printed as a table.

Threads are set to the core count before MXNet loads (it otherwise used a single core here). Each case runs one
warm-up pass, then timed passes until --seconds have passed (at least one), so r100 at batch 32 stays short."""
import argparse
import os
import sys
import time

CORES = os.cpu_count() or 1
from vargface.openmp import configure  # noqa: E402

configure(cpu_only=True)  # as `vargface` itself does on CPU
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # its log line would split a table row

import mxnet as mx  # noqa: E402  (after the thread settings)
import numpy as np  # noqa: E402

from vargface.eval.runner import InferenceRunner  # noqa: E402
from vargface.symbols import get_symbol  # noqa: E402
from vargface.symbols.flops import count  # noqa: E402
from vargface.train.checkpoint import random_params  # noqa: E402


FAITHFUL = ("vargfacenet", "vargfacenet_insightface", "r50", "r100", "y1", "y2", "pocketnet_s128", "pocketnet_s256",
            "pocketnet_m128", "pocketnet_m256")


def images_per_second(sym, batch, size, seconds):
    """Forward speed through the project's inference runner (what verify/embed/the teacher run)."""
    runner = InferenceRunner(sym, *random_params(sym, size), batch_size=batch, input_size=size)
    data = np.random.RandomState(0).uniform(0, 255, (batch, 3, size, size)).astype(np.float32)

    def once():
        runner.forward(data)

    once()  # warm-up: memory planning and MKLDNN primitive creation
    passes, start = 0, time.perf_counter()
    while passes == 0 or time.perf_counter() - start < seconds:
        once()
        passes += 1
    return passes * batch / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(FAITHFUL), help="comma-separated presets (default: every "
                        "network mirroring an original graph)")
    parser.add_argument("--per-batch-sizes", default="1,32", help="comma-separated batches per device, one CPU device "
                        "(default: 1,32)")
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per case (default: 3)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.per_batch_sizes.split(",")]

    print(f"forward images/s on CPU, {os.environ['OMP_NUM_THREADS']} OMP threads, MXNet {mx.__version__}, "
          f"input {args.input_size}x{args.input_size}")
    header = f"{'preset':<26}{'GFLOPs':>8}" + "".join(f"{'batch ' + str(b):>12}" for b in batches)
    print(header)
    print("-" * len(header))
    for preset in args.presets.split(","):
        sym = get_symbol(preset, input_size=args.input_size)
        gflops = count(sym, (1, 3, args.input_size, args.input_size))["flops"] / 1e9
        cells = [images_per_second(sym, b, args.input_size, args.seconds) for b in batches]
        print(f"{preset:<26}{gflops:>8.2f}" + "".join(f"{c:>12.1f}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
