"""The StorageBackend contract, run against every backend on a real server (local dir, moto S3,
GCS emulator, Azurite, OpenSSH sftp): streaming round trip, nothing partial, clear errors."""

from __future__ import annotations

import hashlib

import pytest

from rtk_archiver.settings import Settings
from rtk_archiver.simulator import iter_media
from rtk_archiver.streams import SizeMismatch, VerifyingReader
from storage_backends import StorageBackend, open_backend, parse_destination_url

SIZE = 20 * 1024 * 1024 + 123  # several multipart parts / resumable chunks


def settings(**kw) -> Settings:
    return Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b", **kw)


@pytest.fixture(params=["file", "s3", "gcs", "azure", "sftp"])
def backend(request, tmp_path) -> StorageBackend:
    kind = request.param
    if kind == "file":
        b = open_backend(parse_destination_url(f"file://{tmp_path}/root"), settings())
        b.leftovers = lambda: [p.name for p in (tmp_path / "root").rglob("*") if p.is_file()]
    elif kind == "s3":
        bucket = request.getfixturevalue("s3_env")
        b = open_backend(parse_destination_url(f"s3://{bucket}/pre/fix"), settings())
        b.leftovers = lambda: [o["Key"] for o in b.client.list_objects_v2(Bucket=bucket).get("Contents", [])] + [
            u["Key"] for u in b.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        ]
    elif kind == "gcs":
        bucket = request.getfixturevalue("gcs_env")
        b = open_backend(parse_destination_url(f"gs://{bucket}/pre"), settings())
        b.leftovers = lambda: [blob.name for blob in b.client.list_blobs(bucket)]
    elif kind == "azure":
        container = request.getfixturevalue("azure_env")
        b = open_backend(parse_destination_url(f"az://{container}/pre/fix"), settings())
        b.leftovers = lambda: [blob.name for blob in b.container.list_blobs()]  # committed blobs
    else:
        b = request.getfixturevalue("sftp_backend_factory")()
        b.leftovers = b.list_all_files
    yield b
    b.close()


#: hashes a backend computes and checks itself while uploading (not the transfer's reader)
OWN_HASHES = {"s3": ("s3-sha256",), "azure": ("md5",)}


def own_hash(name: str, data: bytes) -> str:
    if name == "md5":
        return hashlib.md5(data).hexdigest()
    if name == "s3-sha256":  # composite of the 8 MiB parts; the -N suffix when the server adds one
        from storage_backends.s3 import PART_SIZE

        parts = [hashlib.sha256(data[i : i + PART_SIZE]).digest() for i in range(0, len(data), PART_SIZE)]
        return hashlib.sha256(b"".join(parts)).hexdigest()
    raise AssertionError(name)


def media(size: int):
    return iter_media("contract", "video", 0, size, chunk=256 * 1024)


def test_streaming_round_trip(backend):
    reader = VerifyingReader(media(SIZE), SIZE, backend.hash_types)
    info = backend.put("dir/sub/video.mp4", reader, SIZE)
    reader.verify_end()
    assert info.size == SIZE and reader.complete
    digests = reader.hexdigests()
    data = b"".join(media(SIZE))
    for name, value in info.hashes.items():  # computed by the reader, or by the backend itself
        assert value == digests.get(name) or value.split("-")[0] == own_hash(name, data), name
    stat = backend.stat("dir/sub/video.mp4")
    assert stat is not None and stat.size == SIZE and stat.hashes == info.hashes
    assert set(info.hashes) >= set(OWN_HASHES.get(backend.destination.kind, ()))
    assert backend.stat("dir/sub/missing.mp4") is None
    backend.put_bytes("dir/sub/video.mp4.metadata.json", b'{"x": 1}')
    assert backend.read_bytes("dir/sub/video.mp4.metadata.json") == b'{"x": 1}'
    assert backend.read_bytes("nope.json") is None
    expected = hashlib.sha256(b"".join(media(SIZE))).hexdigest()
    assert digests["sha256"] == expected
    backend.delete("dir/sub/video.mp4.metadata.json")
    assert backend.stat("dir/sub/video.mp4.metadata.json") is None


