"""The detection pipeline: reader ahead of the network, tracers behind it, nothing waits.

    reader thread ──batches (pinned)──▶ network (main thread) ──outputs──▶ tracer pool (N threads)
                                                                            │ futures, in tile order
                                                                            ▼
                                                                       writer thread

The network thread only moves a batch to the device, runs it and copies the
packed detections back once; tiles are read and normalised ahead by the
reader, and polygons are traced on ``tracers`` threads or processes. Tracing
is mostly Python around GDAL's polygonize, so threads share one core's worth
of the GIL: processes are what scales when a GPU makes objects faster than one
core traces them (``scripts/gpu_check.py`` prints objects/s per thread). The
traced polygons come back pickled (shapely pickles as WKB). The writer takes the
tracers' results in submission order, so the output is in tile order
whatever the threads' timing. Queues are bounded: a slow tracer slows the
network down rather than filling memory.
"""
import multiprocessing
import os
import queue
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor


def default_tracers():
    """One thread per spare core (the network thread keeps one), at least one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


_worker_trace = None


def _init_worker(trace):
    """A tracer process keeps its ``trace`` (pickled once, not with every tile)."""
    global _worker_trace
    import torch
    torch.set_num_threads(1)
    _worker_trace = trace


def _call_worker(*args):
    return _worker_trace(*args)


class Tracers:
    """``put(*args)`` traces ``trace(*args)`` on a pool; ``consume(result)`` sees results in order.
    With ``processes`` the pool is of spawned processes and ``trace`` must be picklable."""

    def __init__(self, trace, consume, threads=None, depth=None, processes=False):
        self.threads = int(threads or default_tracers())
        self.trace, self.consume, self.processes = trace, consume, processes
        if processes:
            self.pool = ProcessPoolExecutor(self.threads, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(trace,))
            self._submit = lambda *args: self.pool.submit(_call_worker, *args)
        else:
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tracer")
            self._submit = lambda *args: self.pool.submit(trace, *args)
        self.queue = queue.Queue(maxsize=depth or 4 * self.threads)
        self.error = None
        self._stopped = threading.Event()
        self.writer = threading.Thread(target=self._write, daemon=True, name="writer")
        self.writer.start()

    def _write(self):
        while True:
            future = self.queue.get()
            if future is None or self._stopped.is_set():
                return
            try:
                self.consume(future.result())
            except Exception as exc:      # surfaced in the network thread by check()
                self.error = exc
                return

    def check(self):
        if self.error:
            raise self.error

    def put(self, *args):
        self.check()
        future = self._submit(*args)
        while self.writer.is_alive():
            try:
                self.queue.put(future, timeout=0.2)
                return
            except queue.Full:
                continue
        future.cancel()
        self.check()

    def finish(self):
        """Wait for every result to be consumed."""
        while self.writer.is_alive():
            try:
                self.queue.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        self.writer.join()
        self.pool.shutdown(wait=True)
        self.check()

    def stop(self):
        self._stopped.set()
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.writer.join(timeout=5)


def run(reader, predictor, tracers, on_batch=None, check_cancelled=None):
    """Drive batches from ``reader.queue`` ([(tile, transform, holds data)], tensor) through
    ``predictor(tensor, tiles) -> outputs`` (``tiles``: those in the tensor) into
    ``tracers.put(output, transform, tile)``; returns tiles done."""
    done = 0
    while True:
        batch = reader.queue.get()
        if batch is None:
            break
        if check_cancelled:
            check_cancelled()
        tracers.check()
        items, tensor = batch
        outputs = iter(predictor(tensor, [tile for tile, _, holds in items if holds]) if len(tensor) else [])
        for tile, transform, holds in items:
            if holds:
                tracers.put(next(outputs), transform, tile)
        done += len(items)
        if on_batch:
            on_batch(done)
    if reader.error:
        raise reader.error
    return done
