"""Flows only orchestrate: which recordings, in what order, how many at once.

``archive_recordings`` archives every recording that stopped in a window;
``archive_one`` archives a single recording by id. Both return an ``ArchiveReport``.
Their bodies live in ``flows.archiving`` (re-exported here), which does not import Prefect:
``rtk-archiver archive-one`` without a Prefect API runs ``archive_one_body`` itself.
"""

from __future__ import annotations

from prefect import flow

from flows.archiving import (  # noqa: F401 - re-exported: the flows' building blocks
    RecordingsFailed,
    archive_all,
    archive_one_body,
    finish_report,
    invalid_outcome,
    publish_outcomes,
    report_of,
    run_state,
    survey,
)
from flows.parameters import OptionalDateTime, OptionalDestination, form_field
from flows.retries import retrying
from flows.runtime import ArchiveTaskRunner
from flows.watchdog import watch_for_loss
from flows.windows import DESTINATION_HELP, resolve_window
from rtk_archiver.models import ArchiveReport
from rtk_archiver.settings import load_settings
from tasks.limits import ensure_limits
from tasks.listing import list_recordings


@flow(name="archive-recordings", task_runner=ArchiveTaskRunner(), validate_parameters=True)
def archive_recordings(
    since: OptionalDateTime = form_field(None, "Since", "Archive the recordings that stopped from here (default: the lookback)."),
    until: OptionalDateTime = form_field(None, "Until", "... up to here (default: now)."),
    destination: OptionalDestination = form_field("", "Destination", DESTINATION_HELP),  # a text box; empty: not given
    dry_run: bool = form_field(False, "Dry run", "Report what would be archived; transfer nothing."),
) -> ArchiveReport:
    """Archive every recording that stopped in [since, until) (default: the last
    ARCHIVE_LOOKBACK_DAYS days) to its storage_config destination, the default
    destination, or ``destination`` if given."""
    return run_state(archive_window(since, until, destination, dry_run))


def archive_window(since, until, destination: str | None, dry_run: bool) -> ArchiveReport:
    """The body of a window run, in the calling flow run (the poll's own run shows its tasks,
    events and artifacts): list, archive, watch for loss, publish. Returns the report; the
    caller turns it into the run's state (``run_state``)."""
    destination = destination or None  # a form's empty text box: not given
    settings = load_settings()
    since, until = resolve_window(since, until, settings)
    ensure_limits(settings)
    listing = retrying(list_recordings, settings)(since, until)
    report = ArchiveReport(since=since, until=until, dry_run=dry_run)
    report.outcomes.extend(invalid_outcome(item) for item in listing.invalid)
    report.outcomes.extend(archive_all(listing.recordings, destination, dry_run, settings))
    watch_for_loss(report, listing.recordings, destination, settings)  # at risk of expiring, or lost
    publish_outcomes(report)
    return report


@flow(name="archive-one", task_runner=ArchiveTaskRunner(), validate_parameters=True)
def archive_one(recording_id: str, destination: str | None = None, dry_run: bool = False) -> ArchiveReport:
    """Archive a single recording by id."""
    return archive_one_body(recording_id, destination, dry_run)
