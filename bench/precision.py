"""Mixed precision on CPU: bfloat16 (oneDNN) against float32 training, speed and accuracy, in one run.

Speed: the trainer's own step (`TrainStep` on `training_graph`, --dtype float32 and bfloat16) of each network,
float32 and bfloat16 steps alternating so that a shared machine's load hits both alike; images/s and their ratio.
Accuracy: the same short training of the demo's student (synthetic identities, same seed, same batches) in each
precision, for several seeds; the final training loss and the held-out verification accuracy (10-fold
Accuracy-Flip), per seed and their mean. One seed says little: 150 updates at this scale end 0.2 apart in held-out
accuracy when only the classifier's random start changes.
Run: OMP_NUM_THREADS=2 .venv/bin/python bench/precision.py"""
import argparse
import os
import sys
import tempfile
import time

from vargface.openmp import configure  # noqa: E402

configure(one_cpu_device=True)  # as `vargface` itself does on CPU

CASES = [  # label, preset, options, batch
    ("demo_student", "vargfacenet", dict(multiplier=0.25, emb_size=64, input_size=48), 32),
    ("vargfacenet", "vargfacenet", {}, 16),
    ("r50", "r50", {}, 8),
]
DTYPES = ("float32", "bfloat16")


def step_modules(preset, options, batch):
    """{dtype: (TrainStep, batch)} of the trainer's graph for ``preset`` on one CPU, in each precision."""
    import mxnet as mx
    import numpy as np

    from vargface.train.config import generate_config
    from vargface.train.precision import LossScale
    from vargface.train.step import TrainStep
    from vargface.train.trainer import build_training_module

    sizes = {key: options[key] for key in ("emb_size", "input_size") if key in options}
    side = sizes.get("input_size", 112)
    data = mx.io.DataBatch([mx.nd.random.uniform(0, 255, (batch, 3, side, side))],
                          [mx.nd.array(np.arange(batch) % 1000)])
    steps = {}
    for dtype in DTYPES:
        config = generate_config(preset, "emore", "arcface", num_classes=1000, per_batch_size=batch, dtype=dtype,
                                 net_opts={k: v for k, v in options.items() if k not in sizes},
                                 emb_size=sizes.get("emb_size", 512), image_size=side)
        mx.random.seed(0)
        module = build_training_module(config, contexts=[mx.cpu()])[1]
        module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.01, "momentum": 0.9,
                                                                 "multi_precision": dtype != "float32"})
        step = TrainStep(module, [mx.cpu()], [], mixed=dtype != "float32")
        step.start(LossScale() if dtype != "float32" else None)
        steps[dtype] = step
    return steps, data


def speeds(preset, options, batch, rounds):
    """{dtype: images/s}, the precisions' steps alternating, the first of each untimed."""
    import mxnet as mx

    steps, data = step_modules(preset, options, batch)
    seconds = dict.fromkeys(DTYPES, 0.0)
    for number in range(rounds + 1):
        for dtype, step in steps.items():
            start = time.perf_counter()
            step(step.stage(data), [], (0, number, number))
            mx.nd.waitall()
            if number:
                seconds[dtype] += time.perf_counter() - start
    return {dtype: batch * rounds / seconds[dtype] for dtype in DTYPES}


def accuracy(dtype, data_dir, prefix, steps, seed):
    """(last logged training loss, held-out accuracy, seconds) of the demo's student trained ``steps`` updates."""
    from vargface.experiment import PROFILES
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    demo = PROFILES["demo"]
    config = generate_config("vargfacenet", data_dir, "arcface", net_multiplier=demo["student_multiplier"],
                             emb_size=demo["emb_size"], image_size=demo["input_size"],
                             per_batch_size=demo["per_batch_size"], lr=demo["lr"], lr_schedule="cosine",
                             warmup_steps=demo["warmup"], lr_total_steps=steps, max_steps=steps, frequent=10,
                             verbose=steps, seed=seed, ctx="cpu", dtype=dtype, val_targets="heldout", prefix=prefix)
    start = time.perf_counter()
    result = fit(config, log=lambda line: None)
    train = [e for e in result["history"] if e["type"] == "train"]
    return train[-1]["loss"], result["best"]["heldout"]["accuracy"], time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default=",".join(c[0] for c in CASES), help="speed cases to measure")
    parser.add_argument("--rounds", type=int, default=4, help="timed steps per precision (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=150, help="updates of the accuracy runs (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the accuracy runs (default: %(default)s)")
    args = parser.parse_args()
    import numpy as np

    from vargface.data.synth import make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin

    rows = []
    for label, preset, options, batch in (c for c in CASES if c[0] in args.networks.split(",")):
        speed = speeds(preset, options, batch, args.rounds)
        rows.append((label, batch, speed))
        print(f"  {label}: " + ", ".join(f"{d} {v:.2f} images/s" for d, v in speed.items()), file=sys.stderr)
    results = {dtype: [] for dtype in DTYPES}  # [(loss, accuracy, seconds)] per seed
    if args.steps:
        from vargface.experiment import PROFILES

        demo = PROFILES["demo"]  # the demo's data set
        with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
            data = os.path.join(tmp, "data")
            make_synthetic_rec(data, demo["identities"], demo["per_identity"], size=demo["input_size"], seed=0,
                               difficulty=demo["difficulty"], progress=False)
            make_synthetic_bin(os.path.join(data, "heldout.bin"), demo["heldout_identities"], demo["pairs"],
                               size=demo["input_size"], seed=0, per_identity=demo["heldout_per_identity"],
                               difficulty=demo["difficulty"])
            for seed in range(args.seeds):
                for dtype in DTYPES:
                    run = accuracy(dtype, data, os.path.join(tmp, f"{dtype}-{seed}", "model"), args.steps, seed)
                    results[dtype].append(run)
                    print(f"  seed {seed} {dtype}: loss {run[0]:.4f}, held-out accuracy {run[1]:.4f}",
                          file=sys.stderr)
    print(f"\nbfloat16 against float32 training on CPU (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"{os.cpu_count()} cores, {args.rounds} alternating steps each)")
    print(f"{'network':<14} {'batch':>5} {'float32':>9} {'bfloat16':>9} {'ratio':>6}   (images/s)")
    for label, batch, speed in rows:
        print(f"{label:<14} {batch:>5} {speed['float32']:>9.2f} {speed['bfloat16']:>9.2f} "
              f"{speed['bfloat16'] / speed['float32']:>6.2f}")
    if args.steps:
        print(f"\nthe demo's student, {args.steps} updates of batch 32 at 48x48 (synthetic), seeds 0-{args.seeds - 1}:")
        print(f"{'dtype':<10} {'final loss':>10} {'held-out acc':>13} {'per seed':<24} {'seconds':>8}")
        for dtype, runs in results.items():
            losses, accs, seconds = (np.array(column) for column in zip(*runs))
            print(f"{dtype:<10} {losses.mean():>10.4f} {accs.mean():>13.4f} "
                  f"{' '.join(f'{a:.3f}' for a in accs):<24} {seconds.mean():>8.0f}")


if __name__ == "__main__":
    main()
