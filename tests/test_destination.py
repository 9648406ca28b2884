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


# --- issue 10: port 0 is not port 22 ----------------------------------------------------------

@pytest.mark.parametrize(
    "url",
    [
        "sftp://user@host:0/x",
        "sftp://user@host:00/x",
        "sftp://user@host:65536/x",
        "sftp://user@host:99999999999999999999/x",
        "sftp://user@host:-1/x",
        "sftp://user@host:+22/x",
        "sftp://user@host:\u0662\u0662/x",  # Arabic-Indic digits
        "sftp://user@[::1]:0/x",
        "sftp://user:hunter2@host:0/x",
    ],
)
def test_bad_sftp_ports_are_refused(url):
    with pytest.raises(InvalidDestination, match="port") as info:
        parse_destination_url(url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url, port",
    [("sftp://u@h/x", 22), ("sftp://u@h:/x", 22), ("sftp://u@h:1/x", 1), ("sftp://u@h:65535/x", 65535), ("sftp://u@[::1]:2222/x", 2222)],
)
def test_good_sftp_ports(url, port):
    assert parse_destination_url(url).port == port


@pytest.mark.parametrize(
    "url", ["s3://AKIA@bucket/x", "s3://bucket:443/x", "gs://user@bucket/x", "gs://bucket:0/x", "s3://:@bucket/x"]
)
def test_object_store_urls_take_no_user_or_port(url):
    """Used to become a bucket named 'AKIA@bucket' or 'bucket:443' (the netloc as it was)."""
    with pytest.raises(InvalidDestination, match="no user or port|port|password"):
        parse_destination_url(url)


@pytest.mark.parametrize("port", [0, 0.0, "0", -1, -22, 65536, 10**30, 1e30])
def test_bad_storage_config_ports_are_refused(port):
    sc = StorageConfig.model_validate({"type": "sftp", "host": "h", "username": "u", "auth_method": "KEY", "port": port})
    with pytest.raises(InvalidDestination, match="storage_config.port"):
        destination_from_storage_config(sc)


def test_storage_config_without_a_port_is_22():
    for port in (None, ""):
        sc = StorageConfig.model_validate({"type": "sftp", "host": "h", "username": "u", "auth_method": "KEY", "port": port})
        assert destination_from_storage_config(sc).port == 22


def test_a_destination_cannot_hold_port_0():
    """The model itself refuses it, so no other path (a block, a later parser) can bring it
    to storage_backends/sftp.py, which reads `port or 22`."""
    from pydantic import ValidationError

    from storage_backends import Destination

    for port in (0, -1, 65536):
        with pytest.raises(ValidationError):
            Destination(kind="sftp", host="h", username="u", port=port)


# --- Cloudflare R2 (storage_config type "cloudflare", r2://) ------------------------------------

def _r2_settings(**kw):
    from rtk_archiver.settings import Settings

    return Settings(cloudflare_api_token="t", cloudflare_account_id="0123456789abcdef0123456789abcdef",
                    realtimekit_app_id="b", archive_credential_blocks=False, **kw)


def test_r2_urls_and_storage_configs():
    from storage_backends.credentials import block_name_for

    d = parse_destination_url("r2://Team.Recordings/pre/fix")
    assert (d.kind, d.bucket, d.root, d.region, d.options) == ("r2", "Team.Recordings", "pre/fix", "auto", {})
    assert d.display_url("a.mp4") == "r2://Team.Recordings/pre/fix/a.mp4"
    assert block_name_for(d) == "rtk-r2-team-recordings"
    assert parse_destination_url("r2://b?account_id=ABCDEF0123").options == {"account_id": "abcdef0123"}
    # the account id field is not documented: account_id, accountId and account are all read
    for field in ("account_id", "accountId", "account"):
        sc = StorageConfig.model_validate({"type": "cloudflare", "bucket": "b", "region": "wnam", field: "F00D", "path": "x"})
        d = destination_from_storage_config(sc)
        assert (d.kind, d.source_type, d.region, d.options) == ("r2", "cloudflare", "auto", {"account_id": "f00d"}), field
        assert sc.public_dict()["account_id"] == "F00D"
    d = destination_from_storage_config(StorageConfig(type="Cloudflare", bucket="b"))
    assert (d.kind, d.options) == ("r2", {})
    with pytest.raises(InvalidDestination, match="storage_config.bucket is missing for type 'cloudflare'"):
        destination_from_storage_config(StorageConfig(type="cloudflare"))
    with pytest.raises(InvalidDestination, match="account_id='evil.example.com/x' in the storage_config is not a Cloudflare account id"):
        destination_from_storage_config(StorageConfig(type="cloudflare", bucket="b", account_id="evil.example.com/x"))


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("r2://b/p?sse=AES256", "unknown storage option 'sse'"),  # R2 has no x-amz-server-side-encryption
        ("r2://b/p?storage_class=GLACIER_IR", "is not one of STANDARD, STANDARD_IA"),
        ("r2://b/p?account_id=a.b", "is not a Cloudflare account id"),
        ("r2://key@b/p", "take a bucket only"),
        ("r2:///p", "need a bucket"),
    ],
)
def test_bad_r2_urls_are_clear(url, fragment):
    with pytest.raises(InvalidDestination, match=fragment):
        parse_destination_url(url)


