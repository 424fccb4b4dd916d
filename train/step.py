"""One training step on a bound Module, queued without waiting for the devices: docs/environment.md#one-training-step.

A step stages the batch on the devices (each device's slice copied once, and shared with a live teacher),
runs forward and backward, reduces the metrics on each device (`vargface.train.metrics`), sums the gradients over
the devices with the KVStore and updates the weights on every device. Host syncs per step: none, except

- with ``--clip-grad-norm``: one read of the global norm (with the step's metrics, which the NaN guard then checks
  before the update); the gradients are scaled only when the norm is over the bound;
- with ``--dtype float16|bfloat16``: one read of whether the gradients are finite (with the metrics and the norm):
  an overflowed step is skipped and the loss scale halved.

- with several dist_sync workers: one read of the step's metrics, and one all-gather of every worker's flags
  (a metric not finite, a signal), so that all of them take the same branch before the update (a worker that
  stopped alone would leave the others waiting in their next sum).

Otherwise the metrics are read once per logged line, and the NaN guard names the first bad batch then. The host
waits for the step before last before queueing a new one, which bounds the memory queued steps hold without
leaving the devices idle.

With a dist_sync kvstore the same KVStore sums over the devices and the workers (its servers only sum) and every
worker updates; dist_async's Module sums and updates on its servers. With ``--fc-parallel`` the Module's output is
the embedding, whose gradient the sharded classifier gives (`vargface.train.partial_fc`); its loss and accuracy
join the metrics, it adds no host sync of its own on one worker, and its sampled centres are updated with the
Module. Clipping stays on the embedding network's summed gradient."""
import collections

import numpy as np

from vargface.train.metrics import ACCURACY, GRAD_NORM, LOSS, NanLoss, check_row, sharded_row, step_row

QUEUED_STEPS = 2  # steps queued ahead of the one the host waits for


class Outcome:
    """What a step left: ``row`` (its metric sums: an NDArray, or a float array when the step synced),
    ``skipped`` (its gradients overflowed: no update was made) and ``signalled`` (the ranks of the workers that
    were signalled to stop: all stop after this step)."""

    def __init__(self, row, skipped=False, signalled=()):
        self.row, self.skipped, self.signalled = row, skipped, list(signalled)


