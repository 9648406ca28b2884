"""The real platform (issue 19): track recordings, RealtimeKit's own upload to a
storage_config (proven, missing, truncated, different; on S3, R2's S3 API, GCS, Azure and
SFTP), recordings that never were on RealtimeKit's bucket. Against the simulator and real
servers (moto, the GCS emulator, Azurite, sshd)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest

from flows.archive import archive_recordings
from rtk_archiver.models import OutcomeKind, Sidecar
from rtk_archiver.simulator import media_bytes, media_sha256
from rtk_archiver.simulator.delivery import Deliverer, upload_key
from tests.fixtures import run_report

pytestmark = pytest.mark.usefixtures("prefect_harness")


def outcomes(report):
    return {o.recording_id: o for o in report.outcomes}


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- track recordings ---------------------------------------------------------------------------


def test_track_recording_every_participant_file_archived_and_verified(archiver_env):
    sim = archiver_env
    rec = sim.state.add_recording(type="TRACK", tracks=3, file_size=300_000)
    plain = sim.state.add_recording(file_size=50_000, audio=True)
    assert isinstance(rec["download_url"], list) and rec["output_file_name"].startswith("{{file_name_prefix}}")
    # a reset in the middle of one track file: resumed, still verified
    sim.state.faults.fault_kinds = ("track-1",)
    sim.state.faults.download_resets = 1
    report = run_report(archive_recordings)
    out = outcomes(report)
    assert out[rec["id"]].kind == OutcomeKind.ARCHIVED and out[plain["id"]].kind == OutcomeKind.ARCHIVED, report.outcomes
    stored = files_under(sim.archive)
    sidecar_name = next(n for n in stored if n.endswith(".metadata.json") and rec["id"] in n)
    sidecar = Sidecar.model_validate_json(stored[sidecar_name])
    sim_rec = sim.state.recordings[rec["id"]]
    assert len(sidecar.files) == 3 and {f.kind for f in sidecar.files} == {"track"}
    by_source = {f.source_name: f for f in sidecar.files}
    for n, (name, size) in enumerate(sim_rec.tracks):
        entry = by_source[name]
        assert entry.size == size and entry.sha256 == media_sha256(rec["id"], f"track-{n}", size)
        assert stored[entry.name] == media_bytes(rec["id"], f"track-{n}", 0, size)
        assert entry.layer == "default" and entry.participant["media_kind"] == "audio"
        assert entry.participant["user_id"] == f"user-{n + 1}" and entry.participant["peer_id"].startswith("peer-")
        assert "{{" not in entry.name and rec["id"] in entry.name
    # a rerun moves nothing: every listed file is intact
    before = dict(sim.state.downloads)
    again = outcomes(run_report(archive_recordings))
    assert again[rec["id"]].kind == OutcomeKind.ALREADY_ARCHIVED and dict(sim.state.downloads) == before
    # one track file damaged: the recording is archived again over its own files
    victim = sim.archive / by_source[sim_rec.tracks[0][0]].name
    victim.write_bytes(victim.read_bytes()[:-1])
    third = outcomes(run_report(archive_recordings))
    assert third[rec["id"]].kind == OutcomeKind.ARCHIVED
    assert victim.read_bytes() == media_bytes(rec["id"], "track-0", 0, sim_rec.tracks[0][1])


def test_a_download_url_of_unknown_shape_fails_that_recording_alone(archiver_env):
    sim = archiver_env
    odd = sim.state.add_recording(download_url={"video": "https://x.example/v"})
    layer = sim.state.add_recording(type="TRACK", tracks=1)
    sim.state.recordings[layer["id"]].extra["download_url"] = [
        {"layer_name": "video-hd", "download_urls": {"a.webm": {"download_url": "https://x.example/a"}}}
    ]
    fine = sim.state.add_recording()
    report = run_report(archive_recordings)
    out = outcomes(report)
    assert out[fine["id"]].kind == OutcomeKind.ARCHIVED
    assert out[odd["id"]].kind == OutcomeKind.FAILED and "object with keys ['video']" in out[odd["id"]].reason
    assert out[layer["id"]].kind == OutcomeKind.FAILED and "'video-hd'" in out[layer["id"]].reason


# -- RealtimeKit's own upload to the storage_config ---------------------------------------------


def _s3_keys(endpoint: str, bucket: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


@pytest.fixture
def platform_env(archiver_env, monkeypatch):
    monkeypatch.delenv("ARCHIVE_DEFAULT_DESTINATION")  # every recording names its storage
    return archiver_env


def test_s3_realtimekit_upload_proven_missing_truncated_different(platform_env, s3_env, moto_s3_server, monkeypatch):
    sim = platform_env
    sim.state.deliverer = Deliverer(s3_endpoint=moto_s3_server)
    events: list[tuple[str, dict]] = []
    import flows.reporting

    real = flows.reporting._prefect

    def spy(name):
        if name == "emit_event":
            return lambda **kw: events.append((kw["event"], kw["payload"]))
        return real(name)

    monkeypatch.setattr(flows.reporting, "_prefect", spy)
    sc = {"type": "aws", "bucket": s3_env, "region": "us-east-1", "path": "rtk/2026"}
    good = sim.state.add_recording(file_size=300_001, audio=True, storage_config=sc)
    missing = sim.state.add_recording(file_size=200_003, storage_config=sc, upload="missing")
    truncated = sim.state.add_recording(file_size=200_005, storage_config=sc, upload="truncated")
    different = sim.state.add_recording(file_size=200_007, storage_config=sc, upload="different")
    delivered_bytes = {k: v for k, v in _s3_keys(moto_s3_server, s3_env).items()}
    assert len(delivered_bytes) == 3  # RealtimeKit uploaded three, one upload failed

    report = run_report(archive_recordings)
    out = outcomes(report)
    assert out[good["id"]].kind == OutcomeKind.DELIVERED and out[good["id"]].upload == "delivered", report.outcomes
    assert "md5 reported by the store" in out[good["id"]].upload_note
    assert out[missing["id"]].kind == OutcomeKind.ARCHIVED and out[missing["id"]].upload == "missing"
    for r in (truncated, different):
        assert out[r["id"]].kind == OutcomeKind.ARCHIVED and out[r["id"]].upload == "damaged", out[r["id"]]
    assert "holds 100002 bytes" in out[truncated["id"]].upload_note
    assert "md5 differs" in out[different["id"]].upload_note
    assert report.run_failure_message() is None  # damaged uploads: archived, the run does not fail

    objs = _s3_keys(moto_s3_server, s3_env)
    # RealtimeKit's files untouched, never a second copy of a proven one
    for key, data in delivered_bytes.items():
        assert objs[key] == data
    good_key = f"rtk/2026/{good['output_file_name']}"
    assert not any(k != good_key and k.endswith(".mp4") and good["id"] in k for k in objs)
    sidecar = Sidecar.model_validate_json(objs[good_key + ".metadata.json"])
    video = next(f for f in sidecar.files if f.kind == "video")
    assert video.origin == "realtimekit" and video.sha256 == media_sha256(good["id"], "video", 300_001)
    audio = next(f for f in sidecar.files if f.kind == "audio")
    assert audio.origin == "archiver" and objs[f"rtk/2026/{audio.name}"] == media_bytes(good["id"], "audio", 0, audio.size)
    # the missing one archived at its plain name; the damaged ones beside RealtimeKit's file, with their id
    assert objs[f"rtk/2026/{missing['output_file_name']}"] == media_bytes(missing["id"], "video", 0, 200_003)
    for r, size in ((truncated, 200_005), (different, 200_007)):
        stem = r["output_file_name"][: -len(".mp4")]
        assert objs[f"rtk/2026/{stem}__{r['id']}.mp4"] == media_bytes(r["id"], "video", 0, size)
    names = [e for e, _ in events]
    assert names.count("rtk.recording.delivered") == 1 and names.count("rtk.recording.upload-missing") == 1
    damaged_events = [p for e, p in events if e == "rtk.recording.upload-damaged"]
    assert len(damaged_events) == 2 and all(p["upload"] == "damaged" and p["upload_note"] for p in damaged_events)

    # a rerun moves nothing and stores nothing more
    before = dict(sim.state.downloads)
    again = outcomes(run_report(archive_recordings))
    assert {again[r["id"]].kind for r in (good, missing, truncated, different)} == {OutcomeKind.ALREADY_ARCHIVED}
    assert dict(sim.state.downloads) == before and _s3_keys(moto_s3_server, s3_env) == objs


def test_size_only_proof_setting_downloads_nothing(platform_env, s3_env, moto_s3_server, monkeypatch):
    sim = platform_env
    sim.state.deliverer = Deliverer(s3_endpoint=moto_s3_server)
    monkeypatch.setenv("ARCHIVE_RTK_UPLOAD_PROOF", "size")
    rec = sim.state.add_recording(file_size=100_000, storage_config={"type": "aws", "bucket": s3_env, "path": "p"})
    out = outcomes(run_report(archive_recordings))
    assert out[rec["id"]].kind == OutcomeKind.DELIVERED and "size" in out[rec["id"]].upload_note
    assert sim.state.downloads[(rec["id"], "video")] == 0


@pytest.mark.parametrize("store", ["gcs", "azure", "sftp", "s3-multipart"])
def test_realtimekit_upload_proven_on_every_store(store, platform_env, request, monkeypatch):
    """The cheapest proof each store offers: GCS md5/crc32c, Azure Content-MD5, SFTP and a
    multipart S3 object (its ETag is no md5) read back."""
    sim = platform_env
    size = 300_011
    if store == "gcs":
        bucket = request.getfixturevalue("gcs_env")
        sim.state.deliverer = Deliverer(gcs_endpoint=request.getfixturevalue("gcs_emulator"))
        sc = {"type": "gcs", "bucket": bucket, "path": "meetings"}
    elif store == "azure":
        container = request.getfixturevalue("azure_env")
        from tests.fixtures.object_stores import azurite_connection_string

        sim.state.deliverer = Deliverer(azure=True)
        sc = {"type": "azure", "bucket": container, "path": "meetings",
              "access_key": azurite_connection_string(request.getfixturevalue("azurite_server"))}
    elif store == "sftp":
        server = request.getfixturevalue("sshd_server")
        user = server.users["rtkpass"]
        monkeypatch.setenv("SFTP_PASSWORD", user.password)
        monkeypatch.setenv("SFTP_KNOWN_HOSTS", str(server.known_hosts))
        sim.state.deliverer = Deliverer(sftp_address=("127.0.0.1", server.port))
        sc = {"type": "sftp", "host": "127.0.0.1", "port": server.port, "username": "rtkpass", "auth_method": "PASSWORD",
              "password": user.password, "path": f"rtk-{uuid.uuid4().hex[:8]}"}
    else:
        bucket = request.getfixturevalue("s3_env")
        sim.state.deliverer = Deliverer(s3_endpoint=request.getfixturevalue("moto_s3_server"))
        size = 9 * 1024 * 1024 + 17  # above the deliverer's multipart threshold
        sc = {"type": "aws", "bucket": bucket, "region": "us-east-1", "path": "big"}
    good = sim.state.add_recording(file_size=size, storage_config=sc)
    bad = sim.state.add_recording(file_size=size, storage_config=sc, upload="different")
    sim_good = sim.state.recordings[good["id"]]
    assert sim_good.upload_result.startswith("uploaded"), sim_good.upload_result
    report = run_report(archive_recordings)
    out = outcomes(report)
    assert out[good["id"]].kind == OutcomeKind.DELIVERED, report.outcomes
    expected_proof = {"gcs": "reported by the store", "azure": "md5 reported by the store", "sftp": "sha256 read back",
                      "s3-multipart": "sha256 read back"}[store]
    assert expected_proof in out[good["id"]].upload_note
    assert out[bad["id"]].kind == OutcomeKind.ARCHIVED and out[bad["id"]].upload == "damaged"
    assert upload_key(sim_good)  # RealtimeKit's key is the plain name
    again = outcomes(run_report(archive_recordings))
    assert again[good["id"]].kind == OutcomeKind.ALREADY_ARCHIVED and again[bad["id"]].kind == OutcomeKind.ALREADY_ARCHIVED


# -- never on RealtimeKit's bucket ----------------------------------------------------------------


def test_bucket_disabled_recordings_checked_at_their_storage_config(platform_env, s3_env, moto_s3_server):
    sim = platform_env
    sim.state.deliverer = Deliverer(s3_endpoint=moto_s3_server)
    sc = {"type": "aws", "bucket": s3_env, "path": "only"}
    there = sim.state.add_recording(file_size=70_001, storage_config=sc, bucket_enabled=False)
    absent = sim.state.add_recording(file_size=70_003, storage_config=sc, bucket_enabled=False, upload="missing")
    nowhere = sim.state.add_recording(file_size=70_005, storage_config=None, bucket_enabled=False)
    assert there["download_url"] is None and there["download_url_expiry"] is None
    report = run_report(archive_recordings)
    out = outcomes(report)
    assert out[there["id"]].kind == OutcomeKind.DELIVERED and "size" in out[there["id"]].upload_note
    assert out[absent["id"]].kind == OutcomeKind.SKIPPED and out[absent["id"]].upload == "missing"
    lost = {r.recording_id: r.reason for r in report.lost}
    assert set(lost) == {absent["id"], nowhere["id"]}, report.lost
    assert "not there" in lost[absent["id"]] and "stored nowhere" in lost[nowhere["id"]]
    objs = _s3_keys(moto_s3_server, s3_env)
    sidecar = Sidecar.model_validate_json(objs[f"only/{there['output_file_name']}.metadata.json"])
    assert sidecar.files[0].origin == "realtimekit" and sidecar.files[0].sha256 is None
    assert json.loads(objs[f"only/{there['output_file_name']}.metadata.json"])["files"][0]["verified_by"].startswith("size")
    # reported once; the delivered one stays delivered (already archived) at any age
    again = run_report(archive_recordings)
    assert outcomes(again)[there["id"]].kind == OutcomeKind.ALREADY_ARCHIVED and again.lost == []


def test_expired_recording_serves_its_expiry_and_no_url(archiver_env):
    from datetime import datetime, timedelta, timezone

    sim = archiver_env
    old = sim.state.add_recording(stopped_time=datetime.now(timezone.utc) - timedelta(days=8))
    assert old["download_url"] is None and old["download_url_expiry"] is not None
    disabled = sim.state.add_recording(bucket_enabled=False)
    assert disabled["download_url"] is None and disabled["download_url_expiry"] is None


# -- files at a recording's names without a sidecar (issue 20: a deleted sidecar) ---------------


@pytest.mark.parametrize("store", ["file", "s3"])
def test_a_deleted_sidecar_is_written_again_without_a_second_copy(store, archiver_env, request, monkeypatch):
    sim = archiver_env
    if store == "s3":
        bucket = request.getfixturevalue("s3_env")
        monkeypatch.setenv("ARCHIVE_DEFAULT_DESTINATION", f"s3://{bucket}/arch")
        client = boto3.client("s3", endpoint_url=request.getfixturevalue("moto_s3_server"), region_name="us-east-1")

        def listing() -> dict[str, bytes]:
            return {k[len("arch/"):]: v for k, v in _s3_keys(client.meta.endpoint_url, bucket).items()}

        def remove(name: str) -> None:
            client.delete_object(Bucket=bucket, Key=f"arch/{name}")

        def put(name: str, data: bytes) -> None:
            client.put_object(Bucket=bucket, Key=f"arch/{name}", Body=data)
    else:
        def listing() -> dict[str, bytes]:
            return files_under(sim.archive)

        def remove(name: str) -> None:
            (sim.archive / name).unlink()

        def put(name: str, data: bytes) -> None:
            (sim.archive / name).write_bytes(data)

    rec = sim.state.add_recording(file_size=120_001, audio=True)
    other = sim.state.add_recording(file_size=90_001)
    assert {o.kind for o in run_report(archive_recordings).outcomes} == {OutcomeKind.ARCHIVED}
    before = listing()
    name = rec["output_file_name"]
    remove(name + ".metadata.json")
    # the other: sidecar deleted and its video replaced by other bytes of the same size
    remove(other["output_file_name"] + ".metadata.json")
    put(other["output_file_name"], b"\0" * 90_001)

    out = outcomes(run_report(archive_recordings))
    assert out[rec["id"]].kind == OutcomeKind.ALREADY_ARCHIVED and "without a sidecar" in out[rec["id"]].reason
    after = listing()
    assert {k: v for k, v in after.items() if not k.endswith(".json")} == {
        **{k: v for k, v in before.items() if not k.endswith(".json")},
        other["output_file_name"]: b"\0" * 90_001,
        other["output_file_name"][:-4] + f"__{other['id']}.mp4": media_bytes(other["id"], "video", 0, 90_001),
    }
    sidecar = Sidecar.model_validate_json(after[name + ".metadata.json"])
    assert {f.kind: f.origin for f in sidecar.files} == {"video": "found", "audio": "found"}
    assert sidecar.files[0].sha256 == media_sha256(rec["id"], "video", 120_001)
    # the file that is not the recording's is kept; the recording archived under its own name
    assert out[other["id"]].kind == OutcomeKind.ARCHIVED and out[other["id"]].upload is None
    before = dict(sim.state.downloads)
    again = outcomes(run_report(archive_recordings))
    assert {again[r["id"]].kind for r in (rec, other)} == {OutcomeKind.ALREADY_ARCHIVED}
    assert dict(sim.state.downloads) == before
