"""The scheduled poll: archive what stopped since the last poll, with an overlap.

The high-water mark lives in a Prefect Variable. It only moves forward past recordings that
are finished and archived: a failure, or a recording still uploading, keeps the next
window reaching back to it, so nothing is lost between polls.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prefect import flow, get_run_logger
from prefect.variables import Variable
from typing import Annotated

from pydantic import Field

from flows.archive import archive_window, run_state
from flows.runtime import ArchiveTaskRunner
from flows.windows import DESTINATION_HELP, DestinationParam
from rtk_archiver.models import ArchiveReport, OutcomeKind
from rtk_archiver.settings import load_settings

POLL_MARK = "rtk_archiver_poll_mark"


def next_mark(report: ArchiveReport, previous: datetime, started: datetime, floor: datetime | None = None) -> datetime:
    """Where the next poll starts: ``started``, or earlier for what is not done yet.

    Never past a recording that failed, for any reason, or is still pending: the mark stays
    at or before its reference time (stopped, else invoked). One whose time is unknown (a
    malformed answer) keeps the mark where it was (``previous``), so the next window still
    reaches it. Skipped recordings that a configuration change could archive (no default
    destination, a storage type not supported) hold it too."""
    mark = started
    for o in report.outcomes:
        if o.kind not in (OutcomeKind.FAILED, OutcomeKind.PENDING) and not o.retry_later:
            continue
        mark = min(mark, o.reference_time if o.reference_time is not None else previous)
    # never further back than the lookback (RealtimeKit's files are gone by then): a recording
    # that can never be archived does not make every later window grow for ever
    return max(min(mark, started), floor) if floor is not None else min(mark, started)


@flow(name="poll-recordings", task_runner=ArchiveTaskRunner(), validate_parameters=True)
def poll_recordings(
    overlap_minutes: Annotated[int, Field(ge=0, le=24 * 60)] = Field(
        30, description="How far each window reaches back before the previous one ended, in minutes."
    ),
    destination: DestinationParam = Field(None, description=DESTINATION_HELP),
) -> ArchiveReport:
    """Archive every recording that stopped since the last poll (first poll: the lookback)."""
    settings = load_settings()
    now = datetime.now(timezone.utc)
    stored = Variable.get(POLL_MARK, default=None)
    previous = datetime.fromisoformat(stored) if stored else now - timedelta(days=settings.archive_lookback_days)
    since = previous - timedelta(minutes=overlap_minutes) if stored else previous
    # in this run (not a subflow): the run an operator opens shows the tasks, the report and
    # the watchdog; a window that fails (listing, settings) raises and the mark stays
    report = archive_window(since, now, destination, False)
    mark = next_mark(report, previous, now, floor=now - timedelta(days=settings.archive_lookback_days))
    Variable.set(POLL_MARK, mark.isoformat(), overwrite=True)
    get_run_logger().info("Next poll starts from %s (minus %d min overlap)", mark.isoformat(), overlap_minutes)
    return run_state(report)
