"""Step time and peak memory of the classifier at 100K, 1M and 2M classes on CPU: the full margin softmax on one
device against the sharded classifier (train/partial_fc.py) at sample ratio 1 and 0.1, in one run.

Every case trains the head alone (ArcFace on random embeddings, SGD with momentum) on the same global batch, in its
own process, its OpenMP threads set up as `vargface` sets them for that many CPU devices (vargface.openmp): the
full head is the trainer's Module on one cpu context; the sharded one splits the classes over 2 (and 4) cpu
contexts. The defaults, 128-d embeddings and a global batch of 64, keep the full head at 2M classes within a shared
23 GB machine (at 512-d it needs about 19 GB); the figures scale with --emb-size and --batch. Reported: seconds per
step (forward, backward, update), its speed-up over the full head, the peak memory per device as MXNet's memory
profiler counts it on each context (weights, momentum, gradients, logits and temporaries), the estimate the
trainer prints at start, and the process's peak RSS. A case whose estimate exceeds the available memory, or
--memory-limit (all its devices together), is reported as refused, not run.
Run: OMP_NUM_THREADS=2 .venv/bin/python bench/partial_fc.py [--classes 100000,1000000,2000000] [--memory-limit GB]"""
import argparse
import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from vargface.openmp import configure

GB = 1024 ** 3
# name, devices, sample ratio (None: the full head on one device)
CASES = [("full softmax", 1, None), ("fc-parallel r=1", 2, 1.0), ("fc-parallel r=0.1", 2, 0.1),
         ("fc-parallel r=1", 4, 1.0)]


