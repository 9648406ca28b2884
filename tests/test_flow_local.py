"""The archive flow end to end: simulator -> Prefect flow -> local backend."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flows.archive import archive_one, archive_recordings
from rtk_archiver import cli
from rtk_archiver.models import OutcomeKind
from rtk_archiver.simulator.content import media_bytes
from tests.fixtures import run_report

pytestmark = pytest.mark.usefixtures("prefect_harness")
NOW = datetime.now(timezone.utc)


@pytest.fixture
def env(archiver_env, monkeypatch):
    monkeypatch.setenv("ARCHIVE_API_PAGE_SIZE", "2")  # several pages even for a handful
    return archiver_env


@pytest.fixture
def archive_dir(env) -> Path:
    return env.archive


def add(sim, **fields):
    fields.setdefault("status", "UPLOADED")
    fields.setdefault("storage_config", None)
    return sim.state.add_recording(**fields)


def expected(rid: str, kind: str, size: int) -> bytes:
    return media_bytes(rid, kind, 0, size)


def by_id(report):
    return {o.recording_id: o for o in report.outcomes}


def test_archives_stopped_recordings_and_rerun_transfers_nothing(env, archive_dir):
    with_audio = add(env, output_file_name="standup.mp4", file_size=300_000, audio=True)
    no_audio = add(env, output_file_name="retro.mp4", file_size=70_000, audio=False)
    in_path = add(env, output_file_name="deep.mp4", file_size=5_000, storage_config={"type": "aws", "path": "team/2026"})
    errored = add(env, status="ERRORED", output_file_name="broken.mp4")
    running = add(env, status="RECORDING", output_file_name="live.mp4", stopped_time=None)
    no_url = add(env, output_file_name="nobucket.mp4", bucket_enabled=False)
    azure = add(env, output_file_name="az.mp4", storage_config={"type": "azure", "bucket": "b"})

    # destination override: the aws recording lands in the local dir too, under its path
    report = run_report(archive_recordings, destination=f"file://{archive_dir}")
    out = by_id(report)
    assert out[with_audio["id"]].kind == OutcomeKind.ARCHIVED
    assert out[no_audio["id"]].kind == OutcomeKind.ARCHIVED
    assert out[in_path["id"]].kind == OutcomeKind.ARCHIVED
    assert out[errored["id"]].kind == OutcomeKind.SKIPPED and "ERRORED" in out[errored["id"]].reason
    assert out[running["id"]].kind == OutcomeKind.PENDING and "RECORDING" in out[running["id"]].reason
    assert out[no_url["id"]].kind == OutcomeKind.SKIPPED and "stored nowhere" in out[no_url["id"]].reason
    assert out[azure["id"]].kind == OutcomeKind.ARCHIVED  # override wins over the storage type
    assert report.bytes_transferred >= 300_000 + 70_000 + 5_000

    video = archive_dir / "standup.mp4"
    assert video.read_bytes() == expected(with_audio["id"], "video", 300_000)
    audio = next(archive_dir.glob("standup.mp4.audio.*"))
    audio_size = audio.stat().st_size
    assert audio_size > 0 and audio.read_bytes() == expected(with_audio["id"], "audio", audio_size)
    assert (archive_dir / "retro.mp4").read_bytes() == expected(no_audio["id"], "video", 70_000)
    assert not list(archive_dir.glob("retro.mp4.audio.*"))
    assert (archive_dir / "team/2026/deep.mp4").stat().st_size == 5_000

    sidecar = json.loads((archive_dir / "standup.mp4.metadata.json").read_text())
    assert sidecar["recording_id"] == with_audio["id"]
    assert sidecar["status"] == "UPLOADED"
    files = {f["kind"]: f for f in sidecar["files"]}
    assert files["video"]["size"] == 300_000
    assert files["video"]["sha256"] == hashlib.sha256(expected(with_audio["id"], "video", 300_000)).hexdigest()
    assert files["audio"]["size"] == audio_size
    for key in ("meeting_id", "meeting_title", "invoked_time", "stopped_time", "recording_duration"):
        assert key in sidecar
    assert not [p for p in archive_dir.rglob("*") if ".rtkpart-" in p.name]  # no temp leftovers

    again = run_report(archive_recordings, destination=f"file://{archive_dir}")
    assert again.bytes_transferred == 0
    assert {o.kind for o in again.outcomes if o.recording_id in (with_audio["id"], no_audio["id"], in_path["id"])} == {
        OutcomeKind.ALREADY_ARCHIVED
    }


def test_storage_config_selects_backend_and_failures_do_not_stop_others(env, archive_dir):
    good = add(env, output_file_name="good.mp4", file_size=10_000)
    bad = add(env, output_file_name="bad.mp4", storage_config={"type": "sftp", "username": "u", "auth_method": "KEY"})
    azure = add(env, output_file_name="az.mp4", storage_config={"type": "azure", "bucket": "b"})
    report = run_report(archive_recordings)
    out = by_id(report)
    assert out[good["id"]].kind == OutcomeKind.ARCHIVED  # no storage_config -> default destination
    assert out[bad["id"]].kind == OutcomeKind.FAILED and "storage_config.host" in out[bad["id"]].reason
    # azure is archived like any other store; here there are no Azure credentials: a clear failure
    assert out[azure["id"]].kind == OutcomeKind.FAILED and "no Azure credentials for container 'b'" in out[azure["id"]].reason
    assert (archive_dir / "good.mp4").stat().st_size == 10_000


def test_traversal_names_stay_inside_the_destination(env, archive_dir, tmp_path):
    evil = add(env, output_file_name="../../../escape.mp4", file_size=1_000, storage_config={"type": "aws", "path": "../../up"})
    weird = add(env, output_file_name="a/b\\c\x00d\x07.mp4", file_size=1_000)
    report = run_report(archive_recordings, destination=f"file://{archive_dir}")
    assert {o.kind for o in report.outcomes if o.recording_id in (evil["id"], weird["id"])} == {OutcomeKind.ARCHIVED}
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(archive_dir in p.parents for p in written)
    assert not (tmp_path / "escape.mp4").exists()


def test_colliding_names_get_the_recording_id(env, archive_dir):
    first = add(env, output_file_name="same.mp4", file_size=2_000, stopped_time=NOW - timedelta(hours=2))
    second = add(env, output_file_name="same.mp4", file_size=3_000, stopped_time=NOW - timedelta(hours=1))
    run_report(archive_recordings)
    assert (archive_dir / "same.mp4").read_bytes() == expected(first["id"], "video", 2_000)
    assert (archive_dir / f"same__{second['id']}.mp4").read_bytes() == expected(second["id"], "video", 3_000)


def test_window_filters_by_stopped_time(env, archive_dir):
    old = add(env, output_file_name="old.mp4", file_size=1_000, invoked_time=NOW - timedelta(days=20),
              started_time=NOW - timedelta(days=20), stopped_time=NOW - timedelta(days=19))
    recent = add(env, output_file_name="recent.mp4", file_size=1_000)
    report = run_report(archive_recordings)
    ids = {o.recording_id for o in report.outcomes}
    assert recent["id"] in ids and old["id"] not in ids
    report = run_report(archive_recordings, since=NOW - timedelta(days=21), until=NOW - timedelta(days=18))
    assert {o.recording_id for o in report.outcomes} == {old["id"]}


def test_dry_run_transfers_nothing(env, archive_dir):
    rec = add(env, output_file_name="dry.mp4", file_size=4_000)
    report = run_report(archive_recordings, dry_run=True)
    assert by_id(report)[rec["id"]].kind == OutcomeKind.WOULD_ARCHIVE
    assert not any(archive_dir.iterdir())


def test_archive_one(env, archive_dir):
    rec = add(env, output_file_name="one.mp4", file_size=4_000, audio=True)
    report = run_report(archive_one, rec["id"])
    assert by_id(report)[rec["id"]].kind == OutcomeKind.ARCHIVED
    assert (archive_dir / "one.mp4").stat().st_size == 4_000


def test_expired_url_is_refreshed(env, archive_dir):
    rec = add(env, output_file_name="late.mp4", file_size=8_000)
    env.state.url_ttl_seconds = -60  # every URL the listing hands out is already expired
    from rtk_archiver.api import RealtimeKitAPI
    from rtk_archiver.settings import load_settings
    from tasks.archive import archive_recording
    from tests.fixtures import fresh_plan

    with RealtimeKitAPI(load_settings()) as api:
        listed = api.get_recording(rec["id"])
    env.state.url_ttl_seconds = 3600  # the refresh gets a working one
    outcome = archive_recording.fn(fresh_plan(listed, f"file://{env.archive}"))
    assert outcome.kind == OutcomeKind.ARCHIVED
    assert (archive_dir / "late.mp4").read_bytes() == expected(rec["id"], "video", 8_000)


def test_cli_archive_prints_summary_and_exit_status(env, archive_dir, capsys):
    add(env, output_file_name="cli.mp4", file_size=2_000)
    assert cli.main(["archive"]) == 0
    out = capsys.readouterr().out
    assert "archived" in out and "cli.mp4" in out
    add(env, output_file_name="fail.mp4", storage_config={"type": "sftp", "host": "h", "username": "u"})
    assert cli.main(["archive"]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "auth_method" in out
    assert env.token not in out


def test_cli_bad_settings_stop_before_any_work(env, monkeypatch, capsys):
    monkeypatch.delenv("REALTIMEKIT_APP_ID")
    monkeypatch.setenv("ARCHIVE_DEFAULT_DESTINATION", "ftp://nope")
    assert cli.main(["archive"]) == 2
    err = capsys.readouterr().err
    assert "REALTIMEKIT_APP_ID is not set" in err and "ARCHIVE_DEFAULT_DESTINATION" in err
    assert env.token not in err
    with pytest.raises(SystemExit) as info:
        cli.main(["archive", "--since", "yesterday-ish"])
    assert info.value.code == 2
    assert "ISO 8601" in capsys.readouterr().err
    monkeypatch.setenv("REALTIMEKIT_APP_ID", env.app_id)
    monkeypatch.delenv("ARCHIVE_DEFAULT_DESTINATION")
    assert cli.main(["archive", "--since", "2026-11-10", "--until", "2026-11-01"]) == 2
    assert "must be before" in capsys.readouterr().err
