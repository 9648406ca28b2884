"""A failing recording alerts once, not on every poll.

``rtk.recording.failed`` is what automations notify on. A recording that keeps failing (a
destination down for a day, a storage_config that cannot work) would emit it on every poll:
about 96 a day at the default interval. So each failure is remembered (a Prefect Variable,
``rtk_archiver_failure_alerts``: per recording, a digest of its reason, since when it fails
and when it last alerted) and the event is emitted

* the first time the recording fails,
* again when its reason changes (digits ignored: a changed byte count or duration is the
  same problem), and
* once every ``ALERT_REPEAT_HOURS`` (24 h) while it lasts, saying for how long it has failed.

A recording that is archived (or otherwise settled) is forgotten: if it fails again later,
that is a new alert. The memory is bounded (the oldest alerts are forgotten first: at worst a
repeated alert, never a missed one). A dry run reads the memory but never writes it.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any

from rtk_archiver.models import OutcomeKind, RecordingOutcome

FAILURE_MEMORY = "rtk_archiver_failure_alerts"
FAILURE_MEMORY_CHARS = 4800  # under Prefect's limit on a Variable's value
ALERT_REPEAT_HOURS = 24.0

#: outcomes that settle a recording: its failure (if any) is over
SETTLED = {OutcomeKind.ARCHIVED, OutcomeKind.ALREADY_ARCHIVED, OutcomeKind.DELIVERED, OutcomeKind.SKIPPED}


def token(recording_id: str) -> str:
    """A recording as a memory Variable keeps it: 12 hex digits of its id's sha256 (no id in clear)."""
    return hashlib.sha256(recording_id.encode()).hexdigest()[:12]


def reason_digest(reason: str | None) -> str:
    return hashlib.sha256(re.sub(r"\d+", "#", reason or "").encode()).hexdigest()[:8]


def _for(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h" if hours >= 1 else f"{seconds / 60:.0f} min"


class FailureAlerts:
    """Decides which failed outcomes of a run alert; ``save`` writes the memory back.

    ``memory``: token -> [reason digest, failing since (epoch s), last alert (epoch s)]."""

    def __init__(self, memory: dict[str, list[Any]], now: datetime | None = None) -> None:
        self.memory = {k: v for k, v in memory.items() if isinstance(v, list) and len(v) == 3}
        self.now = (now or datetime.now(timezone.utc)).timestamp()
        self.changed = False

    def decide(self, outcome: RecordingOutcome) -> dict[str, Any] | None:
        """For a failed outcome: the alert's details (None: already alerted, stay quiet).
        For a settled one: forget it. Anything else (pending): nothing changes."""
        key = token(outcome.recording_id)
        if outcome.kind in SETTLED:
            if self.memory.pop(key, None) is not None:
                self.changed = True
            return None
        if outcome.kind != OutcomeKind.FAILED:
            return None
        digest = reason_digest(outcome.reason)
        known = self.memory.get(key)
        since = float(known[1]) if known else self.now
        if known and known[0] == digest and self.now - float(known[2]) < ALERT_REPEAT_HOURS * 3600:
            return {"alert": None, "failing_since": datetime.fromtimestamp(since, timezone.utc).isoformat(timespec="minutes")}
        why = "first failure" if not known else "reason changed" if known[0] != digest else "still failing"
        self.memory[key] = [digest, since, self.now]
        self.changed = True
        failing_for = self.now - since
        return {
            "alert": why,
            "failing_since": datetime.fromtimestamp(since, timezone.utc).isoformat(timespec="minutes"),
            "failing_for": _for(failing_for) if known else "first failure",
        }

    def dump(self) -> dict[str, list[Any]]:
        kept = dict(sorted(self.memory.items(), key=lambda kv: float(kv[1][2])))  # oldest alert first
        while kept and len(json.dumps(kept, separators=(",", ":"))) > FAILURE_MEMORY_CHARS:
            kept.pop(next(iter(kept)))
        return kept


def json_variable(name: str) -> Any:
    """A Prefect Variable's value as JSON (None if unset or not JSON): what the archiver keeps
    there (the failure alerts, the watchdog's lost recordings) may come back as text."""
    from prefect.variables import Variable

    value = Variable.get(name, default=None)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    return value


def load_memory() -> dict[str, list[Any]]:
    value = json_variable(FAILURE_MEMORY)
    return value if isinstance(value, dict) else {}


def save_memory(alerts: FailureAlerts) -> None:
    from prefect.variables import Variable

    if alerts.changed:
        Variable.set(FAILURE_MEMORY, alerts.dump(), overwrite=True)
