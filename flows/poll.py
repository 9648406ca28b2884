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

from flows.archive import archive_recordings
from flows.windows import DESTINATION_HELP, DestinationParam
from rtk_archiver.models import ArchiveReport, OutcomeKind
from rtk_archiver.settings import load_settings

POLL_MARK = "rtk_archiver_poll_mark"


def next_mark(report: ArchiveReport, started: datetime, stopped_times: dict[str, datetime]) -> datetime:
    """Where the next poll starts: ``started``, or earlier for what is not done yet."""
    mark = started
    for o in report.outcomes:
        if o.kind in (OutcomeKind.FAILED, OutcomeKind.PENDING) and o.recording_id in stopped_times:
            mark = min(mark, stopped_times[o.recording_id])
    return mark


@flow(name="poll-recordings", validate_parameters=True)
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
    since = (
        datetime.fromisoformat(stored) - timedelta(minutes=overlap_minutes)
        if stored
        else now - timedelta(days=settings.archive_lookback_days)
    )
    report = archive_recordings(since=since, until=now, destination=destination)
    times = {o.recording_id: o.reference_time for o in report.outcomes if o.reference_time}
    mark = next_mark(report, now, times)
    Variable.set(POLL_MARK, mark.isoformat(), overwrite=True)
    get_run_logger().info("Next poll starts from %s (minus %d min overlap)", mark.isoformat(), overlap_minutes)
    return report
