"""Found by a hostile tryout of the run planning (every test asserts a guarantee, and failed
before its fix): names that meet other recordings' names, sidecars that list what is not
theirs, an overlapping run of the same recording, odd entries at the destination, audio that
appears later, and the poll passing a recording skipped for a configuration mistake."""
from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flows.archive import archive_recordings
from rtk_archiver.models import FileEntry, OutcomeKind, Recording, Sidecar
from rtk_archiver.simulator import media_bytes
from tests.fixtures import run_report

pytestmark = pytest.mark.usefixtures("prefect_harness")


def add(sim, **fields):
    fields.setdefault("status", "UPLOADED")
    fields.setdefault("storage_config", None)
    return sim.state.add_recording(**fields)


def kinds(report):
    return {o.recording_id: (o.kind, o.reason) for o in report.outcomes}


def legacy_sidecar(rec: dict, files: list[tuple[str, str, int]]) -> bytes:
    sc = Sidecar(
        recording_id=rec["id"], status="UPLOADED", invoked_time=rec["invoked_time"],
        output_file_name=rec["output_file_name"], archived_at=datetime.now(timezone.utc), archiver_version="0.1.0",
        files=[FileEntry(kind=k, name=n, size=s, sha256="0" * 64) for k, n, s in files],
    )
    return json.dumps(sc.model_dump(mode="json")).encode()


def test_H1_id_name_equal_to_other_plain_name_spurious_failure(archiver_env):
    """B 'x.mp4' (older) finds a user file at x.mp4 and needs 'x__b1.mp4'; A's plain name is
    'x__b1.mp4'. Guarantee: both archived (A can use its id name). Found: A FAILED, because
    the survey stopped at A's first free candidate (A is not 'contested': only plain names
    are compared) and plan_run finds its second candidate unsurveyed."""
    env, root = archiver_env, archiver_env.archive
    (root / "x.mp4").write_bytes(b"user file")
    now = datetime.now(timezone.utc)
    b = add(env, id="b1", output_file_name="x.mp4", file_size=1000, stopped_time=now - timedelta(hours=2))
    a = add(env, id="a1", output_file_name="x__b1.mp4", file_size=1100, stopped_time=now - timedelta(hours=1))
    report = run_report(archive_recordings)
    print(kinds(report))
    assert (root / "x.mp4").read_bytes() == b"user file"
    assert kinds(report)[b["id"]][0] == OutcomeKind.ARCHIVED
    assert kinds(report)[a["id"]][0] == OutcomeKind.ARCHIVED, kinds(report)[a["id"]]


def test_H1b_second_run_still_cannot_archive_the_loser(archiver_env):
    """Same collision, A older: A takes x__b1.mp4 (its plain name); B's plain name is a user
    file and its id name is A's. B fails in EVERY run (only 2 candidates): never archived."""
    env, root = archiver_env, archiver_env.archive
    (root / "x.mp4").write_bytes(b"user file")
    now = datetime.now(timezone.utc)
    a = add(env, id="a1", output_file_name="x__b1.mp4", file_size=1100, stopped_time=now - timedelta(hours=2))
    b = add(env, id="b1", output_file_name="x.mp4", file_size=1000, stopped_time=now - timedelta(hours=1))
    for _ in range(2):
        report = run_report(archive_recordings)
        print(kinds(report))
    assert kinds(report)[b["id"]][0] in (OutcomeKind.ARCHIVED, OutcomeKind.ALREADY_ARCHIVED), kinds(report)[b["id"]]


# ---------------------------------------------------------------------------------------------


