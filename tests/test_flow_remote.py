"""End to end through the archive flow into real S3 (moto), R2 (moto as its S3 API), GCS (emulator) and SFTP (sshd)
servers, selected per recording from its storage_config; credentials from the environment
or from Prefect Blocks; failures are clear, per recording, and leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid

import boto3
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from flows.archive import archive_recordings
from rtk_archiver.models import OutcomeKind
from rtk_archiver.simulator import media_bytes
from storage_backends.s3 import S3Credentials
from storage_backends.sftp import SFTPCredentials
from tests.fixtures import run_report

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def env(archiver_env, monkeypatch):
    monkeypatch.delenv("ARCHIVE_DEFAULT_DESTINATION")  # every recording here names its storage
    return archiver_env


def outcomes(report):
    return {o.recording_id: o for o in report.outcomes}


def s3_objects(endpoint, bucket):
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    objs = {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    return objs


def test_s3_gcs_and_sftp_from_storage_config(env, s3_env, moto_s3_server, gcs_env, sshd_server, monkeypatch):
    pw_user = sshd_server.users["rtkpass"]
    monkeypatch.setenv("SFTP_PASSWORD", pw_user.password)
    monkeypatch.setenv("SFTP_KNOWN_HOSTS", str(sshd_server.known_hosts))
    sftp_dir = f"rec-{uuid.uuid4().hex[:8]}"
    to_s3 = env.state.add_recording(file_size=9 * 1024 * 1024 + 5, audio=True,
                                    storage_config={"type": "aws", "bucket": s3_env, "region": "us-east-1", "path": "rtk/2026"})
    to_gcs = env.state.add_recording(file_size=9 * 1024 * 1024 + 11, audio=True,
                                     storage_config={"type": "gcs", "bucket": gcs_env, "path": "meetings"})
    to_sftp = env.state.add_recording(file_size=5 * 1024 * 1024 + 3, audio=True,
                                      storage_config={"type": "sftp", "host": "127.0.0.1", "port": sshd_server.port,
                                                      "username": "rtkpass", "auth_method": "PASSWORD", "path": sftp_dir})
    report = run_report(archive_recordings)
    out = outcomes(report)
    assert {out[r["id"]].kind for r in (to_s3, to_gcs, to_sftp)} == {OutcomeKind.ARCHIVED}, report.outcomes

    objs = s3_objects(moto_s3_server, s3_env)
    video = f"rtk/2026/{to_s3['output_file_name']}"
    assert objs[video] == media_bytes(to_s3["id"], "video", 0, to_s3["file_size"])
    audio_key = next(k for k in objs if ".audio." in k)
    assert objs[audio_key] == media_bytes(to_s3["id"], "audio", 0, len(objs[audio_key]))
    s3_sidecar = json.loads(objs[video + ".metadata.json"])
    assert s3_sidecar["recording_id"] == to_s3["id"]
    assert s3_sidecar["files"][0]["hashes"]["s3-sha256"]  # S3's own SHA-256, checked end to end
    head = boto3.client("s3", endpoint_url=moto_s3_server, region_name="us-east-1").head_object(Bucket=s3_env, Key=video)
    assert head["Metadata"]["rtk-recording-id"] == to_s3["id"]  # object metadata names the recording
    assert head["Metadata"]["rtk-meeting-id"] == (to_s3.get("meeting") or {}).get("id", to_s3.get("meeting_id"))

    gcs = storage.Client(project="rtk-test", credentials=AnonymousCredentials())
    blobs = {b.name: b for b in gcs.list_blobs(gcs_env)}
    gvideo = f"meetings/{to_gcs['output_file_name']}"
    assert blobs[gvideo].download_as_bytes() == media_bytes(to_gcs["id"], "video", 0, to_gcs["file_size"])
    assert json.loads(blobs[gvideo + ".metadata.json"].download_as_bytes())["files"][0]["hashes"]["crc32c"]

    home = sshd_server.home("rtkpass") / sftp_dir
    assert (home / to_sftp["output_file_name"]).read_bytes() == media_bytes(to_sftp["id"], "video", 0, to_sftp["file_size"])
    assert (home / f"{to_sftp['output_file_name']}.metadata.json").exists()
    assert not [p for p in home.iterdir() if ".rtkpart-" in p.name]

    again = run_report(archive_recordings)
    assert again.bytes_transferred == 0
    assert {outcomes(again)[r["id"]].kind for r in (to_s3, to_gcs, to_sftp)} == {OutcomeKind.ALREADY_ARCHIVED}


def test_r2_from_storage_config(env, r2_env, moto_s3_server, caplog):
    """A recording whose storage_config is Cloudflare R2 (type "cloudflare", its account id and
    the write-only keys RealtimeKit never serves): archived through R2's S3 API (moto at
    ARCHIVE_R2_ENDPOINT_URL, region auto) with R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY and no
    AWS_* variable; S3's SHA-256 in the sidecar; the second run finds it archived."""
    from tests.fixtures.object_stores import r2_admin

    caplog.set_level(logging.DEBUG)
    rec = env.state.add_recording(file_size=9 * 1024 * 1024 + 7, audio=True, storage_config={
        "type": "cloudflare", "bucket": r2_env, "account_id": "0123456789abcdef0123456789abcdef", "path": "rtk/r2",
        "access_key": "r2-key-in-the-storage-config", "secret": "r2-secret-in-the-storage-config",
    })
    report = run_report(archive_recordings)
    outcome = outcomes(report)[rec["id"]]
    assert outcome.kind == OutcomeKind.ARCHIVED, report.outcomes
    assert outcome.destination.startswith(f"r2://{r2_env}/rtk/r2/"), outcome.destination
    client = r2_admin(moto_s3_server)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=r2_env)["Contents"]]
    video = f"rtk/r2/{rec['output_file_name']}"
    assert client.get_object(Bucket=r2_env, Key=video)["Body"].read() == media_bytes(rec["id"], "video", 0, rec["file_size"])
    assert any(".audio." in k for k in keys) and video + ".metadata.json" in keys
    assert not client.list_multipart_uploads(Bucket=r2_env).get("Uploads")
    sidecar = json.loads(client.get_object(Bucket=r2_env, Key=video + ".metadata.json")["Body"].read())
    data = media_bytes(rec["id"], "video", 0, rec["file_size"])
    parts = [hashlib.sha256(data[i : i + 8 * 1024 * 1024]).digest() for i in (0, 8 * 1024 * 1024)]
    entry = next(f for f in sidecar["files"] if f["kind"] == "video")
    # S3's SHA-256 as R2 has it for multipart: the composite of the parts' ("-2" where the server adds it)
    assert entry["hashes"]["s3-sha256"].split("-")[0] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert sidecar["storage_config"]["type"] == "cloudflare"
    assert "r2-secret-in-the-storage-config" not in json.dumps(sidecar) + caplog.text
    assert client.head_object(Bucket=r2_env, Key=video)["Metadata"]["rtk-recording-id"] == rec["id"]

    again = run_report(archive_recordings)
    assert again.bytes_transferred == 0 and outcomes(again)[rec["id"]].kind == OutcomeKind.ALREADY_ARCHIVED


