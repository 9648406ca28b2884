"""Splitting a time range into archive windows (backfills) and finding the poll window."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from rtk_archiver.settings import Settings
# the destination parameter's rules (what the server refuses) live with the other parameters
from flows.parameters import (  # noqa: F401 - re-exported
    DESTINATION_HELP,
    DESTINATION_PATTERN,
    OptionalDestination,
)


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


#: a backfill spread over several workers gives each child run at least this many recordings
#: (a child run costs a process start, ~5 s: fewer recordings are not worth it)
MIN_RECORDINGS_PER_CHILD = 25


class PlannedWindow(Window):
    #: recordings the backfill's planning listing found in [since, until)
    recordings: int = 0


def plan_windows(
    start: datetime,
    end: datetime,
    times: Sequence[datetime],
    *,
    per_window: int,
    parallelism: int = 1,
    max_span: timedelta | None = None,
) -> list[PlannedWindow]:
    """A backfill's windows over [start, end), planned from the reference times (stopped, else
    invoked) of the recordings one listing found there; pure.

    - At most ``per_window`` recordings per window (more only when recordings share one time:
      a boundary never separates them), balanced: the windows hold nearly equal counts.
    - Up to ``per_window`` recordings in all: ONE window over the whole range (the backfill
      runs it itself, no child run). More: at least ``min(parallelism, n // MIN_RECORDINGS_PER_CHILD)``
      windows, so a big backfill spreads over every worker.
    - Without ``max_span`` the windows are consecutive and cover [start, end) without gap or
      overlap (a recording listed later, anywhere in the range, still falls in one of them).
      With ``max_span`` (hours the user asked for) no window is longer: the range is split into
      spans of that size first, spans the listing found empty are left out (unless all are).
    """
    if per_window < 1 or parallelism < 1:
        raise ValueError("per_window and parallelism must be at least 1")
    start, end = _aware(start), _aware(end)
    if start >= end:
        raise ValueError(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    inside = sorted(t for t in map(_aware, times) if start <= t < end)
    if max_span is None:
        n = len(inside)
        chunks = 1 if n <= per_window else max(math.ceil(n / per_window), min(parallelism, n // MIN_RECORDINGS_PER_CHILD))
        return _balanced(start, end, inside, chunks)
    windows: list[PlannedWindow] = []
    for span in split_range(start, end, max_span):
        here = [t for t in inside if span.since <= t < span.until]
        if here:
            windows += _balanced(span.since, span.until, here, math.ceil(len(here) / per_window))
    return windows or [PlannedWindow(since=start, until=end, recordings=0)]


def _balanced(start: datetime, end: datetime, times: list[datetime], chunks: int) -> list[PlannedWindow]:
    """[start, end) cut before the first time of each chunk of ``ceil(len / chunks)`` sorted times
    (never between equal times)."""
    size = max(1, math.ceil(len(times) / max(1, chunks)))
    bounds, counts, count = [start], [], 0
    for i, t in enumerate(times):
        if count >= size and t > times[i - 1]:
            bounds.append(t)
            counts.append(count)
            count = 0
        count += 1
    counts.append(count)
    bounds.append(end)
    return [PlannedWindow(since=a, until=b, recordings=c) for a, b, c in zip(bounds, bounds[1:], counts)]


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
