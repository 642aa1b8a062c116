"""Ordered, bounded-memory process-pool map for the feature stages."""

from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

A = TypeVar("A")
R = TypeVar("R")


def resolve_workers(workers: int | None) -> int:
    """``None`` or ``0`` means every core available to this process."""
    if workers and workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def imap_ordered(fn: Callable[[A], R], items: Iterable[A], *, workers: int | None = None,
                 in_flight: int | None = None, desc: str | None = None,
                 total: int | None = None, initializer: Callable[..., None] | None = None,
                 initargs: tuple = (), chunksize: int = 1) -> Iterator[R]:
    """Yield ``fn(item)`` in input order using a process pool.

    At most ``in_flight`` tasks (default ``4 * workers``) are pending at once, so memory is
    bounded by the batch size rather than the corpus size. ``workers == 1`` runs in-process,
    which gives identical results and easy debugging. ``chunksize > 1`` sends items to the
    workers in lists of that size (one task each), which cuts the parent's per-task overhead
    when ``fn`` is cheap; results are still yielded one per item.
    """
    n = resolve_workers(workers)
    bar = tqdm(total=total, desc=desc, unit="item", disable=desc is None, mininterval=1.0)
    try:
        if n == 1:
            if initializer is not None:
                initializer(*initargs)
            for item in items:
                yield fn(item)
                bar.update(1)
            return
        limit = in_flight or 4 * n
        ctx = mp.get_context("spawn" if os.environ.get("AVMATCH_SPAWN") else "fork")
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=initializer,
                                 initargs=initargs) as pool:
            pending: collections.deque[Future[list[R]]] = collections.deque()
            for chunk in _chunks(items, chunksize):
                pending.append(pool.submit(_apply, fn, chunk))
                if len(pending) >= limit:
                    yield from _drain(pending.popleft(), bar)
            while pending:
                yield from _drain(pending.popleft(), bar)
    finally:
        bar.close()


def _chunks(items: Iterable[A], size: int) -> Iterator[list[A]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, max(1, size))):
        yield chunk


def _apply(fn: Callable[[A], R], chunk: list[A]) -> list[R]:
    return [fn(item) for item in chunk]


def _drain(future: Future[list[R]], bar: tqdm) -> Iterator[R]:
    for result in future.result():
        yield result
        bar.update(1)
