"""Training throughput of `vargface train` on CPU: samples/s (total and per device) for the full-size VarGFaceNet
and a tiny preset, on one and two contexts (cpu:0 and cpu:0,cpu:1 stand in for GPUs), kvstore device.

Each run trains on a synthetic .rec for two speedometer windows; the second window's speed is reported (the
first includes graph set-up). Run: OMP_NUM_THREADS=2 .venv/bin/python bench/train.py"""
import argparse
import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

CASES = [  # network preset, per-device batch, updates per window
    ("vargfacenet", 4, 3),
    ("vargfacenet_tiny", 16, 10),
    ("r18_tiny", 16, 10),
]


def measure(network, data_dir, ctx, per_batch, window, out):
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    config = generate_config(network, data_dir, "arcface", ctx=ctx, kvstore="device", per_batch_size=per_batch,
                             val_targets="", frequent=window, verbose=10 ** 6, max_steps=2 * window, end_epoch=100,
                             lr=0.01, lr_schedule="step", warmup_steps=0, ckpt=0, prefix=os.path.join(out, "m"))
    result = fit(config, log=lambda line: None)
    return [e for e in result["history"] if e["type"] == "train"][-1]["speed"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default=",".join(c[0] for c in CASES), help="presets to measure")
    args = parser.parse_args()
    from vargface.data.synth import make_synthetic_rec

    chosen = args.networks.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        make_synthetic_rec(data, 16, 16, size=112, seed=0, progress=False)
        for network, per_batch, window in (c for c in CASES if c[0] in chosen):
            for ctx in ("cpu:0", "cpu:0,cpu:1"):
                devices = len(ctx.split(","))
                speed = measure(network, data, ctx, per_batch, window, os.path.join(tmp, f"{network}-{devices}"))
                rows.append((network, ctx, per_batch, speed, speed / devices))
                print(f"  {network} on {ctx}: {speed:.2f} samples/s", flush=True)
    print(f"\ntraining throughput (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} cores)")
    print(f"{'network':<18} {'contexts':<12} {'batch/dev':>9} {'samples/s':>10} {'per device':>11}")
    for network, ctx, per_batch, speed, per_device in rows:
        print(f"{network:<18} {ctx:<12} {per_batch:>9} {speed:>10.2f} {per_device:>11.2f}")


if __name__ == "__main__":
    main()
