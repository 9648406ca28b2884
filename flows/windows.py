"""Splitting a time range into archive windows (backfills) and finding the poll window."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, model_validator


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