def run_case(classes, devices, ratio, emb_size, batch, steps):
    """Measure one case in this process; returns a dict of its figures."""
    import mxnet as mx
    import numpy as np

    from vargface.train.config import generate_config
    from vargface.train.losses import loss_head
    from vargface.train.partial_fc import PartialFC

    config = generate_config("r18_tiny", "emore", "arcface", num_classes=classes, emb_size=emb_size, seed=1)
    contexts = [mx.cpu(i) for i in range(devices)]
    rng = np.random.RandomState(0)
    labels = [rng.randint(0, classes, size=batch) for _ in range(steps + 1)]
    embeddings = [rng.randn(batch, emb_size).astype(np.float32) for _ in range(steps + 1)]
    # The profiler's own trace file: never /dev/null, which MXNet (as root) would replace with a regular file.
    trace = os.path.join(tempfile.mkdtemp(prefix="vargface-bench-"), "profile.json")
    atexit.register(shutil.rmtree, os.path.dirname(trace), ignore_errors=True)
    mx.profiler.set_config(profile_memory=True, profile_symbolic=False, profile_imperative=False,
                           profile_api=False, aggregate_stats=True, filename=trace)
    mx.profiler.set_state("run")  # the first step, with the set-up, is profiled and not timed
    if ratio is None:
        module = mx.mod.Module(loss_head(mx.sym.Variable("data"), config), context=contexts)
        module.bind(data_shapes=[("data", (batch, emb_size))], label_shapes=[("softmax_label", (batch,))])
        module.init_params(mx.init.Normal(0.01))
        module.init_optimizer(optimizer="sgd", optimizer_params=dict(learning_rate=0.1, momentum=0.9, wd=5e-4))

        def step(i):
            module.forward_backward(mx.io.DataBatch([mx.nd.array(embeddings[i])], [mx.nd.array(labels[i])]))
            module.update()
    else:
        engine = PartialFC(config, contexts, sample_ratio=ratio)
        engine.init_weights()
        per_device = batch // devices

        def step(i):
            parts = [mx.nd.array(embeddings[i][d * per_device:(d + 1) * per_device], ctx=c)
                     for d, c in enumerate(contexts)]
            engine.forward_backward(parts, labels[i], i + 1)
            engine.update(0.1)
    step(0)
    mx.nd.waitall()
    mx.profiler.set_state("stop")
    peaks = profiled_peaks(mx.profiler.dumps(reset=True))
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
        mx.nd.waitall()
    seconds = (time.perf_counter() - start) / steps
    return {"step_seconds": seconds, "device_peak_gb": max(peaks.values()) / GB, "devices_profiled": len(peaks),
            "rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB}


def profiled_peaks(text):
    """{device: peak bytes} from the 'Device Storage' table of MXNet's aggregate profile (which names the
    contexts cpu(2) and cpu(3) 'cpu shared' and 'cpu pinned')."""
    peaks = {}
    for line in text.splitlines():
        if line.strip().startswith("Memory: "):
            words = line.split()
            peaks[" ".join(words[1:-4])] = float(words[-2]) * 1024  # Total Count, Min, Max Use (kB), Avg Use
    return peaks


def estimate(classes, devices, ratio, emb_size, batch):
    from vargface.train.partial_fc import fc7_memory

    return fc7_memory(classes, emb_size, batch // devices, devices, sample_ratio=ratio or 1.0,
                      parallel=ratio is not None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", default="100000,1000000,2000000", help="class counts, comma-separated")
    parser.add_argument("--emb-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="global batch (split over the devices)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (after one untimed)")
    parser.add_argument("--memory-limit", type=float, default=0,
                        help="GB a case may take on all its devices together, by the estimate (0: what is available)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: measure one case, print JSON
    args = parser.parse_args()
    if args.case:
        classes, devices, ratio = json.loads(args.case)
        configure(one_cpu_device=devices == 1)  # as `vargface train --ctx` with these devices would
        print(json.dumps(run_case(classes, devices, ratio, args.emb_size, args.batch, args.steps)))
        return
    configure(one_cpu_device=False)  # the threads; each case's process chooses its wait policy (above)
    from vargface.errors import VargfaceError
    from vargface.train.partial_fc import check_fits

    import mxnet as mx

    rows = []
    for classes in (int(c) for c in args.classes.split(",")):
        full = None
        for name, devices, ratio in CASES:
            memory = estimate(classes, devices, ratio, args.emb_size, args.batch)
            row = {"classes": classes, "case": name, "devices": devices, "estimate_gb": memory.total / GB}
            try:
                check_fits(memory, [mx.cpu(i) for i in range(devices)], what=f"{name} at {classes} classes")
                if args.memory_limit and memory.total * devices > args.memory_limit * GB:
                    raise VargfaceError(f"over --memory-limit {args.memory_limit:g} GB")
            except VargfaceError as refused:
                row["refused"] = str(refused)
            else:
                case = json.dumps([classes, devices, ratio])
                done = subprocess.run([sys.executable, __file__, "--case", case, "--emb-size", str(args.emb_size),
                                       "--batch", str(args.batch), "--steps", str(args.steps)],
                                      capture_output=True, text=True)
                if done.returncode:
                    row["refused"] = f"failed: {done.stderr.strip().splitlines()[-1:]}"
                else:
                    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                    full = row["step_seconds"] if ratio is None else full
                    if full:
                        row["speedup"] = full / row["step_seconds"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nclassifier step on CPU (ArcFace, {args.emb_size}-d, global batch {args.batch}, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} cores)")
    print(f"{'classes':>9} {'case':<18} {'devices':>7} {'s/step':>8} {'speed-up':>8} {'peak/device':>11} "
          f"{'estimate':>9} {'RSS peak':>9}")
    for r in rows:
        head = f"{r['classes']:>9} {r['case']:<18} {r['devices']:>7} "
        if "refused" in r:
            print(head + f"refused: estimate {r['estimate_gb']:.2f} GB per device ({r['refused']})")
            continue
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        print(head + f"{r['step_seconds']:>8.2f} {speedup:>8} {r['device_peak_gb']:>9.2f}GB "
              f"{r['estimate_gb']:>7.2f}GB {r['rss_peak_gb']:>7.2f}GB")


if __name__ == "__main__":
    main()
