"""The scheduled poll: archive what stopped since the last poll, with an overlap.

The high-water mark lives in a Prefect Variable. It only moves forward past recordings that
are finished and archived: a failure, or a recording still uploading, keeps the next
window reaching back to it, so nothing is lost between polls.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from prefect import flow, get_run_logger
from prefect.variables import Variable
from typing import Annotated

from pydantic import Field

from flows.archive import archive_window, run_state
from flows.runtime import ArchiveTaskRunner
from flows.parameters import form_field
from flows.windows import DESTINATION_HELP, OptionalDestination
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
    overlap_minutes: Annotated[int, Field(ge=0, le=24 * 60)] = form_field(
        30, "Overlap (minutes)", "How far each window reaches back before the previous one ended, in minutes."
    ),
    destination: OptionalDestination = form_field("", "Destination", DESTINATION_HELP),  # a text box; empty: not given
) -> ArchiveReport:
    """Archive every recording that stopped since the last poll (first poll: the lookback)."""
    settings = load_settings()
    now = datetime.now(timezone.utc)
    stored = Variable.get(POLL_MARK, default=None)
    previous = datetime.fromisoformat(stored) if stored else now - timedelta(days=settings.archive_lookback_days)
    since = previous - timedelta(minutes=overlap_minutes) if stored else previous
    explain_lost_slot_cancellations(previous)
    # in this run (not a subflow): the run an operator opens shows the tasks, the report and
    # the watchdog; a window that fails (listing, settings) raises and the mark stays
    report = archive_window(since, now, destination, False)
    mark = next_mark(report, previous, now, floor=now - timedelta(days=settings.archive_lookback_days))
    Variable.set(POLL_MARK, mark.isoformat(), overwrite=True)
    get_run_logger().info("Next poll starts from %s (minus %d min overlap)", mark.isoformat(), overlap_minutes)
    return run_state(report)


#: the Prefect server's message for a run whose deployment concurrency slot was lost while it
#: was being provisioned (its leases are in memory: a server restart loses them)
LOST_SLOT = "Deployment concurrency slot lost during provisioning"
EXPLAINED_TAG = "rtk-explained"


def explain_lost_slot_cancellations(since: datetime) -> None:
    """A poll due while the Prefect server restarted ends Cancelled with the server's "Deployment
    concurrency slot lost during provisioning": it did nothing, and the mark did not move. Each
    such poll run since the mark gets a log line saying so (shown on its run page) and the tag
    ``rtk-explained``; this run's log says it takes over. Best effort: never fails the poll."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate
    from prefect.client.schemas.filters import (
        FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterExpectedStartTime, FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.context import FlowRunContext

    logger = get_run_logger()
    ctx = FlowRunContext.get()
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["poll-recordings"])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLED])),
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=since - timedelta(hours=1)),
                ),
                limit=50,
            )
            lost = [r for r in runs if r.state and LOST_SLOT in (r.state.message or "") and EXPLAINED_TAG not in r.tags]
            for run in lost:
                client.create_logs([LogCreate(
                    name="rtk_archiver.poll", level=logging.WARNING, flow_run_id=run.id, timestamp=datetime.now(timezone.utc),
                    message=(
                        "rtk-archiver: this poll was cancelled by the Prefect server before it started: its concurrency "
                        "slot was lost while the server restarted. It archived nothing and the poll mark did not move, so "
                        f"the next poll ({ctx.flow_run.name if ctx and ctx.flow_run else 'a later run'}) takes over its window."
                    ),
                )])
                client.update_flow_run(run.id, tags=[*run.tags, EXPLAINED_TAG])
                logger.warning(
                    "The poll run %s (due %s) was cancelled by the Prefect server (concurrency slot lost while it restarted): "
                    "it archived nothing; this poll covers its window", run.name,
                    run.expected_start_time.isoformat(timespec="minutes") if run.expected_start_time else "?",
                )
    except Exception as exc:  # noqa: BLE001 - an explanation, never a reason to fail the poll
        logger.debug("Could not look for polls cancelled by a server restart: %s", exc)
