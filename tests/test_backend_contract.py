"""The StorageBackend contract, run against every backend on a real server (local dir, moto S3,
moto as Cloudflare R2's S3 API, GCS emulator, Azurite, OpenSSH sftp): streaming round trip, nothing partial, clear errors."""

from __future__ import annotations

import hashlib

import pytest

from rtk_archiver.settings import Settings
from rtk_archiver.simulator import iter_media
from rtk_archiver.streams import SizeMismatch, VerifyingReader
from storage_backends import StorageBackend, open_backend, parse_destination_url
from storage_backends.base import StorageError

SIZE = 20 * 1024 * 1024 + 123  # several multipart parts / resumable chunks


def settings(**kw) -> Settings:
    return Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b", **kw)


def _backend_for(kind: str, request, tmp_path) -> StorageBackend:
    """A backend of ``kind`` on its real server, with ``leftovers()``: every object there."""
    if kind == "file":
        b = open_backend(parse_destination_url(f"file://{tmp_path}/root"), settings())
        b.leftovers = lambda: [p.name for p in (tmp_path / "root").rglob("*") if p.is_file()]
    elif kind == "s3":
        bucket = request.getfixturevalue("s3_env")
        b = open_backend(parse_destination_url(f"s3://{bucket}/pre/fix"), settings())
        b.leftovers = lambda: [o["Key"] for o in b.client.list_objects_v2(Bucket=bucket).get("Contents", [])] + [
            u["Key"] for u in b.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        ]
    elif kind == "r2":  # R2's S3 API at ARCHIVE_R2_ENDPOINT_URL (moto), R2_* keys, no AWS_* variables
        bucket = request.getfixturevalue("r2_env")
        b = open_backend(parse_destination_url(f"r2://{bucket}/pre/fix"), settings())
        assert (b.endpoint_url, b.client.meta.region_name) == (request.getfixturevalue("moto_s3_server"), "auto")
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
    return b


@pytest.fixture(params=["file", "s3", "r2", "gcs", "azure", "sftp"])
def backend(request, tmp_path) -> StorageBackend:
    b = _backend_for(request.param, request, tmp_path)
    yield b
    b.close()


#: hashes a backend computes and checks itself while uploading (not the transfer's reader)
OWN_HASHES = {"s3": ("s3-sha256",), "r2": ("s3-sha256",), "azure": ("md5",)}


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
    # read back whole, in bounded chunks (proving RealtimeKit's own upload; scrub --deep)
    chunk = 1 << 20
    pieces = list(backend.read_chunks("dir/sub/video.mp4", chunk))
    assert b"".join(pieces) == data and max(map(len, pieces)) <= chunk
    with pytest.raises(StorageError):
        list(backend.read_chunks("dir/sub/missing.mp4"))
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


# --- permission denied, on every backend ------------------------------------------------------
#
# Each backend is given a destination it may read but not write, by the server's own rules:
#   file: a 0o555 directory, the put run without CAP_DAC_OVERRIDE (root ignores mode bits
#         otherwise; tests/fixtures/privileges.py)
#   s3:   a moto server of its own with IAM authentication enforced (moto 5 enforces IAM
#         identity policies, not bucket policies) and a user whose policy allows reading and
#         listing the bucket but not s3:PutObject
#   gcs:  gcp-storage-emulator has no permissions at all: a small forwarding proxy in front of
#         the real emulator answers writes with GCS's own 403 (reads are forwarded)
#   sftp: a directory owned by root (0o755) in the SFTP user's home

DENIED_KEY = "video.mp4"
DENY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:ListBucketMultipartUploads",
                                       "s3:AbortMultipartUpload"], "Resource": "*"},
    ],
}


@pytest.fixture(scope="session")
def moto_s3_auth_server():
    """A moto server in its own process (its auth switch is process-wide) with IAM
    authentication on; yields (endpoint, bucket, access key id, secret) of a read-only user."""
    import json
    import subprocess
    import sys
    import urllib.request

    import boto3

    from rtk_archiver.prefect_api import stop_process
    from tests.fixtures import free_port, wait_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "AKIAADMINRTKTEST", "aws_secret_access_key": "admin-secret"}
        bucket = "rtk-denied"
        boto3.client("s3", **admin).create_bucket(Bucket=bucket)
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="rtk-reader")
        iam.put_user_policy(UserName="rtk-reader", PolicyName="read-only", PolicyDocument=json.dumps(DENY_POLICY))
        key = iam.create_access_key(UserName="rtk-reader")["AccessKey"]
        # from now on every request is authenticated and authorized against IAM
        urllib.request.urlopen(urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )).read()
        yield endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        stop_process(proc, timeout=10)


@pytest.fixture
def gcs_write_denying_proxy(gcs_emulator):
    """An HTTP proxy to the emulator that answers every write (POST/PUT/PATCH/DELETE) with
    GCS's 403 body and forwards everything else; yields its URL."""
    import http.client
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    from tests.fixtures import free_port

    upstream = urlsplit(gcs_emulator)
    denied: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _deny(self):
            self._body()
            denied.append(f"{self.command} {self.path}")
            body = json.dumps({"error": {"code": 403, "message": "rtk-test does not have storage.objects.create access",
                                         "errors": [{"reason": "forbidden", "message": "forbidden"}]}}).encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self):
            body = self._body()
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = _forward
        do_POST = do_PUT = do_PATCH = do_DELETE = _deny

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.denied = denied
    yield f"http://127.0.0.1:{port}", server
    server.shutdown()
    server.server_close()


