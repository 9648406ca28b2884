"""The unit of work that asks the RealtimeKit API which recordings a window holds."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel

from rtk_archiver.api import InvalidRecording, RealtimeKitAPI
from rtk_archiver.log import run_logger
from rtk_archiver.models import Recording
from rtk_archiver.settings import load_settings
from tasks.define import task
from tasks.limits import api_throttle
from tasks.retry import retry_transient

#: RealtimeKit recordings last at most 24 h (max_seconds <= 86400): a recording that stopped
#: inside the window was invoked at most this long before it.
MAX_RECORDING_LENGTH = timedelta(seconds=86400)


class Listing(BaseModel):
    recordings: list[Recording]
    invalid: list[InvalidRecording]


def stopped_within(recording: Recording, since: datetime, until: datetime) -> bool:
    """Recordings are selected by when they stopped; unfinished ones by when they were invoked."""
    when = recording.stopped_time or recording.invoked_time
    return since <= when < until


@task(name="list-recordings", retries=3, retry_condition_fn=retry_transient, retry_delay_seconds=[5, 20, 60], no_cache=True, persist_result=False)
def list_recordings(since: datetime, until: datetime) -> Listing:
    """Every recording that stopped in [since, until), plus unfinished ones invoked in it."""
    settings = load_settings()
    logger = run_logger()
    recordings: list[Recording] = []
    invalid: list[InvalidRecording] = []
    with RealtimeKitAPI(settings, throttle=api_throttle) as api:
        for item in api.iter_recordings(start_time=since - MAX_RECORDING_LENGTH, end_time=until):
            if isinstance(item, InvalidRecording):
                invalid.append(item)
            elif stopped_within(item, since, until):
                recordings.append(item)
    logger.info(
        "Found %d recording(s) in [%s, %s)%s",
        len(recordings), since.isoformat(), until.isoformat(),
        f", {len(invalid)} malformed" if invalid else "",
    )
    return Listing(recordings=recordings, invalid=invalid)


@task(name="get-recording", retries=3, retry_condition_fn=retry_transient, retry_delay_seconds=[5, 20, 60], no_cache=True, persist_result=False)
def get_recording(recording_id: str) -> Recording:
    with RealtimeKitAPI(load_settings(), throttle=api_throttle) as api:
        return api.get_recording(recording_id)


@task(name="list-meeting-recordings", retries=3, retry_condition_fn=retry_transient, retry_delay_seconds=[5, 20, 60], no_cache=True, persist_result=False)
def list_meeting_recordings(meeting_id: str) -> Listing:
    """Every recording of one meeting, whatever its time."""
    settings = load_settings()
    recordings: list[Recording] = []
    invalid: list[InvalidRecording] = []
    with RealtimeKitAPI(settings, throttle=api_throttle) as api:
        for item in api.iter_recordings(meeting_id=meeting_id):
            (invalid if isinstance(item, InvalidRecording) else recordings).append(item)
    run_logger().info("Meeting %s has %d recording(s)", meeting_id, len(recordings))
    return Listing(recordings=recordings, invalid=invalid)
