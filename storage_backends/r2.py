"""Cloudflare R2 (``storage_config.type`` ``cloudflare``, ``r2://bucket/prefix``): the S3 backend
(``storage_backends.s3``) on R2's S3 API.

Endpoint: the ``R2Credentials`` block's ``endpoint_url``, else ``ARCHIVE_R2_ENDPOINT_URL`` (a
jurisdiction's endpoint, ``https://<account_id>.eu.r2.cloudflarestorage.com``; a test server),
else ``https://<account_id>.r2.cloudflarestorage.com``. The account id: the destination's
(``storage_config.account_id``, or the URL's ``?account_id=``), else the block's, else
``CLOUDFLARE_ACCOUNT_ID`` (the RealtimeKit account's). Region: always ``auto`` (R2's only one).

Credentials: an ``R2Credentials`` block named ``rtk-r2-<bucket>`` if one exists, else
``R2_ACCESS_KEY_ID`` / ``R2_SECRET_ACCESS_KEY`` (an R2 API token's S3 credentials), else boto3's
standard chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles). A recording's
``storage_config`` never carries them (the API's secrets are write-only).

Checksums (R2's S3 API compatibility page, "Checksum Types"): SHA-256 is supported as a
``COMPOSITE`` checksum of a multipart upload, not as a ``FULL_OBJECT`` one (only CRC-64/NVME is):
that is what the S3 backend sends and checks, the sha256 of the part digests with ``-N`` (a
single ``PutObject``: the file's own SHA-256); a single-part object's ETag is its MD5. Storage
classes: ``STANDARD`` and ``STANDARD_IA``. R2 has no ``x-amz-server-side-encryption`` (objects
are always encrypted at rest), hence no ``sse`` / ``kms_key_id`` options.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from .base import PermanentStorageError
from .credentials import block_value
from .destination import Destination
from .registry import ACCOUNT_ID_PATTERN
from .s3 import S3Backend

if TYPE_CHECKING:
    from rtk_archiver.settings import Settings

    from .blocks import R2Credentials

#: R2's only S3 region (an empty one and us-east-1 are aliases of it)
REGION = "auto"
ENDPOINT = "https://{account_id}.r2.cloudflarestorage.com"


def __getattr__(name: str) -> Any:
    if name == "R2Credentials":  # the block, defined with the others (it imports Prefect)
        from .blocks import R2Credentials

        return R2Credentials
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _setting(settings: "Settings | None", field: str, env: str) -> Any:
    """A setting's value; without settings (a backend opened on its own), the variable."""
    if settings is not None:
        value = getattr(settings, field)
    else:
        value = os.environ.get(env) or None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def account_id_for(destination: Destination, settings: "Settings | None") -> str | None:
    """The destination's account id (storage_config / URL, or its block's), else CLOUDFLARE_ACCOUNT_ID."""
    return destination.options.get("account_id") or _setting(settings, "cloudflare_account_id", "CLOUDFLARE_ACCOUNT_ID")


def r2_endpoint(destination: Destination, settings: "Settings | None", block: "R2Credentials | None" = None) -> str:
    """The block's endpoint, else ARCHIVE_R2_ENDPOINT_URL, else the account's. A permanent
    error naming both ways when there is no account id to build it from."""
    override = block_value(block, "endpoint_url") or _setting(settings, "r2_endpoint_url", "ARCHIVE_R2_ENDPOINT_URL")
    if override:
        return override
    account = (account_id_for(destination, settings) or "").strip().lower()
    if not account:
        raise PermanentStorageError(
            f"no Cloudflare account id for R2 bucket '{destination.bucket}': the storage_config carries none "
            "(account_id) and CLOUDFLARE_ACCOUNT_ID is not set; set either, or ARCHIVE_R2_ENDPOINT_URL"
        )
    if not re.fullmatch(ACCOUNT_ID_PATTERN, account):
        raise PermanentStorageError(
            f"the Cloudflare account id for R2 bucket '{destination.bucket}' is not one (letters, digits, '-' only): "
            "correct CLOUDFLARE_ACCOUNT_ID or the storage_config's account_id, or set ARCHIVE_R2_ENDPOINT_URL"
        )
    return ENDPOINT.format(account_id=account)


def r2_client_params(destination: Destination, settings: "Settings | None", block: "R2Credentials | None" = None) -> dict[str, Any]:
    """Endpoint, region ``auto`` and keys: the block's, else R2_ACCESS_KEY_ID /
    R2_SECRET_ACCESS_KEY, else None (boto3's standard chain)."""
    key_id, secret = block_value(block, "access_key_id"), block_value(block, "secret_access_key")
    if not (key_id and secret):
        key_id = _setting(settings, "r2_access_key_id", "R2_ACCESS_KEY_ID")
        secret = _setting(settings, "r2_secret_access_key", "R2_SECRET_ACCESS_KEY")
    return {
        "endpoint_url": r2_endpoint(destination, settings, block),
        "region_name": REGION,
        "aws_access_key_id": key_id or None,
        "aws_secret_access_key": secret or None,
        "aws_session_token": None,
    }


def r2_client(destination: Destination, settings: "Settings | None", config: Any = None, block: "R2Credentials | None" = None):
    """A boto3 S3 client on R2 for destination (``r2_client_params``)."""
    from .s3 import s3_client

    return s3_client(destination, settings, config, block, r2_client_params(destination, settings, block))


class R2Backend(S3Backend):
    store = "R2"
    block_class_name = "R2Credentials"
    credentials_hint = "set R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY (an R2 API token's S3 credentials)"

    def client_params(self, settings: "Settings | None", block: Any) -> dict[str, Any]:
        return r2_client_params(self.destination, settings, block)

    def check_details(self) -> dict[str, str]:
        """Where ``check`` says the destination is reached."""
        return {"endpoint": self.endpoint_url or "", "region": REGION}

    def checksum_notes(self) -> list[str]:
        """What R2 checks and reports, for ``check`` (R2's S3 API compatibility page)."""
        notes = ["etag md5 (single part)"]
        if self.checksum:
            notes.insert(0, "multipart: composite SHA-256 of the parts (R2 has no full-object SHA-256)")
        return notes


__all__ = ["R2Backend", "r2_client", "r2_endpoint"]
