"""Storage backends: one small module per backend behind ``StorageBackend``.

``open_backend`` is the one place where a destination picks its backend.
"""

from __future__ import annotations

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
from .registry import KINDS, REGISTRY

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
    "KINDS",
    "REGISTRY",
    "backend_class",
    "open_backend",
    "preload_backends",
    "parse_destination_url",
]


def backend_class(kind: str) -> type[StorageBackend]:
    """The backend class registered for ``kind`` (``registry.REGISTRY``), imported on first
    use: a run that only writes locally never imports boto3, google-cloud-storage, ..."""
    if kind not in REGISTRY:
        raise UnsupportedDestination(f"no backend for {kind!r}")
    return REGISTRY[kind].load()


def preload_backends(kinds: Iterable[str]) -> None:
    """Import the backends a run is about to use, once, before its transfers start (their
    libraries take 0.1-0.2 s each to import; concurrent first transfers would wait on it)."""
    for kind in set(kinds) & set(KINDS):
        backend_class(kind)


def open_backend(destination: Destination, settings: "Settings | None") -> StorageBackend:
    """Construct the backend for a destination: the one place a destination picks its backend.
    Every backend takes ``(destination, settings)``."""
    return backend_class(destination.kind)(destination, settings)
