"""Which failures Prefect retries: transient ones (network, 5xx, timeouts), never those
retrying cannot fix (bad credentials, missing bucket, refused host key, bad config)."""

from __future__ import annotations

from rtk_archiver.settings import SettingsError
from storage_backends import InvalidDestination, PermanentStorageError, UnsupportedDestination

PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    PermanentStorageError,
    InvalidDestination,
    UnsupportedDestination,
    SettingsError,
)


def is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, PERMANENT_ERRORS) or bool(getattr(exc, "permanent", False))


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry unless the failure is one retrying cannot fix."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return exc is None or not is_permanent(exc)
