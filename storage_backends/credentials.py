"""Finding a destination's credentials in Prefect Blocks.

Each backend has its own credentials Block (``SecretStr`` fields, after prefect-aws /
prefect-gcp), defined in ``storage_backends.blocks`` (which imports Prefect: only looked at
when blocks are enabled and a Prefect API can be asked) and exposed by its backend module. A
recording's ``storage_config`` finds its block by name:

    s3 / digitalocean:  rtk-s3-<bucket>
    r2 (cloudflare):    rtk-r2-<bucket>
    gcs:                rtk-gcs-<bucket>
    azure:              rtk-azure-<container>
    sftp:               rtk-sftp-<username>-at-<host>

(lower-cased, anything outside [a-z0-9-] replaced by '-'). Each block builds its own client
(``S3Credentials.get_client``, ``R2Credentials.get_client``, ``GCSCredentials.get_client``, ``AzureCredentials.get_service_client``,
after prefect-aws's ``AwsCredentials.get_s3_client``); when no such block exists the backend
uses an empty one, which means the standard chains / environment settings. Blocks of bucket
stores may also carry storage options (encryption, storage class, tier), for destinations
that come from a recording's storage_config (URL destinations put them in the query).
"""

from __future__ import annotations

import re
from typing import Any

from .destination import Destination
from .registry import REGISTRY


def block_name_for(destination: Destination) -> str:
    if REGISTRY[destination.kind].addressing == "bucket":
        raw = f"rtk-{destination.kind}-{destination.bucket}"
    elif destination.kind == "sftp":
        raw = f"rtk-sftp-{destination.username}-at-{destination.host}"
    else:
        raw = f"rtk-{destination.kind}"
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-")


def prefect_api_available() -> bool:
    """True inside a flow or task run, or when a Prefect API is configured."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.settings import get_current_settings

        if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
            return True
        return bool(get_current_settings().api.url)
    except Exception:  # pragma: no cover - prefect always importable in this project
        return False


def block_class(name: str) -> type:
    """A credentials Block class of ``storage_backends.blocks`` by name (imports Prefect)."""
    from . import blocks

    return getattr(blocks, name)


def load_block(block_cls: type | str, destination: Destination, enabled: bool = True) -> Any:
    """The credentials block for this destination, or None when there is none (or no Prefect
    API to ask). ``block_cls``: the class or its name in ``storage_backends.blocks`` (so
    nothing imports Prefect unless blocks are enabled). Only a missing block is treated as
    'none'; other errors propagate."""
    if not enabled or not prefect_api_available():
        return None
    if isinstance(block_cls, str):
        block_cls = block_class(block_cls)
    name = block_name_for(destination)
    try:
        return block_cls.load(name)  # type: ignore[attr-defined]
    except ValueError as exc:
        if "Unable to find block document" in str(exc) or "not found" in str(exc).lower():
            return None
        raise


def block_options(block: object | None) -> dict[str, str | None]:
    """The storage options a credentials block sets (its fields named like the options)."""
    if block is None:
        return {}
    names = getattr(block, "storage_option_fields", ())
    return {name: getattr(block, name, None) for name in names}


def block_value(block: object | None, field: str) -> Any:
    """A block's field (a secret's value unwrapped), None without a block."""
    value = getattr(block, field, None) if block is not None else None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value
