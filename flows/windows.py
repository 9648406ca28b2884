"""Splitting a time range into archive windows (backfills) and finding the poll window."""

from __future__ import annotations

from datetime import datetime, timedelta

from typing import Annotated

from pydantic import BaseModel, Field, model_validator

DESTINATION_PATTERN = r"^(file|s3|gs|gcs|sftp)://"
DESTINATION_HELP = (
    "Archive everything here instead of each recording's storage_config: file:///path, "
    "s3://bucket/prefix, gs://bucket/prefix or sftp://user@host:port/path."
)
#: a destination override as a flow parameter: the UI form shows it, the server validates it
DestinationParam = Annotated[str | None, Field(pattern=DESTINATION_PATTERN, description=DESTINATION_HELP)]


class Window(BaseModel):
    since: datetime
    until: datetime

    @model_validator(mode="after")
    def _ordered(self) -> "Window":
        if self.since >= self.until:
            raise ValueError(f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()})")
        return self


def split_range(start: datetime, end: datetime, size: timedelta) -> list[Window]:
    """Consecutive half-open windows [since, until) covering [start, end); the last one may be shorter."""
    if size <= timedelta(0):
        raise ValueError("window size must be positive")
    if start >= end:
        raise ValueError(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    windows: list[Window] = []
    since = start
    while since < end:
        until = min(since + size, end)
        windows.append(Window(since=since, until=until))
        since = until
    return windows
