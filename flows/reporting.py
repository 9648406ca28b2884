"""What a run shows in the Prefect UI: a table artifact per recording, a markdown summary,
and one event per archived or failed recording (for automations / notifications). None of
them without a Prefect API to send them to (a flow body run by ``flows.direct``, which does
not import Prefect: its functions are imported where they are used)."""

from __future__ import annotations

import time

from rtk_archiver.display import markdown_text, printable
from rtk_archiver.models import ArchiveReport, OutcomeKind, RecordingOutcome
from flows import direct

class Progress:
    """A progress artifact for long runs, updated at most every ``every`` seconds."""

    def __init__(self, total: int, every: float = 2.0) -> None:
        self.total, self.done, self.every = total, 0, every
        self.last = time.monotonic()
        self.artifact_id = None
        if total and not direct.active():
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(progress=0.0, key="rtk-archive-progress", description=f"{total} recording(s) to archive")

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.artifact_id and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, progress=100.0 * self.done / self.total)


EVENT_FOR = {OutcomeKind.ARCHIVED: "rtk.recording.archived", OutcomeKind.FAILED: "rtk.recording.failed"}


def emit_outcome_event(outcome: RecordingOutcome) -> None:
    name = EVENT_FOR.get(outcome.kind)
    if name is None or direct.active():
        return
    from prefect.events import emit_event

    emit_event(
        event=name,
        resource={"prefect.resource.id": f"rtk.recording.{outcome.recording_id}", "prefect.resource.name": printable(outcome.output_file_name or outcome.recording_id)},
        payload=outcome.model_dump(mode="json", include={"kind", "reason", "destination", "bytes_total", "bytes_transferred", "seconds"}),
    )


def publish_report(report: ArchiveReport, key: str = "rtk-archive-report") -> None:
    if direct.active():
        return
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = [
        {
            # text from the API (ids, names, reasons) with control / bidi characters escaped
            "outcome": o.kind.value,
            "recording": printable(o.recording_id),
            "file": printable(o.output_file_name or ""),
            "bytes": o.bytes_total,
            "destination": printable(o.destination or ""),
            "reason": printable(o.reason or ""),
        }
        for o in report.outcomes
    ]
    if rows:
        create_table_artifact(table=rows, key=key, description="What this run did, per recording")
    counts = "\n".join(f"| {k} | {n} |" for k, n in report.counts().items() if n) or "| nothing to do | 0 |"
    window = f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC" if report.since and report.until else "single recording"
    failures = "\n".join(
        f"- {markdown_text(o.recording_id)} {markdown_text(o.output_file_name or '')}: {markdown_text(o.reason)}"
        for o in report.failed
    )
    create_markdown_artifact(
        key=f"{key}-summary",
        description="Run summary",
        markdown=(
            f"# RealtimeKit archive run{' (dry run)' if report.dry_run else ''}\n\n"
            f"Window: {window}\n\n| outcome | recordings |\n|---|---|\n{counts}\n\n"
            f"Bytes transferred: {report.bytes_transferred:,}\n"
            + (f"\n## Failures\n{failures}\n" if failures else "")
        ),
    )
