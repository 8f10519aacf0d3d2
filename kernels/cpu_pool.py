"""Single-threaded CPU workers: parallelism from whole independent tasks instead of OpenMP teams inside each op.

Why (measured on the project's 2-core VM while other processes shared the cores, ``benchmarks/RESULTS.md``,
issue 28): every torch op that runs on a 2-thread OpenMP team waits, at its end, for the team's other thread.
When another process holds that core, the wait is a scheduler time slice, not the op's work: a float64
``tril`` of 768 x 768 took 11.6 ms on 2 threads against 0.68 ms on 1, an ``add_`` of a 128 x 768 block 0.94 ms
against 0.04 ms, and the six block-row products of one ``X^T X`` (3152 x 768) 113 ms against 39 ms. The split
halves and the convergence snapshots multiply the number of such small ops, which is why they cost far more
than their arithmetic on shared cores. Here each task runs on one thread from start to end, and the tasks of
one call are spread over :data:`WORKERS` threads that take the next task as they finish (longest first): a
worker that loses its core delays only its own task while the others take the rest.

Bits: each task is single-threaded whatever :data:`WORKERS` is, so its result does not depend on the worker
count. (torch's ``mm`` and ``sum(dim=0)`` gave the same bits on 1 and 2 threads for the shapes of the
statistics on this machine; the end-to-end check is ``benchmarks/bench_cpu_end_to_end.py --compare``.)

Thread counts: torch's thread count is per thread (OpenMP), but ``torch.set_num_threads`` also sets the count a
thread starts with, and a thread's first use of torch's thread pool sets its count to that default (so a
worker must make that first use before setting its own count, or it silently runs 2-thread teams again).
Workers are created all at once, each sets itself to one thread, and the count new threads start with is then
put back, so neither the caller nor threads created later are changed. Tasks run with autograd off, in
inference mode when the caller is. A task that itself calls :func:`run_all` or :func:`imap` (from a worker)
runs its tasks inline, so the pool never waits on itself.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Hashable, Iterator, Sequence, TypeVar

import torch

#: Worker threads: the cores this process may use, at most 8.
WORKERS: int = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else (os.cpu_count() or 1)))

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

_local = threading.local()
_lock = threading.Lock()
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _start_worker(ready: threading.Barrier) -> None:
    _local.worker = True
    torch.get_num_threads()  # torch's per-thread first use: it would later reset the count to the default
    torch.set_num_threads(1)
    ready.wait()


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process' pool of ``workers`` single-threaded workers (created once; again after a fork)."""
    key = (os.getpid(), workers)
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            previous = torch.get_num_threads()
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cpu-task")
            ready = threading.Barrier(workers + 1)
            started = [pool.submit(_start_worker, ready) for _ in range(workers)]  # one per thread: all exist now
            ready.wait()
            for future in started:
                future.result()
            torch.set_num_threads(previous)  # the workers' set_num_threads(1) also changed the default for new threads
            _pools[key] = pool
        return pool


def in_worker() -> bool:
    """True in one of this module's worker threads."""
    return bool(getattr(_local, "worker", False))


def _call(fn: Callable[[K], R], key: K, inference: bool) -> R:
    with torch.inference_mode(inference), torch.no_grad():  # the caller's inference mode (in-place rules follow it)
        return fn(key)


def imap(fn: Callable[[K], R], keys: Sequence[K], cost: Callable[[K], float] | None = None,
         workers: int | None = None) -> Iterator[tuple[K, R]]:
    """``(key, fn(key))`` for every key, computed on ``workers`` single-threaded workers (default
    :data:`WORKERS`), yielded in the calling thread as each completes.

    Keys start largest ``cost`` first (longest-processing-time order balances the workers), and at most
    ``workers`` run at once. With one worker, or when called from a worker, keys run in the calling thread (with
    torch on one thread there too). The first exception raised by ``fn`` is re-raised after the running keys
    stop; keys not yet started are dropped."""
    order = sorted(keys, key=cost, reverse=True) if cost is not None else list(keys)
    count = max(1, min(workers if workers is not None else WORKERS, len(order)))
    inference = torch.is_inference_mode_enabled()
    if count == 1 or in_worker():
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for key in order:
                yield key, _call(fn, key, inference)
        finally:
            torch.set_num_threads(previous)
        return
    pool = _pool(count)
    pending = iter(order)
    running: dict[Future, K] = {}
    try:
        for key in pending:
            running[pool.submit(_call, fn, key, inference)] = key
            if len(running) == count:
                break
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                key = running.pop(future)
                result = future.result()
                for following in pending:
                    running[pool.submit(_call, fn, following, inference)] = following
                    break
                yield key, result
    finally:
        for future in running:
            future.cancel()
        wait(running)  # a task still running must not outlive the caller's view of its inputs


def run_all(tasks: Sequence[Callable[[], R]], cost: Sequence[float] | None = None,
            workers: int | None = None) -> list[R]:
    """Run every task (each on one thread, torch's autocast off) and return their results in the tasks' order.

    The caller takes part: it and ``workers - 1`` workers take the next task (largest ``cost`` first) from one
    shared list until it is empty, so a call wakes each worker once, not once per task (each hand-over between
    threads waits for the scheduler, which on shared cores costs milliseconds). The first exception is
    re-raised once the others have stopped (tasks not yet taken are dropped)."""
    order = list(range(len(tasks)))
    if cost is not None:
        order.sort(key=cost.__getitem__, reverse=True)
    count = max(1, min(workers if workers is not None else WORKERS, len(order)))
    results: list = [None] * len(tasks)
    failures: list[BaseException] = []
    pending = iter(order)  # next() on a list iterator is atomic under the GIL: each task is taken once
    inference = torch.is_inference_mode_enabled()

    def drain() -> None:
        with torch.inference_mode(inference), torch.no_grad(), torch.autocast("cpu", enabled=False):
            for index in pending:
                if failures:
                    return
                try:
                    results[index] = tasks[index]()
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller below
                    failures.append(exc)
                    return

    helpers = [] if count == 1 or in_worker() else [_pool(count - 1).submit(drain) for _ in range(count - 1)]
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        drain()
    finally:
        if previous != 1:
            torch.set_num_threads(previous)
        wait(helpers)
    if failures:
        raise failures[0]
    return results


__all__ = ["WORKERS", "imap", "in_worker", "run_all"]
