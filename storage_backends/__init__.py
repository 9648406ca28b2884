"""Storage backends: one small module per backend behind ``StorageBackend``.

``open_backend`` is the one place where a destination picks its backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import PermanentStorageError, StorageBackend, StorageError
from .destination import (
    Destination,
    InvalidDestination,
    UnsupportedDestination,
    destination_from_storage_config,
    parse_destination_url,
)

if TYPE_CHECKING:
    from rtk_archiver.settings import Settings

__all__ = [
    "Destination",
    "InvalidDestination",
    "PermanentStorageError",
    "StorageBackend",
    "StorageError",
    "UnsupportedDestination",
    "destination_from_storage_config",
    "open_backend",
    "parse_destination_url",
]


def open_backend(destination: Destination, settings: "Settings") -> StorageBackend:
    """Construct the backend for a destination. Imports lazily so a run that only writes
    locally never imports boto3, google-cloud-storage or paramiko."""
    if destination.kind == "file":
        from .local import LocalBackend

        return LocalBackend(destination)
    if destination.kind == "s3":
        from .s3 import S3Backend

        return S3Backend(destination, settings)
    if destination.kind == "gcs":
        from .gcs import GCSBackend

        return GCSBackend(destination, settings)
    if destination.kind == "sftp":
        from .sftp import SFTPBackend

        return SFTPBackend(destination, settings)
    raise UnsupportedDestination(f"no backend for {destination.kind!r}")
