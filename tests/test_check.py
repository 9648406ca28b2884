"""``rtk-archiver check``: a working and a broken destination of every kind, on the real
servers (local dir, moto S3, GCS emulator, Azurite, OpenSSH sftp); the storage_configs of a
window's recordings; the CLI's table and exit status. The probe never stays behind."""

from __future__ import annotations

import uuid

import pytest

from rtk_archiver.settings import Settings
from storage_backends import parse_destination_url
from tasks.check import PROBE_PREFIX, check_destinations, probe_destination


def settings(**kw) -> Settings:
    kw.setdefault("archive_credential_blocks", False)
    return Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b", **kw)


def probe(url: str, st: Settings | None = None):
    return probe_destination(parse_destination_url(url), st or settings(), "--destination")


def assert_ok(row, *hashes: str):
    assert row.status == "ok", row
    assert row.works[-4:] == ["write", "stat", "read", "delete"]
    for name in hashes:
        assert name in row.checksums, row.checksums


def assert_failed(row, fragment: str, fix_fragment: str):
    assert row.status == "failed", row
    assert fragment in row.reason, row.reason
    assert fix_fragment in row.fix, row.fix


def test_file(tmp_path):
    assert_ok(probe(f"file://{tmp_path}/archive"))
    assert not [p for p in (tmp_path / "archive").rglob("*") if p.is_file()]  # the probe is gone
    (tmp_path / "a-file").write_text("x")
    assert_failed(probe(f"file://{tmp_path}/a-file/below"), "a path component is a file", "remove or rename the file")


def test_s3(s3_env, moto_s3_server):
    import boto3

    row = probe(f"s3://{s3_env}/pre?sse=AES256&storage_class=STANDARD_IA")
    assert_ok(row, "s3-sha256")
    assert row.options == {"sse": "AES256", "storage_class": "STANDARD_IA"}
    assert not boto3.client("s3", endpoint_url=moto_s3_server).list_objects_v2(Bucket=s3_env).get("Contents")
    assert_failed(probe("s3://no-such-bucket-rtk-check/x"), "'no-such-bucket-rtk-check' does not exist", "create it")


