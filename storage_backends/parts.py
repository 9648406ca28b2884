"""Parts of one upload sent by a thread pool, with a bound on the parts held in memory (S3's
multipart upload, Azure's staged blocks).

``wait_below(n)`` returns once fewer than ``n`` parts are in flight: as soon as *any* of
them is done, not the oldest (S3). Parts share the link and finish out of order (one TCP
stream backs off while the others go on); waiting for the oldest held the next read, and with
it the download, behind a slow part while later parts were already done. Measured over a
20 ms, 100 Mbit/s link (S3, 128 MiB): a part finished 0.3 s after the one behind it, the
download stood still meanwhile (BENCHMARKS.md, "The object stores at 100 Mbit/s: where the
time goes").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any


class PartUploads:
    """``oldest_first``: wait for the parts in the order they were sent, as before (Azure: with
    any-first its peak at 1 GiB was 123 MiB in 2 of 3 runs against 117-118 MiB, over the 120 MiB
    budget; its reading hardly waits for a block anyway)."""

    def __init__(self, limit: int, thread_name_prefix: str, *, oldest_first: bool = False) -> None:
        self.limit, self.oldest_first = limit, oldest_first
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix=thread_name_prefix)
        self._pending: deque[Future] = deque()  # in the order sent
        #: what each finished part's upload returned, in the order they were collected
        self.results: list[Any] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))

    def wait_below(self, limit: int | None = None) -> None:
        """Block until fewer than ``limit`` (default: the pool's) parts are in flight; the
        first failure among the finished ones is raised."""
        limit = self.limit if limit is None else limit
        while self._pending and len(self._pending) >= limit:
            if self.oldest_first:
                self.results.append(self._pending.popleft().result())
                continue
            done, _ = wait(self._pending, return_when=FIRST_COMPLETED)
            self._pending = deque(f for f in self._pending if f not in done)
            for future in done:
                self.results.append(future.result())

    def finish(self) -> list[Any]:
        """Wait for every part (raising the first failure); what each returned."""
        self.wait_below(1)
        self._pool.shutdown(wait=True)
        return self.results

    def abandon(self) -> None:
        """After a failure: parts not started are dropped, the ones sending are waited for."""
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
