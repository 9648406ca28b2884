"""The expiry watchdog: finished recordings that are not archived, and their deadlines.

RealtimeKit keeps a recording's files for a limited time: 7 days after it stopped
(``RETENTION``). Its presigned URLs expire sooner (``download_url_expiry``), but the archiver
fetches fresh ones, so that is no deadline. Every archive run (poll, window, backfill child)
ends with ``watch_for_loss``:

* **at risk**: ``UPLOADED``, not archived by this run nor already archived, files still on
  RealtimeKit but for less than ``ARCHIVE_EXPIRY_WARNING_HOURS`` (48) more hours of its
  retention. Named in the report with the deadline, an event ``rtk.recording.at-risk`` each,
  and the run fails.
* **lost**: ``UPLOADED``, never archived (no intact archive where it belongs, checked at the
  destination, since a recording archived days ago has no download URL either), and its files
  are gone from RealtimeKit's bucket. A recording that never was on RealtimeKit's bucket
  (bucket disabled: no URL, no expiry) is not "expired": its only copy is RealtimeKit's upload
  to its storage_config. Found there (the run records it: "delivered by RealtimeKit"), it is
  safe at any age; not there, it is lost at any age; without a storage_config it is stored
  nowhere. Reported once, with an event ``rtk.recording.lost``: the ids already reported are
  remembered in the Prefect Variable ``rtk_archiver_lost_reported``.

``assess`` is pure (recordings, outcomes, now -> ``Watch``); ``watch_for_loss`` does the
destination look-up, the memory, the events and the report section.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from prefect.events import emit_event
from prefect.variables import Variable
from pydantic import BaseModel, Field

# a recording's 12 hex digits in a memory Variable, and reading one: the same as the failure alerts'
from flows.alerts import json_variable
from flows.alerts import token as memory_token
from rtk_archiver.display import markdown_text, printable

from rtk_archiver.models import ArchiveReport, OutcomeKind, Recording, RecordingOutcome, RecordingRisk
from rtk_archiver.plan import RETENTION, bucket_state
from rtk_archiver.settings import Settings

ARCHIVED = frozenset({OutcomeKind.ARCHIVED, OutcomeKind.ALREADY_ARCHIVED, OutcomeKind.DELIVERED})
LOST_MEMORY = "rtk_archiver_lost_reported"
#: Prefect caps a Variable's JSON at 5,000 characters: ~330 remembered ids (12 hex digits of
#: their sha256 each); the oldest are forgotten first
LOST_MEMORY_CHARS = 4800
EVENT_AT_RISK = "rtk.recording.at-risk"
EVENT_LOST = "rtk.recording.lost"


class Watch(BaseModel):
    at_risk: list[RecordingRisk] = Field(default_factory=list)
    lost: list[RecordingRisk] = Field(default_factory=list)


def _when(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _why_not_archived(outcome: RecordingOutcome | None) -> str:
    if outcome is None:
        return "not archived"
    return f"not archived ({outcome.kind.value}{': ' + outcome.reason if outcome.reason else ''})"


def assess(
    recordings: Iterable[Recording],
    outcomes: Iterable[RecordingOutcome],
    now: datetime,
    warning_hours: float,
    archived_ids: frozenset[str] | set[str] = frozenset(),
) -> Watch:
    """Finished recordings that no outcome says are archived (nor ``archived_ids``): at risk
    when their files stop being reachable within ``warning_hours``, lost when they already
    are. Pure: no I/O."""
    by_id = {o.recording_id: o for o in outcomes}
    horizon = now + timedelta(hours=warning_hours)
    watch = Watch()
    for rec in recordings:
        outcome = by_id.get(rec.id)
        if rec.status != "UPLOADED" or rec.id in archived_ids or (outcome is not None and outcome.kind in ARCHIVED):
            continue
        why = _why_not_archived(outcome)
        retention_end = rec.stopped_time + RETENTION if rec.stopped_time else None

        def risk(deadline: datetime | None, reason: str) -> RecordingRisk:
            return RecordingRisk(recording_id=rec.id, output_file_name=rec.output_file_name, deadline=deadline, reason=reason)

        state = bucket_state(rec, now)
        sidecar_only = not rec.has_files and outcome is not None and outcome.upload in ("missing", "damaged")
        if state == "never" or sidecar_only:
            sc = rec.storage_config
            if sc is None or not sc.type:
                watch.lost.append(risk(None, "stored nowhere: RealtimeKit's bucket is disabled for it and it has no "
                                             "storage_config, so RealtimeKit kept no copy of it"))
            elif sidecar_only:
                watch.lost.append(risk(None, f"RealtimeKit's bucket is disabled for it and its only copy, RealtimeKit's "
                                             f"upload to its storage_config, is {'not intact' if outcome.upload == 'damaged' else 'not there'}"
                                             + (f" ({outcome.upload_note})" if outcome.upload_note else "")))
            # else: not checked by this run (another destination): nothing is known to be lost
            continue
        if state == "expired":
            failed = f" (it failed: {outcome.reason})" if outcome is not None and outcome.kind == OutcomeKind.FAILED else ""
            watch.lost.append(risk(retention_end, f"never archived{failed}, and RealtimeKit has no download URL for it "
                                                  "any more (its files expired)"))
            continue
        if retention_end is not None and retention_end <= now:
            watch.lost.append(risk(retention_end, f"{why}; RealtimeKit's 7-day retention ended {_when(retention_end)}"))
            continue
        if retention_end is not None and retention_end <= horizon:
            hours = (retention_end - now).total_seconds() / 3600
            watch.at_risk.append(risk(retention_end, f"{why}; RealtimeKit's 7-day retention ends {_when(retention_end)} (in {hours:.1f} h)"))
    return watch


def remembered_lost() -> list[str]:
    value = json_variable(LOST_MEMORY)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def remember_lost(tokens: list[str]) -> None:
    """Append tokens to the Variable, forgetting the oldest beyond its size limit."""
    kept = remembered_lost()
    kept += [t for t in tokens if t not in kept]
    while kept and len(json.dumps(kept)) > LOST_MEMORY_CHARS:
        kept.pop(0)
    Variable.set(LOST_MEMORY, kept, overwrite=True)


def _emit(event: str, risk: RecordingRisk, destination: str | None) -> None:
    emit_event(
        event=event,
        resource={"prefect.resource.id": f"rtk.recording.{risk.recording_id}", "prefect.resource.name": printable(risk.output_file_name or risk.recording_id)},
        payload={
            "deadline": risk.deadline.isoformat() if risk.deadline else None,
            "reason": risk.reason,
            "destination": destination,
        },
    )


def watch_for_loss(
    report: ArchiveReport,
    recordings: list[Recording],
    destination: str | None,
    settings: Settings,
    now: datetime | None = None,
) -> Watch:
    """Fill ``report.at_risk`` / ``report.lost`` for this run's recordings, emit an event for
    each (a lost recording only the first time), publish the watchdog's report section. A dry
    run only reports: no events, nothing remembered."""
    from tasks.verify import find_archives

    logger = get_run_logger()
    now = now or datetime.now(timezone.utc)
    hours = settings.archive_expiry_warning_hours
    watch = assess(recordings, report.outcomes, now, hours)
    unknown: dict[str, str] = {}
    if watch.lost:  # archived before its files went away is no loss: look at the destination
        candidates = {r.recording_id for r in watch.lost}
        check = find_archives([r for r in recordings if r.id in candidates], destination)
        unknown = check.unknown
        watch = assess(recordings, report.outcomes, now, hours, archived_ids=check.archived)
        for risk in watch.lost:
            if risk.recording_id in unknown:
                risk.reason += f" (whether it was archived earlier is unknown: {unknown[risk.recording_id]})"
    known = set(remembered_lost()) if watch.lost else set()
    new_lost = [r for r in watch.lost if memory_token(r.recording_id) not in known]
    for r in watch.lost:
        if r not in new_lost:
            logger.info("Recording %s is lost (reported before): %s", printable(r.recording_id), printable(r.reason))
    for r in watch.at_risk:
        logger.error("AT RISK: recording %s (%s): %s", printable(r.recording_id), printable(r.output_file_name), printable(r.reason))
    for r in new_lost:
        logger.error("LOST: recording %s (%s): %s", printable(r.recording_id), printable(r.output_file_name), printable(r.reason))
    report.at_risk, report.lost = watch.at_risk, new_lost
    if not report.dry_run:
        for r in watch.at_risk:
            _emit(EVENT_AT_RISK, r, destination)
        for r in new_lost:
            _emit(EVENT_LOST, r, destination)
        # only a confirmed loss is remembered: one not checked is reported again next time
        confirmed = [memory_token(r.recording_id) for r in new_lost if r.recording_id not in unknown]
        if confirmed:
            remember_lost(confirmed)
    if watch.at_risk or new_lost:
        create_markdown_artifact(key="rtk-archive-watchdog", description="Recordings at risk of expiry, or lost", markdown=markdown(report, hours))
    return Watch(at_risk=watch.at_risk, lost=new_lost)


def markdown(report: ArchiveReport, hours: float) -> str:
    def rows(items: list[RecordingRisk]) -> str:
        return "\n".join(
            f"| {markdown_text(r.recording_id)} | {markdown_text(r.output_file_name or '')} | "
            f"{_when(r.deadline) if r.deadline else '?'} | {markdown_text(r.reason)} |"
            for r in items
        )

    head = "| recording | file | deadline | reason |\n|---|---|---|---|\n"
    out = "# Expiry watchdog\n\n"
    if report.at_risk:
        out += f"## At risk: files expire within {hours:g} h, not archived\n\n{head}{rows(report.at_risk)}\n\n"
    if report.lost:
        out += f"## Lost: files gone from RealtimeKit, never archived (reported once)\n\n{head}{rows(report.lost)}\n"
    return out
