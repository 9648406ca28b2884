"""A key belongs to exactly one recording, for every file it writes (video, audio, sidecar):
against the other recordings of the run, against what earlier runs archived, and against
files the archiver never wrote (never overwritten nor deleted). Reruns move nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flows.archive import archive_recordings
from rtk_archiver.models import ObjectInfo, OutcomeKind, Recording, Sidecar
from rtk_archiver.naming import keys_for, video_name
from rtk_archiver.plan import Action, Observed, SidecarSeen, plan_run, targets_for
from rtk_archiver.simulator import media_bytes
from tests.fixtures import run_report

pytestmark = pytest.mark.usefixtures("prefect_harness")


def add(sim, **fields):
    fields.setdefault("status", "UPLOADED")
    fields.setdefault("storage_config", None)
    return sim.state.add_recording(**fields)


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under root: (inode, mtime_ns, content)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_mtime_ns, p.read_bytes())
    return out


def sidecars(root: Path) -> dict[str, dict]:
    """The archiver's sidecars under root (files there that are not sidecars are skipped)."""
    out = {}
    for p in root.rglob("*.metadata.json"):
        try:
            out[str(p.relative_to(root))] = json.loads(p.read_text())
        except ValueError:
            continue
    return out


def assert_each_archived_intact(root: Path, recs: list[dict]) -> None:
    """Every recording has exactly one complete sidecar naming it, and every file that sidecar
    lists holds that recording's bytes."""
    by_owner: dict[str, list[tuple[str, dict]]] = {}
    for key, sc in sidecars(root).items():
        by_owner.setdefault(sc["recording_id"], []).append((key, sc))
    for rec in recs:
        owned = by_owner.get(rec["id"], [])
        assert len(owned) == 1, (rec["id"], owned)
        key, sc = owned[0]
        assert sc["state"] == "complete"
        directory = (root / key).parent
        for f in sc["files"]:
            data = (directory / f["name"]).read_bytes()
            assert data == media_bytes(rec["id"], f["kind"], 0, f["size"]), (rec["id"], f["name"])
    assert not [p for p in root.rglob("*") if ".rtkpart-" in p.name]


def test_names_that_look_like_audio_or_sidecars_never_take_another_recordings_keys(archiver_env):
    """The tryout: r-a `x.mp4` with audio, r-b `x.audio.m4a`, r-q `x.mp4.metadata.json`, one
    more with the old audio name. Run 1 archives each into its own keys; run 2 and 3 move
    nothing."""
    env, root = archiver_env, archiver_env.archive
    recs = [
        add(env, output_file_name="x.mp4", file_size=30_000, audio=True),
        add(env, output_file_name="x.audio.m4a", file_size=31_000),
        add(env, output_file_name="x.mp4.metadata.json", file_size=32_000),
        add(env, output_file_name="x.mp4.audio.m4a", file_size=33_000, audio=True),
        add(env, output_file_name="X.MP4", file_size=34_000),  # same name on a case-insensitive disk
        add(env, output_file_name="x.webm", file_size=35_000, audio=True),
    ]
    report = run_report(archive_recordings)
    assert {o.kind for o in report.outcomes} == {OutcomeKind.ARCHIVED}, report.outcomes
    assert_each_archived_intact(root, recs)
    keys = list(snapshot(root))
    assert len(keys) == len(set(k.casefold() for k in keys))
    before = snapshot(root)
    for _ in range(2):
        again = run_report(archive_recordings)
        assert {o.kind for o in again.outcomes} == {OutcomeKind.ALREADY_ARCHIVED}, again.outcomes
        assert again.bytes_transferred == 0
        assert snapshot(root) == before  # nothing moved, rewritten or deleted


