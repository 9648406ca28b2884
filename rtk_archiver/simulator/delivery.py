"""RealtimeKit's own upload of a recording to its ``storage_config`` (custom cloud storage).

The platform publishes every recording with a ``storage_config`` to that bucket itself, at
``<path>/<output_file_name>`` (recording-guide/custom-cloud-storage.mdx), with the secrets
the storage_config was given. The simulator does the same with each store's own client
library (boto3, google-cloud-storage, azure-storage-blob, paramiko), never the archiver's
backends, to wherever the test or the demo points each storage type (the real endpoints are
unreachable here). A storage type without an endpoint configured is an upload that failed,
as it would with wrong keys.

Per recording, ``SimRecording.upload`` says what the upload does: ``complete``, ``missing``
(it failed), ``truncated`` (half of the file), ``different`` (bytes of another file, same
size). The outcome is kept in ``SimRecording.upload_result``.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .content import media_bytes
from .state import SimRecording

#: bytes above which the S3 upload is multipart (its ETag is then not an md5), as
#: RealtimeKit's uploader would do for a large file
MULTIPART_BYTES = 8 * 1024 * 1024


def upload_bytes(rec: SimRecording) -> bytes | None:
    """What RealtimeKit's upload of ``rec`` writes (None: nothing, the upload failed)."""
    if rec.upload == "missing":
        return None
    data = media_bytes(rec.id, "video", 0, rec.file_size)
    if rec.upload == "truncated":
        return data[: max(0, len(data) // 2)]
    if rec.upload == "different":
        return media_bytes(rec.id + ":other", "video", 0, rec.file_size)
    return data


def upload_key(rec: SimRecording) -> str:
    """``<path>/<output_file_name>``: the path as given (leading ``/`` kept for SFTP)."""
    sc = rec.storage_config or {}
    path = str(sc.get("path") or "").strip()
    if sc.get("type") != "sftp":
        path = path.lstrip("/")
    return posixpath.join(path, rec.output_file_name) if path else rec.output_file_name


@dataclass
class Deliverer:
    """Where each storage type's uploads go. ``s3_endpoint`` serves ``aws`` and
    ``digitalocean``, ``r2_endpoint`` ``cloudflare`` (any S3 API: moto in tests);
    ``gcs_endpoint`` an emulator (anonymous); Azure's ``access_key`` is a connection string
    (Azurite's in tests); SFTP uploads go to ``sftp_address`` (host, port) in place of the
    storage_config's host, with its username and password / private key; ``file_root``: a
    directory standing in for any other type."""

    s3_endpoint: str | None = None
    r2_endpoint: str | None = None
    gcs_endpoint: str | None = None
    gcs_project: str = "test"
    azure: bool = False
    sftp_address: tuple[str, int] | None = None
    file_root: Path | None = None
    #: recording id -> where it was uploaded (tests look)
    done: dict[str, str] = field(default_factory=dict)

    def __call__(self, rec: SimRecording) -> None:
        data = upload_bytes(rec)
        if data is None:
            rec.upload_result = "the upload failed (simulated)"
            return
        sc = rec.storage_config or {}
        kind = str(sc.get("type") or "")
        key = upload_key(rec)
        try:
            where = self._put(kind, sc, key, data)
        except Exception as exc:  # noqa: BLE001 - a failed upload is an outcome, as on the platform
            rec.upload_result = f"the upload failed: {type(exc).__name__}: {exc}"[:300]
            return
        if where is None:
            rec.upload_result = f"the upload failed: no endpoint for storage type {kind!r} in this simulator"
            return
        rec.upload_result = f"uploaded to {where}"
        self.done[rec.id] = where

    def _put(self, kind: str, sc: dict[str, Any], key: str, data: bytes) -> str | None:
        if kind in ("aws", "digitalocean", "cloudflare"):
            endpoint = self.r2_endpoint if kind == "cloudflare" else self.s3_endpoint
            if not endpoint:
                return None
            import boto3
            from boto3.s3.transfer import TransferConfig

            client = boto3.client(
                "s3", endpoint_url=endpoint, region_name="auto" if kind == "cloudflare" else (sc.get("region") or "us-east-1"),
                aws_access_key_id=str(sc.get("access_key") or "rtk"), aws_secret_access_key=str(sc.get("secret") or "rtk"),
            )
            client.upload_fileobj(
                io.BytesIO(data), sc["bucket"], key,
                Config=TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES),
            )
            return f"{kind}://{sc['bucket']}/{key}"
        if kind == "gcs":
            if not self.gcs_endpoint:
                return None
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            client = storage.Client(project=self.gcs_project, credentials=AnonymousCredentials(),
                                    client_options={"api_endpoint": self.gcs_endpoint})
            client.bucket(sc["bucket"]).blob(key).upload_from_string(data)
            return f"gs://{sc['bucket']}/{key}"
        if kind == "azure":
            if not self.azure or not sc.get("access_key"):
                return None
            from azure.storage.blob import BlobServiceClient

            service = BlobServiceClient.from_connection_string(str(sc["access_key"]))
            service.get_blob_client(sc["bucket"], key).upload_blob(data, overwrite=True)
            return f"azure://{sc['bucket']}/{key}"
        if kind == "sftp":
            if self.sftp_address is None:
                return None
            return self._sftp(sc, key, data)
        if self.file_root is not None:
            path = self.file_root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return str(path)
        return None

    def _sftp(self, sc: dict[str, Any], key: str, data: bytes) -> str:
        import paramiko

        host, port = self.sftp_address  # type: ignore[misc]
        transport = paramiko.Transport((host, port))
        try:
            if sc.get("auth_method") == "KEY" and sc.get("private_key"):
                pkey = paramiko.PKey.from_private_key(io.StringIO(str(sc["private_key"])))
                transport.connect(username=sc.get("username"), pkey=pkey)
            else:
                transport.connect(username=sc.get("username"), password=str(sc.get("password") or ""))
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None
            directory = posixpath.dirname(key)
            parts, built = [p for p in directory.split("/") if p], "/" if directory.startswith("/") else ""
            for part in parts:
                built = posixpath.join(built, part) if built else part
                try:
                    sftp.mkdir(built)
                except OSError:
                    pass
            sftp.putfo(io.BytesIO(data), key)
            return f"sftp://{sc.get('username')}@{host}:{port}/{key.lstrip('/')}"
        finally:
            transport.close()

