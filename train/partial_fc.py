"""The sharded, sampled margin softmax (Partial FC, docs/partial_fc.md): the classifier's C class centres split in
contiguous ranges of ceil(C/k) over k shards, one per training device of every worker; the backbone stays
data-parallel and gets the gradient of its embeddings from here (``Module.backward(out_grads)``).

Per step every shard sees the global batch (the devices' embeddings, all-gathered across workers), samples every
centre of its range whose class is in the batch plus uniformly drawn negatives up to ``sample_ratio`` of its range
(seeded by (seed, update, shard), so a resumed run draws the same centres), and computes the margin logits against
those centres with the full head's own margin function (`vargface.train.losses.margin_from_cosines`). The softmax
stays exact through a global maximum and sum over the shards; at ``sample_ratio`` 1 the loss, the gradients and the
updates equal the full head's. Only the sampled centres and their momentum are read and updated (SGD with
momentum and weight decay, ``fc7_lr_mult``/``fc7_wd_mult``, the trainer's learning rate).

Across workers the sums and gathers go through the run's dist kvstore (`vargface.train.workers`), whose servers
must only sum: the backbone's Module then updates on the workers."""
import os
from dataclasses import dataclass

import numpy as np

from vargface.errors import VargfaceError

# Labels and sampled positions travel as float32 inside MXNet's pick (and ArcNegFace's one_hot): exact below 2**24.
MAX_SHARD_ROWS = 2 ** 24


