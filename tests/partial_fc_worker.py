"""One dist_sync worker of tests/test_partial_fc.py: for each loss named on the command line, a backbone (one
FullyConnected layer) trained data-parallel on cpu:0,cpu:1 of each worker (its gradients summed through the
kvstore, its optimizer on the workers), the classifier sharded over both workers' devices (4 shards), three SGD
steps; each worker compares its losses,
backbone and shards with the full head trained on the same global batch in this process on four cpu contexts, and
prints the largest difference as JSON. (MXNet's own step schedule, not gluoncv's: the import stays short.)"""
import json
import sys

import mxnet as mx
import numpy as np

from vargface.train.config import generate_config
from vargface.train.losses import loss_head
from vargface.train.partial_fc import PartialFC
from vargface.train.workers import WorkerGroup

PER_DEVICE, D, C, IN = 3, 6, 13, 5


def main(losses):
    kv = mx.kv.create("dist_sync")
    for loss in losses:
        check(kv, loss)


def check(kv, loss):
    rank, workers = kv.rank, kv.num_workers
    contexts = [mx.cpu(0), mx.cpu(1)]
    config = generate_config("r18_tiny", "emore", loss, num_classes=C, emb_size=D, loss_s=8.0, lr=0.1, mom=0.9,
                             wd=5e-4, fc7_lr_mult=2.0, fc7_wd_mult=0.5, lr_schedule="step", lr_steps=[2],
                             lr_factor=0.5, seed=3)
    total = PER_DEVICE * len(contexts) * workers
    mine = slice(rank * PER_DEVICE * len(contexts), (rank + 1) * PER_DEVICE * len(contexts))
    rng = np.random.RandomState(11)
    init = {"fc1_weight": rng.randn(D, IN).astype(np.float32), "fc1_bias": rng.randn(D).astype(np.float32),
            "fc7_weight": rng.randn(C, D).astype(np.float32)}
    steps = [(rng.randn(total, IN).astype(np.float32) * 3, rng.randint(0, C, size=total)) for _ in range(3)]
    optimizer = dict(learning_rate=config.lr, momentum=config.mom, wd=config.wd)

    # Each loss trains its own arrays: a kvstore key is created once.
    embedding = mx.sym.FullyConnected(mx.sym.Variable("data"), num_hidden=D, name=f"{loss}_fc1")
    init = {k.replace("fc1", f"{loss}_fc1"): v for k, v in init.items()}
    everyone = [mx.cpu(i) for i in range(len(contexts) * workers)]
    reference = mx.mod.Module(loss_head(embedding, config), context=everyone)
    reference.bind(data_shapes=[("data", (total, IN))], label_shapes=[("softmax_label", (total,))])
    reference.init_params(arg_params={k: mx.nd.array(v) for k, v in init.items()})
    reference.init_optimizer(kvstore="device", optimizer="sgd", optimizer_params=dict(
        optimizer, rescale_grad=1 / len(everyone), lr_scheduler=schedule(config)))

    backbone = mx.mod.Module(embedding, label_names=None, context=contexts)
    backbone.bind(data_shapes=[("data", (PER_DEVICE * len(contexts), IN))])
    backbone.init_params(arg_params={k: mx.nd.array(v) for k, v in init.items() if "fc1" in k})
    steps_schedule = schedule(config)
    # as the trainer's step: the kvstore (whose servers only sum) sums the gradients, each worker updates
    backbone.init_optimizer(kvstore=None, optimizer="sgd", optimizer_params=dict(
        optimizer, rescale_grad=1 / len(everyone), lr_scheduler=steps_schedule))
    group = backbone._exec_group
    for name, weights in zip(group.param_names, group.param_arrays):
        kv.init(name, weights[0])
    engine = PartialFC(config, contexts, sample_ratio=1.0, group=WorkerGroup(kv))
    engine.set_weights(init["fc7_weight"])

    worst = 0.0
    for update, (x, label) in enumerate(steps, start=1):
        reference.forward_backward(mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(label)]))
        prob = reference.get_outputs()[0].asnumpy()
        reference.update()
        backbone.forward(mx.io.DataBatch([mx.nd.array(x[mine])]), is_train=True)
        result = engine.forward_backward(backbone.get_outputs(merge_multi_context=False)[0], label[mine], update)
        backbone.backward(out_grads=[mx.nd.concat(*[g.as_in_context(contexts[0]) for g in result.grads], dim=0)])
        for name, grads in zip(group.param_names, group.grad_arrays):
            kv.pushpull(name, grads, out=grads)
        backbone.update()
        engine.update(steps_schedule(update))
        ref_loss = -np.mean(np.log(prob[np.arange(total), label]))
        worst = max(worst, abs(float(result.loss.asscalar()) - ref_loss))
    ref, _ = reference.get_params()
    params, _ = backbone.get_params()
    for name in (f"{loss}_fc1_weight", f"{loss}_fc1_bias"):
        worst = max(worst, float(np.abs(params[name].asnumpy() - ref[name].asnumpy()).max()))
    full = ref["fc7_weight"].asnumpy()
    for shard, weight in zip(engine.shard_ids, engine.weights):
        start, rows = engine.layout.rows(shard)
        worst = max(worst, float(np.abs(weight.asnumpy() - full[start:start + rows]).max()))
    moved = float(np.abs(full - init["fc7_weight"]).max())
    print(json.dumps({"loss": loss, "rank": rank, "shards": engine.shard_ids, "max_difference": worst, "moved": moved}),
          flush=True)


def schedule(config):
    return mx.lr_scheduler.MultiFactorScheduler(step=list(config.lr_steps), factor=config.lr_factor,
                                                base_lr=config.lr)


if __name__ == "__main__":
    main(sys.argv[1:])
