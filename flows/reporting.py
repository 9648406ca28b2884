"""What a run shows in the Prefect UI: a table artifact per recording, a markdown summary,
and one event per archived or failed recording (for automations / notifications). None of
them without a Prefect API to send them to (a flow body run by ``flows.direct``, which does
not import Prefect: its functions are imported where they are used)."""

from __future__ import annotations

import importlib
import time
from typing import Any

from rtk_archiver.display import markdown_text, printable
from rtk_archiver.models import ArchiveReport, OutcomeKind, RecordingOutcome
from flows import direct

#: Prefect's functions used here, imported on first use (a run without Prefect never does)
_PREFECT = {
    "create_markdown_artifact": "prefect.artifacts",
    "create_progress_artifact": "prefect.artifacts",
    "create_table_artifact": "prefect.artifacts",
    "update_progress_artifact": "prefect.artifacts",
    "emit_event": "prefect.events",
}


def __getattr__(name: str) -> Any:
    if name not in _PREFECT:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PREFECT[name]), name)
    globals()[name] = value
    return value


def _prefect(name: str) -> Any:
    """One of ``_PREFECT``'s functions (as set on this module, if it was: tests replace them)."""
    return globals().get(name) or __getattr__(name)


class Progress:
    """A progress artifact for long runs, updated at most every ``every`` seconds."""

    def __init__(self, total: int, every: float = 2.0) -> None:
        self.total, self.done, self.every = total, 0, every
        self.last = time.monotonic()
        self.artifact_id = None
        if total and not direct.active():
            self.artifact_id = _prefect("create_progress_artifact")(progress=0.0, key="rtk-archive-progress", description=f"{total} recording(s) to archive")

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.artifact_id and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            _prefect("update_progress_artifact")(self.artifact_id, progress=100.0 * self.done / self.total)


EVENT_FOR = {
    OutcomeKind.ARCHIVED: "rtk.recording.archived",
    OutcomeKind.DELIVERED: "rtk.recording.delivered",
    OutcomeKind.FAILED: "rtk.recording.failed",
}
#: what became of RealtimeKit's own upload to a storage_config, when it needs someone's eyes:
#: missing (the archiver stored the recording, or, without a download URL, it is lost) or
#: damaged (kept as it is; the verified copy is archived under the recording's own name)
UPLOAD_EVENT_FOR = {"missing": "rtk.recording.upload-missing", "damaged": "rtk.recording.upload-damaged"}
_PAYLOAD = {"kind", "reason", "destination", "bytes_total", "bytes_transferred", "seconds", "upload", "upload_note"}


def outcome_events(outcome: RecordingOutcome) -> list[str]:
    """The events an outcome emits (its kind's, and one about RealtimeKit's upload)."""
    names = [EVENT_FOR[outcome.kind]] if outcome.kind in EVENT_FOR else []
    if outcome.upload in UPLOAD_EVENT_FOR and outcome.kind != OutcomeKind.WOULD_ARCHIVE:
        names.append(UPLOAD_EVENT_FOR[outcome.upload])
    return names


def emit_outcome_event(outcome: RecordingOutcome, alert: dict[str, Any] | None = None, skip: frozenset[str] = frozenset()) -> None:
    """``alert``: for a failure, what ``flows.alerts`` said (in the payload); ``skip``: events
    not to emit (a failure alerted before). The reason and the file are also related resources,
    so that the Event Feed (and an event's Details) show them, not only the raw payload."""
    if direct.active():
        return
    for name in outcome_events(outcome):
        if name in skip:
            continue
        # the Prefect UI's Event Feed shows a related resource by its id (not its name): the
        # reason and the file name are written into ids of their own
        related = []
        if outcome.reason:
            related.append({"prefect.resource.id": f"reason: {printable(outcome.reason, 500)}", "prefect.resource.role": "reason"})
        if outcome.output_file_name:
            related.append({"prefect.resource.id": f"file: {printable(outcome.output_file_name, 200)}", "prefect.resource.role": "file"})
        _prefect("emit_event")(
            event=name,
            resource={"prefect.resource.id": f"rtk.recording.{outcome.recording_id}", "prefect.resource.name": printable(outcome.output_file_name or outcome.recording_id)},
            related=related or None,
            payload={**outcome.model_dump(mode="json", include=_PAYLOAD), **(alert or {})},
        )


def publish_report(report: ArchiveReport, key: str = "rtk-archive-report") -> None:
    if direct.active():
        return
    rows = [
        {
            # text from the API (ids, names, reasons) with control / bidi characters escaped
            # what explains a row first (read at a glance, on screen at 1400 px), then where
            "outcome": o.kind.value,
            "recording": printable(o.recording_id),
            "reason": printable(o.reason or o.upload_note or ""),
            "file": printable(o.output_file_name or ""),
            "bytes": o.bytes_total,
            # archived: where it is; failed: where it was going
            "destination": printable(o.destination or ""),
            "realtimekit upload": printable(o.upload or ""),
        }
        for o in report.outcomes
    ]
    if rows:
        _prefect("create_table_artifact")(table=rows, key=key, description="What this run did, per recording")
    counts = "\n".join(f"| {k} | {n} |" for k, n in report.counts().items() if n) or "| nothing to do | 0 |"
    window = f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC" if report.since and report.until else "single recording"
    failures = "\n".join(
        f"- {markdown_text(o.recording_id)} {markdown_text(o.output_file_name or '')}: {markdown_text(o.reason)}"
        for o in report.failed
    )
    _prefect("create_markdown_artifact")(
        key=f"{key}-summary",
        description="Run summary",
        markdown=(
            f"# RealtimeKit archive run{' (dry run)' if report.dry_run else ''}\n\n"
            f"Window: {window}\n\n| outcome | recordings |\n|---|---|\n{counts}\n\n"
            f"Bytes transferred: {report.bytes_transferred:,}\n"
            + (f"\n## Failures\n{failures}\n" if failures else "")
        ),
    )
