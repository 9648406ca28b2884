"""The one list of storage backends (after rclone's ``fs.Register``).

Every other list of kinds is derived from ``REGISTRY``: the URL schemes ``parse_destination_url``
accepts, the ``storage_config.type``s a recording may name, the per-backend transfer limits,
the destination pattern of the flows' parameters. Adding a backend = one module with a
``StorageBackend`` subclass taking ``(destination, settings)`` + one ``BackendSpec`` here.

This module imports nothing heavy: backend modules (boto3, google-cloud-storage, paramiko,
azure-storage-blob) are imported on first use only.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

#: how a destination is addressed: a local directory, a bucket/container + prefix, a host
Addressing = Literal["path", "bucket", "host"]


@dataclass(frozen=True)
class StorageOption:
    """One per-destination storage option (a URL query parameter, or a credentials block field)."""

    description: str
    #: the values it accepts (None: any non-empty text)
    choices: tuple[str, ...] | None = None
    #: case-insensitive choices are normalised to their spelling here
    normalise: Callable[[str], str] | None = None
    #: a regular expression the (normalised) value must match whole, and what it is, for messages
    pattern: str | None = None
    pattern_word: str = ""

    def matches(self, value: str) -> bool:
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None


@dataclass(frozen=True)
class BackendSpec:
    kind: str
    module: str
    class_name: str
    #: URL schemes (the first one is how destinations are displayed)
    schemes: tuple[str, ...]
    #: RealtimeKit storage_config.type values it serves
    storage_types: tuple[str, ...] = ()
    addressing: Addressing = "bucket"
    #: what the bucket is called in messages ("bucket", "container")
    bucket_word: str = "bucket"
    options: dict[str, StorageOption] = field(default_factory=dict)

    def load(self) -> type:
        return getattr(importlib.import_module(self.module), self.class_name)


# Only classes / tiers whose objects can be read back at once: the archiver reads its sidecars
# to decide "already archived" (GLACIER / DEEP_ARCHIVE objects and Azure's Archive tier need
# a restore first). Move older recordings there with a lifecycle rule instead.
S3_STORAGE_CLASSES = (
    "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR",
)
#: Cloudflare R2's storage classes (its S3 API accepts these two; both read at once)
R2_STORAGE_CLASSES = ("STANDARD", "STANDARD_IA")
GCS_STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")  # all readable at once
AZURE_ACCESS_TIERS = ("Hot", "Cool", "Cold")


def _upper(v: str) -> str:
    return v.upper()


def _tier(v: str) -> str:
    return v.capitalize()


def _checksum(v: str) -> str:
    return "off" if v.lower() in ("off", "none", "false", "0") else v.upper()


def _lower(v: str) -> str:
    return v.lower()


#: a Cloudflare account id goes into R2's host name (<account_id>.r2.cloudflarestorage.com):
#: one DNS label (Cloudflare's are 32 hex digits)
ACCOUNT_ID_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"


def _sse(v: str) -> str:
    return {"aes256": "AES256", "aws:kms": "aws:kms", "aws:kms:dsse": "aws:kms:dsse"}.get(v.lower(), v)


REGISTRY: dict[str, BackendSpec] = {
    spec.kind: spec
    for spec in (
        BackendSpec("file", "storage_backends.local", "LocalBackend", ("file",), addressing="path"),
        BackendSpec(
            "s3", "storage_backends.s3", "S3Backend", ("s3",), ("aws", "digitalocean"),
            options={
                "sse": StorageOption("server-side encryption: AES256 or aws:kms", ("AES256", "aws:kms", "aws:kms:dsse"), _sse),
                "kms_key_id": StorageOption("KMS key id or ARN for sse=aws:kms"),
                "storage_class": StorageOption("S3 storage class", S3_STORAGE_CLASSES, _upper),
                "checksum": StorageOption("S3 checksum on every upload: SHA256 (default) or off", ("SHA256", "off"), _checksum),
            },
        ),
        BackendSpec(
            "r2", "storage_backends.r2", "R2Backend", ("r2",), ("cloudflare",),
            options={
                "account_id": StorageOption(
                    "Cloudflare account id of the bucket (default: the storage_config's, else CLOUDFLARE_ACCOUNT_ID)",
                    normalise=_lower, pattern=ACCOUNT_ID_PATTERN, pattern_word="a Cloudflare account id (letters, digits, '-')",
                ),
                "storage_class": StorageOption("R2 storage class", R2_STORAGE_CLASSES, _upper),
                "checksum": StorageOption("S3 checksum on every upload: SHA256 (default) or off", ("SHA256", "off"), _checksum),
            },
        ),
        BackendSpec(
            "gcs", "storage_backends.gcs", "GCSBackend", ("gs", "gcs"), ("gcs",),
            options={
                "storage_class": StorageOption("GCS storage class", GCS_STORAGE_CLASSES, _upper),
                "kms_key_name": StorageOption("Cloud KMS key (projects/.../cryptoKeys/...) for new objects"),
            },
        ),
        BackendSpec(
            "azure", "storage_backends.azure", "AzureBackend", ("az", "azure"), ("azure",), bucket_word="container",
            options={"access_tier": StorageOption("blob access tier", AZURE_ACCESS_TIERS, _tier)},
        ),
        BackendSpec("sftp", "storage_backends.sftp", "SFTPBackend", ("sftp",), ("sftp",), addressing="host"),
    )
}

#: every backend kind
KINDS: tuple[str, ...] = tuple(REGISTRY)
#: URL scheme -> kind
SCHEMES: dict[str, str] = {scheme: spec.kind for spec in REGISTRY.values() for scheme in spec.schemes}
#: storage_config.type -> kind
STORAGE_TYPES: dict[str, str] = {t: spec.kind for spec in REGISTRY.values() for t in spec.storage_types}
#: a regular expression matching any destination URL's scheme (flow parameter validation)
SCHEME_PATTERN = r"^(" + "|".join(SCHEMES) + r")://"


def spec_for(kind: str) -> BackendSpec:
    return REGISTRY[kind]


def url_examples() -> str:
    """'`file:///path`, `s3://bucket/prefix`, ...' for help texts and messages.

    Each example is in backticks, as in the README: the Prefect UI renders a parameter's help
    as Markdown (the V1 UI; V2 shows it as plain text, backticks and all), where a bare
    ``sftp://user@host:port/path`` came out as "s" and a link to ``ftp://user@host:port/path``
    (GitHub-flavoured autolinks start at "ftp://" even inside a word); in backticks it is code."""
    shown = {"path": "file:///path", "host": "{scheme}://user@host:port/path"}
    out = []
    for spec in REGISTRY.values():
        template = shown.get(spec.addressing, f"{{scheme}}://{spec.bucket_word}/prefix")
        out.append(f"`{template.format(scheme=spec.schemes[0])}`")
    return ", ".join(out)
