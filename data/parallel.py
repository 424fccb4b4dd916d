"""Ordered parallel map over threads. OpenCV (imdecode, imencode, warpAffine, drawing) releases the GIL, so
threads scale across cores without pickling images between processes."""
import collections
import os
from concurrent.futures import ThreadPoolExecutor


def default_workers():
    return os.cpu_count() or 1


def imap_ordered(fn, items, workers=None, ahead=None):
    """Yield ``fn(item)`` for each item, in input order, computing at most ``ahead`` results in advance so a
    conversion of millions of images keeps bounded memory. ``workers <= 1`` runs inline."""
    workers = default_workers() if workers is None else int(workers)
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    ahead = ahead or 4 * workers
    with ThreadPoolExecutor(workers) as pool:
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


def imap_processes(fn, items, workers=None, chunksize=16):
    """Like ``imap_ordered`` but in forked processes, for pure-Python/NumPy work that holds the GIL (synthetic
    rendering). ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one)."""
    import multiprocessing

    workers = default_workers() if workers is None else int(workers)
    if workers <= 1:
        yield from map(fn, items)
        return
    with multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread_each) as pool:
        yield from pool.imap(fn, items, chunksize)


def _one_thread_each():
    """The processes already fill the cores; OpenCV's own thread pool in each would only oversubscribe them."""
    import cv2

    cv2.setNumThreads(1)
