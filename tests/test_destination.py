from __future__ import annotations

import pytest

from rtk_archiver.models import StorageConfig
from storage_backends import (
    InvalidDestination,
    UnsupportedDestination,
    destination_from_storage_config,
    parse_destination_url,
)


def test_parse_urls():
    assert parse_destination_url("file:///srv/archive/").root == "/srv/archive"
    s3 = parse_destination_url("s3://bucket/pre/fix")
    assert (s3.kind, s3.bucket, s3.root) == ("s3", "bucket", "pre/fix")
    gs = parse_destination_url("gs://b")
    assert (gs.kind, gs.bucket, gs.root) == ("gcs", "b", "")
    sftp = parse_destination_url("sftp://alice@host.example:2222/~/rec")
    assert (sftp.host, sftp.port, sftp.username, sftp.root) == ("host.example", 2222, "alice", "rec")
    assert parse_destination_url("sftp://alice@h/srv/x").root == "/srv/x"
    assert parse_destination_url("sftp://alice@h/srv/x").display_url("a.mp4") == "sftp://alice@h/srv/x/a.mp4"


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("ftp://x/y", "unsupported destination scheme"),
        ("file://relative", "file:///absolute"),
        ("s3:///prefix", "need a bucket"),
        ("sftp://host/x", "need a user"),
        ("sftp://u:hunter2@host/x", "must not contain a password"),
        ("file:///a/../b", "'..'"),
        ("sftp://u@host:notaport/x", "not a valid destination URL"),
        ("nonsense", "unsupported destination scheme"),
    ],
)
def test_bad_urls_are_clear(url, fragment):
    with pytest.raises(InvalidDestination, match=fragment) as info:
        parse_destination_url(url)
    assert "hunter2" not in str(info.value)


def test_storage_config_selection():
    d = destination_from_storage_config(StorageConfig(type="digitalocean", bucket="b", region="nyc3"))
    assert (d.kind, d.source_type, d.region) == ("s3", "digitalocean", "nyc3")
    d = destination_from_storage_config(StorageConfig(type="sftp", host="h", port=2222.0, username="u", auth_method="KEY"))
    assert (d.kind, d.port, d.auth_method) == ("sftp", 2222, "KEY")
    d = destination_from_storage_config(StorageConfig(type="azure", bucket="c", path="x"))
    assert (d.kind, d.bucket, d.source_type, d.display_url("k")) == ("azure", "c", "azure", "az://c/k")
    with pytest.raises(UnsupportedDestination, match="'dropbox' is not supported"):
        destination_from_storage_config(StorageConfig(type="dropbox", bucket="b"))
    with pytest.raises(InvalidDestination, match="storage_config.bucket"):
        destination_from_storage_config(StorageConfig(type="aws"))
    with pytest.raises(InvalidDestination, match="storage_config.host"):
        destination_from_storage_config(StorageConfig(type="sftp", username="u", auth_method="KEY"))
    with pytest.raises(InvalidDestination, match="auth_method"):
        destination_from_storage_config(StorageConfig(type="sftp", host="h", username="u"))


def test_secrets_in_storage_config_are_hidden():
    sc = StorageConfig.model_validate({"type": "aws", "bucket": "b", "access_key": "AKIA123", "secret": "s3cr3t"})
    assert "s3cr3t" not in repr(sc) and "s3cr3t" not in str(sc.public_dict())
    assert "AKIA123" not in str(sc.public_dict())


def test_block_names_and_digitalocean_endpoint():
    from rtk_archiver.settings import Settings
    from storage_backends.credentials import block_name_for
    from storage_backends.s3 import endpoint_for

    aws = destination_from_storage_config(StorageConfig(type="aws", bucket="Team.Recordings"))
    assert block_name_for(aws) == "rtk-s3-team-recordings"
    sftp = destination_from_storage_config(StorageConfig(type="sftp", host="sftp.example.com", username="archiver", auth_method="KEY"))
    assert block_name_for(sftp) == "rtk-sftp-archiver-at-sftp-example-com"
    do = destination_from_storage_config(StorageConfig(type="digitalocean", bucket="b", region="ams3"))
    s = Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b")
    assert endpoint_for(do, s) == "https://ams3.digitaloceanspaces.com"
    assert endpoint_for(aws, s) is None  # botocore's own chain (AWS_ENDPOINT_URL_S3 ...)
    s2 = Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b",
                  ARCHIVE_DIGITALOCEAN_ENDPOINT_URL="http://127.0.0.1:9000", ARCHIVE_S3_ENDPOINT_URL="http://minio:9000")
    assert endpoint_for(do, s2) == "http://127.0.0.1:9000" and endpoint_for(aws, s2) == "http://minio:9000"
