"""The scrub: re-verify what the archive holds, and re-archive what went missing or bad.

``verify_archive`` walks each destination's listing for sidecars (``*.metadata.json``) and
checks that every file a sidecar lists is still there at its size, with the hashes the
storage reports matching the sidecar's (``deep``: re-read and re-hashed where the storage
reports none: local, SFTP). Every problem is named in a table artifact
(``rtk-verify-report``), each damaged recording emits ``rtk.recording.corrupt``, and the run
ends Failed. A damaged recording RealtimeKit still has is archived again, in place.

Destinations: those given, else the default destination plus every distinct storage_config
destination of the recordings in the lookback window (``ARCHIVE_LOOKBACK_DAYS``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from flows.parameters import DESTINATION_LIST_RULES, CheckedIfGiven, DestinationURL, form_field
from rtk_archiver.models import OutcomeKind, Recording
from flows.failure import failed_on_purpose, quiet_expected_tracebacks
from flows.retries import retrying
from rtk_archiver.display import markdown_text, printable_row
from rtk_archiver.naming import redact_urls
from rtk_archiver.plan import scope_label, scrub_scope
from rtk_archiver.settings import Settings, load_settings
from storage_backends import (
    Destination,
    InvalidDestination,
    UnsupportedDestination,
    parse_destination_url,
)
from storage_backends.registry import url_examples
from tasks.verify import DestinationScrub, FileProblem, sidecar_keys, verify_destination

EVENT_CORRUPT = "rtk.recording.corrupt"

VerifyDestination = Annotated[DestinationURL, Field(description=f"A destination URL: {url_examples()}.")]
#: a list in the form at once (no list/None toggle); empty or None: the default destination and the lookback's
VerifyDestinations = Annotated[list[VerifyDestination] | SkipJsonSchema[None], CheckedIfGiven(DESTINATION_LIST_RULES)]


class ScrubTarget(BaseModel):
    destination: Destination
    label: str
    #: the URL it was given as (repairs then go there as an override), None if found from
    #: the default destination or a storage_config (repairs go where the recording belongs)
    url: str | None = None
    #: only this directory of it ("dir/"): an absolute SFTP storage_config.path
    prefix: str = ""


class Repair(BaseModel):
    recording_id: str
    destination: str
    repaired: bool
    detail: str


class VerifyReport(BaseModel):
    deep: bool = False
    destinations: list[DestinationScrub] = Field(default_factory=list)
    repairs: list[Repair] = Field(default_factory=list)
    #: destinations of recordings in the lookback that the scrub could not cover, and why
    notes: list[str] = Field(default_factory=list)

    @property
    def problems(self) -> list[FileProblem]:
        return [p for d in self.destinations for p in d.problems]

    def failure_message(self) -> str | None:
        errors = [d for d in self.destinations if d.error]
        problems = self.problems
        if not errors and not problems:
            return None
        damaged = {(d.destination, p.recording_id or p.sidecar) for d in self.destinations for p in d.problems}
        repaired = sum(1 for r in self.repairs if r.repaired)
        parts = []
        if problems:
            parts.append(f"{len(damaged)} archived recording(s) missing or corrupt ({repaired} re-archived)")
        if errors:
            parts.append(f"{len(errors)} destination(s) could not be verified")
        first = next((f"{p.file or p.sidecar}: {p.detail}" for p in problems), None) or f"{errors[0].destination}: {errors[0].error}"
        return f"{', '.join(parts)}; first: {first}"


def scrub_targets(urls: list[str], settings: Settings, recordings: list[Recording]) -> tuple[list[ScrubTarget], list[str]]:
    """The destinations to scrub (deduplicated), and notes on those that cannot be. Found from
    recordings, they are where archiving put them (``scrub_scope``: the same placement)."""
    targets: dict[str, ScrubTarget] = {}
    notes: list[str] = []

    def add(dest: Destination, url: str | None, prefix: str = "") -> None:
        label = scope_label(dest, prefix)
        targets.setdefault(label, ScrubTarget(destination=dest, label=label, url=url, prefix=prefix))

    def note(text: str) -> None:
        if text not in notes:
            notes.append(text)

    if urls:
        for url in urls:
            add(parse_destination_url(url), url)
        return list(targets.values()), notes
    if settings.archive_default_destination:
        add(parse_destination_url(settings.archive_default_destination), None)
    for rec in recordings:
        sc = rec.storage_config
        if sc is None or not sc.type:
            continue
        if rec.status == "ERRORED" and not rec.has_files:
            continue  # nothing of it was ever archived: its storage is not ours to check
        try:
            dest, prefix = scrub_scope(rec, None, None)
        except (InvalidDestination, UnsupportedDestination) as exc:
            note(f"storage_config of type {sc.type!r} (recording {rec.id}): {exc}")
            continue
        if prefix == "/":
            note(f"recording {rec.id} is archived at the root directory of {dest.display_url()}: "
                 "give that URL to verify it (the whole server is not walked unasked)")
            continue
        add(dest, None, prefix)
    return list(targets.values()), notes


@flow(name="verify-archive", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=True)
def verify_archive(
    destinations: VerifyDestinations = form_field(
        [], "Destinations",
        "Destinations to verify; empty: the default destination and every storage_config destination "
        "of the recordings in the lookback window.",
    ),
    deep: bool = form_field(False, "Deep (re-read and re-hash)",
                            "Re-read and re-hash (sha256) files on storage that reports no hashes (file, SFTP)."),
    repair: bool = form_field(True, "Repair", "Archive missing or corrupt recordings again when RealtimeKit still has them."),
) -> VerifyReport:
    """Check every archived recording's files against its sidecar; re-archive what is damaged."""
    quiet_expected_tracebacks()
    logger = get_run_logger()
    settings = load_settings()
    recordings: list[Recording] = []
    if not destinations:
        from tasks.limits import ensure_limits
        from tasks.listing import list_recordings

        ensure_limits(settings)
        now = datetime.now(timezone.utc)
        recordings = list_recordings(now - timedelta(days=settings.archive_lookback_days), now).recordings
    targets, notes = scrub_targets(destinations or [], settings, recordings)
    for note in notes:
        logger.warning("Not verified: %s", note)
    report = VerifyReport(deep=deep, notes=notes)
    scrub = retrying(verify_destination, settings)  # ARCHIVE_TASK_RETRIES, like every task
    futures = [(t, scrub.submit(t.destination, t.label, deep, t.prefix)) for t in targets]
    for target, future in futures:
        result = future.result(raise_on_failure=False)
        if not isinstance(result, DestinationScrub):
            reason = redact_urls(str(result) if isinstance(result, BaseException) else "the task did not complete")
            logger.error("Could not verify %s: %s", target.label, reason)
            result = DestinationScrub(destination=target.label, error=reason)
        report.destinations.append(result)
    if repair and report.problems:
        report.repairs = repair_damaged(report, targets, settings)
    publish_verify_report(report)
    message = report.failure_message()
    if message:
        logger.error("Verify failed: %s", message)
        failed_on_purpose()
        return Failed(message=message, data=report)  # type: ignore[return-value]
    logger.info(
        "Verified %d destination(s): %d sidecar(s), %d file(s), nothing missing or corrupt",
        len(report.destinations), sum(d.sidecars for d in report.destinations), sum(d.files for d in report.destinations),
    )
    return report


