"""A download that stalls or trickles never hangs a run: less than 64 KiB received in
ARCHIVE_DOWNLOAD_STALL_SECONDS is a stall, resumed like a reset (Range), and the recording
fails, naming the bytes received, once ARCHIVE_DOWNLOAD_RESUMES are spent. Issue 10."""

from __future__ import annotations

import logging
import re
import time

import httpx
import pytest

from flows.archive import archive_recordings
from rtk_archiver.models import OutcomeKind
from rtk_archiver.simulator import media_bytes
from tasks.transfer import Download
from tests.fixtures import run_report

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def env(archiver_env, monkeypatch):
    monkeypatch.setenv("ARCHIVE_DOWNLOAD_STALL_SECONDS", "1")
    monkeypatch.setenv("ARCHIVE_DOWNLOAD_TIMEOUT_SECONDS", "60")  # the per-read timeout never fires here
    return archiver_env


def outcome(report, rec):
    return next(o for o in report.outcomes if o.recording_id == rec["id"])


@pytest.mark.timeout(120, func_only=True)  # before the fix this trickled for days
def test_trickle_is_a_stall_and_is_resumed_with_range(env):
    rec = env.state.add_recording(file_size=2 * 1024 * 1024 + 7)
    faults = env.state.faults
    faults.download_trickles = 1  # half the body, then 1 byte every 0.2 s
    faults.reset_after = rec["file_size"] // 2
    faults.trickle_interval = 0.2
    faults.trickle_max_seconds = 45  # (for code without stall detection: then a reset ends it)
    started = time.monotonic()
    report = run_report(archive_recordings)
    assert outcome(report, rec).kind == OutcomeKind.ARCHIVED, outcome(report, rec).reason
    assert time.monotonic() - started < 30
    assert (env.archive / rec["output_file_name"]).read_bytes() == media_bytes(rec["id"], "video", 0, rec["file_size"])
    assert env.state.downloads[(rec["id"], "video")] == 1  # resumed from where it stalled, not restarted


@pytest.mark.timeout(120, func_only=True)
def test_endless_trickle_fails_once_resumes_are_spent(env, monkeypatch):
    monkeypatch.setenv("ARCHIVE_DOWNLOAD_RESUMES", "2")
    monkeypatch.setenv("ARCHIVE_TASK_RETRIES", "0")
    rec = env.state.add_recording(file_size=4 * 1024 * 1024, audio=True)
    faults = env.state.faults
    faults.download_trickles = 1000
    faults.reset_after = 256 * 1024
    faults.trickle_interval = 0.2
    faults.trickle_max_seconds = 20
    started = time.monotonic()
    report = run_report(archive_recordings)
    took = time.monotonic() - started
    got = outcome(report, rec)
    assert got.kind == OutcomeKind.FAILED
    assert "video download broke 3 times (last: stalled" in got.reason, got.reason
    received = int(re.search(r"received (\d+) of 4194304 bytes", got.reason).group(1))
    assert 3 * 256 * 1024 <= received < 4 * 1024 * 1024
    assert took < 30, f"took {took:.0f} s"
    assert not [p for p in env.archive.rglob("*") if p.is_file()]  # nothing, not even a temp file


def test_a_silent_connection_is_a_stall_before_the_read_timeout(simulator):
    """Nothing at all arriving is caught after ARCHIVE_DOWNLOAD_STALL_SECONDS, not after the
    (longer) per-read timeout."""
    rec = simulator.state.add_recording(file_size=1024 * 1024)
    simulator.state.faults.download_stalls = 1
    simulator.state.faults.stall_seconds = 6
    simulator.state.faults.reset_after = 300_000
    view = simulator.state.view(simulator.state.recordings[rec["id"]])
    started = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0)) as http:
        download = Download(http, view["download_url"], kind="video", expected_size=rec["file_size"], url_expiry=None,
                            refresh=None, chunk_size=64 * 1024, max_resumes=2, logger=logging.getLogger("t"),
                            stall_seconds=1)
        body = b"".join(download.chunks())
    assert body == media_bytes(rec["id"], "video", 0, rec["file_size"])
    assert download.resumes == 1
    assert time.monotonic() - started < 5  # the server stayed silent for 6 s


def test_a_slow_upload_is_not_a_stalled_download(simulator):
    """Time the consumer holds the stream (a slow destination) is not counted as a stall."""
    rec = simulator.state.add_recording(file_size=512 * 1024)
    expected = media_bytes(rec["id"], "video", 0, rec["file_size"])  # (also warms the simulator's cache)
    view = simulator.state.view(simulator.state.recordings[rec["id"]])
    with httpx.Client(timeout=30) as http:
        download = Download(http, view["download_url"], kind="video", expected_size=rec["file_size"], url_expiry=None,
                            refresh=None, chunk_size=16 * 1024, max_resumes=0, logger=logging.getLogger("t"),
                            stall_seconds=1)
        parts = []
        for chunk in download.chunks():
            parts.append(chunk)
            if len(parts) < 4:
                time.sleep(1.2)  # the upload side is slow
    assert b"".join(parts) == expected and download.resumes == 0