def test_a_failing_source_leaves_nothing(backend):
    reader = VerifyingReader(media(SIZE // 2), SIZE, backend.hash_types)  # body ends halfway
    with pytest.raises(SizeMismatch):
        backend.put("broken.mp4", reader, SIZE)
    assert backend.stat("broken.mp4") is None
    assert backend.leftovers() == []


def test_replace_overwrites_the_whole_object(backend):
    backend.put_bytes("same.json", b"first version, longer")
    backend.put_bytes("same.json", b"second", replace=True)
    assert backend.read_bytes("same.json") == b"second"


def test_no_clobber_by_default_leaves_what_is_there(backend):
    """Without replace, an object already at the key is never overwritten (nor deleted)."""
    from storage_backends.base import KeyTaken

    backend.put_bytes("theirs.mp4", b"not written by the archiver")
    with pytest.raises(KeyTaken):
        backend.put("theirs.mp4", VerifyingReader(media(SIZE), SIZE, backend.hash_types), SIZE)
    assert backend.read_bytes("theirs.mp4") == b"not written by the archiver"
    assert len(backend.leftovers()) == 1  # theirs, and no temp file, part or pending upload


def test_s3_server_error_mid_upload_aborts_the_multipart_upload(s3_env):
    """UploadPart answers 500 for the second part (every attempt): boto3 gives up, the
    multipart upload is aborted on the server, nothing appears at the key."""
    from botocore.awsrequest import AWSResponse

    from storage_backends import PermanentStorageError, StorageError

    b = open_backend(parse_destination_url(f"s3://{s3_env}/x"), settings())

    class Raw:
        def stream(self, **kw):
            yield b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"

    def fail_second_part(request, **kw):
        if "partNumber=2" in request.url:
            return AWSResponse(request.url, 500, {}, Raw())
        return None

    b.client.meta.events.register("before-send.s3.UploadPart", fail_second_part)
    reader = VerifyingReader(media(SIZE), SIZE, b.hash_types)
    with pytest.raises(StorageError) as info:
        b.put("video.mp4", reader, SIZE)
    assert not isinstance(info.value, PermanentStorageError)  # transient: the task retries it
    assert b.stat("video.mp4") is None
    assert not b.client.list_multipart_uploads(Bucket=s3_env).get("Uploads")
    b.close()


@pytest.mark.parametrize("size", [1000, SIZE], ids=["small", "multipart"])
def test_azure_permission_denied_is_permanent_clear_and_leaves_nothing(azure_env, azurite_server, monkeypatch, size):
    """A SAS token that may read and list but not write: the upload fails at once (permanent,
    no retry), names the container and the blob, and nothing is committed."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from storage_backends import PermanentStorageError
    from tests.fixtures.object_stores import AZURITE_ACCOUNT, AZURITE_KEY

    sas = generate_container_sas(
        AZURITE_ACCOUNT, azure_env, account_key=AZURITE_KEY, permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", f"BlobEndpoint={azurite_server}/{AZURITE_ACCOUNT};SharedAccessSignature={sas}"
    )
    b = open_backend(parse_destination_url(f"az://{azure_env}/pre"), settings(archive_credential_blocks=False))
    with pytest.raises(PermanentStorageError) as info:
        b.put("denied/video.mp4", VerifyingReader(media(size), size, b.hash_types), size)
    message = str(info.value)
    assert "denied" in message and f"az://{azure_env}/pre/denied/video.mp4" in message, message
    assert sas.split("sig=")[-1][:20] not in message
    assert b.stat("denied/video.mp4") is None
    assert [blob.name for blob in b.container.list_blobs()] == []
    b.close()
