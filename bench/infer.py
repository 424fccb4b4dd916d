"""Inference speed on CPU: vargface's runner against ONNX Runtime on the model `vargface export` writes, in one run.

For each preset (same random weights for both engines): images/s at each batch, in rounds that alternate the two
engines (so a machine shared with other work slows both alike), the ratio vargface / ONNX Runtime of every round,
and at batch 1 the latency in ms per image. ONNX Runtime gets as many intra-op threads as OpenMP has (the core
count unless OMP_NUM_THREADS says otherwise). Medians over the rounds are printed; ratios are comparable between
runs, absolute images/s only on an idle machine.
Run: OMP_NUM_THREADS=2 .venv/bin/python bench/infer.py [--presets vargfacenet,r50]"""
import argparse
import os
import statistics
import sys
import tempfile
import time

from vargface.openmp import configure  # noqa: E402

configure(one_cpu_device=True)  # as `vargface` itself does on CPU
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # its log line would split a table row

import mxnet as mx  # noqa: E402  (after the thread settings)
import numpy as np  # noqa: E402

from vargface.eval.export import export_onnx  # noqa: E402
from vargface.eval.runner import InferenceRunner  # noqa: E402
from vargface.symbols import get_symbol, presets  # noqa: E402
from vargface.symbols.checkpoint import input_size_of  # noqa: E402
from vargface.train.checkpoint import random_params  # noqa: E402


def onnx_session(path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ["OMP_NUM_THREADS"])
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def images_per_second(run, batch, seconds):
    """Passes of ``run`` for ``seconds`` (at least two) -> images/s of the median pass."""
    times, start = [], time.perf_counter()
    while len(times) < 2 or time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return batch / statistics.median(times)


def engines(preset, batch, folder):
    """{'vargface': run, 'onnxruntime': run} on the same weights and input for one batch size."""
    sym = get_symbol(preset)
    size = input_size_of(sym)
    arg, aux = random_params(sym, size)
    path = os.path.join(folder, f"{preset}.onnx")
    if not os.path.exists(path):
        export_onnx(sym, arg, aux, path, input_size=size)
    data = np.random.RandomState(0).uniform(0, 255, (batch, 3, size, size)).astype(np.float32)
    runner = InferenceRunner(sym, arg, aux, ctx="cpu", batch_size=batch, input_size=size)
    session = onnx_session(path)
    runs = {"vargface": lambda: runner.forward(data),
            "onnxruntime": lambda: session.run(None, {session.get_inputs()[0].name: data})[0]}
    for run in runs.values():  # warm-up: memory planning, primitive creation
        run()
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(presets()), help="comma-separated presets (default: all)")
    parser.add_argument("--per-batch-sizes", default="1,32", help="comma-separated batches (default: 1,32)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (default: 3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per engine per round (default: 2)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.per_batch_sizes.split(",")]

    import onnxruntime

    print(f"inference on CPU, {os.environ['OMP_NUM_THREADS']} threads, MXNet {mx.__version__}, "
          f"ONNX Runtime {onnxruntime.__version__}; medians of {args.rounds} alternating rounds")
    header = (f"{'preset':<24}{'batch':>6}{'vargface img/s':>16}{'ORT img/s':>11}{'ratio':>7}{'(min-max)':>13}"
              f"{'vargface ms':>13}{'ORT ms':>8}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets.split(","):
            for batch in batches:
                runs = engines(preset, batch, folder)
                speeds = {name: [] for name in runs}
                for _ in range(args.rounds):
                    for name, run in runs.items():
                        speeds[name].append(images_per_second(run, batch, args.seconds))
                ratios = [v / o for v, o in zip(speeds["vargface"], speeds["onnxruntime"])]
                ours, theirs = statistics.median(speeds["vargface"]), statistics.median(speeds["onnxruntime"])
                latency = f"{1000 / ours:>13.1f}{1000 / theirs:>8.1f}" if batch == 1 else ""
                print(f"{preset:<24}{batch:>6}{ours:>16.1f}{theirs:>11.1f}{statistics.median(ratios):>7.2f}"
                      f"{f'({min(ratios):.2f}-{max(ratios):.2f})':>13}{latency}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