def test_files_the_archiver_did_not_write_are_never_overwritten(archiver_env):
    env, root = archiver_env, archiver_env.archive
    theirs = {
        "taken.mp4": b"a user's own video",  # at a video key
        "side.mp4.metadata.json": b"not json at all",  # at a sidecar key
        "aud.mp4.audio.m4a": b"someone's audio",  # at an audio key
        "both.mp4": b"plain name taken",
    }
    for name, data in theirs.items():
        (root / name).write_bytes(data)
    rid_both = str(uuid.uuid4())
    (root / video_name("both.mp4", rid_both)).write_bytes(b"the name with the id taken too")
    (root / video_name("both.mp4", rid_both + "~2")).write_bytes(b"and the last name it may take")
    recs = [
        add(env, output_file_name="taken.mp4", file_size=10_000),
        add(env, output_file_name="side.mp4", file_size=11_000),
        add(env, output_file_name="aud.mp4", file_size=12_000, audio=True),
    ]
    both = add(env, id=rid_both, output_file_name="both.mp4", file_size=13_000)
    report = run_report(archive_recordings)
    out = {o.recording_id: o for o in report.outcomes}
    for rec in recs:
        assert out[rec["id"]].kind == OutcomeKind.ARCHIVED
        assert rec["id"] in out[rec["id"]].destination  # archived under the name with its id
    assert out[both["id"]].kind == OutcomeKind.FAILED
    assert "taken" in out[both["id"]].reason and "nothing is overwritten" in out[both["id"]].reason
    for name, data in theirs.items():
        assert (root / name).read_bytes() == data
    assert (root / video_name("both.mp4", rid_both)).read_bytes() == b"the name with the id taken too"
    assert (root / video_name("both.mp4", rid_both + "~2")).read_bytes() == b"and the last name it may take"
    assert_each_archived_intact(root, recs)
    before = snapshot(root)
    again = run_report(archive_recordings)
    assert {o.recording_id: o.kind for o in again.outcomes if o.recording_id != both["id"]} == {
        r["id"]: OutcomeKind.ALREADY_ARCHIVED for r in recs
    }
    assert snapshot(root) == before


def test_a_name_archived_by_an_earlier_run_is_not_given_to_another_recording(archiver_env):
    env, root = archiver_env, archiver_env.archive
    now = datetime.now(timezone.utc)
    first = add(env, output_file_name="weekly.mp4", file_size=20_000, audio=True, stopped_time=now - timedelta(days=3))
    assert {o.kind for o in run_report(archive_recordings, since=now - timedelta(days=4), until=now - timedelta(days=2)).outcomes} == {
        OutcomeKind.ARCHIVED
    }
    second = add(env, output_file_name="weekly.mp4", file_size=21_000, audio=True, stopped_time=now - timedelta(hours=1))
    later = run_report(archive_recordings, since=now - timedelta(days=1))  # the first one is outside this window
    assert [o.kind for o in later.outcomes] == [OutcomeKind.ARCHIVED]
    assert second["id"] in later.outcomes[0].destination
    assert_each_archived_intact(root, [first, second])
    before = snapshot(root)
    both = run_report(archive_recordings, since=now - timedelta(days=4))
    assert {o.kind for o in both.outcomes} == {OutcomeKind.ALREADY_ARCHIVED}
    assert snapshot(root) == before


def test_a_run_killed_after_its_claim_is_completed_by_the_next_run(archiver_env):
    """A claim sidecar and a video left by a killed run belong to the recording: the next run
    archives it there, replacing only those files."""
    env, root = archiver_env, archiver_env.archive
    rec = add(env, output_file_name="killed.mp4", file_size=40_000, audio=True)
    from rtk_archiver.api import RealtimeKitAPI
    from rtk_archiver.settings import load_settings

    with RealtimeKitAPI(load_settings()) as api:
        keys = keys_for(api.get_recording(rec["id"]))
    claim = Sidecar(state="claimed", claimed=["killed.mp4", Path(keys.audio).name], recording_id=rec["id"],
                    status="UPLOADED", invoked_time=datetime.now(timezone.utc), output_file_name="killed.mp4",
                    archived_at=datetime.now(timezone.utc), archiver_version="test")
    (root / "killed.mp4.metadata.json").write_text(claim.model_dump_json())
    (root / "killed.mp4").write_bytes(b"half a video from the killed run")
    report = run_report(archive_recordings)
    assert [o.kind for o in report.outcomes] == [OutcomeKind.ARCHIVED]
    assert_each_archived_intact(root, [rec])
    assert (root / "killed.mp4").read_bytes() == media_bytes(rec["id"], "video", 0, 40_000)