def test_s3_without_credentials(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert_failed(probe(f"s3://{s3_env}/x"), "no S3 credentials", "AWS_ACCESS_KEY_ID")


def test_r2(r2_env, moto_s3_server, monkeypatch):
    """R2: the endpoint used and region auto in the row's options, R2's checksums (S3's SHA-256,
    composite for multipart; the ETag's MD5 for a single part), its storage class."""
    from tests.fixtures.object_stores import r2_admin

    row = probe(f"r2://{r2_env}/pre?storage_class=STANDARD_IA")
    assert_ok(row, "s3-sha256", "etag md5 (single part)")
    assert row.options == {"storage_class": "STANDARD_IA", "endpoint": moto_s3_server, "region": "auto"}
    assert any("composite" in c and "multipart" in c for c in row.checksums), row.checksums
    assert not r2_admin(moto_s3_server).list_objects_v2(Bucket=r2_env).get("Contents")
    assert_failed(probe("r2://no-such-bucket-rtk-check/x"), "R2 bucket 'no-such-bucket-rtk-check' does not exist", "create it")
    # no keys anywhere: R2's variables and block named
    monkeypatch.delenv("R2_ACCESS_KEY_ID")
    monkeypatch.delenv("R2_SECRET_ACCESS_KEY")
    row = probe(f"r2://{r2_env}/x")
    assert_failed(row, "no R2 credentials", "R2_ACCESS_KEY_ID")
    assert f"'rtk-r2-{r2_env}'" in row.reason  # the block it would read


def test_gcs(gcs_env):
    assert_ok(probe(f"gs://{gcs_env}/pre?storage_class=NEARLINE"), "crc32c")
    assert_failed(probe("gs://no-such-bucket-rtk-check/x"), "does not exist", "create it")


def test_azure(azure_env, monkeypatch):
    assert_ok(probe(f"az://{azure_env}/pre?access_tier=Cool"), "md5")
    assert_failed(probe("az://no-such-container-rtk/x"), "Azure container 'no-such-container-rtk' does not exist", "create it")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    assert_failed(probe(f"az://{azure_env}/x"), "no Azure credentials", "AZURE_STORAGE_CONNECTION_STRING")


def test_sftp(sshd_server, tmp_path):
    from tests.fixtures.sshd import sftp_settings

    user = sshd_server.users["rtkpass"]
    url = f"sftp://rtkpass@127.0.0.1:{sshd_server.port}/~/chk-{uuid.uuid4().hex[:8]}"
    row = probe(url, sftp_settings(sshd_server, sftp_password=user.password, archive_credential_blocks=False))
    assert_ok(row)
    assert "host key" in row.works
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    bad = probe(url, sftp_settings(sshd_server, sftp_password=user.password, sftp_known_hosts=empty, archive_credential_blocks=False))
    assert_failed(bad, "host key", "SFTP_KNOWN_HOSTS")
    assert empty.read_text() == ""


def test_storage_configs_of_the_window_each_checked_once(archiver_env, s3_env, monkeypatch):
    """Distinct storage_configs of the recordings: one row each (with how many recordings use
    it), plus the default destination; unsupported types are skipped, not failed."""
    from rtk_archiver.settings import load_settings
    from tasks.check import run_check

    monkeypatch.setenv("ARCHIVE_CREDENTIAL_BLOCKS", "false")
    for _ in range(2):
        archiver_env.state.add_recording(file_size=1000, storage_config={"type": "aws", "bucket": s3_env, "path": "team"})
    archiver_env.state.add_recording(file_size=1000, storage_config={"type": "aws", "bucket": "no-such-bucket-rtk-check"})
    archiver_env.state.add_recording(file_size=1000, storage_config={"type": "dropbox", "bucket": "b"})
    report = run_check(load_settings())
    rows = {(r.source, r.destination): r for r in report.checks}
    by_dest = {r.destination: r for r in report.checks}
    assert by_dest[f"s3://{s3_env}/team"].status == "ok" and "2 recordings" in by_dest[f"s3://{s3_env}/team"].source
    assert by_dest["s3://no-such-bucket-rtk-check/"].status == "failed"
    assert by_dest["(dropbox)"].status == "skipped" and "not supported" in by_dest["(dropbox)"].reason
    assert by_dest[f"file://{archiver_env.archive}"].status == "ok"
    assert len(rows) == len(report.checks) == 4
    assert [r.destination for r in report.failed] == ["s3://no-such-bucket-rtk-check/"]


def test_cli_table_and_exit_status(tmp_path, monkeypatch, capsys):
    from rtk_archiver.cli import main

    for key, value in {"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ACCOUNT_ID": "a", "REALTIMEKIT_APP_ID": "b",
                       "ARCHIVE_CREDENTIAL_BLOCKS": "false", "PREFECT_API_URL": "http://127.0.0.1:9/api"}.items():
        monkeypatch.setenv(key, value)  # a configured API: no private one is started (and no block is read)
    monkeypatch.delenv("ARCHIVE_DEFAULT_DESTINATION", raising=False)
    assert main(["check", "--skip-recordings", "--destination", f"file://{tmp_path}/ok"]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "1 of 1 destination(s) passed" in out
    (tmp_path / "f").write_text("x")
    assert main(["check", "--skip-recordings", "--destination", f"file://{tmp_path}/f/x"]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "0 of 1 destination(s) passed" in out
    assert not [p for p in tmp_path.rglob(f"{PROBE_PREFIX}*")]


def test_unknown_option_is_refused_before_any_work(capsys):
    from rtk_archiver.cli import main

    with pytest.raises(SystemExit) as info:
        main(["check", "--destination", "s3://b/p?storage_klass=STANDARD"])
    assert info.value.code == 2
    assert "unknown storage option 'storage_klass'" in capsys.readouterr().err


@pytest.mark.usefixtures("prefect_harness")
def test_check_destinations_flow_fails_when_a_destination_does(tmp_path, monkeypatch):
    """The check-destinations deployment's flow: a table artifact, Failed when one fails."""
    from prefect.client.orchestration import get_client

    from flows.check import check_destinations

    for key, value in {"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ACCOUNT_ID": "a", "REALTIMEKIT_APP_ID": "b",
                       "ARCHIVE_CREDENTIAL_BLOCKS": "false"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ARCHIVE_DEFAULT_DESTINATION", f"file://{tmp_path}/default")
    report = check_destinations(destination=None, include_recordings=False)
    assert [c.status for c in report.checks] == ["ok"]
    (tmp_path / "f").write_text("x")
    state = check_destinations(destination=f"file://{tmp_path}/f/x", include_recordings=False, return_state=True)
    assert state.is_failed() and "1 of 2 destination(s) failed" in state.message
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts(limit=50)
        tables = [a for a in artifact if a.key == "destination-check"]
    assert tables and "a path component is a file" in tables[0].data