class TrainStep:
    """Steps of ``module`` (bound for training on ``contexts``). ``kvstore``: the KVStore that sums the devices'
    gradients (None with one device, or when the Module's own KVStore updates on dist servers); ``clip``: (names of
    the arrays clipped, max global norm) or None; ``mixed``: the graph takes the loss-scale input
    (`vargface.train.precision`); ``rescale_grad``: 1 / (devices x workers); ``head``: the sharded classifier
    (`vargface.train.partial_fc.PartialFC`) when the Module's output is the embedding (``detach``: it trains the
    classifier only, as distillation's --kd-only); ``group``: the run's
    `vargface.train.workers.WorkerGroup`. Call `start` after each ``init_optimizer``."""

    def __init__(self, module, contexts, extra_names, kvstore=None, clip=None, mixed=False, rescale_grad=1.0,
                 head=None, detach=False, group=None):
        self.module, self.contexts, self.kvstore = module, list(contexts), kvstore
        self.clip, self.scale, self.rescale_grad = clip, None, float(rescale_grad)
        self.head, self.detach, self.group, self.schedule, self._keys = head, detach, group, None, False
        group = module._exec_group
        self.slices = list(group.slices)
        self.params = [(index, name, grads) for index, (name, grads) in
                       enumerate(zip(group.param_names, group.grad_arrays)) if grads and grads[0] is not None]
        head_names = list(head.metric_names) if head else []
        self.names = [LOSS, ACCURACY] + head_names + list(extra_names) + ([GRAD_NORM] if clip else [])
        batch = sum(s.stop - s.start for s in self.slices)
        sizes = [int(np.prod(shape)) for _, shape in module.output_shapes[1:]]
        self.counts = [batch, batch] + [1] * len(head_names) + sizes + ([1] if clip else [])
        self._scale_inputs, self._queued = None, collections.deque()
        if mixed:
            import mxnet as mx

            self._scale_inputs = [mx.nd.zeros((s.stop - s.start,), ctx=ctx) for s, ctx in
                                  zip(self.slices, self.contexts)]

    def start(self, scale=None, schedule=None):
        """After the Module's optimizer is (re)initialised: the `LossScale` to train with (mixed precision) and the
        learning-rate ``schedule`` (update count -> rate) of the sharded classifier. The KVStore's keys are made
        at the first start (with a dist kvstore a barrier: after every worker has started)."""
        self.scale, self.schedule = scale, schedule
        if self.kvstore is not None and not self._keys:
            group = self.module._exec_group
            together = self.group is not None and self.group.size > 1
            for index, name, _ in self.params:
                self.kvstore.init(name, group.param_arrays[index][0])
                if together:  # a dist kvstore keeps rank 0's values: every worker starts from its weights
                    self.kvstore.pull(name, out=group.param_arrays[index])
            self._keys = True
        if scale is not None:
            self.set_scale()

    # -- the step ------------------------------------------------------------------------------------------------
    def stage(self, batch):
        """Copy each device's slice of the images there once (``batch.device_data``), for the student and a live
        teacher alike."""
        images = batch.data[0]
        batch.device_data = [images[s.start:s.stop].as_in_context(ctx) for s, ctx in zip(self.slices, self.contexts)]
        return batch

    def __call__(self, batch, extra, where, stopping=False):
        """Queue one step of ``batch`` (staged) with the plugin's ``extra`` inputs (each a whole-batch NDArray or
        a list of per-device ones); ``where`` = (epoch, batch, update count) names a bad step; ``stopping``: this
        process was signalled to stop. Returns an `Outcome`; raises `NanLoss` when a step that synced found a
        metric not finite on any worker (before its update)."""
        import mxnet as mx

        module = self.module
        batches = []
        for d, s in enumerate(self.slices):
            data = [batch.device_data[d]] + [x[d] if isinstance(x, (list, tuple)) else x[s.start:s.stop]
                                            for x in extra]
            if self._scale_inputs is not None:
                data.append(self._scale_inputs[d])
            batches.append(mx.io.DataBatch(data=data, label=[batch.label[0][s.start:s.stop]]))
        if self.head is None:
            module.forward_backward(batches)
            group = module._exec_group
            row = step_row(module.get_outputs(merge_multi_context=False), [labels[1] for labels in
                                                                            group.label_arrays[0]], self.contexts[0])
        else:
            labels = getattr(batch, "host_label", batch.label[0])  # the iterator's NumPy copy: no read back
            result = self.head.train_step(module, batches, labels, where[2] + 1, self.detach)
            row = sharded_row(result, module.get_outputs(merge_multi_context=False)[1:], self.counts[0],
                              self.contexts[0])
        self._aggregate()
        together = self.group is not None and self.group.size > 1
        synced = self.clip is not None or self.scale is not None or together
        if not synced:
            self._update(where)
            self._bound_queue(row)
            return Outcome(row, signalled=[0] if stopping else [])
        extras = []
        if self.clip is not None:
            norm = self._norm()
            row = mx.nd.concat(row, norm, dim=0)
        if self.scale is not None:
            extras.append(self._finite())
        values = mx.nd.concat(row, *extras, dim=0).asnumpy() if extras else row.asnumpy()
        row = values[:len(self.names)]
        overflow = self.scale is not None and not values[-1]
        # an overflowed step's gradient norm is not finite by definition; its loss must still be
        checked = self.names[:-1] if overflow and self.clip is not None else self.names
        signalled = self._agree(checked, row / np.asarray(self.counts, np.float64), where, stopping)
        if overflow:
            return Outcome(row, skipped=True, signalled=signalled)
        if self.clip is not None:
            self._apply_clip(float(row[-1]))
        self._update(where)
        return Outcome(row, signalled=signalled)

    def _agree(self, names, values, where, stopping):
        """Check the step's metric ``values`` before its update, on every worker together: raise `NanLoss` when
        one is not finite here or on another worker; returns the ranks of the workers signalled to stop."""
        try:
            check_row(names, values, where)
            bad = None
        except NanLoss as error:
            bad = error
        if self.group is None or self.group.size == 1:
            if bad is not None:
                raise bad
            return [0] if stopping else []
        raised = self.group.raised("step", {"nonfinite": bad is not None, "signal": stopping})
        if bad is not None:
            raise NanLoss(bad.metric, bad.value, *where, where=f" on worker {self.group.rank}")
        if raised["nonfinite"]:
            raise NanLoss(f"the loss of worker {raised['nonfinite'][0]}", "non-finite", *where)
        return raised["signal"]

    def _update(self, where):
        """The Module's update, and the sharded classifier's at the same learning rate."""
        self.module.update()
        if self.head is not None:
            self.head.update(self.schedule(where[2] + 1))

    def _bound_queue(self, row):
        """Wait for the step before last: at most `QUEUED_STEPS` steps are queued, so their batches and
        temporaries do not pile up while the devices keep working on the latest ones."""
        self._queued.append(row)
        if len(self._queued) > QUEUED_STEPS:
            self._queued.popleft().wait_to_read()

    # -- gradients -----------------------------------------------------------------------------------------------
    def _aggregate(self):
        """Sum every gradient over the devices, in place on each device (the optimizer then updates every device's
        copy of the weights the same way)."""
        if self.kvstore is None:
            return
        for index, name, grads in self.params:
            self.kvstore.pushpull(name, grads, out=grads, priority=-index)

    def _clipped(self):
        names = self.clip[0]
        return [grads for _, name, grads in self.params if name in names]

    def _norm(self):
        """The global L2 norm (1,) of the clipped arrays' applied gradient (the sum times ``rescale_grad``, over
        the loss scale), on the first device."""
        import mxnet as mx

        first = [grads[0] for grads in self._clipped()]
        if not first:
            return mx.nd.zeros((1,), ctx=self.contexts[0])
        squares = mx.nd.multi_sum_sq(*first, num_arrays=len(first))
        return mx.nd.sqrt(mx.nd.sum(squares)).reshape((1,)) * (self.rescale_grad / self.loss_scale())

    def _apply_clip(self, norm):
        """Scale the clipped arrays' gradients on every device by max_norm / norm when the norm is over it (MXNet's
        ``clip_gradient`` clips each element instead, which changes the direction)."""
        factor = self.clip[1] / (norm + 1e-6)
        if factor < 1:
            for grads in self._clipped():
                for grad in grads:
                    grad *= factor

    def _finite(self):
        """1 when every gradient is finite, else 0 ((1,) on the first device)."""
        import mxnet as mx

        first = [grads[0] for _, _, grads in self.params]
        flag = mx.nd.ones((1,), ctx=self.contexts[0])
        for start in range(0, len(first), 200):  # the op takes a bounded number of arrays
            chunk = first[start:start + 200]
            mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=False, out=flag)
        return flag

    # -- loss scale ----------------------------------------------------------------------------------------------
    def loss_scale(self):
        return self.scale.scale if self.scale is not None else 1.0

    def set_scale(self):
        """Feed the current loss scale and divide the gradients by it in the optimizer."""
        for values in self._scale_inputs:
            values[:] = self.scale.scale
        self.module._optimizer.rescale_grad = self.rescale_grad / self.scale.scale
