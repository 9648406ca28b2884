"""The manual run from the Prefect UI: one recording, a list of ids, or a whole meeting.

The parameters are one pydantic model, so the UI shows them as a form with descriptions,
and the server validates them (patterns, limits) before a run is created.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import BaseModel, Field, StringConstraints, model_validator

from flows.archive import archive_all, finish_report, invalid_outcome
from flows.runtime import ArchiveTaskRunner, retrying
from flows.windows import DestinationParam
from rtk_archiver.models import ArchiveReport, OutcomeKind, Recording, RecordingOutcome
from rtk_archiver.settings import load_settings
from tasks.limits import ensure_limits
from tasks.listing import get_recording, list_meeting_recordings

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class ManualRequest(BaseModel):
    """What to archive now."""

    recording_ids: list[Identifier] = Field(
        default_factory=list, max_length=1000, description="Recording ids to archive (from the RealtimeKit dashboard or API)."
    )
    meeting_id: Identifier | None = Field(default=None, description="Archive every finished recording of this meeting.")
    destination: DestinationParam = None
    dry_run: bool = Field(default=False, description="Only report what would be archived.")

    @model_validator(mode="after")
    def _something(self) -> "ManualRequest":
        if not self.recording_ids and not self.meeting_id:
            raise ValueError("give recording_ids, a meeting_id, or both")
        return self


@flow(name="archive-manual", task_runner=ArchiveTaskRunner(), validate_parameters=True)
def archive_manual(request: ManualRequest) -> ArchiveReport:
    """Archive the given recordings and/or every finished recording of a meeting."""
    settings = load_settings()
    ensure_limits(settings)
    report = ArchiveReport(dry_run=request.dry_run)
    recordings: dict[str, Recording] = {}
    if request.meeting_id:
        listing = retrying(list_meeting_recordings, settings)(request.meeting_id)
        recordings.update({r.id: r for r in listing.recordings})
        report.outcomes.extend(invalid_outcome(i) for i in listing.invalid)
    for rid in request.recording_ids:
        if rid in recordings:
            continue
        state = retrying(get_recording, settings)(rid, return_state=True)
        found = state.result(raise_on_failure=False)
        if isinstance(found, Recording):
            recordings[rid] = found
        else:
            reason = f"cannot fetch the recording: {found}" if isinstance(found, BaseException) else "cannot fetch the recording"
            report.outcomes.append(RecordingOutcome(recording_id=rid, kind=OutcomeKind.FAILED, reason=reason))
    report.outcomes.extend(archive_all(list(recordings.values()), request.destination, request.dry_run, settings))
    return finish_report(report)