@pytest.fixture(params=["file", "s3", "r2", "gcs", "sftp"])
def denied_backend(request, tmp_path, monkeypatch):
    """(backend, where: fragments the error must name, leftovers(), put context)."""
    import contextlib
    import uuid

    kind = request.param
    put_context = contextlib.nullcontext
    if kind == "file":
        from tests.fixtures.privileges import dac_drop_unavailable, without_dac_override

        if reason := dac_drop_unavailable():
            pytest.skip(reason)
        root = tmp_path / "root"
        root.mkdir(mode=0o555)
        b = open_backend(parse_destination_url(f"file://{root}"), settings())
        where = [str(root / DENIED_KEY)]
        leftovers = lambda: [p.name for p in root.rglob("*")]  # noqa: E731
        put_context = without_dac_override
    elif kind == "s3":
        endpoint, bucket, key_id, secret = request.getfixturevalue("moto_s3_auth_server")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        prefix = f"pre-{uuid.uuid4().hex[:8]}"
        b = open_backend(parse_destination_url(f"s3://{bucket}/{prefix}"), settings(archive_credential_blocks=False))
        where = [f"s3://{bucket}/{prefix}/{DENIED_KEY}"]
        leftovers = lambda: [o["Key"] for o in b.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])] + [  # noqa: E731
            u["Key"] for u in b.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) if u["Key"].startswith(prefix)
        ]
    elif kind == "r2":  # the same read-only user, as an R2 API token's keys
        endpoint, bucket, key_id, secret = request.getfixturevalue("moto_s3_auth_server")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("R2_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("R2_SECRET_ACCESS_KEY", secret)
        monkeypatch.setenv("ARCHIVE_R2_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        prefix = f"pre-{uuid.uuid4().hex[:8]}"
        b = open_backend(parse_destination_url(f"r2://{bucket}/{prefix}"), settings(archive_credential_blocks=False))
        where = [f"r2://{bucket}/{prefix}/{DENIED_KEY}", "R2"]
        leftovers = lambda: [o["Key"] for o in b.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])] + [  # noqa: E731
            u["Key"] for u in b.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) if u["Key"].startswith(prefix)
        ]
    elif kind == "gcs":
        bucket = request.getfixturevalue("gcs_env")
        proxy, server = request.getfixturevalue("gcs_write_denying_proxy")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy)
        b = open_backend(parse_destination_url(f"gs://{bucket}/pre"), settings(archive_credential_blocks=False))
        where = [f"gs://{bucket}/pre/{DENIED_KEY}"]
        leftovers = lambda: [blob.name for blob in b.client.list_blobs(bucket)]  # noqa: E731
    else:
        import shutil

        server = request.getfixturevalue("sshd_server")
        root = server.home("rtkpass") / f"denied-{uuid.uuid4().hex[:8]}"
        root.mkdir(mode=0o755)  # owned by root: rtkpass may read, not write
        request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
        b = request.getfixturevalue("sftp_backend_factory")(root=str(root))
        where = [f"{root}/{DENIED_KEY}", f"127.0.0.1:{server.port}"]
        leftovers = lambda: [p.name for p in root.rglob("*")]  # noqa: E731
    yield b, where, leftovers, put_context
    b.close()


@pytest.mark.parametrize("size", [1000, SIZE], ids=["small", "multipart"])
def test_permission_denied_is_permanent_clear_and_leaves_nothing(denied_backend, size):
    import re

    from storage_backends import PermanentStorageError

    backend, where, leftovers, put_context = denied_backend
    with put_context():
        with pytest.raises(PermanentStorageError) as info:
            backend.put(DENIED_KEY, VerifyingReader(media(size), size, backend.hash_types), size)
        message = str(info.value)
        assert re.search(r"denied|permission", message, re.I), message
        for fragment in where:
            assert fragment in message, (fragment, message)
        assert backend.stat(DENIED_KEY) is None
        assert leftovers() == []


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


@pytest.mark.parametrize("kind", ["file", "s3", "r2", "gcs", "azure"])
def test_an_object_that_appears_during_the_upload_is_not_replaced(kind, request, tmp_path):
    """No-clobber holds at the commit itself, not only in a check before the upload: an object
    written at the key while the upload runs stays (KeyTaken), and nothing else is left.
    (SFTP: tests/test_temp_cleanup.py::test_sftp_no_clobber_rename_leaves_what_appeared_meanwhile.)"""
    from storage_backends.base import KeyTaken

    if kind == "gcs":
        pytest.xfail("gcp-storage-emulator ignores ifGenerationMatch (real GCS honours it: the backend sends it)")
    backend = _backend_for(kind, request, tmp_path)
    reader = VerifyingReader(media(SIZE), SIZE, backend.hash_types)

    class Racing:
        raced = False

        def read(self, n=-1):
            if not self.raced:
                self.raced = True
                backend.put_bytes("race.mp4", b"written by someone else meanwhile", replace=True)
            return reader.read(n)

    with pytest.raises(KeyTaken):
        backend.put("race.mp4", Racing(), SIZE)
    assert backend.read_bytes("race.mp4") == b"written by someone else meanwhile"
    assert len(backend.leftovers()) == 1
    backend.close()