def repair_damaged(report: VerifyReport, targets: list[ScrubTarget], settings: Settings) -> list[Repair]:
    """Archive each damaged recording again, in place, when RealtimeKit still has its files."""
    from flows.archive import archive_all
    from tasks.limits import ensure_limits
    from tasks.listing import get_recording

    logger = get_run_logger()
    ensure_limits(settings)
    by_label = {t.label: t for t in targets}
    repairs: list[Repair] = []
    # (destination label, override URL) -> recordings to archive again there
    batches: dict[tuple[str, str | None], list[Recording]] = defaultdict(list)
    for scrub in report.destinations:
        target = by_label[scrub.destination]
        damaged: dict[str, str] = {}
        for p in scrub.problems:
            if p.recording_id is None:
                repairs.append(Repair(recording_id="?", destination=scrub.destination, repaired=False,
                                      detail=f"{p.sidecar}: unreadable sidecar, the recording is unknown"))
            else:
                damaged.setdefault(p.recording_id, p.sidecar)
        for rid, sidecar_key in damaged.items():
            def no(detail: str) -> None:
                repairs.append(Repair(recording_id=rid, destination=scrub.destination, repaired=False, detail=detail))

            try:
                rec = get_recording(rid)
            except Exception as exc:  # noqa: BLE001 - named in the report
                no(f"RealtimeKit does not give the recording any more: {redact_urls(str(exc)) or type(exc).__name__}")
                continue
            if rec.status != "UPLOADED" or not rec.download_url:
                no(f"RealtimeKit no longer has its files (status {rec.status}, no download URL): cannot be re-archived")
                continue
            if sidecar_key not in sidecar_keys(rec):
                no(f"its sidecar {sidecar_key} is not where the archiver puts it now: not re-archived in place")
                continue
            override = target.url
            if override is None:
                try:
                    belongs = scope_label(*scrub_scope(rec, None, settings.archive_default_destination))
                except Exception as exc:  # noqa: BLE001
                    belongs = f"nowhere ({exc})"
                if belongs != scrub.destination:
                    no(f"it now belongs to {belongs}, not here: not re-archived in place")
                    continue
            batches[(scrub.destination, override)].append(rec)
    for (label, override), recs in batches.items():
        ids = frozenset(r.id for r in recs)
        logger.warning("Re-archiving %d damaged recording(s) to %s", len(recs), label)
        outcomes = archive_all(recs, override, False, settings, force_ids=ids)
        for o in outcomes:
            ok = o.kind == OutcomeKind.ARCHIVED
            detail = f"re-archived ({o.bytes_transferred} bytes)" if ok else f"not re-archived: {o.kind.value}: {o.reason}"
            repairs.append(Repair(recording_id=o.recording_id, destination=label, repaired=ok, detail=detail))
    return repairs


