"""Storage backends: one small module per backend behind ``StorageBackend``.

``open_backend`` is the one place where a destination picks its backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
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
    "backend_class",
    "open_backend",
    "preload_backends",
    "parse_destination_url",
]


#: kind -> (module, class): imported on first use, so a run that only writes locally never
#: imports boto3, google-cloud-storage or paramiko
_BACKENDS = {
    "file": ("storage_backends.local", "LocalBackend"),
    "s3": ("storage_backends.s3", "S3Backend"),
    "gcs": ("storage_backends.gcs", "GCSBackend"),
    "sftp": ("storage_backends.sftp", "SFTPBackend"),
}


def backend_class(kind: str) -> type[StorageBackend]:
    if kind not in _BACKENDS:
        raise UnsupportedDestination(f"no backend for {kind!r}")
    module, name = _BACKENDS[kind]
    return getattr(importlib.import_module(module), name)


def preload_backends(kinds: Iterable[str]) -> None:
    """Import the backends a run is about to use, once, before its transfers start (their
    libraries take 0.1-0.2 s each to import; concurrent first transfers would wait on it)."""
    for kind in set(kinds) & set(_BACKENDS):
        backend_class(kind)


def open_backend(destination: Destination, settings: "Settings") -> StorageBackend:
    """Construct the backend for a destination: the one place a destination picks its backend."""
    cls = backend_class(destination.kind)
    if destination.kind == "file":
        return cls(destination)
    return cls(destination, settings)
