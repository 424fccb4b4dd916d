"""Ordered parallel map over threads. OpenCV (imdecode, imencode, warpAffine, drawing) releases the GIL, so
threads scale across cores without pickling images between processes."""
import collections
from concurrent.futures import ThreadPoolExecutor


def default_workers():
    """The cores this process may run on (`vargface.openmp.usable_cores`: affinity and a container's quota, not
    the machine's count)."""
    from vargface.openmp import usable_cores

    return usable_cores()


def imap_ordered(fn, items, workers=None, ahead=None):
    """Yield ``fn(item)`` for each item, in input order, computing at most ``ahead`` results in advance so a
    conversion of millions of images keeps bounded memory. ``workers <= 1`` runs inline."""
    workers = default_workers() if workers is None else int(workers)
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from _bounded(pool, fn, items, ahead or 4 * workers)


def _bounded(pool, fn, items, ahead):
    """Results of ``pool.submit(fn, item)`` in order, at most ``ahead`` in flight; a failure in a worker is raised
    here, and the work not yet started is cancelled."""
    pending = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _apply_each(fn, chunk):
    return [fn(item) for item in chunk]


def imap_processes(fn, items, workers=None, chunksize=16):
    """Like ``imap_ordered`` but in forked processes, for pure-Python/NumPy work that holds the GIL (synthetic
    rendering). ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one). A worker
    that dies (killed, out of memory) is an error here, not a hang."""
    import functools
    import itertools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from vargface.errors import VargfaceError

    workers = default_workers() if workers is None else int(workers)
    if workers <= 1:
        yield from map(fn, items)
        return
    iterator = iter(items)
    chunks = iter(lambda: list(itertools.islice(iterator, chunksize)), [])
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread_each) as pool:
        try:
            for results in _bounded(pool, functools.partial(_apply_each, fn), chunks, 2 * workers):
                yield from results
        except BrokenProcessPool:
            raise VargfaceError("a worker process died (killed, or out of memory); run again, or with fewer "
                                "--workers") from None


def _one_thread_each():
    """The processes already fill the cores; OpenCV's own thread pool in each would only oversubscribe them."""
    import cv2

    cv2.setNumThreads(1)
