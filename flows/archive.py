"""Flows only orchestrate: which recordings, in what order, how many at once.

``archive_recordings`` archives every recording that stopped in a window;
``archive_one`` archives a single recording by id. Both return an ``ArchiveReport``.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows.windows import resolve_window
from flows.reporting import Progress, emit_outcome_event, publish_report
from rtk_archiver.api import InvalidRecording
from rtk_archiver.models import ArchiveReport, OutcomeKind, Recording, RecordingOutcome
from rtk_archiver.naming import keys_for, redact_urls
from rtk_archiver.settings import Settings, load_settings
from storage_backends import InvalidDestination, UnsupportedDestination, preload_backends
from tasks.archive import archive_recording, resolve_destination, why_not_archivable
from tasks.limits import ensure_limits
from tasks.listing import get_recording, list_recordings


def retry_delays(settings: Settings) -> list[float]:
    """Task retry delays: ARCHIVE_RETRY_DELAY_SECONDS, tripled at each retry."""
    return [settings.archive_retry_delay_seconds * 3**i for i in range(max(1, settings.archive_task_retries))]


def _failure_reason(exc: BaseException) -> str:
    return redact_urls(f"{exc}" if str(exc) else type(exc).__name__)


def archive_all(recordings: list[Recording], destination: str | None, dry_run: bool, settings: Settings) -> list[RecordingOutcome]:
    """Submit one task per recording (oldest first), bounded by the task runner; one
    recording's failure never stops the others."""
    logger = get_run_logger()
    task = archive_recording.with_options(
        retries=settings.archive_task_retries,
        retry_delay_seconds=retry_delays(settings),
    )
    # Two recordings that want the same name in one run: the later one takes its id in the name.
    planned: Counter[tuple[str, str]] = Counter()
    submitted: list[tuple[Recording, PrefectFuture]] = []
    outcomes: list[RecordingOutcome] = []
    for rec in sorted(recordings, key=lambda r: (r.stopped_time or r.invoked_time, r.id)):
        verdict = why_not_archivable(rec)
        if verdict is not None:  # left for a later run, or nothing to archive: no task needed
            outcomes.append(
                RecordingOutcome(recording_id=rec.id, output_file_name=rec.output_file_name, kind=verdict[0], reason=verdict[1])
            )
            continue
        try:
            resolved = resolve_destination(rec, destination, settings.archive_default_destination)
            target = resolved.display_url()
            preload_backends([resolved.kind])
        except (InvalidDestination, UnsupportedDestination):
            target = "?"  # the task reports it
        slot = (target, keys_for(rec).video)
        planned[slot] += 1
        future = task.submit(rec, destination=destination, dry_run=dry_run, disambiguate=planned[slot] > 1)
        submitted.append((rec, future))
    progress = Progress(len(submitted))
    for rec, future in submitted:
        result = future.result(raise_on_failure=False)
        progress.advance()
        if isinstance(result, RecordingOutcome):
            outcomes.append(result)
        else:
            reason = _failure_reason(result) if isinstance(result, BaseException) else "task did not complete"
            logger.error("Failed to archive %s: %s", rec.label(), reason)
            outcomes.append(
                RecordingOutcome(
                    recording_id=rec.id, output_file_name=rec.output_file_name, kind=OutcomeKind.FAILED, reason=reason
                )
            )
    when = {rec.id: rec.stopped_time or rec.invoked_time for rec in recordings}
    return [o.model_copy(update={"reference_time": when.get(o.recording_id)}) for o in outcomes]


def finish_report(report: ArchiveReport) -> ArchiveReport:
    for outcome in report.outcomes:
        emit_outcome_event(outcome)
    publish_report(report)
    counts = ", ".join(f"{n} {k}" for k, n in report.counts().items() if n)
    get_run_logger().info("Summary: %s; %d bytes transferred", counts or "nothing to do", report.bytes_transferred)
    return report


@flow(name="archive-recordings", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=True)
def archive_recordings(
    since: datetime | None = None,
    until: datetime | None = None,
    destination: str | None = None,
    dry_run: bool = False,
) -> ArchiveReport:
    """Archive every recording that stopped in [since, until) (default: the last
    ARCHIVE_LOOKBACK_DAYS days) to its storage_config destination, the default
    destination, or ``destination`` if given."""
    settings = load_settings()
    since, until = resolve_window(since, until, settings)
    ensure_limits(settings)
    listing = list_recordings.with_options(retry_delay_seconds=retry_delays(settings))(since, until)
    report = ArchiveReport(since=since, until=until, dry_run=dry_run)
    report.outcomes.extend(invalid_outcome(item) for item in listing.invalid)
    report.outcomes.extend(archive_all(listing.recordings, destination, dry_run, settings))
    return finish_report(report)


@flow(name="archive-one", validate_parameters=True)
def archive_one(recording_id: str, destination: str | None = None, dry_run: bool = False) -> ArchiveReport:
    """Archive a single recording by id."""
    settings = load_settings()
    ensure_limits(settings)
    recording = get_recording(recording_id)
    report = ArchiveReport(dry_run=dry_run)
    report.outcomes.extend(archive_all([recording], destination, dry_run, settings))
    return finish_report(report)


def invalid_outcome(item: InvalidRecording) -> RecordingOutcome:
    return RecordingOutcome(
        recording_id=item.id, output_file_name=item.output_file_name, kind=OutcomeKind.FAILED, reason=item.reason
    )