def test_r2_endpoint_account_from_storage_config_else_setting_else_override(monkeypatch):
    from storage_backends.r2 import r2_client_params, r2_endpoint

    monkeypatch.delenv("ARCHIVE_R2_ENDPOINT_URL", raising=False)
    s = _r2_settings()
    own = destination_from_storage_config(StorageConfig(type="cloudflare", bucket="b", account_id="aaaa1111"))
    plain = destination_from_storage_config(StorageConfig(type="cloudflare", bucket="b"))
    assert r2_endpoint(own, s) == "https://aaaa1111.r2.cloudflarestorage.com"  # the storage_config's account
    assert r2_endpoint(plain, s) == "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com"  # CLOUDFLARE_ACCOUNT_ID
    params = r2_client_params(plain, s)
    assert params["region_name"] == "auto" and params["aws_access_key_id"] is None  # no keys: boto3's chain
    # ARCHIVE_R2_ENDPOINT_URL overrides both: a jurisdiction's endpoint, or a test server
    eu = _r2_settings(ARCHIVE_R2_ENDPOINT_URL="https://aaaa1111.eu.r2.cloudflarestorage.com")
    assert r2_endpoint(own, eu) == r2_endpoint(plain, eu) == "https://aaaa1111.eu.r2.cloudflarestorage.com"
    assert r2_client_params(own, eu)["region_name"] == "auto"
    monkeypatch.setenv("ARCHIVE_R2_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert r2_endpoint(plain, _r2_settings()) == "http://127.0.0.1:9000"


def test_r2_endpoint_override_is_checked():
    from rtk_archiver.settings import SettingsError, load_settings

    for bad, fragment in (("https://key:secret@x.r2.cloudflarestorage.com", "user name or password"), ("ftp://x", r"http\(s\) URL")):
        with pytest.raises(SettingsError, match=f"ARCHIVE_R2_ENDPOINT_URL .*{fragment}") as info:
            load_settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b", ARCHIVE_R2_ENDPOINT_URL=bad)
        assert "secret" not in str(info.value)
    with pytest.raises(SettingsError, match="R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY go together"):
        load_settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b", R2_ACCESS_KEY_ID="k")


def test_r2_without_any_account_id_is_a_clear_permanent_error(monkeypatch):
    from storage_backends import PermanentStorageError, open_backend

    for name in ("CLOUDFLARE_ACCOUNT_ID", "ARCHIVE_R2_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    plain = destination_from_storage_config(StorageConfig(type="cloudflare", bucket="recs"))
    with pytest.raises(PermanentStorageError) as info:
        open_backend(plain, None)  # no settings: the variables themselves
    message = str(info.value)
    assert "R2 bucket 'recs'" in message and "account_id" in message and "CLOUDFLARE_ACCOUNT_ID" in message, message
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "beef")
    from storage_backends.r2 import r2_endpoint

    assert r2_endpoint(plain, None) == "https://beef.r2.cloudflarestorage.com"


def test_r2_keys_block_then_variables_then_the_chain(monkeypatch):
    from pydantic import SecretStr

    from storage_backends.blocks import R2Credentials
    from storage_backends.r2 import r2_client_params

    d = parse_destination_url("r2://b/p")
    s = _r2_settings(R2_ACCESS_KEY_ID="env-key", R2_SECRET_ACCESS_KEY="env-secret")
    assert (r2_client_params(d, s)["aws_access_key_id"], r2_client_params(d, s)["aws_secret_access_key"]) == ("env-key", "env-secret")
    block = R2Credentials(access_key_id="block-key", secret_access_key=SecretStr("block-secret"),
                          endpoint_url="https://acct.eu.r2.cloudflarestorage.com")
    params = r2_client_params(d, s, block)
    assert (params["aws_access_key_id"], params["aws_secret_access_key"], params["endpoint_url"]) == (
        "block-key", "block-secret", "https://acct.eu.r2.cloudflarestorage.com")
    assert r2_client_params(d, _r2_settings(), R2Credentials())["aws_access_key_id"] is None  # empty block: the chain
