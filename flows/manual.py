"""The manual run from the Prefect UI: one recording, a list of ids, or a whole meeting.

The parameters are one pydantic model, so the UI shows them as a form with descriptions,
and the server validates them (patterns, limits) before a run is created.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.archive import archive_all, finish_report, invalid_outcome
from flows.runtime import ArchiveTaskRunner, retrying
from flows.parameters import BLANK, ID_LIST_RULES, MAX_IDS, Checked, Identifier, OptionalIdentifier, expect, not_given
from flows.windows import OptionalDestination
from rtk_archiver.models import ArchiveReport, OutcomeKind, Recording, RecordingOutcome
from rtk_archiver.settings import load_settings
from tasks.limits import ensure_limits
from tasks.listing import get_recording, list_meeting_recordings

RecordingIds = Annotated[list[Identifier], Checked(ID_LIST_RULES)]

EMPTY_REQUEST = "recording_ids, a meeting_id, or both"
#: neither recording_ids nor meeting_id (absent, empty, null, or only whitespace): refused by
#: the server; the error is put on recording_ids when it is there (the UI's form shows it under
#: that field), else on the request
_EMPTY_RULE = {
    "if": {"type": "object", "properties": {
        "recording_ids": {"maxItems": 0}, "meeting_id": {"anyOf": [{"type": "null"}, BLANK]},
    }},
    "then": {
        "if": {"required": ["recording_ids"]},
        "then": {"properties": {"recording_ids": expect(EMPTY_REQUEST)}},
        "else": expect(EMPTY_REQUEST),
    },
}


class ManualRequest(BaseModel):
    """What to archive now: recording ids, a meeting, or both."""

    # unknown keys are refused (not stored with the run and ignored); the empty request is
    # refused by the server too (the JSON schema's if/then), not only by the check below
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, json_schema_extra=_EMPTY_RULE)

    recording_ids: RecordingIds = Field(
        default_factory=list,
        description=f"Recording ids to archive (from the RealtimeKit dashboard or API), at most {MAX_IDS:,}.",
    )
    # text boxes in the form; empty (or null) means not given: None here
    meeting_id: OptionalIdentifier = not_given(description="Archive every finished recording of this meeting.")
    destination: OptionalDestination = not_given()
    dry_run: bool = Field(default=False, description="Only report what would be archived.")

    @model_validator(mode="after")
    def _something(self) -> "ManualRequest":
        if not self.recording_ids and not self.meeting_id:
            raise ValueError(f"give {EMPTY_REQUEST}")
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
