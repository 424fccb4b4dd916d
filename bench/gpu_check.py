"""GPU check: what a GPU machine must get right before a long run (docs/environment.md#gpus).

1. PReLU slope gradients on the first device: MXNet's own kernel and the rewrite (`--train-graph fast`) against
   finite differences. `--train-graph auto` trains the rewrite unless MXNet's kernel is right there.
2. One training step on two devices against the same step on one: the gradient summed by the KVStore and the
   weights after the update must equal what one device computes from the two half batches.
3. The data loader's images/s against the training step's: the loader must outpace the devices.

Run on the GPUs to train on (any `--ctx` works, e.g. `cpu:0,cpu:1` to try it here):
    .venv/bin/python bench/gpu_check.py --ctx gpu:0,1 --network vargfacenet --per-batch-size 64
Exit code 0 when every check passes, 1 otherwise."""
import argparse
import os
import sys
import tempfile
import time

from vargface.openmp import configure  # noqa: E402

configure(one_cpu_device=False)  # as `vargface` does for GPUs: no spinning OpenMP threads beside the loader


def prelu_check(ctx):
    """(MXNet's kernel right, the rewrite right, ratios of each to the finite difference)."""
    import numpy as np

    from vargface.symbols.fast import prelu_slope_gradients

    results = []
    for rewritten in (False, True):
        backprop, finite, _ = prelu_slope_gradients(ctx, rewritten=rewritten)
        results.append((bool(np.allclose(backprop, finite, rtol=1e-3, atol=1e-3)), backprop / finite))
    return results


def _config(network, per_batch_size, side, classes=1000, **more):
    from vargface.train.config import generate_config

    return generate_config(network, "emore", "arcface", num_classes=classes, per_batch_size=per_batch_size,
                           image_size=side, **more)


def _trained(module, contexts, batches, names):
    """Weights after one step of ``module`` on ``contexts`` fed ``batches`` (one per device, as staged)."""
    import mxnet as mx

    from vargface.train.step import TrainStep

    kv = mx.kv.create("device") if len(contexts) > 1 else None
    step = TrainStep(module, contexts, [], kvstore=kv, rescale_grad=1.0 / len(contexts))
    step.start()
    batch = mx.io.DataBatch([mx.nd.concat(*[b.data[0] for b in batches], dim=0)],
                            [mx.nd.concat(*[b.label[0] for b in batches], dim=0)])
    step(step.stage(batch), [], (0, 0, 0))
    arg, _ = module.get_params()
    return {name: arg[name].asnumpy() for name in names}


def two_device_step(contexts, network, per_batch_size, side):
    """Largest relative difference between the weights after one step on ``contexts[:2]`` (the KVStore summing the
    two halves) and after one step on ``contexts[0]`` that sums the two halves' gradients itself (dropout off)."""
    import mxnet as mx
    import numpy as np

    from vargface.train.trainer import build_training_module

    from vargface.symbols.registry import get_preset

    # Dropout draws other masks on each device and run: off, so both sides compute the same function
    deterministic = {"dropout": 0.0} if "dropout" in get_preset(network).defaults else {}
    config = _config(network, per_batch_size, side, classes=100, net_opts=deterministic)
    rng = np.random.RandomState(0)
    halves = [mx.io.DataBatch([mx.nd.array(rng.uniform(0, 255, (per_batch_size, 3, side, side)))],
                              [mx.nd.array(rng.randint(0, 100, per_batch_size))]) for _ in range(2)]
    optimizer = {"learning_rate": 0.1, "momentum": 0.9, "wd": 5e-4}
    mx.random.seed(0)
    graph, two = build_training_module(config, contexts=contexts[:2])
    arg, aux = ({k: v.copy() for k, v in params.items()} for params in two.get_params())  # the Module's own change
    names = [n for n in graph.emb_sym.list_arguments() if n != "data"] + ["fc7_weight"]
    two.init_optimizer(kvstore=None, optimizer="sgd", optimizer_params=dict(optimizer, rescale_grad=0.5))
    after_two = _trained(two, contexts[:2], halves, names)

    one = build_training_module(config, contexts=contexts[:1])[1]
    one.set_params(arg, aux)
    one.init_optimizer(kvstore=None, optimizer="sgd", optimizer_params=dict(optimizer, rescale_grad=0.5))
    grads = []
    for half in halves:  # the two halves' gradients, summed as the KVStore sums the devices'
        one.forward_backward(half)
        grads.append([g[0].copy() for g in one._exec_group.grad_arrays])
    for total, first, second in zip(one._exec_group.grad_arrays, *grads):
        total[0][:] = first + second
    one.update()
    after_one = {name: value.asnumpy() for name, value in one.get_params()[0].items() if name in names}
    return max(float(np.abs(after_two[n] - after_one[n]).max() / (np.abs(after_one[n]).max() + 1e-12))
               for n in names)