@dataclass(frozen=True)
class ShardLayout:
    """How the centres are split: ``devices`` shards on each of ``workers`` workers, shard g = rank·devices + d
    holding classes [g·size, min(C, (g+1)·size)) with size = ceil(C / shards)."""

    num_classes: int
    emb_size: int
    devices: int
    workers: int = 1

    def __post_init__(self):
        if self.num_classes < self.shards:
            raise VargfaceError(f"--fc-parallel: {self.num_classes} classes cannot fill {self.shards} shards "
                                f"({self.workers} worker(s) x {self.devices} device(s))")
        if self.size >= MAX_SHARD_ROWS:
            raise VargfaceError(f"--fc-parallel: {self.size} classes per shard; more devices or workers are needed "
                                f"to keep a shard under {MAX_SHARD_ROWS}")

    @property
    def shards(self):
        return self.devices * self.workers

    @property
    def size(self):
        return -(-self.num_classes // self.shards)

    def rows(self, shard):
        """(first class, number of classes) of ``shard``; the last shard may be shorter."""
        start = shard * self.size
        return start, max(0, min(self.size, self.num_classes - start))

    def describe(self):
        return {"num_classes": self.num_classes, "emb_size": self.emb_size, "devices": self.devices,
                "workers": self.workers}

    def __str__(self):
        return (f"{self.shards} shard(s) of {self.size} classes ({self.workers} worker(s) x {self.devices} "
                f"device(s)), {self.num_classes} classes of {self.emb_size} dimensions")


def sample_count(positives, rows, ratio):
    """How many of a shard's ``rows`` a step samples when ``positives`` distinct ones are in the batch."""
    return min(rows, max(positives, int(round(ratio * rows))))


def sample_rows(positives, rows, ratio, seed, update, shard):
    """Sorted rows of one shard for one step: every row in ``positives`` plus negatives drawn uniformly without
    replacement from the other rows, `sample_count` rows in all. The same (seed, update, shard) draws the same
    rows."""
    positives = np.unique(np.asarray(positives, dtype=np.int64))
    count = sample_count(len(positives), rows, ratio)
    if count == rows:
        return np.arange(rows, dtype=np.int64)
    rng = np.random.default_rng([abs(int(seed)), int(update), int(shard)])
    drawn = rng.choice(rows - len(positives), count - len(positives), replace=False).astype(np.int64)
    # The k-th row that is not a positive is k plus the number of positives at or below it.
    drawn += np.searchsorted(positives - np.arange(len(positives)), drawn, side="right")
    return np.sort(np.concatenate([positives, drawn]))


@dataclass
class StepResult:
    """One step's outcome; the arrays stay on the devices (no host synchronisation here).

    ``grads``: per local device, the gradient of its (b, D) embeddings, scaled as that device's own full head
    would give it (the mean over its own batch), so the trainer's ``rescale_grad`` = 1 / (devices·workers)
    averages it as before. ``loss`` (label-smoothed with ``label_smoothing``), ``accuracy``: means over the
    global batch, against the sampled centres only (the full classifier's when ``sample_ratio`` is 1).
    ``extras``: {metric name: value (1,)} of the terms on the centres (``regularface``)."""

    grads: list
    loss: object
    accuracy: object
    extras: dict


def logit_gradient(prob, where, on, off, scale):
    """d(loss)/d(logits) of the softmax cross-entropy, times ``scale``: the one place it is formed, over one
    shard's sampled centres. The target is ``on`` at the (row, column) pairs ``where`` ((2, n) NDArray, the rows
    whose class is on this shard, or None) and ``off`` elsewhere: the one-hot label (1, 0) or its label-smoothed
    form. Written over ``prob`` (an (N, S) buffer less at the peak) and without an (N, S) target array."""
    if off:
        prob -= off
    if where is not None:
        _scatter(prob, where, _gather(prob, where) - (on - off))
    prob *= scale
    return prob


def _gather(array, where):
    """The elements of a 2-d ``array`` at the (row, column) pairs ``where`` ((2, n) int32 NDArray)."""
    import mxnet as mx

    return mx.nd.gather_nd(array, where)


def _scatter(array, where, values):
    """Write ``values`` at the (row, column) pairs ``where`` of ``array``, in place (the operator behind
    NDArray's advanced-index assignment, without its per-call index conversion)."""
    import mxnet as mx

    mx.nd._internal._scatter_set_nd(lhs=array, rhs=values, indices=where, shape=array.shape, out=array)


class PartialFC:
    """The sharded classifier of one worker: a shard of centres and its momentum on each of ``contexts``.

    ``config`` supplies num_classes, emb_size, the loss (loss_name, loss_s, loss_m1..3, loss_alpha, loss_sigma),
    fc7_init_sigma, fc7_lr_mult, fc7_wd_mult, mom, wd and seed; ``group`` the workers (`WorkerGroup`)."""

    def __init__(self, config, contexts, sample_ratio=1.0, group=None):
        from vargface.train.losses import MARGIN_LOSSES

        if config.loss_name not in MARGIN_LOSSES:
            raise VargfaceError(f"--fc-parallel needs a margin loss (nsoftmax, arcface, cosface, combined, arcneg); "
                                f"--loss-name {config.loss_name!r} has no normalised class centres to shard")
        if not 0 < float(sample_ratio) <= 1:
            raise VargfaceError(f"--sample-ratio must be in (0, 1], got {sample_ratio}")
        self.config, self.contexts = config, list(contexts)
        self.sample_ratio = float(sample_ratio)
        from vargface.train.workers import WorkerGroup

        self.group = group or WorkerGroup()
        self.layout = ShardLayout(int(config.num_classes), int(config.emb_size), len(self.contexts),
                                  self.group.size)
        self.shard_ids = [self.group.rank * len(self.contexts) + d for d in range(len(self.contexts))]
        self.weights, self.momenta = [], []
        self._pending = None  # the last step's sampled rows and their gradients, for update()
        self.sampled = [None] * len(self.contexts)  # per local shard: the global class ids sampled in the last step

    # ---- state -------------------------------------------------------------------------------------------------
    def init_weights(self, seed=None):
        """The initial centres of this worker's shards (`vargface.train.losses.initial_classifier`: the full
        head's, whatever the layout), zero momentum."""
        import mxnet as mx

        from vargface.train.losses import initial_classifier

        seed = int(self.config.seed if seed is None else seed)
        self.weights, self.momenta = [], []
        for shard, ctx in zip(self.shard_ids, self.contexts):
            start, rows = self.layout.rows(shard)
            self.weights.append(mx.nd.array(initial_classifier(seed, float(self.config.fc7_init_sigma), start,
                                                               start + rows, self.layout.emb_size), ctx=ctx))
            self.momenta.append(mx.nd.zeros((rows, self.layout.emb_size), ctx=ctx))

    def set_weights(self, fc7_weight, momentum=None):
        """Take this worker's shards from a full (C, D) classifier (and its momentum; default zero)."""
        import mxnet as mx

        self.weights, self.momenta = [], []
        for shard, ctx in zip(self.shard_ids, self.contexts):
            start, rows = self.layout.rows(shard)
            self.weights.append(mx.nd.array(fc7_weight[start:start + rows], ctx=ctx))
            self.momenta.append(mx.nd.zeros((rows, self.layout.emb_size), ctx=ctx) if momentum is None
                                else mx.nd.array(momentum[start:start + rows], ctx=ctx))

    def state_arrays(self):
        """{name: NDArray on cpu} of this worker's shards and their momentum, plus the layout: what a training
        state saves (`save_shards`)."""
        import mxnet as mx

        layout = self.layout.describe()
        arrays = {"layout": mx.nd.array([layout[k] for k in LAYOUT_KEYS] + [self.group.rank], dtype="int64")}
        for shard, weight, momentum in zip(self.shard_ids, self.weights, self.momenta):
            arrays[f"shard{shard}:weight"] = weight.as_in_context(mx.cpu())
            arrays[f"shard{shard}:momentum"] = momentum.as_in_context(mx.cpu())
        return arrays

    def load_state_arrays(self, arrays, source):
        """Restore what `state_arrays` returned; another shard layout is refused, naming both."""
        saved, rank = read_layout(arrays, source)
        if saved != self.layout or rank != self.group.rank:
            raise VargfaceError(f"{source} holds the classifier of worker {rank} as {saved}; this run (worker "
                                f"{self.group.rank}) splits it as {self.layout}. Resume with the same --ctx devices, "
                                f"workers and classes, or merge the shards (`vargface merge-fc7`) and start anew")
        self.weights = [shard_array(arrays, saved, s, "weight", source).as_in_context(c)
                        for s, c in zip(self.shard_ids, self.contexts)]
        self.momenta = [shard_array(arrays, saved, s, "momentum", source).as_in_context(c)
                        for s, c in zip(self.shard_ids, self.contexts)]

    def first_nonfinite(self):
        """The name of the first shard array holding NaN or inf (None when all are finite), checked where the
        shard lives: a NaN or inf makes its sum NaN or inf."""
        import math

        import mxnet as mx

        for shard, weight, momentum in zip(self.shard_ids, self.weights, self.momenta):
            for part, array in (("fc7_weight", weight), ("its momentum", momentum)):
                if not math.isfinite(float(mx.nd.sum(array).asscalar())):
                    return f"{part} in shard {shard}"
        return None

    def save(self, path):
        """`save_shards` this classifier to ``path``."""
        save_shards(path, self)

    def full_weight(self):
        """The whole (C, D) classifier as NumPy; with one worker only (else `merge_shards` the saved states)."""
        if self.group.size != 1:
            raise VargfaceError("the whole classifier is spread over the workers; merge their saved states")
        return np.concatenate([w.asnumpy() for w in self.weights])

    # ---- one step ----------------------------------------------------------------------------------------------
    def forward_backward(self, embeddings, labels, update):
        """``embeddings``: this worker's devices' (b, D) embedding NDArrays (the backbone's outputs, in
        ``contexts`` order); ``labels``: this worker's (devices·b,) labels (NDArray or NumPy); ``update``: the
        1-based number of the update this step makes (it seeds the sampling). Returns a `StepResult`; `update`
        then applies it to the sampled centres."""
        import mxnet as mx
        from mxnet import autograd

        from vargface.train.losses import cosines, margin_from_cosines, negatives_need_target

        home = self.contexts[0]
        local = mx.nd.concat(*[e.as_in_context(home) for e in embeddings], dim=0)
        labels = labels.asnumpy() if hasattr(labels, "asnumpy") else np.asarray(labels)
        batch = self.group.gather("embeddings", local)
        all_labels = labels.astype(np.int64) if self.group.size == 1 else self.group.gather(
            "labels", mx.nd.array(labels, ctx=mx.cpu(), dtype="float64")).asnumpy().astype(np.int64)

        shards = [self._shard_inputs(d, batch, all_labels, update) for d in range(len(self.contexts))]
        with autograd.record():
            cos = [cosines(mx.nd, s["emb"], s["rows"], s["rows"].shape[0]) for s in shards]
        if negatives_need_target(self.config):
            # ArcNegFace weighs every shard's negatives by the true class's cosine, which its owner shares.
            shared = self._sum("true_cos", [_owned(mx.nd.pick(c.detach(), s["label"], axis=1), s["label"])
                                            for c, s in zip(cos, shards)])
            true_cos = [shared.as_in_context(c.context) for c in cos]  # (a copy recorded by autograd breaks it)
            with autograd.record():  # the owner's own cosine keeps its gradient
                true_cos = [mx.nd.where(s["label"] >= 0, mx.nd.pick(c, s["label"], axis=1), t)
                            for c, s, t in zip(cos, shards, true_cos)]
                logits = [margin_from_cosines(mx.nd, c, s["label"], c.shape[1], self.config, cos_t=t)
                          for c, s, t in zip(cos, shards, true_cos)]
            slopes = None
        else:  # only the true class's logit has a margin: formed in place, its slope kept for the gradient
            logits, slopes = map(list, zip(*[self._target_logits(c, s["where"]) for c, s in zip(cos, shards)]))
        eps, lam = float(self.config.label_smoothing), float(self.config.regularface)
        sampled = self._sampled_counts(all_labels) if eps or lam else None  # of every shard of the run
        # Each shard's softmax (one fused pass) holds 1 / sum exp(z - m_k) at its largest logit m_k: m_k, that
        # value and the true class's logit (where the shard owns the class) travel in one all-gather (with
        # label smoothing also sum_j (z_j - m_k)), and each shard's softmax times its share of the global sum is
        # the exact softmax over every shard, rounded as the full head's within a few units in the last place.
        # The largest logit and the largest probability are both read at the argmax (one reduction, and MXNet's
        # argmax is several times faster than its max): the same elements, so the same values.
        probs = [mx.nd.softmax(z, axis=1) for z in logits]
        tops = [mx.nd.argmax(z, axis=1) for z in logits]
        rows = self._gather_shards("softmax", [mx.nd.stack(
            mx.nd.pick(z, top, axis=1), mx.nd.pick(p, top, axis=1),
            _owned(mx.nd.pick(z, s["label"], axis=1), s["label"]),
            *([mx.nd.sum(mx.nd.broadcast_sub(z, mx.nd.pick(z, top, axis=1, keepdims=True)), axis=1)] if eps else []))
            for z, p, top, s in zip(logits, probs, tops, shards)])
        peak, true_logit = mx.nd.max(rows[:, 0], axis=0), mx.nd.sum(rows[:, 2], axis=0)
        sums = mx.nd.exp(mx.nd.broadcast_sub(rows[:, 0], peak)) / rows[:, 1]  # each shard's sum exp(z - peak)
        total = mx.nd.sum(sums, axis=0)
        log_sum_exp = peak + mx.nd.log(total)
        if eps:
            from vargface.train.losses import smoothed_cross_entropy, smoothing_weights

            counts = mx.nd.array(sampled, ctx=home).reshape((-1, 1))
            # sum_j log p_j over every sampled centre, shard by shard: sum_j (z_j - m_k) + S_k (m_k - L)
            log_prob_sum = mx.nd.sum(rows[:, 3] + mx.nd.broadcast_mul(
                counts, mx.nd.broadcast_sub(rows[:, 0], log_sum_exp)), axis=0)
            loss = smoothed_cross_entropy(mx.nd, true_logit - log_sum_exp, log_prob_sum, eps, sum(sampled))
            on, off = smoothing_weights(eps, sum(sampled))
        else:
            loss, (on, off) = log_sum_exp - true_logit, (1.0, 0.0)
        scale = 1.0 / len(all_labels)
        for d, s in enumerate(shards):
            z, prob = logits[d], probs[d]
            logits[d] = probs[d] = None  # this shard's (N, S) buffers go before the next shard's gradient is formed
            share = (sums[len(shards) * self.group.rank + d] / total).as_in_context(z.context)
            prob = mx.nd.broadcast_mul(prob, mx.nd.expand_dims(share, 1), out=prob)
            if slopes is None:
                z.backward(logit_gradient(prob, s["where"], on, off, scale))
            else:  # d(logit)/d(cos) is s, and s times the margin's slope at the true class
                grad = logit_gradient(prob, s["where"], on, off, scale * float(self.config.loss_s))
                if s["where"] is not None:
                    _scatter(grad, s["where"], _gather(grad, s["where"]) * slopes[d])
                cos[d].backward(grad)
            cos[d] = None
            del z, prob
        extras = {}
        if lam:
            extras["regularface"] = self._regularface(shards, sampled)
        emb_grad = self._sum("emb_grad", [s["emb"].grad for s in shards])
        self._pending = [(s["index"], s["rows"]) for s in shards]
        return StepResult(grads=self._split(emb_grad, [e.shape[0] for e in embeddings]), loss=mx.nd.mean(loss),
                          accuracy=mx.nd.mean(true_logit >= peak), extras=extras)

    def _regularface(self, shards, sampled):
        """RegularFace over the sampled centres (docs/partial_fc.md#label-smoothing-and-regularface): each
        shard's term on its own sampled centres, weighted by its share of them, its gradient added to theirs;
        returns the value summed over every shard (1,). With one shard at ``sample_ratio`` 1 it is the full
        head's term."""
        from vargface.train.regularface import penalty

        lam, values = float(self.config.regularface), []
        for s in shards:
            value, grad = penalty(s["rows"].detach(), lam * s["rows"].shape[0] / sum(sampled))
            centres_grad = s["rows"].grad
            centres_grad += grad
            values.append(value)
        return self._sum("regularface", values)

    def _target_logits(self, cos, where):
        """The margin logits of a loss whose margin changes the true class alone (margin_from_cosines): s·cos θ,
        with s·(cos(m1·θ_y + m2) − m3) written at the rows' label columns ``where`` (None: no row's class is on
        this shard), outside autograd; and the margin's slope d target / d cos θ_y there, for the gradient. The
        same logits as the full head's without its (N, S) one-hot and broadcasts, forward and backward."""
        import mxnet as mx
        from mxnet import autograd

        from vargface.train.losses import margin_target

        c = self.config
        scale = float(c.loss_s)
        logits = cos.detach() * scale
        if where is None:
            return logits, None
        cos_t = _gather(cos.detach(), where)
        cos_t.attach_grad()
        with autograd.record():
            target = margin_target(mx.nd, cos_t, float(c.loss_m1), float(c.loss_m2), float(c.loss_m3))
        target.backward()
        _scatter(logits, where, target.detach() * scale)
        return logits, cos_t.grad

    def _sampled_counts(self, all_labels):
        """The number of centres every shard of the run samples in this step (the same on every worker)."""
        counts = []
        for shard in range(self.layout.shards):
            start, rows = self.layout.rows(shard)
            positives = np.unique(all_labels[(all_labels >= start) & (all_labels < start + rows)]).size
            counts.append(sample_count(positives, rows, self.sample_ratio))
        return counts

    def update(self, lr):
        """Apply SGD with momentum at the learning rate ``lr`` (the schedule's, times fc7_lr_mult here) to the
        centres sampled by the last `forward_backward`; no other centre or momentum is touched."""
        import mxnet as mx

        if self._pending is None:
            raise RuntimeError("update() needs a forward_backward() first")
        c = self.config
        options = dict(lr=float(lr) * float(c.fc7_lr_mult), wd=float(c.wd) * float(c.fc7_wd_mult),
                       momentum=float(c.mom))
        for d, (index, rows) in enumerate(self._pending):
            weight, momentum = self.weights[d], self.momenta[d]
            if index is None:  # every row sampled: update in place
                mx.nd.sgd_mom_update(weight, weight.grad, momentum, out=weight, **options)
                continue
            velocity = mx.nd.take(momentum, index)
            mx.nd.sgd_mom_update(rows, rows.grad, velocity, out=rows, **options)
            # index_copy writes the rows in place, a third of the time of assigning weight[index]
            mx.nd.contrib.index_copy(weight, index, rows, out=weight)
            mx.nd.contrib.index_copy(momentum, index, velocity, out=momentum)
        self._pending = None

    def train_step(self, module, data, labels, update, detach=False):
        """One step of a backbone Module through this classifier: the Module's forward of ``data`` (a DataBatch,
        or one per device; its first output is the embedding, others, e.g. distillation's MakeLoss terms, carry
        their own gradients), `forward_backward` on the embeddings of every device and ``labels`` (this worker's
        batch), then each device's backward with the gradient of its own embeddings (zero with ``detach``: the
        classifier still learns, the embedding does not). Returns the `StepResult`; the Module's and this
        classifier's `update` apply it."""
        import mxnet as mx

        module.forward(data, is_train=True)
        outputs = module.get_outputs(merge_multi_context=False)
        result = self.forward_backward(outputs[0], labels, update)
        for d, executor in enumerate(module._exec_group.execs):
            grad = mx.nd.zeros_like(result.grads[d]) if detach else result.grads[d]
            executor.backward([grad] + [mx.nd.zeros_like(out[d]) for out in outputs[1:]])
        return result

    @property
    def metric_names(self):
        """The names of `StepResult.extras`, in their order."""
        return ["regularface"] if float(self.config.regularface) else []

    # ---- helpers -----------------------------------------------------------------------------------------------
    def _shard_inputs(self, d, batch, all_labels, update):
        """The global batch on device ``d``, its shard's sampled centres (a leaf with a gradient) and the
        labels as positions among them (−1: the class lives on another shard)."""
        import mxnet as mx

        ctx, shard = self.contexts[d], self.shard_ids[d]
        start, rows = self.layout.rows(shard)
        inside = (all_labels >= start) & (all_labels < start + rows)
        picked = sample_rows(all_labels[inside] - start, rows, self.sample_ratio, self.config.seed, update, shard)
        self.sampled[d] = picked + start
        positions = np.full(len(all_labels), -1.0, dtype=np.float32)
        positions[inside] = np.searchsorted(picked, all_labels[inside] - start)
        owned = np.flatnonzero(inside)  # the rows whose class is on this shard, and its column among the sampled
        where = mx.nd.array(np.stack([owned, positions[owned]]), ctx=ctx, dtype="int32") if owned.size else None
        emb = batch.as_in_context(ctx) if batch.context != ctx else batch.copy()
        emb.attach_grad()
        if len(picked) == rows:  # the shard itself is the leaf (its gradient buffer is kept between steps)
            leaf, index = self.weights[d], None
            if leaf.grad is None:
                leaf.attach_grad()
        else:
            index = mx.nd.array(picked, ctx=ctx, dtype="int32")  # MXNet's take is twice as fast as with int64
            leaf = mx.nd.take(self.weights[d], index)
            leaf.attach_grad()
        return {"emb": emb, "rows": leaf, "index": index, "label": mx.nd.array(positions, ctx=ctx), "where": where}

    def _sum(self, name, parts):
        """The sum of one array per local device (on the first device) and over the workers."""
        import mxnet as mx

        home = self.contexts[0]
        return self.group.sum(name, mx.nd.add_n(*[p.as_in_context(home) for p in parts]))

    def _gather_shards(self, name, parts):
        """One array per local shard -> (shards, ...) of every shard of the run, in shard order."""
        import mxnet as mx

        home = self.contexts[0]
        return self.group.gather(name, mx.nd.stack(*[p.as_in_context(home) for p in parts]))

    def _split(self, emb_grad, sizes):
        """This worker's rows of the summed (N, D) embedding gradient, cut per device (``sizes`` rows each) and
        scaled from the global mean to each device's own mean."""
        start = self.group.rank * sum(sizes)
        scale = len(self.contexts) * self.group.size
        grads = []
        for size, ctx in zip(sizes, self.contexts):
            grads.append((emb_grad[start:start + size] * scale).as_in_context(ctx))
            start += size
        return grads


LAYOUT_KEYS = ("num_classes", "emb_size", "devices", "workers")

# (N, S) float32 arrays alive at the peak of a step (forward graph, softmax, logit and input gradients), as measured
# on MXNet 1.9.1 for the margin losses: the sharded head here, and the full head's Module.
LOGIT_BUFFERS = 8
GB = 1024 ** 3


@dataclass(frozen=True)
class Fc7Memory:
    """Bytes the classifier needs on one device."""

    weights: int
    momentum: int
    gradients: int  # of the centres read in a step (and their sampled copies)
    logits: int
    sampled: int  # centres read per step
    batch: int  # rows of the logits

    @property
    def total(self):
        return self.weights + self.momentum + self.gradients + self.logits

    def line(self):
        return (f"fc7 per device: weights {self.weights / GB:.2f} GB, momentum {self.momentum / GB:.2f} GB, "
                f"gradients {self.gradients / GB:.2f} GB, logits {self.logits / GB:.2f} GB ({self.batch} x "
                f"{self.sampled} centres); {self.total / GB:.2f} GB in all")


def fc7_memory(num_classes, emb_size, per_device_batch, devices, workers=1, sample_ratio=1.0, parallel=True):
    """The classifier's memory per device: with ``parallel`` a shard of ceil(C / shards) centres against the
    global batch, of which round(r · shard) are sampled, or the positives when more (taken as the shard's even
    share of the batch); without, every device holds all C centres against its own batch (the momentum: one
    copy, counted here too)."""
    floats = 4
    batch = per_device_batch * devices * workers if parallel else per_device_batch
    rows = ShardLayout(num_classes, emb_size, devices, workers).size if parallel else num_classes
    positives = -(-batch // (devices * workers))
    sampled = min(rows, max(int(round(sample_ratio * rows)), positives)) if sample_ratio < 1 else rows
    # Centre-sized arrays beside the weights and momentum, as measured: the full head's Module keeps the gradient,
    # the normalised centres and their gradient; a sampled shard the rows read, their momentum and gradient.
    copies = 3 if sampled < rows or not parallel else 1
    return Fc7Memory(weights=rows * emb_size * floats, momentum=rows * emb_size * floats,
                     gradients=copies * sampled * emb_size * floats, logits=LOGIT_BUFFERS * batch * sampled * floats,
                     sampled=sampled, batch=batch)


def check_fits(memory, contexts, what="the classifier"):
    """Refuse, before anything is allocated, a classifier that cannot fit: on a GPU its free memory, on CPUs the
    host's available memory (all ``cpu`` contexts of the process share it)."""
    import mxnet as mx

    advice = "spread the classes over more devices or workers (--fc-parallel), lower --sample-ratio, or lower " \
             "--per-batch-size"
    for ctx in contexts:
        if ctx.device_type == "gpu":
            free, total = mx.context.gpu_memory_info(ctx.device_id)
            if memory.total > free:
                raise VargfaceError(f"{what} needs {memory.total / GB:.2f} GB on {ctx}, which has "
                                    f"{free / GB:.2f} GB free of {total / GB:.2f} GB ({memory.line()}); {advice}")
    cpus = sum(ctx.device_type == "cpu" for ctx in contexts)
    available = host_memory()
    if cpus and memory.total * cpus > available:
        raise VargfaceError(f"{what} needs {memory.total * cpus / GB:.2f} GB of host memory on {cpus} cpu "
                            f"device(s), and {available / GB:.2f} GB is available ({memory.line()}); {advice}")


def host_memory():
    """Bytes the host can still give this process: MemAvailable of /proc/meminfo, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def read_layout(arrays, source):
    """(ShardLayout, rank) recorded in a shard file's arrays."""
    if "layout" not in arrays:
        raise VargfaceError(f"{source} holds no sharded classifier (no layout array)")
    values = [int(v) for v in arrays["layout"].asnumpy()]
    if len(values) != len(LAYOUT_KEYS) + 1:
        raise VargfaceError(f"{source}: its classifier layout has {len(values)} numbers, expected "
                            f"{len(LAYOUT_KEYS) + 1}")
    return ShardLayout(*values[:-1]), values[-1]


def _owned(values, label):
    """``values`` where the row's class is on this shard (label >= 0), else 0: summed over shards, each row
    gets its owner's value."""
    import mxnet as mx

    return mx.nd.where(label >= 0, values, mx.nd.zeros_like(values))


# ---- files ---------------------------------------------------------------------------------------------------------
def save_shards(path, engine):
    """Write this worker's shards, their momentum and the layout to the NDArray file ``path`` (atomically)."""
    import mxnet as mx

    from vargface.atomic import atomic_path

    with atomic_path(path) as tmp:
        mx.nd.save(tmp, engine.state_arrays())


def _load(path):
    import mxnet as mx

    from vargface.errors import last_line

    try:
        return mx.nd.load(path)
    except Exception as error:
        raise VargfaceError(f"{path} is not a readable MXNet NDArray file: {last_line(error)}") from None


def load_shards(path, engine):
    """Restore `save_shards`' file into ``engine``; a file of another layout is refused."""
    engine.load_state_arrays(_load(path), path)


def merge_shards(paths):
    """The whole (C, D) classifier (NumPy float32) from the shard files of every worker of a run (or their
    training states, PREFIX-state.json, which name them)."""
    if not paths:
        raise VargfaceError("merge-fc7: no shard files given")
    layout, shards = None, {}
    for path in map(_named_shards, paths):
        arrays = _load(path)
        found, _ = read_layout(arrays, path)
        if layout is not None and found != layout:
            raise VargfaceError(f"{path} splits the classifier as {found}, {paths[0]} as {layout}: they are not "
                                f"shards of one run")
        layout = found
        for shard in range(layout.shards):
            if f"shard{shard}:weight" not in arrays:
                continue
            if shard in shards:
                raise VargfaceError(f"{path}: shard {shard} was already read from another file")
            shards[shard] = shard_array(arrays, layout, shard, "weight", path).asnumpy()
    missing = [s for s in range(layout.shards) if s not in shards]
    if missing:
        raise VargfaceError(f"shards {missing} of {layout.shards} are missing: pass the shard file of every "
                            f"worker ({layout.workers})")
    return np.concatenate([shards[s] for s in range(layout.shards)])


def _named_shards(path):
    """``path``, or the shard file a training state ``PREFIX-state.json`` names."""
    import json

    from vargface.train.checkpoint import shards_file
    from vargface.train.run_files import RunFiles

    if not str(path).endswith("-state.json"):
        return path
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as error:
        raise VargfaceError(f"{path} is not a readable training state: {error}") from None
    found = shards_file(RunFiles(str(path)[:-len("-state.json")]), info if isinstance(info, dict) else {})
    if found is None:
        raise VargfaceError(f"{path} is the state of a run whose classifier is not sharded (its fc7_weight is in "
                            f"the state's params file)")
    return found


def shard_array(arrays, layout, shard, part, source):
    """``arrays``' 'shard<shard>:<part>' (weight or momentum), checked against the shape ``layout`` gives it and
    for NaN or inf."""
    from vargface.symbols.checkpoint import check_finite

    key, expected = f"shard{shard}:{part}", (layout.rows(shard)[1], layout.emb_size)
    if key not in arrays:
        raise VargfaceError(f"{source} has no {key} (a shard of {layout})")
    if arrays[key].shape != expected:
        raise VargfaceError(f"{source}: {key} has shape {arrays[key].shape}, expected {expected} for {layout}")
    check_finite({key: arrays[key]}, source)
    return arrays[key]


def register(subparsers):
    """`vargface merge-fc7`: the classifier of a --fc-parallel run as one array."""
    from vargface import options

    p = subparsers.add_parser(
        "merge-fc7", help="merge the class-centre shards of a --fc-parallel run into one fc7_weight",
        description="A --fc-parallel run keeps the classifier in shards beside each worker's training state "
                    "(PREFIX-state-UPDATE-fc7.params); this writes the whole (classes x emb_size) fc7_weight as an "
                    "MXNet params file (arg:fc7_weight), e.g. to add the classifier to an embedding checkpoint.")
    p.add_argument("shards", nargs="+", metavar="SHARDS", help="every worker's shard file, or its training state "
                   "PREFIX-state.json / PREFIX-workerK-state.json")
    options.add_out(p, "output params file, e.g. model-fc7.params")
    options.add_overwrite(p)
    p.set_defaults(func=_merge_command)


def _merge_command(args):
    import mxnet as mx

    from vargface import options
    from vargface.atomic import atomic_path

    options.refuse_existing(args.out, args.overwrite)
    weight = merge_shards(args.shards)
    with atomic_path(args.out) as tmp:
        mx.nd.save(tmp, {"arg:fc7_weight": mx.nd.array(weight)})
    print(f"merge-fc7: wrote {args.out} (fc7_weight {weight.shape[0]} x {weight.shape[1]})")
    return 0
