"""A flow run's final state tells the truth: any failed recording makes the run Failed (with
how many and the first reason); pending, skipped and already archived ones do not."""

from __future__ import annotations

import pytest

from flows.archive import archive_one, archive_recordings, report_of
from flows.manual import ManualRequest, archive_manual
from flows.poll import poll_recordings
from rtk_archiver.models import OutcomeKind

pytestmark = pytest.mark.usefixtures("prefect_harness")
NO_CREDENTIALS = {"type": "sftp", "host": "127.0.0.1", "port": 1, "username": "u", "auth_method": "KEY"}


def test_manual_run_whose_only_recording_failed_is_failed(archiver_env):
    bad = archiver_env.state.add_recording(file_size=1000, storage_config=NO_CREDENTIALS)
    state = archive_manual(ManualRequest(recording_ids=[bad["id"]]), return_state=True)
    assert state.is_failed()
    assert state.message.startswith("1 of 1 recording(s) failed; first: " + bad["id"])
    assert [o.kind for o in report_of(state).outcomes] == [OutcomeKind.FAILED]
    one = archive_one(bad["id"], return_state=True)
    assert one.is_failed() and bad["id"] in one.message


def test_pending_skipped_and_already_archived_are_not_failures(archiver_env):
    env = archiver_env
    env.state.add_recording(file_size=1000)
    env.state.add_recording(status="RECORDING", stopped_time=None)
    env.state.add_recording(status="ERRORED")
    first = archive_recordings(return_state=True)
    assert first.is_completed(), first.message
    again = archive_recordings(return_state=True)
    assert again.is_completed()
    kinds = sorted(o.kind.value for o in report_of(again).outcomes)
    assert kinds == ["already archived", "pending", "skipped"]


def test_a_poll_with_a_failed_recording_is_failed(archiver_env):
    from datetime import datetime, timedelta, timezone

    from prefect.variables import Variable

    from flows.poll import POLL_MARK

    env = archiver_env
    Variable.set(POLL_MARK, (datetime.now(timezone.utc) - timedelta(hours=6)).isoformat(), overwrite=True)
    env.state.add_recording(file_size=1000)
    bad = env.state.add_recording(file_size=1000, storage_config=NO_CREDENTIALS)
    state = poll_recordings(overlap_minutes=0, return_state=True)
    assert state.is_failed() and bad["id"] in state.message
    kinds = {o.recording_id: o.kind for o in report_of(state).outcomes}
    assert kinds[bad["id"]] == OutcomeKind.FAILED and OutcomeKind.ARCHIVED in kinds.values()
