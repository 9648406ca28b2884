"""Temp names for uploads that are renamed into place (local, SFTP).

``.<head of the name>.<digest of the whole name>.rtkpart-<random>``: the digest makes the
prefix belong to exactly one final name (two names sharing their first characters never
share a prefix), and the whole temp name stays far below 255 bytes whatever the final name.
"""

from __future__ import annotations

import hashlib
import os

TEMP_MARKER = ".rtkpart-"
HEAD_BYTES = 60


def temp_prefix(final_name: str) -> str:
    raw = final_name.encode("utf-8", "surrogatepass")
    head = raw[:HEAD_BYTES].decode("utf-8", "ignore")
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return f".{head}.{digest}{TEMP_MARKER}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def pid_alive(pid: int) -> bool:
    """A process of this host with that pid exists (the writer of a temp file or a claim)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
