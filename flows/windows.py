"""Splitting a time range into archive windows (backfills) and finding the poll window."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from rtk_archiver.settings import Settings
# the destination parameter's rules (what the server refuses) live with the other parameters
from flows.parameters import DESTINATION_HELP, DESTINATION_PATTERN, DestinationParam  # noqa: F401 - re-exported


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


def resolve_window(since: datetime | None, until: datetime | None, settings: Settings) -> tuple[datetime, datetime]:
    """Default window: as far back as RealtimeKit keeps files plus a margin, up to now."""
    now = datetime.now(timezone.utc)
    until = _aware(until) if until else now
    since = _aware(since) if since else until - timedelta(days=settings.archive_lookback_days)
    if since >= until:
        raise ValueError(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    return since, until


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