def test_H2_legacy_sidecar_audio_name_overwrites_other_recordings_audio(archiver_env):
    """Legacy layout (before 3fce5ec): video talk.mp4, audio talk.audio.m4a, sidecar
    talk.mp4.metadata.json. Its audio got lost (deleted / disk repair). A new recording B named
    'talk' (no extension, with audio) gets audio key talk.audio.m4a (free) in run 1. Run 2
    lists A again: A's own legacy sidecar lists talk.audio.m4a -> 'own' -> replace=True ->
    B's audio is overwritten with A's audio. Guarantee 1 (a key belongs to one recording)."""
    env, root = archiver_env, archiver_env.archive
    now = datetime.now(timezone.utc)
    b = add(env, id="bbbb", output_file_name="talk", file_size=5000, audio=True, stopped_time=now - timedelta(hours=1))
    report1 = run_report(archive_recordings)
    print(kinds(report1), sorted(p.name for p in root.iterdir()))
    assert (root / "talk.audio.m4a").exists()
    b_audio = (root / "talk.audio.m4a").read_bytes()
    # the legacy archive of A (its audio file lost)
    a = add(env, id="aaaa", output_file_name="talk.mp4", file_size=7000, audio=True, stopped_time=now - timedelta(hours=3))
    (root / "talk.mp4").write_bytes(media_bytes(a["id"], "video", 0, 7000))
    (root / "talk.mp4.metadata.json").write_bytes(
        legacy_sidecar(a, [("video", "talk.mp4", 7000), ("audio", "talk.audio.m4a", 875)]))
    report2 = run_report(archive_recordings)
    print(kinds(report2), sorted(p.name for p in root.iterdir()))
    assert (root / "talk.audio.m4a").read_bytes() == b_audio, "B's audio was overwritten by A's"


# ---------------------------------------------------------------------------------------------


def test_H3_sidecar_file_name_traversal_overwrites_user_file(archiver_env):
    """A sidecar naming recording R (forged, or corrupted) lists audio '../victim.m4a'. R's
    directory is 'd' (storage_config.path). The plan trusts FileEntry.name: audio key
    'd/../victim.m4a' is 'own' and replaced: the user's root/victim.m4a is overwritten."""
    env, root = archiver_env, archiver_env.archive
    (root / "victim.m4a").write_bytes(b"precious user data")
    r = add(env, id="rrrr", output_file_name="r.mp4", file_size=4000, audio=True, storage_config={"path": "d"})
    (root / "d").mkdir()
    (root / "d" / "r.mp4.metadata.json").write_bytes(
        legacy_sidecar(r, [("video", "r.mp4", 1), ("audio", "../victim.m4a", 1)]))
    report = run_report(archive_recordings)
    print(kinds(report), sorted(str(p.relative_to(root)) for p in root.rglob("*")))
    assert (root / "victim.m4a").read_bytes() == b"precious user data"


def test_H4_overlapping_runs_second_commits_first(archiver_env, monkeypatch):
    """Two overlapping runs (separate CLI runs have separate private Prefect APIs: no shared
    recording lock). Run 1 claims first; run 2 finds the claim naming the same recording, so it
    treats every key as its own (replace=True) and finishes first. Run 1's no-clobber link of
    the video then hits KeyTaken: run 1 fails (permanent), and because it stored no file yet and
    its plan had sidecar_is_own False, _release_claim DELETES the sidecar -- which by now is
    run 2's complete sidecar. Guarantee 4 (both exit 0) and 1/2 (the files are then orphaned:
    the next run archives the recording again under its id name)."""
    from rtk_archiver.plan import plan_run, targets_for
    from rtk_archiver.settings import load_settings
    from storage_backends import open_backend
    from storage_backends.local import LocalBackend
    from tasks.archive import archive_recording
    from tasks.survey import survey_one

    env, root = archiver_env, archiver_env.archive
    rec = add(env, id="oooo", output_file_name="o.mp4", file_size=50_000, audio=True)
    settings = load_settings()
    recording = Recording.model_validate(env.state.recordings[rec["id"]].api_view() if hasattr(env.state.recordings[rec["id"]], "api_view") else rec)
    targets = targets_for([recording], None, settings.archive_default_destination)
    backend = open_backend(targets[0].destination, settings)
    plan = plan_run(targets, {rec["id"]: survey_one(backend, targets[0])})[0]   # both runs plan the same
    assert plan.action.value == "archive"

    orig_put = LocalBackend.put
    go = threading.Event()

    def slow_put(self, key, source, size, **kw):
        if threading.current_thread().name == "run1" and key.endswith("o.mp4"):
            go.wait(30)  # run 1's video download is slower
        return orig_put(self, key, source, size, **kw)

    monkeypatch.setattr(LocalBackend, "put", slow_put)
    out = {}

    def run1():
        try:
            out["run1"] = archive_recording.fn(plan)
        except BaseException as exc:  # noqa: BLE001
            out["run1"] = exc

    t = threading.Thread(target=run1, name="run1")
    t.start()
    while not (root / "o.mp4.metadata.json").exists():
        time.sleep(0.01)
    out["run2"] = archive_recording.fn(plan)
    go.set()
    t.join()
    print(out, sorted(p.name for p in root.iterdir()))
    from tasks.archive import OverlappingArchive

    if isinstance(out["run1"], OverlappingArchive):  # transient: Prefect retries it
        out["run1"] = archive_recording.fn(plan)
        assert out["run1"].kind == OutcomeKind.ALREADY_ARCHIVED, out["run1"]
    assert not isinstance(out["run1"], BaseException), f"run 1 failed: {out['run1']!r}"
    assert (root / "o.mp4.metadata.json").exists(), "the complete sidecar was deleted"
    assert json.loads((root / "o.mp4.metadata.json").read_text())["state"] == "complete"
    assert (root / "o.mp4").read_bytes() == media_bytes("oooo", "video", 0, 50_000)