def test_sidecars_of_an_older_layout_still_count_as_archived(archiver_env):
    """Archives made with the earlier audio name (`<stem>.audio.<ext>`) are recognised from
    their sidecar: nothing is transferred again."""
    env, root = archiver_env, archiver_env.archive
    rec = add(env, output_file_name="old.mp4", file_size=5_000, audio=True, audio_size=700)
    (root / "old.mp4").write_bytes(media_bytes(rec["id"], "video", 0, 5_000))
    (root / "old.audio.m4a").write_bytes(media_bytes(rec["id"], "audio", 0, 700))
    import hashlib

    files = [
        {"kind": "video", "name": "old.mp4", "size": 5_000, "sha256": hashlib.sha256((root / "old.mp4").read_bytes()).hexdigest()},
        {"kind": "audio", "name": "old.audio.m4a", "size": 700, "sha256": hashlib.sha256((root / "old.audio.m4a").read_bytes()).hexdigest()},
    ]
    legacy = {"schema_version": 1, "recording_id": rec["id"], "status": "UPLOADED", "invoked_time": "2026-11-01T00:00:00Z",
              "output_file_name": "old.mp4", "files": files, "archived_at": "2026-11-01T00:00:00Z", "archiver_version": "0.1.0"}
    (root / "old.mp4.metadata.json").write_text(json.dumps(legacy))
    before = snapshot(root)
    report = run_report(archive_recordings)
    assert [o.kind for o in report.outcomes] == [OutcomeKind.ALREADY_ARCHIVED]
    assert snapshot(root) == before


def test_a_huge_meeting_title_does_not_make_the_sidecar_unreadable(archiver_env):
    env, root = archiver_env, archiver_env.archive
    rec = add(env, output_file_name="long-title.mp4", file_size=3_000, meeting_title="t" * 1_200_000)
    assert [o.kind for o in run_report(archive_recordings).outcomes] == [OutcomeKind.ARCHIVED]
    assert (root / "long-title.mp4.metadata.json").stat().st_size < 64 * 1024
    again = run_report(archive_recordings)
    assert [o.kind for o in again.outcomes] == [OutcomeKind.ALREADY_ARCHIVED] and again.bytes_transferred == 0
    assert_each_archived_intact(root, [rec])


# --- the plan itself is pure: same inputs, same keys ------------------------------------------

def _rec(rid: str, name: str, minutes: int, audio: bool = False) -> Recording:
    t = datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes)
    return Recording(id=rid, status="UPLOADED", invoked_time=t, stopped_time=t, output_file_name=name,
                     download_url="https://src/v.mp4", audio_download_url="https://src/a.m4a" if audio else None)


def _empty(targets) -> dict[str, Observed]:
    obs = {}
    for t in targets:
        o = Observed()
        for c in t.candidates:
            o.sidecars[c.sidecar] = SidecarSeen(present=False)
            o.objects.update({k: None for k in c.all() if k != c.sidecar})
        obs[t.recording.id] = o
    return obs


def test_plan_gives_every_key_to_one_recording_oldest_first():
    recs = [_rec("b", "x.mp4", 2, audio=True), _rec("a", "x.mp4", 1, audio=True), _rec("c", "x.MP4", 3)]
    targets = targets_for(recs, None, "file:///archive")
    plans = plan_run(targets, _empty(targets))
    assert [p.recording.id for p in plans] == ["a", "b", "c"]
    assert plans[0].layout.video == "x.mp4" and plans[1].layout.video == "x__b.mp4" and plans[2].layout.video == "x__c.MP4"
    keys = [k.casefold() for p in plans for k in p.layout.all()]
    assert len(keys) == len(set(keys))
    assert plan_run(targets, _empty(targets)) == plans  # decided by the inputs alone


def test_plan_against_what_the_destination_holds():
    rec = _rec("r", "v.mp4", 1)
    targets = targets_for([rec], None, "file:///archive")
    obs = _empty(targets)
    plain = targets[0].candidates[0]
    theirs = Sidecar(recording_id="someone-else", status="UPLOADED", invoked_time=rec.invoked_time, output_file_name="v.mp4",
                     files=[], archived_at=rec.invoked_time, archiver_version="x")
    obs["r"].sidecars[plain.sidecar] = SidecarSeen(present=True, sidecar=theirs)
    plan = plan_run(targets, obs)[0]
    assert plan.action == Action.ARCHIVE and plan.layout == targets[0].candidates[1] and plan.own == []
    # its own complete sidecar, with the file there at its size: already archived
    mine = theirs.model_copy(update={"recording_id": "r", "files": [
        {"kind": "video", "name": "v.mp4", "size": 5, "sha256": "0" * 64}]})
    obs["r"].sidecars[plain.sidecar] = SidecarSeen(present=True, sidecar=Sidecar.model_validate(mine.model_dump()))
    obs["r"].objects[plain.video] = ObjectInfo(size=5)
    assert plan_run(targets, obs)[0].action == Action.ALREADY_ARCHIVED
    obs["r"].objects[plain.video] = ObjectInfo(size=4)  # truncated since: archive again over its own file
    again = plan_run(targets, obs)[0]
    assert again.action == Action.ARCHIVE and again.may_replace(plain.video)


