"""Training speed on CPU of the faithful graph and of the fast training graph (vargface.symbols.fast), in one run.

For each network: images/s of a training step (forward, backward, SGD update; embedding + a 1000-class softmax
head) on the faithful and the fast graph, their ratio, and the achieved GFLOP/s (3x the LFR2019 forward FLOPs per
image: forward plus the two backward products) against a large float32 GEMM (mx.nd.dot) measured in the same run.
Run: OMP_NUM_THREADS=2 .venv/bin/python bench/train.py"""
import argparse
import os
import time

from vargface.openmp import configure  # noqa: E402

configure(one_cpu_device=True)  # as `vargface` itself does on CPU

CASES = [  # label, preset, options, batch, timed steps
    ("vargfacenet", "vargfacenet", {}, 16, 3),
    # the student of `vargface demo` and `experiment distill` (vargface/experiment.py PROFILES)
    ("demo_student", "vargfacenet", dict(multiplier=0.25, emb_size=64, input_size=48), 32, 10),
    ("pocketnet_s128", "pocketnet_s128", {}, 16, 3),
]


def gemm_gflops(n=2048, repeats=5):
    import mxnet as mx

    a, b = mx.nd.random.uniform(shape=(n, n)), mx.nd.random.uniform(shape=(n, n))
    mx.nd.dot(a, b).wait_to_read()
    start = time.perf_counter()
    for _ in range(repeats):
        mx.nd.dot(a, b).wait_to_read()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def images_per_second(preset, options, batch, steps, train_graph):
    """Training images/s of the trainer's own graph (`build_training_module`: the embedding, ArcFace over 1000
    classes) on one CPU."""
    import mxnet as mx
    import numpy as np

    from vargface.train.config import generate_config
    from vargface.train.trainer import build_training_module

    sizes = {key: options[key] for key in ("emb_size", "input_size") if key in options}
    config = generate_config(preset, "emore", "arcface", num_classes=1000, per_batch_size=batch,
                             train_graph=train_graph,
                             net_opts={k: v for k, v in options.items() if k not in sizes},
                             emb_size=sizes.get("emb_size", 512), image_size=sizes.get("input_size", 112))
    side = int(config.image_size[0])
    mx.random.seed(0)
    module = build_training_module(config, contexts=[mx.cpu()])[1]
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.01, "momentum": 0.9})
    data = mx.io.DataBatch([mx.nd.random.uniform(0, 255, (batch, 3, side, side))],
                           [mx.nd.array(np.arange(batch) % 1000)])
    for step in range(steps + 1):  # the first step sets up kernels and is not timed
        if step == 1:
            start = time.perf_counter()
        module.forward_backward(data)
        module.update()
        mx.nd.waitall()
    return batch * steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default=",".join(c[0] for c in CASES), help="cases to measure")
    args = parser.parse_args()
    from vargface.symbols import get_symbol, presets
    from vargface.symbols.flops import count

    peak = gemm_gflops()
    print(f"float32 GEMM (mx.nd.dot 2048x2048): {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for label, preset, options, batch, steps in (c for c in CASES if c[0] in args.networks.split(",")):
        if preset not in presets():
            print(f"  {label}: skipped, {preset!r} is not a known preset here", flush=True)
            continue
        faithful = get_symbol(preset, **options)
        side = int(faithful.attr_dict()["data"]["vargface_input_size"])
        flops = count(faithful, (1, 3, side, side))["flops"]
        speeds = {}
        for name in ("faithful", "fast"):
            speeds[name] = images_per_second(preset, options, batch, steps, name)
            print(f"  {label} {name}: {speeds[name]:.2f} images/s", flush=True)
        gflops = 3 * flops * speeds["fast"] / 1e9
        rows.append((label, batch, speeds["faithful"], speeds["fast"], gflops))
    print(f"\ntraining speed on CPU (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, {os.cpu_count()} cores)")
    print(f"{'network':<18} {'batch':>5} {'faithful':>9} {'fast':>9} {'ratio':>6} {'fast GFLOP/s':>13} {'of GEMM':>8}")
    for label, batch, slow, fast, gflops in rows:
        print(f"{label:<18} {batch:>5} {slow:>9.2f} {fast:>9.2f} {fast / slow:>6.2f} {gflops:>13.1f} "
              f"{gflops / peak:>8.1%}")


if __name__ == "__main__":
    main()
