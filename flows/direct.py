"""A flow's own body, run without Prefect's engine or API: the CLI's ``archive-one`` when no
Prefect server is configured (``rtk_archiver.cli``).

Starting a private Prefect API server for one recording cost ~6 s of CPU (importing and
starting Prefect's server) for a run whose work takes well under a second. Here the flow's
function (``flow.fn``) runs as it is, with the same planning, tasks, backends and report;
only how its tasks run changes (``flows.runtime.retrying`` returns a ``DirectTask``):

* a task runs its function, with the retries, delays and retry condition it has in Prefect
  (``ARCHIVE_TASK_RETRIES`` / ``ARCHIVE_RETRY_DELAY_SECONDS``, permanent failures never retried);
  a wait between retries ends at once on Ctrl-C / SIGTERM;
* ``submit`` runs it in a thread pool of ``ARCHIVE_MAX_CONCURRENT`` workers, as the flows' task
  runner does; ``result(raise_on_failure=False)`` returns the exception of a failed task;
* logs go to the console (``PREFECT_LOGGING_LEVEL``); there is no run record, artifact or
  event, as there is nothing to send them to (``flows.reporting`` skips them).

The flow's final state is what Prefect would make of the function's return value: a report
(Completed), a failed run carrying the report (``flows.archiving.run_state`` returns a
``FailedRun`` here, a Prefect ``Failed`` state under Prefect), or the exception the body
raised (Failed, "Flow run encountered an exception: ...").

Nothing here imports Prefect, nor does anything such a run uses (tasks are defined with
``tasks.define.task``, credentials Blocks live in ``storage_backends.blocks``): importing it
costs ~80 MiB of memory, most of an ``archive-one`` run's peak (BENCHMARKS.md, "Memory").
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from rtk_archiver import interrupt
from rtk_archiver.naming import redact_urls

LOGGER = "rtk_archiver"
_pool: ContextVar[ThreadPoolExecutor | None] = ContextVar("rtk_direct_pool", default=None)


def active() -> bool:
    """True while a flow body runs here (``run``), without Prefect's engine and API."""
    return _pool.get() is not None


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER)


class DirectFuture:
    """What ``DirectTask.submit`` returns: the part of ``PrefectFuture`` the flows use."""

    def __init__(self, future: Future) -> None:
        self._future = future

    def wait(self, timeout: float | None = None) -> None:
        try:
            self._future.exception(timeout)
        except Exception:  # noqa: BLE001 - a timeout: the caller asks again
            pass

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        exc = self._future.exception(timeout)
        if exc is None:
            return self._future.result()
        if raise_on_failure:
            raise exc
        return exc


class DirectTask:
    """A Prefect task's function with its retry options, run in this process."""

    def __init__(self, task: Any, retries: int, delays: list[float], pool: ThreadPoolExecutor) -> None:
        self.task = task
        self.name = getattr(task, "name", None) or getattr(task.fn, "__name__", "task")
        self.retries = max(0, int(retries))
        self.delays = list(delays) or [0.0]
        self.condition: Callable[..., bool] | None = getattr(task, "retry_condition_fn", None)
        self._pool = pool

    def _retry(self, exc: Exception) -> bool:
        if self.condition is None:
            return True
        # the condition reads the failed state's data (tasks.retry.retry_transient)
        return bool(self.condition(self.task, None, FailedRun(_describe(exc), exc)))

    def run(self, *args: Any, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            interrupt.check()
            try:
                return self.task.fn(*args, **kwargs)
            except Exception as exc:
                if attempt >= self.retries or not self._retry(exc):
                    why = "retries are exhausted" if attempt >= self.retries and self.retries else "not retried"
                    logger().error("Task run %r failed (%s): %s", self.name, why, _describe(exc))
                    raise
                delay = self.delays[min(attempt, len(self.delays) - 1)]
                attempt += 1
                logger().warning(
                    "Task run %r failed: %s - retry %d/%d in %g second(s)", self.name, _describe(exc), attempt, self.retries, delay
                )
                interrupt.sleep(delay)

    def __call__(self, *args: Any, return_state: bool = False, **kwargs: Any) -> Any:
        if not return_state:
            return self.run(*args, **kwargs)
        future: Future = Future()
        try:
            future.set_result(self.run(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, as a failed state
            future.set_exception(exc)
        return DirectFuture(future)

    def submit(self, *args: Any, **kwargs: Any) -> DirectFuture:
        return DirectFuture(self._pool.submit(self.run, *args, **kwargs))


class FailedRun:
    """A failed run's final state without Prefect: its message and data (what a Prefect
    ``Failed`` state carries), returned by a flow body run here instead of ``Failed(...)``."""

    def __init__(self, message: str, data: object) -> None:
        self.message, self.data = message, data

    def is_failed(self) -> bool:
        return True


def _describe(exc: BaseException) -> str:
    """An exception for the log, without the signed query of a download URL in it."""
    return redact_urls(f"{type(exc).__name__}: {exc}")


def direct_task(task: Any, retries: int, delays: list[float]) -> DirectTask | None:
    """The task as run by ``run`` (None outside one: Prefect runs it)."""
    pool = _pool.get()
    return DirectTask(task, retries, delays, pool) if pool is not None else None


@contextmanager
def _console_logging() -> Iterator[None]:
    """The run's log lines on stderr, as Prefect's console handler shows them (the logger is
    left as it was afterwards)."""
    log = logger()
    saved = (log.level, log.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(message)s", "%H:%M:%S"))
    level = os.environ.get("PREFECT_LOGGING_LEVEL", "INFO").upper()
    log.addHandler(handler)
    log.setLevel(level if isinstance(logging.getLevelName(level), int) else logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


@contextmanager
def running(max_workers: int) -> Iterator[None]:
    """Tasks of flow bodies called inside run here (``direct_task``)."""
    with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="rtk-task") as pool:
        token = _pool.set(pool)
        try:
            yield
        finally:
            _pool.reset(token)


def run(flow: Any, max_workers: int, **parameters: Any) -> tuple[object, str | None]:
    """Run ``flow``'s function (``flow.fn``; or ``flow`` itself, a plain function) with
    ``parameters``: (its result, the final state's message). The result is the report, the
    ``RecordingsFailed`` of a failed run's state, or the exception the body raised."""
    fn = getattr(flow, "fn", flow)
    name = getattr(flow, "name", None) or fn.__name__
    with _console_logging():
        logger().info("Running %s without a Prefect API (PREFECT_API_URL is not set)", name)
        with running(max_workers):
            try:
                returned = fn(**parameters)
            except Exception as exc:  # noqa: BLE001 - the run's failure, reported like Prefect's
                message = f"Flow run encountered an exception: {_describe(exc)}"
                logger().error("Finished in state Failed(%r)", message)
                return exc, message
        if isinstance(returned, FailedRun):
            logger().info("Finished in state Failed(%r)", returned.message)
            return returned.data, returned.message
        states = sys.modules.get("prefect.states")  # a Prefect state (only if Prefect is loaded)
        if states is not None and isinstance(returned, states.State):
            logger().info("Finished in state %s(%r)", returned.type.value.title(), returned.message)
            return returned.data, returned.message
        logger().info("Finished in state Completed()")
        return returned, None
