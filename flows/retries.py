"""How every flow retries its tasks, from the settings (without importing Prefect: also used
by flow bodies run without it, ``flows.direct``; ``flows.runtime`` re-exports it).

``retrying(task, settings)``: ``ARCHIVE_TASK_RETRIES`` retries, ``ARCHIVE_RETRY_DELAY_SECONDS``
tripled each time, for every task a flow calls (only transient failures are retried:
``tasks.retry``).
"""

from __future__ import annotations

from typing import Any

from flows.direct import direct_task
from rtk_archiver.settings import Settings


def retry_delays(settings: Settings) -> list[float]:
    """Task retry delays: ARCHIVE_RETRY_DELAY_SECONDS, tripled at each retry."""
    return [settings.archive_retry_delay_seconds * 3**i for i in range(max(1, settings.archive_task_retries))]


def retrying(task: Any, settings: Settings) -> Any:
    # a flow body the CLI runs without Prefect (flows/direct.py) runs its tasks itself
    direct = direct_task(task, settings.archive_task_retries, retry_delays(settings))
    if direct is not None:
        return direct
    return task.with_options(retries=settings.archive_task_retries, retry_delay_seconds=retry_delays(settings))
