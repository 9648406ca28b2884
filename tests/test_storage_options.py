"""Storage options per destination (URL query, credentials blocks) and what each store does
with them, on moto S3, the GCS emulator and Azurite; S3's SHA-256 checksums end to end;
upload stall timeouts from ARCHIVE_UPLOAD_STALL_SECONDS; the one registry of backends."""

from __future__ import annotations

import hashlib
import io
import logging
import os

import pytest

from rtk_archiver.settings import Settings
from storage_backends import InvalidDestination, StorageError, open_backend, parse_destination_url
from storage_backends.credentials import block_options

META = {"rtk-recording-id": "rec-1", "rtk-meeting-id": "meet-1"}


def settings(**kw) -> Settings:
    kw.setdefault("archive_credential_blocks", False)
    return Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b", **kw)


# --- parsing -----------------------------------------------------------------------------------

def test_url_options_parsed_and_normalised():
    d = parse_destination_url("s3://b/p?sse=aws:kms&kms_key_id=arn:aws:kms:us-east-1:1:key/k&storage_class=standard_ia")
    assert d.options == {"sse": "aws:kms", "kms_key_id": "arn:aws:kms:us-east-1:1:key/k", "storage_class": "STANDARD_IA"}
    assert parse_destination_url("gs://b?storage_class=coldline").options == {"storage_class": "COLDLINE"}
    az = parse_destination_url("azure://container/pre?access_tier=cool")
    assert (az.kind, az.bucket, az.root, az.options) == ("azure", "container", "pre", {"access_tier": "Cool"})
    assert parse_destination_url("az://c").display_url("k.mp4") == "az://c/k.mp4"


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("s3://b/p?storage_klass=STANDARD", "unknown storage option 'storage_klass'"),
        ("s3://b/p?sse=rot13", "sse='rot13' in the destination URL is not one of AES256, aws:kms"),
        ("s3://b/p?kms_key_id=k", "kms_key_id in the destination URL needs sse=aws:kms"),
        ("s3://b/p?storage_class=GLACIER", "is not one of"),  # not readable at once: sidecars must be
        ("s3://b/p?sse=", "is empty"),
        ("s3://b/p?sse=AES256&sse=aws:kms", "appears twice"),
        ("az://c/p?access_tier=Archive", "is not one of Hot, Cool, Cold"),
        ("gs://b/p?access_tier=Cool", "unknown storage option 'access_tier'"),
        ("file:///x?sse=AES256", "take no query parameters"),
        ("sftp://u@h/x?a=b", "take no query parameters"),
        ("az:///prefix", "need a container"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(url, fragment):
    with pytest.raises(InvalidDestination, match=fragment.replace("(", r"\(").replace("?", r"\?")):
        parse_destination_url(url)


def test_block_options_apply_under_the_urls():
    from storage_backends.azure import AzureCredentials
    from storage_backends.gcs import GCSCredentials
    from storage_backends.s3 import S3Credentials

    d = parse_destination_url("s3://b/p?storage_class=ONEZONE_IA")
    merged = d.with_options(block_options(S3Credentials(sse="aes256", storage_class="standard_ia")), "block 'x'")
    assert merged.options == {"sse": "AES256", "storage_class": "ONEZONE_IA"}  # the URL's own win
    g = parse_destination_url("gs://b").with_options(block_options(GCSCredentials(storage_class="nearline")), "block")
    assert g.options == {"storage_class": "NEARLINE"}
    with pytest.raises(InvalidDestination, match="access_tier='Archive' in the block 'rtk-azure-c'"):
        parse_destination_url("az://c").with_options(block_options(AzureCredentials(access_tier="archive")), "block 'rtk-azure-c'")


def test_one_registry_feeds_every_list():
    import re

    from flows.windows import DESTINATION_PATTERN
    from storage_backends import backend_class
    from storage_backends.destination import STORAGE_TYPES
    from storage_backends.registry import KINDS, REGISTRY
    from tasks.limits import BACKEND_KINDS

    assert BACKEND_KINDS == KINDS == ("file", "s3", "r2", "gcs", "azure", "sftp")
    assert STORAGE_TYPES == {"aws": "s3", "digitalocean": "s3", "cloudflare": "r2", "gcs": "gcs", "azure": "azure", "sftp": "sftp"}
    for spec in REGISTRY.values():
        for scheme in spec.schemes:
            assert re.match(DESTINATION_PATTERN, f"{scheme}://x")
        cls = backend_class(spec.kind)
        assert cls.__init__.__code__.co_varnames[1:3] == ("destination", "settings")  # one signature


# --- Cloudflare R2 (moto as its S3 API) --------------------------------------------------------

def test_r2_storage_class_metadata_and_composite_sha256(r2_env):
    """R2's options on its S3 API: storage class STANDARD_IA, metadata, and S3's SHA-256 (the
    composite of the parts for a multipart upload, R2's only kind of SHA-256 there)."""
    from tests.fixtures.object_stores import r2_admin

    b = open_backend(parse_destination_url(f"r2://{r2_env}/p?storage_class=standard_ia"), settings())
    assert b.extra_args == {"ChecksumAlgorithm": "SHA256", "StorageClass": "STANDARD_IA"}
    data = os.urandom(9 * 1024 * 1024 + 3)  # two parts
    info = b.put("v.mp4", io.BytesIO(data), len(data), metadata=META)
    head = r2_admin(os.environ["ARCHIVE_R2_ENDPOINT_URL"]).head_object(Bucket=r2_env, Key="p/v.mp4", ChecksumMode="ENABLED")
    assert (head["StorageClass"], head["Metadata"]) == ("STANDARD_IA", META)
    parts = [hashlib.sha256(data[i : i + 8 * 1024 * 1024]).digest() for i in (0, 8 * 1024 * 1024)]
    assert info.hashes["s3-sha256"].split("-")[0] == hashlib.sha256(b"".join(parts)).hexdigest()
    small = b.put_bytes("s.json", b"{}")
    assert small.hashes["s3-sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert b.head("s.json")["ETag"].strip('"') == hashlib.md5(b"{}").hexdigest()  # a single part's ETag: its MD5
    b.close()


def test_r2_block_options_and_refusals():
    from storage_backends.r2 import R2Credentials

    d = parse_destination_url("r2://b/p?storage_class=STANDARD")
    merged = d.with_options(block_options(R2Credentials(storage_class="standard_ia", account_id="ABC", checksum="off")), "block")
    assert merged.options == {"storage_class": "STANDARD", "account_id": "abc", "checksum": "off"}  # the URL's own win
    with pytest.raises(InvalidDestination, match="storage_class='ONEZONE_IA' in the block 'rtk-r2-b' is not one of STANDARD, STANDARD_IA"):
        d.with_options(block_options(R2Credentials(storage_class="onezone_ia")), "block 'rtk-r2-b'")


# --- S3 (moto) ---------------------------------------------------------------------------------

def test_s3_encryption_storage_class_metadata_and_checksum(s3_env):
    b = open_backend(parse_destination_url(f"s3://{s3_env}/p?sse=aws:kms&kms_key_id=key-1&storage_class=STANDARD_IA"), settings())
    data = os.urandom(9 * 1024 * 1024 + 3)  # two parts
    info = b.put("v.mp4", io.BytesIO(data), len(data), metadata=META)
    head = b.head("v.mp4")
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"], head["StorageClass"]) == ("aws:kms", "key-1", "STANDARD_IA")
    assert head["Metadata"] == META
    parts = [hashlib.sha256(data[i : i + 8 * 1024 * 1024]).digest() for i in (0, 8 * 1024 * 1024)]
    assert info.hashes["s3-sha256"].split("-")[0] == hashlib.sha256(b"".join(parts)).hexdigest()
    small = b.put_bytes("s.json", b"{}")
    assert small.hashes["s3-sha256"] == hashlib.sha256(b"{}").hexdigest()  # a single PUT: the file's sha256
    b.close()


def test_s3_checksum_that_differs_fails_and_removes_the_object(s3_env):
    """S3 reports a SHA-256 other than the one of the bytes read: put fails, nothing stays."""
    b = open_backend(parse_destination_url(f"s3://{s3_env}/p"), settings())

    def lie(parsed, **kw):
        if parsed.get("ChecksumSHA256"):
            parsed["ChecksumSHA256"] = "AAAA" + parsed["ChecksumSHA256"][4:]

    b.client.meta.events.register("after-call.s3.HeadObject", lambda http_response, parsed, **kw: lie(parsed))
    with pytest.raises(StorageError, match="SHA-256 checksum differs"):
        b.put("v.mp4", io.BytesIO(b"x" * 1000), 1000)
    b.client.meta.events.unregister("after-call.s3.HeadObject")
    assert b.stat("v.mp4") is None
    b.close()


def test_s3_checksum_off_for_stores_without_it(s3_env):
    b = open_backend(parse_destination_url(f"s3://{s3_env}/p?checksum=off"), settings())
    assert "ChecksumAlgorithm" not in b.extra_args
    assert b.client.meta.config.request_checksum_calculation == "when_required"
    info = b.put("v.mp4", io.BytesIO(b"x" * 1000), 1000)
    assert info.size == 1000 and "s3-sha256" not in info.hashes
    b.close()


def test_s3_sha256_recorded_in_the_sidecar_entry_and_checked_again(s3_env):
    """stream_file records the backend's own hash; a later stat that differs is caught by the
    "already archived" comparison (verify_archived compares every hash stat reports)."""
    from rtk_archiver.simulator import iter_media
    from tasks.transfer import stream_file

    class FakeDownload:
        kind, size, url, chunk_size = "video", 3 * 1024 * 1024, "https://example.invalid/v.mp4", 256 * 1024

        def chunks(self):
            return iter_media("rec", "video", 0, self.size, chunk=self.chunk_size)

        def close(self):
            pass

    b = open_backend(parse_destination_url(f"s3://{s3_env}/p"), settings())
    entry = stream_file(FakeDownload(), backend=b, key="v.mp4", logger=logging.getLogger("t"), metadata=META)
    assert entry.hashes["s3-sha256"] == entry.sha256  # one part: S3's checksum is the file's sha256
    assert b.head("v.mp4")["Metadata"] == META
    content = b"".join(FakeDownload().chunks())
    # one PutObject without KMS: its ETag is the md5 too, which stat reports for proofs
    assert b.stat("v.mp4").hashes == {"s3-sha256": entry.hashes["s3-sha256"], "md5": hashlib.md5(content).hexdigest()}
    b.close()


# --- GCS (emulator) ----------------------------------------------------------------------------

def test_gcs_storage_class_and_metadata(gcs_env):
    b = open_backend(parse_destination_url(f"gs://{gcs_env}/p?storage_class=NEARLINE"), settings())
    b.put("v.mp4", io.BytesIO(b"x" * 5000), 5000, metadata=META)
    blob = b.blob_info("v.mp4")
    assert (blob.storage_class, blob.metadata) == ("NEARLINE", META)
    b.close()


def test_gcs_kms_key_is_asked_for(gcs_env, monkeypatch):
    """The emulator ignores KMS keys: the upload must at least ask for it (kmsKeyName)."""
    from google.cloud.storage import Blob

    key = "projects/p/locations/l/keyRings/r/cryptoKeys/k"
    b = open_backend(parse_destination_url(f"gs://{gcs_env}/p?kms_key_name={key}"), settings())
    seen = {}
    original = Blob.upload_from_file

    def spy(self, *args, **kwargs):
        seen["kms"], seen["timeout"] = self.kms_key_name, kwargs.get("timeout")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_file", spy)
    b.put("v.mp4", io.BytesIO(b"x" * 10), 10)
    assert seen["kms"] == key
    b.close()


# --- Azure (Azurite) ---------------------------------------------------------------------------

def test_azure_access_tier_metadata_and_md5(azure_env):
    b = open_backend(parse_destination_url(f"az://{azure_env}/p?access_tier=Cool"), settings())
    data = os.urandom(9 * 1024 * 1024 + 1)  # two blocks
    info = b.put("v.mp4", io.BytesIO(data), len(data), metadata=META)
    props = b.properties("v.mp4")
    assert (props.blob_tier, props.metadata) == ("Cool", {"rtk_recording_id": "rec-1", "rtk_meeting_id": "meet-1"})
    assert info.hashes == {"md5": hashlib.md5(data).hexdigest()} == b.stat("v.mp4").hashes
    assert [k for k, _ in b.list()] == ["v.mp4"]
    b.close()


def test_azure_no_clobber_at_commit(azure_env, monkeypatch):
    """A blob that appears at the name while the blocks are staged is never overwritten: the
    commit carries If-None-Match: * and the put fails with KeyTaken."""
    from storage_backends.base import KeyTaken

    b = open_backend(parse_destination_url(f"az://{azure_env}/p"), settings())
    other = open_backend(parse_destination_url(f"az://{azure_env}/p"), settings())

    class Racing(io.BytesIO):
        def read(self, n=-1):
            data = super().read(n)
            if not data and other.stat("v.mp4") is None:
                other.put_bytes("v.mp4", b"someone else's")  # lands before our commit
            return data

    with pytest.raises(KeyTaken):
        b.put("v.mp4", Racing(b"y" * 1000), 1000)
    assert b.read_bytes("v.mp4") == b"someone else's"
    b.close()
    other.close()


# --- upload stall ------------------------------------------------------------------------------

def test_upload_stall_timeouts_come_from_the_setting(s3_env, gcs_env, azure_env):
    st = settings(archive_upload_stall_seconds=7)
    s3 = open_backend(parse_destination_url(f"s3://{s3_env}/p"), st)
    assert (s3.client.meta.config.read_timeout, s3.client.meta.config.connect_timeout) == (7, 7)
    gcs = open_backend(parse_destination_url(f"gs://{gcs_env}/p"), st)
    assert gcs.timeout == (7, 7)
    az = open_backend(parse_destination_url(f"az://{azure_env}/p"), st)
    transport = az.client._config.transport  # noqa: SLF001 - the configured transport's timeouts
    assert (transport.connection_config.read_timeout, transport.connection_config.timeout) == (7, 7)
    for b in (s3, gcs, az):
        b.close()


def test_azure_block_corrupted_in_transit_is_refused_and_nothing_committed(azure_env):
    """A block whose bytes change after its MD5 was computed (corruption on the way) is
    refused by the service (validate_content): the put fails, nothing is at the name."""
    b = open_backend(parse_destination_url(f"az://{azure_env}/p"), settings())
    corrupted = []

    def corrupt(request):
        http = request.http_request
        if "comp=block" in http.url and "blocklist" not in http.url and not corrupted:
            body = bytearray(http.data if isinstance(http.data, (bytes, bytearray)) else http.data.read())
            body[100] ^= 0xFF
            http.set_bytes_body(bytes(body))
            http.headers["Content-Length"] = str(len(body))
            corrupted.append(True)

    blob_client_cls = type(b.container.get_blob_client("x"))
    original = blob_client_cls.stage_block

    def stage_block(self, *args, **kwargs):
        return original(self, *args, raw_request_hook=corrupt, **kwargs)

    blob_client_cls.stage_block = stage_block
    try:
        with pytest.raises(StorageError):
            b.put("v.mp4", io.BytesIO(os.urandom(1000)), 1000)
    finally:
        blob_client_cls.stage_block = original
    assert corrupted and b.stat("v.mp4") is None
    assert [blob.name for blob in b.container.list_blobs()] == []
    b.close()
