"""How every flow runs its tasks, from the settings, in one place: the same on every path
(the CLI, `rtk-archiver serve`, workers of a work pool, a run started from the UI).

* ``ArchiveTaskRunner``: a thread pool of ``ARCHIVE_MAX_CONCURRENT`` workers, read when the
  run starts (a flow's runner is fixed when the flow is defined; this one reads the setting
  at each run).
* ``retrying(task, settings)``: ``ARCHIVE_TASK_RETRIES`` retries, ``ARCHIVE_RETRY_DELAY_SECONDS``
  tripled each time, for every task a flow calls (only transient failures are retried:
  ``tasks.retry``).
"""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from flows.direct import direct_task
from rtk_archiver.settings import Settings, SettingsError, load_settings

DEFAULT_MAX_CONCURRENT = 4


def retry_delays(settings: Settings) -> list[float]:
    """Task retry delays: ARCHIVE_RETRY_DELAY_SECONDS, tripled at each retry."""
    return [settings.archive_retry_delay_seconds * 3**i for i in range(max(1, settings.archive_task_retries))]


def retrying(task: Any, settings: Settings) -> Any:
    # a flow body the CLI runs without Prefect (flows/direct.py) runs its tasks itself
    direct = direct_task(task, settings.archive_task_retries, retry_delays(settings))
    if direct is not None:
        return direct
    return task.with_options(retries=settings.archive_task_retries, retry_delay_seconds=retry_delays(settings))


def _max_concurrent() -> int:
    try:
        return load_settings().archive_max_concurrent
    except SettingsError:
        return DEFAULT_MAX_CONCURRENT  # the flow itself stops on the bad setting, with the message


class ArchiveTaskRunner(ThreadPoolTaskRunner):
    """Thread pool sized by ARCHIVE_MAX_CONCURRENT at the start of each run."""

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__(max_workers=max_workers or DEFAULT_MAX_CONCURRENT)
        self._fixed = max_workers is not None

    def duplicate(self) -> "ArchiveTaskRunner":
        return type(self)(self._max_workers if self._fixed else None)

    def __enter__(self) -> "ArchiveTaskRunner":
        if not self._fixed:
            self._max_workers = _max_concurrent()
        return super().__enter__()