def loader_and_step(contexts, network, per_batch_size, side, steps, workers):
    """(loader images/s, training images/s) at the global batch of ``contexts``."""
    import mxnet as mx
    import numpy as np

    from vargface.data.iterator import FaceRecordIter
    from vargface.data.synth import make_synthetic_rec
    from vargface.train.step import TrainStep
    from vargface.train.trainer import build_training_module

    batch = per_batch_size * len(contexts)
    gpus = any(c.device_type == "gpu" for c in contexts)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        make_synthetic_rec(os.path.join(tmp, "rec"), max(1, 4 * batch // 20), 20, size=side, seed=0, progress=False)
        it = FaceRecordIter(batch, (3, side, side), os.path.join(tmp, "rec"), shuffle=True, rand_mirror=True,
                            num_workers=workers, pinned=gpus)
        next(iter(it))
        start, seen = time.perf_counter(), 0
        while seen < steps * batch:
            for b in it:
                b.data[0].wait_to_read()
                seen += batch
            it.reset()
        loader = seen / (time.perf_counter() - start)
        it.close()
    config = _config(network, per_batch_size, side)
    module = build_training_module(config, contexts=contexts)[1]
    module.init_optimizer(kvstore=None, optimizer="sgd", optimizer_params={"learning_rate": 0.01})
    step = TrainStep(module, contexts, [], kvstore=mx.kv.create("device") if len(contexts) > 1 else None,
                     rescale_grad=1.0 / len(contexts))
    step.start()
    data = mx.io.DataBatch([mx.nd.random.uniform(0, 255, (batch, 3, side, side))],
                           [mx.nd.array(np.arange(batch) % 1000)])
    for k in range(steps + 1):
        if k == 1:
            mx.nd.waitall()
            start = time.perf_counter()
        step(step.stage(data), [], (0, k, k))
    mx.nd.waitall()
    return loader, steps * batch / (time.perf_counter() - start)


def main():
    from vargface import options
    from vargface.context import parse_ctx

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    options.add_ctx(parser, default="gpu:0,1", help="devices to check (two or more for the two-device step)")
    parser.add_argument("--network", default="vargfacenet", help="network preset (default: %(default)s)")
    options.add_per_batch_size(parser, 64)
    parser.add_argument("--image-size", type=options.positive_int, default=112, metavar="N",
                        help="input side (default: %(default)s)")
    parser.add_argument("--steps", type=options.positive_int, default=20, help="timed steps (default: %(default)s)")
    options.add_workers(parser)
    args = parser.parse_args()
    contexts = parse_ctx(args.ctx)
    side, failed = args.image_size, []

    (kernel_right, kernel_ratio), (rewrite_right, rewrite_ratio) = prelu_check(contexts[0])
    print(f"1. PReLU slope gradient on {contexts[0]} / finite differences:")
    print(f"   MXNet's PReLU:  {'right' if kernel_right else 'WRONG'} (ratios {kernel_ratio.round(3).tolist()})")
    print(f"   the rewrite:    {'right' if rewrite_right else 'WRONG'} (ratios {rewrite_ratio.round(3).tolist()})")
    print(f"   --train-graph auto trains {'the network' + chr(39) + 's own PReLU' if kernel_right else 'the rewrite'}")
    if not rewrite_right:
        failed.append("the rewrite's slope gradient")

    if len(contexts) >= 2:
        difference = two_device_step(contexts, args.network, max(2, args.per_batch_size // 8), side)
        ok = difference < 1e-4
        print(f"2. one step on {contexts[0]} and {contexts[1]} against one device: largest relative weight "
              f"difference {difference:.2e} ({'ok' if ok else 'TOO LARGE'}, bound 1e-4)")
        if not ok:
            failed.append("the two-device step")
    else:
        print("2. one device given: the two-device step is not checked")

    loader, training = loader_and_step(contexts, args.network, args.per_batch_size, side, args.steps, args.workers)
    ok = loader >= training
    print(f"3. data loader {loader:.0f} images/s, training {training:.0f} images/s on {len(contexts)} device(s) "
          f"({'the loader keeps up' if ok else 'the LOADER IS THE BOTTLENECK: more cores or --workers'})")
    if not ok:
        failed.append("the loader's speed")
    print("all checks passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