def test_H5_audio_appears_after_first_archive(archiver_env):
    """The API adds audio_download_url after a first archive (video only). Guarantee: the
    audio is archived too. Check what the rerun does."""
    env, root = archiver_env, archiver_env.archive
    rec = add(env, id="hhhh", output_file_name="h.mp4", file_size=3000)
    run_report(archive_recordings)
    env.state.recordings["hhhh"].audio_size = 500
    report = run_report(archive_recordings)
    print(kinds(report), sorted(p.name for p in root.iterdir()))
    assert (root / "h.mp4.audio.m4a").exists(), "audio never archived"


def test_H7_one_symlink_out_of_the_root_fails_every_recording_of_the_destination(archiver_env, tmp_path):
    """A user symlink at one recording's plain name pointing outside the root (e.g. a
    convenience link). Guarantee: that recording is handled alone (id name, or a clear failure);
    the other recordings of the destination are archived."""
    env, root = archiver_env, archiver_env.archive
    (tmp_path / "elsewhere.mp4").write_bytes(b"outside")
    os.symlink(tmp_path / "elsewhere.mp4", root / "s.mp4")
    s = add(env, id="ssss", output_file_name="s.mp4", file_size=1000)
    others = [add(env, id=f"o{i}", output_file_name=f"o{i}.mp4", file_size=1000) for i in range(3)]
    report = run_report(archive_recordings)
    print(kinds(report))
    for o in others:
        assert kinds(report)[o["id"]][0] == OutcomeKind.ARCHIVED, kinds(report)[o["id"]]


def test_H7b_a_directory_at_one_sidecar_name_fails_every_recording(archiver_env):
    """A directory where one recording's sidecar would go (user made 'd.mp4.metadata.json/')."""
    env, root = archiver_env, archiver_env.archive
    (root / "d.mp4.metadata.json").mkdir()
    add(env, id="dddd", output_file_name="d.mp4", file_size=1000)
    others = [add(env, id=f"o{i}", output_file_name=f"o{i}.mp4", file_size=1000) for i in range(3)]
    report = run_report(archive_recordings)
    print(kinds(report))
    for o in others:
        assert kinds(report)[o["id"]][0] == OutcomeKind.ARCHIVED, kinds(report)[o["id"]]


def test_H8_poll_passes_a_recording_skipped_for_missing_default_destination(archiver_env, monkeypatch):
    """ARCHIVE_DEFAULT_DESTINATION unset by mistake; a recording without storage_config is
    SKIPPED and the poll mark moves past it. Once the operator fixes the setting, the next poll
    never sees it again (guarantee 5)."""
    from prefect.variables import Variable
    from flows.poll import POLL_MARK, poll_recordings
    env, root = archiver_env, archiver_env.archive
    now = datetime.now(timezone.utc)
    Variable.set(POLL_MARK, (now - timedelta(hours=3)).isoformat(), overwrite=True)
    rec = add(env, id="pppp", output_file_name="p.mp4", file_size=1000, stopped_time=now - timedelta(hours=2))
    monkeypatch.delenv("ARCHIVE_DEFAULT_DESTINATION")
    r1 = run_report(poll_recordings, overlap_minutes=30)
    print("poll 1", kinds(r1), Variable.get(POLL_MARK))
    monkeypatch.setenv("ARCHIVE_DEFAULT_DESTINATION", f"file://{root}")
    r2 = run_report(poll_recordings, overlap_minutes=30)
    print("poll 2", kinds(r2), Variable.get(POLL_MARK))
    assert (root / "p.mp4").exists(), "the poll skipped the recording for ever"
