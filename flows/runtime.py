"""How every flow runs its tasks, from the settings, in one place: the same on every path
(the CLI, `rtk-archiver serve`, workers of a work pool, a run started from the UI).

* ``ArchiveTaskRunner``: a thread pool of ``ARCHIVE_MAX_CONCURRENT`` workers, read when the
  run starts (a flow's runner is fixed when the flow is defined; this one reads the setting
  at each run).
* ``retrying(task, settings)``: ``ARCHIVE_TASK_RETRIES`` retries, ``ARCHIVE_RETRY_DELAY_SECONDS``
  tripled each time, for every task a flow calls (only transient failures are retried:
  ``tasks.retry``); defined in ``flows.retries``, which does not import Prefect.
"""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

from flows.failure import quiet_expected_tracebacks
from flows.retries import retry_delays, retrying  # noqa: F401 - re-exported
from rtk_archiver.settings import SettingsError, load_settings

DEFAULT_MAX_CONCURRENT = 4


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
        quiet_expected_tracebacks()  # a run's log: the archiver's own errors as messages (flows/failure.py)
        if not self._fixed:
            self._max_workers = _max_concurrent()
        return super().__enter__()