def test_r2_credentials_and_endpoint_from_its_block(env, r2_env, moto_s3_server, monkeypatch):
    """No R2 variables: the rtk-r2-<bucket> block supplies the keys and the endpoint."""
    from pydantic import SecretStr

    from storage_backends.r2 import R2Credentials
    from tests.fixtures.object_stores import R2_TEST_ACCESS_KEY, R2_TEST_SECRET, r2_admin

    R2Credentials(access_key_id=R2_TEST_ACCESS_KEY, secret_access_key=SecretStr(R2_TEST_SECRET), endpoint_url=moto_s3_server,
                  storage_class="STANDARD_IA").save(f"rtk-r2-{r2_env}", overwrite=True)
    for name in ("R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "ARCHIVE_R2_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    rec = env.state.add_recording(file_size=1000, storage_config={"type": "cloudflare", "bucket": r2_env})
    report = run_report(archive_recordings)
    assert outcomes(report)[rec["id"]].kind == OutcomeKind.ARCHIVED, report.outcomes
    head = r2_admin(moto_s3_server).head_object(Bucket=r2_env, Key=rec["output_file_name"])
    assert head["ContentLength"] == 1000 and head["StorageClass"] == "STANDARD_IA"


def test_credentials_from_blocks(env, s3_env, moto_s3_server, sshd_server, monkeypatch):
    """No credentials in the environment: the per-destination blocks supply them."""
    key_user = sshd_server.users["rtked25519"]
    S3Credentials(aws_access_key_id="AKIABLOCK", aws_secret_access_key="block-secret").save(f"rtk-s3-{s3_env}", overwrite=True)
    SFTPCredentials(
        private_key=key_user.key_text, password=key_user.passphrase,
        known_hosts=(f"[127.0.0.1]:{sshd_server.port} {sshd_server.host_key_line}"),
    ).save("rtk-sftp-rtked25519-at-127-0-0-1", overwrite=True)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("SFTP_KNOWN_HOSTS", "/nonexistent/known_hosts")
    sftp_dir = f"blk-{uuid.uuid4().hex[:8]}"
    a = env.state.add_recording(file_size=1000, storage_config={"type": "aws", "bucket": s3_env, "region": "us-east-1"})
    b = env.state.add_recording(file_size=2000, storage_config={"type": "sftp", "host": "127.0.0.1", "port": sshd_server.port,
                                                                "username": "rtked25519", "auth_method": "KEY", "path": sftp_dir})
    report = run_report(archive_recordings)
    out = outcomes(report)
    assert out[a["id"]].kind == OutcomeKind.ARCHIVED and out[b["id"]].kind == OutcomeKind.ARCHIVED, report.outcomes
    assert (sshd_server.home("rtked25519") / sftp_dir / b["output_file_name"]).stat().st_size == 2000


def test_failures_are_clear_per_recording_and_leave_nothing(env, s3_env, moto_s3_server, sshd_server, monkeypatch, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    secret_pw = f"wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv("SFTP_PASSWORD", secret_pw)
    monkeypatch.setenv("SFTP_KNOWN_HOSTS", str(sshd_server.known_hosts))
    rsa = sshd_server.users["rtkrsa"]
    wrong_key = sshd_server.users["rtkecdsa"].key_text
    monkeypatch.setenv("SFTP_PRIVATE_KEY", wrong_key)
    empty_known = tmp_path / "empty_known_hosts"
    empty_known.write_text("")
    port = sshd_server.port
    base = {"type": "sftp", "host": "127.0.0.1", "port": port}
    d = f"fail-{uuid.uuid4().hex[:8]}"
    bad_pw = env.state.add_recording(storage_config={**base, "username": "rtkpass", "auth_method": "PASSWORD", "path": d})
    bad_key = env.state.add_recording(storage_config={**base, "username": rsa.name, "auth_method": "KEY", "path": d})
    no_bucket = env.state.add_recording(storage_config={"type": "aws", "bucket": "no-such-bucket-rtk", "region": "us-east-1"})
    good = env.state.add_recording(file_size=1234, storage_config={"type": "aws", "bucket": s3_env, "region": "us-east-1"})
    report = run_report(archive_recordings)
    out = outcomes(report)
    assert out[good["id"]].kind == OutcomeKind.ARCHIVED
    assert out[bad_pw["id"]].kind == OutcomeKind.FAILED and "authentication failed" in out[bad_pw["id"]].reason
    assert out[bad_key["id"]].kind == OutcomeKind.FAILED and "authentication failed" in out[bad_key["id"]].reason
    assert out[no_bucket["id"]].kind == OutcomeKind.FAILED and "no-such-bucket-rtk" in out[no_bucket["id"]].reason

    monkeypatch.setenv("SFTP_KNOWN_HOSTS", str(empty_known))
    monkeypatch.setenv("SFTP_PASSWORD", sshd_server.users["rtkpass"].password)
    unknown_host = run_report(archive_recordings)
    assert "host key" in outcomes(unknown_host)[bad_pw["id"]].reason
    assert empty_known.read_text() == ""

    assert not (sshd_server.home("rtkpass") / d).exists() or not any((sshd_server.home("rtkpass") / d).iterdir())
    assert set(s3_objects(moto_s3_server, s3_env)) == {good["output_file_name"], good["output_file_name"] + ".metadata.json"}

    captured = capsys.readouterr()
    everything = caplog.text + captured.out + captured.err + json.dumps([r.model_dump(mode="json") for r in (report, unknown_host)])
    for secret in (secret_pw, wrong_key.splitlines()[1], sshd_server.users["rtkpass"].password, env.token, "test-secret-rtk-archiver-s3"):
        assert secret not in everything


def test_azure_from_storage_config_env_then_block(env, azure_env, azurite_server, monkeypatch):
    """azure recordings are archived into Azure Blob (Azurite): credentials from the
    environment, then from an AzureCredentials block (with an access tier); S3-like checks:
    content, sidecar with the blob's MD5, a rerun transfers nothing."""
    from azure.storage.blob import BlobServiceClient

    from storage_backends.azure import AzureCredentials
    from tests.fixtures.object_stores import azurite_connection_string

    rec = env.state.add_recording(file_size=9 * 1024 * 1024 + 7, audio=True,
                                  storage_config={"type": "azure", "bucket": azure_env, "region": "westeurope", "path": "m/2026"})
    report = archive_recordings()
    assert outcomes(report)[rec["id"]].kind == OutcomeKind.ARCHIVED, report.outcomes
    conn = azurite_connection_string(azurite_server)
    container = BlobServiceClient.from_connection_string(conn).get_container_client(azure_env)
    video = f"m/2026/{rec['output_file_name']}"
    assert container.download_blob(video).readall() == media_bytes(rec["id"], "video", 0, rec["file_size"])
    sidecar = json.loads(container.download_blob(video + ".metadata.json").readall())
    assert sidecar["recording_id"] == rec["id"]
    assert sidecar["files"][0]["hashes"]["md5"] == bytes(container.get_blob_client(video).get_blob_properties().content_settings.content_md5).hex()
    again = archive_recordings()
    assert outcomes(again)[rec["id"]].kind == OutcomeKind.ALREADY_ARCHIVED and again.bytes_transferred == 0

    # no credentials in the environment: the block named after the container supplies them
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    AzureCredentials(connection_string=conn, access_tier="cool").save(f"rtk-azure-{azure_env}", overwrite=True)
    other = env.state.add_recording(file_size=3000, storage_config={"type": "azure", "bucket": azure_env, "path": "blk"})
    report = archive_recordings()
    assert outcomes(report)[other["id"]].kind == OutcomeKind.ARCHIVED, report.outcomes
    props = container.get_blob_client(f"blk/{other['output_file_name']}").get_blob_properties()
    assert props.size == 3000 and props.blob_tier == "Cool"
