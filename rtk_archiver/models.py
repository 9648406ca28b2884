"""Typed models for everything that crosses a boundary.

* ``Recording`` / ``StorageConfig`` / ``Meeting``: what the RealtimeKit Recordings API returns
  (unknown extra fields are tolerated, secrets that do show up are held as ``SecretStr``).
* ``ObjectInfo``: what a storage backend says about a stored object.
* ``Sidecar``: the JSON metadata written beside every archived recording.
* ``RecordingOutcome`` / ``ArchiveReport``: what a run did, per recording.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal
from pydantic import AliasChoices  # StorageConfig.account_id (its own line: merges beside other imports)

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class RecordingStatus(str, Enum):
    INVOKED = "INVOKED"
    RECORDING = "RECORDING"
    UPLOADING = "UPLOADING"
    UPLOADED = "UPLOADED"
    ERRORED = "ERRORED"
    PAUSED = "PAUSED"


class _ApiModel(BaseModel):
    # The API adds fields over time: tolerate and ignore what we do not know.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StorageConfig(_ApiModel):
    """Where a recording belongs. Secrets are write-only in the API; if one comes back anyway
    it is kept as a SecretStr so it can never be printed by accident."""

    type: str | None = None
    bucket: str | None = None
    region: str | None = None
    path: str | None = None
    host: str | None = None
    port: int | None = None
    username: str | None = None
    auth_method: str | None = None
    #: Cloudflare R2 (type "cloudflare"): the bucket's account (the API's field name is not documented)
    account_id: str | None = Field(default=None, validation_alias=AliasChoices("account_id", "accountId", "account"))
    access_key: SecretStr | None = None
    secret: SecretStr | None = None
    password: SecretStr | None = None
    private_key: SecretStr | None = None

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Any:
        # The SDK types it as a number: 22.0 is 22. Anything else is a clear error.
        if v is None or v == "":
            return None
        if isinstance(v, bool):
            raise ValueError("port must be a number")
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str) and v.strip().isdigit():
            return int(v.strip())
        return v

    @field_validator("access_key", "secret", "password", "private_key", mode="before")
    @classmethod
    def _secret(cls, v: Any) -> Any:
        if v is None or isinstance(v, SecretStr):
            return v
        return SecretStr(str(v))

    def public_dict(self) -> dict[str, Any]:
        """The non-secret fields, for sidecars, logs and reports."""
        return self.model_dump(exclude={"access_key", "secret", "password", "private_key"}, exclude_none=True)


class Meeting(_ApiModel):
    id: str
    title: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    status: str | None = None


class Recording(_ApiModel):
    id: str
    status: str
    invoked_time: datetime
    started_time: datetime | None = None
    stopped_time: datetime | None = None
    output_file_name: str
    download_url: str | None = None
    audio_download_url: str | None = None
    download_url_expiry: datetime | None = None
    file_size: int | None = None
    recording_duration: int | None = None
    session_id: str | None = None
    meeting_id: str | None = None
    meeting: Meeting | None = None
    storage_config: StorageConfig | None = None

    @field_validator("file_size", "recording_duration", mode="before")
    @classmethod
    def _int(cls, v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    @property
    def meeting_ref(self) -> str | None:
        return self.meeting.id if self.meeting else self.meeting_id

    def label(self) -> str:
        """A short, secret-free description for logs."""
        return f"{self.id} ({self.output_file_name!r})"


class Paging(_ApiModel):
    total_count: int | None = None
    start_offset: int | None = None
    end_offset: int | None = None


class ObjectInfo(BaseModel):
    """What a backend knows about one stored object (rclone's ``stat``)."""

    size: int
    hashes: dict[str, str] = Field(default_factory=dict)


class FileEntry(BaseModel):
    """One archived file, as recorded in the sidecar."""

    kind: Literal["video", "audio"]
    name: str
    size: int
    sha256: str
    hashes: dict[str, str] = Field(default_factory=dict)
    source_url_host: str | None = None


#: free text from the API is cut to this many characters in a sidecar, so that a sidecar stays
#: far below the size read back to check it (a 1.2 MB meeting title made it unreadable)
SIDECAR_TEXT_LIMIT = 2048


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SIDECAR_TEXT_LIMIT:
        return value[:SIDECAR_TEXT_LIMIT] + "…[cut]"
    if isinstance(value, dict):
        return {_cut(k): _cut(v) for k, v in list(value.items())[:64]}
    return value


class Sidecar(BaseModel):
    """The JSON metadata beside an archived recording (``<video>.metadata.json``).

    Written twice: first as a claim (``state="claimed"``, ``claimed`` = the file names about
    to be written) before any file, so the names belong to this recording even if the run is
    killed half-way; last as the commit marker (``state="complete"``, ``files`` with sizes
    and hashes). Only what a sidecar naming a recording lists or claims is ever replaced."""

    schema_version: int = 2
    state: Literal["claimed", "complete"] = "complete"  # sidecars of schema 1 were complete
    claimed: list[str] = Field(default_factory=list)
    #: which attempt wrote a claim (a first attempt only ever removes its own claim)
    claim_token: str | None = None
    #: who holds a claim (host, pid) while it archives; the claim is renewed meanwhile
    #: (``archived_at``): see tasks/limits.py, ``claim_is_live``
    claim_holder: dict[str, Any] | None = None
    recording_id: str
    meeting_id: str | None = None
    meeting_title: str | None = None
    session_id: str | None = None
    status: str
    invoked_time: datetime
    started_time: datetime | None = None
    stopped_time: datetime | None = None
    recording_duration: int | None = None
    output_file_name: str
    storage_config: dict[str, Any] | None = None
    files: list[FileEntry] = Field(default_factory=list)
    archived_at: datetime
    archiver_version: str

    @field_validator("meeting_title", "output_file_name", "session_id", "meeting_id", mode="before")
    @classmethod
    def _bounded_text(cls, v: Any) -> Any:
        return _cut(v)

    @field_validator("storage_config", mode="before")
    @classmethod
    def _bounded_config(cls, v: Any) -> Any:
        return _cut(v)

    def names(self) -> set[str]:
        """Every file name this sidecar lists or claims (in its own directory)."""
        return {f.name for f in self.files} | set(self.claimed)


class OutcomeKind(str, Enum):
    ARCHIVED = "archived"
    ALREADY_ARCHIVED = "already archived"
    WOULD_ARCHIVE = "would archive"  # dry run
    SKIPPED = "skipped"
    PENDING = "pending"  # not finished yet; a later run picks it up
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the run was stopped (Ctrl-C / SIGTERM) before it was archived


class RecordingOutcome(BaseModel):
    recording_id: str
    output_file_name: str | None = None
    kind: OutcomeKind
    reason: str | None = None
    destination: str | None = None
    bytes_transferred: int = 0
    bytes_total: int = 0
    seconds: float = 0.0
    #: when the recording stopped (or was invoked, if it has not stopped yet)
    reference_time: datetime | None = None
    #: skipped for now, but a later run may archive it once the configuration allows it (no
    #: default destination, a storage type not supported yet): the poll's mark waits for it
    retry_later: bool = False


class RecordingRisk(BaseModel):
    """A finished recording that is not archived and whose files on RealtimeKit expire soon
    (at risk) or are already gone (lost). Named by the expiry watchdog (flows/watchdog.py)."""

    recording_id: str
    output_file_name: str | None = None
    #: when RealtimeKit's copy stops being reachable (None: unknown)
    deadline: datetime | None = None
    reason: str


class ArchiveReport(BaseModel):
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = False
    outcomes: list[RecordingOutcome] = Field(default_factory=list)
    #: finished, not archived, files expire within ARCHIVE_EXPIRY_WARNING_HOURS
    at_risk: list[RecordingRisk] = Field(default_factory=list)
    #: finished, never archived, files already gone: reported by the first run that sees it
    lost: list[RecordingRisk] = Field(default_factory=list)

    def of(self, kind: OutcomeKind) -> list[RecordingOutcome]:
        return [o for o in self.outcomes if o.kind == kind]

    @property
    def failed(self) -> list[RecordingOutcome]:
        return self.of(OutcomeKind.FAILED)

    @property
    def bytes_transferred(self) -> int:
        return sum(o.bytes_transferred for o in self.outcomes)

    def counts(self) -> dict[str, int]:
        return {k.value: len(self.of(k)) for k in OutcomeKind}

    def run_failure_message(self) -> str | None:
        """None when the run succeeded; else why it failed: how many recordings failed, are at
        risk of expiring unarchived, or were lost, and the first reason. At-risk and lost
        recordings fail a run like failed ones do (a dry run only reports them)."""
        at_risk, lost = ([], []) if self.dry_run else (self.at_risk, self.lost)
        parts = [f"{len(self.failed)} of {len(self.outcomes)} recording(s) failed"] if self.failed else []
        parts += [
            f"{len(items)} recording(s) {what}"
            for items, what in ((at_risk, "at risk of expiring unarchived"), (lost, "lost"))
            if items
        ]
        if not parts:
            return None
        first = next(iter(self.failed), None)
        reason = f"{first.recording_id}: {first.reason or 'failed'}" if first else None
        if reason is None:
            risk = (at_risk or lost)[0]
            reason = f"{risk.recording_id}: {risk.reason}"
        return f"{', '.join(parts)}; first: {reason}"