def publish_verify_report(report: VerifyReport) -> None:
    repairs = {(r.destination, r.recording_id): r for r in report.repairs}
    rows = []
    damaged: dict[tuple[str, str], list[FileProblem]] = defaultdict(list)
    for d in report.destinations:
        for p in d.problems:
            damaged[(d.destination, p.recording_id or "?")].append(p)
            r = repairs.get((d.destination, p.recording_id or "?"))
            rows.append({  # what explains a row first, then where
                "problem": p.problem, "recording": p.recording_id or "?", "detail": p.detail,
                "repair": r.detail if r else "not attempted", "file": p.file or p.sidecar, "destination": d.destination,
            })
        if d.error:
            rows.append({"problem": "error", "recording": "", "detail": d.error, "repair": "", "file": "",
                         "destination": d.destination})
    if rows:
        create_table_artifact(table=[printable_row(r) for r in rows], key="rtk-verify-report", description="Missing or corrupt archived files")
    for (dest, rid), problems in damaged.items():
        r = repairs.get((dest, rid))
        emit_event(
            event=EVENT_CORRUPT,
            resource={"prefect.resource.id": f"rtk.recording.{rid if rid != '?' else 'unknown'}", "prefect.resource.name": problems[0].sidecar},
            payload={
                "destination": dest,
                "problems": [p.model_dump(include={"file", "problem", "detail"}) for p in problems],
                "repaired": bool(r and r.repaired),
                "repair": r.detail if r else "not attempted",
            },
        )
    lines = [
        f"| {markdown_text(d.destination)} | {d.sidecars} | {d.files} | {len(d.problems)} | {markdown_text(d.error or '')} |"
        for d in report.destinations
    ]
    table = "| destination | sidecars | files | problems | error |\n|---|---|---|---|---|\n" + "\n".join(lines)
    notes = "".join(f"\n- not verified: {markdown_text(n)}" for n in report.notes)
    message = report.failure_message()
    create_markdown_artifact(
        key="rtk-verify-report-summary",
        description="Archive verification summary",
        markdown=f"# Archive verification{' (deep)' if report.deep else ''}\n\n{table}\n\n"
        f"{'**' + markdown_text(message) + '**' if message else 'Nothing missing or corrupt.'}\n{notes}\n",
    )

