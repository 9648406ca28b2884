"""The poll's high-water mark never passes a recording that failed, for any reason: a
malformed answer today is archived by a later poll once the API serves it correctly."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from prefect.variables import Variable

from flows.poll import POLL_MARK, next_mark, poll_recordings
from rtk_archiver.models import ArchiveReport, OutcomeKind, RecordingOutcome
from tests.fixtures import run_report

NOW = datetime.now(timezone.utc)


def test_next_mark_holds_for_failures_with_and_without_a_time():
    previous, started = NOW - timedelta(hours=3), NOW
    ok = RecordingOutcome(recording_id="a", kind=OutcomeKind.ARCHIVED, reference_time=NOW - timedelta(hours=2))
    failed = RecordingOutcome(recording_id="b", kind=OutcomeKind.FAILED, reference_time=NOW - timedelta(hours=1))
    timeless = RecordingOutcome(recording_id="c", kind=OutcomeKind.FAILED, reference_time=None)
    assert next_mark(ArchiveReport(outcomes=[ok]), previous, started) == started
    assert next_mark(ArchiveReport(outcomes=[ok, failed]), previous, started) == failed.reference_time
    assert next_mark(ArchiveReport(outcomes=[ok, failed, timeless]), previous, started) == previous


@pytest.mark.usefixtures("prefect_harness")
def test_a_malformed_recording_is_archived_by_a_later_poll(archiver_env):
    env = archiver_env
    Variable.set(POLL_MARK, (NOW - timedelta(hours=3)).isoformat(), overwrite=True)
    bad = env.state.add_recording(file_size=1000, stopped_time=NOW - timedelta(hours=2), recording_duration="about ten minutes")
    good = env.state.add_recording(file_size=1000, stopped_time=NOW - timedelta(hours=1))
    report = run_report(poll_recordings, overlap_minutes=0)
    kinds = {o.recording_id: o.kind for o in report.outcomes}
    assert kinds == {bad["id"]: OutcomeKind.FAILED, good["id"]: OutcomeKind.ARCHIVED}
    mark = datetime.fromisoformat(Variable.get(POLL_MARK))
    assert mark <= NOW - timedelta(hours=2) + timedelta(seconds=1)  # not past the malformed one

    env.state.recordings[bad["id"]].recording_duration = 600  # the API serves it correctly now
    later = run_report(poll_recordings, overlap_minutes=0)
    kinds = {o.recording_id: o.kind for o in later.outcomes}
    assert kinds[bad["id"]] == OutcomeKind.ARCHIVED
    assert (env.archive / bad["output_file_name"]).stat().st_size == 1000
    assert datetime.fromisoformat(Variable.get(POLL_MARK)) > NOW
