"""The workers of a dist kvstore run as one group: sums, all-gathers and shared decisions through the run's own
KVStore (``pushpull``), without Horovod or MPI (docs/partial_fc.md#across-workers-dist-kvstore).

The servers must only sum for this: a server that holds an optimizer applies it to every key pushed to it. So a
dist_sync run's Module updates on the workers (the training step sums its gradients through the same kvstore),
which also keeps the optimizer's momentum where a training state can save it."""
import weakref

_KEYS = weakref.WeakKeyDictionary()  # kvstore -> the keys made on it


class WorkerGroup:
    """Sums and all-gathers across the workers of a dist kvstore through ``pushpull`` (an all-gather is a sum over
    zero-padded slots); with one worker (``kv`` None) both are the identity. Every worker must make the same
    calls in the same order: a key is created (a barrier) at its first use."""

    def __init__(self, kv=None):
        self.kv = kv
        self.rank, self.size = (kv.rank, kv.num_workers) if kv is not None else (0, 1)

    def sum(self, name, array):
        if self.size == 1:
            return array
        import mxnet as mx

        key = f"workers:{name}:{'x'.join(map(str, array.shape))}:{array.dtype.__name__}"
        created = _KEYS.setdefault(self.kv, set())  # per kvstore: a second group on it reuses the keys
        if key not in created:
            self.kv.init(key, mx.nd.zeros(array.shape, array.context, dtype=array.dtype))
            created.add(key)
        out = mx.nd.zeros(array.shape, array.context, dtype=array.dtype)
        self.kv.pushpull(key, array, out=out)
        return out

    def gather(self, name, array):
        """(n, ...) on every worker -> (workers·n, ...), worker r's rows at [r·n, (r+1)·n)."""
        if self.size == 1:
            return array
        import mxnet as mx

        n = array.shape[0]
        slots = mx.nd.zeros((self.size * n,) + array.shape[1:], array.context, dtype=array.dtype)
        slots[self.rank * n:(self.rank + 1) * n] = array
        return self.sum(name, slots)

    def raised(self, name, flags):
        """{flag: bool} of this worker -> {flag: ranks of the workers that raised it}, the same answer on every
        worker, so all of them take the same branch (a worker that left alone would leave the others waiting in
        their next pushpull)."""
        names = sorted(flags)
        if self.size == 1:
            return {k: [0] if flags[k] else [] for k in names}
        import mxnet as mx

        rows = self.gather(name, mx.nd.array([[float(bool(flags[k])) for k in names]], dtype="float64")).asnumpy()
        return {k: [rank for rank in range(self.size) if rows[rank, i] > 0] for i, k in enumerate(names)}