# --- two CLI runs at once ---------------------------------------------------------------------

@pytest.mark.slow
def test_two_overlapping_cli_runs_both_succeed_and_archive_each_recording_once(archiver_env, tmp_path):
    """Two `rtk-archiver archive` processes over the same window at once (no shared locks:
    each has its own private Prefect API): both exit 0, every recording once, intact, no temp
    file left, and neither run's cleanup removes the other's live upload."""
    env, root = archiver_env, archiver_env.archive
    # names sharing their first 150 characters: the old cleanup took them for each other's temp files
    recs = [add(env, output_file_name="p" * 150 + f"-{i}.mp4", file_size=3_000_000 + i, audio=True) for i in range(4)]
    cmd = [sys.executable, "-m", "rtk_archiver.cli", "archive"]
    procs = [subprocess.Popen(cmd, env={**os.environ, "PREFECT_HOME": str(tmp_path / f"home{i}")},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert_each_archived_intact(root, recs)
    assert len([p for p in root.iterdir() if p.name.endswith(".mp4")]) == 4


def test_a_too_deep_storage_config_path_fails_clearly_and_alone(archiver_env):
    env = archiver_env
    deep = env.state.add_recording(file_size=1000, storage_config={"type": "aws", "bucket": "b", "path": "/".join(["d" * 60] * 40)})
    fine = env.state.add_recording(file_size=1000)
    report = run_report(archive_recordings, destination=f"file://{env.archive}")
    out = {o.recording_id: o for o in report.outcomes}
    assert out[deep["id"]].kind == OutcomeKind.FAILED and "storage_config.path is too long" in out[deep["id"]].reason
    assert out[fine["id"]].kind == OutcomeKind.ARCHIVED


def test_a_planted_sidecar_cannot_make_the_archiver_touch_other_files(archiver_env):
    """A sidecar naming a recording but listing files that are not that recording's (another
    file's name, '../x', a path) is not trusted: those files are neither replaced nor counted
    as the recording's archive; the recording is archived under its own names."""
    env, root = archiver_env, archiver_env.archive
    rec = add(env, output_file_name="target.mp4", file_size=6_000)
    (root / "victim.mp4").write_bytes(b"a user's file, exactly 6000 bytes?")
    (root / "sub").mkdir()
    (root / "sub" / "deep.mp4").write_bytes(b"another user's file")
    files = [
        {"kind": "video", "name": "victim.mp4", "size": (root / "victim.mp4").stat().st_size, "sha256": "0" * 64},
        {"kind": "audio", "name": "../sub/deep.mp4", "size": 19, "sha256": "0" * 64},
    ]
    forged = {"recording_id": rec["id"], "status": "UPLOADED", "invoked_time": "2026-11-01T00:00:00Z",
              "output_file_name": "target.mp4", "files": files, "archived_at": "2026-11-01T00:00:00Z", "archiver_version": "x"}
    (root / "target.mp4.metadata.json").write_text(json.dumps(forged))
    report = run_report(archive_recordings)
    assert [o.kind for o in report.outcomes] == [OutcomeKind.ARCHIVED]  # not "already archived"
    assert (root / "victim.mp4").read_bytes() == b"a user's file, exactly 6000 bytes?"
    assert (root / "sub" / "deep.mp4").read_bytes() == b"another user's file"
    assert (root / "target.mp4").read_bytes() == media_bytes(rec["id"], "video", 0, 6_000)
    assert [o.kind for o in run_report(archive_recordings).outcomes] == [OutcomeKind.ALREADY_ARCHIVED]
