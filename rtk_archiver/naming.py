"""Safe names in the destination.

Every name that comes from the API (``output_file_name``, ``storage_config.path``) is made
safe here, never followed: separators, ``..``, absolute paths, NUL and control characters
cannot move a file outside the destination path.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata
from urllib.parse import urlsplit

from pydantic import BaseModel

from rtk_archiver.models import Recording

MAX_NAME_BYTES = 180  # leaves room for suffixes and temp names under the usual 255-byte limit
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")
_EXT = re.compile(r"(\.[A-Za-z0-9]{1,5})$")


def safe_component(name: str, fallback: str = "recording") -> str:
    """One path component: no separators, no control characters, not '.'/'..', bounded length."""
    original = name
    name = unicodedata.normalize("NFC", name)
    name = "".join("_" if (unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")) else c for c in name)
    name = _UNSAFE.sub("_", name).strip()
    name = re.sub(r"^\.+", lambda m: "_" * len(m.group()), name)  # no hidden files, no '..'
    if not name:
        name = fallback
    if len(name.encode()) > MAX_NAME_BYTES:
        ext_match = _EXT.search(name)
        ext = ext_match.group(1) if ext_match else ""
        digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        budget = MAX_NAME_BYTES - len(ext) - len(digest) - 1
        head = name[: len(name) - len(ext)].encode()[:budget].decode("utf-8", "ignore")
        name = f"{head}~{digest}{ext}"
    return name


def safe_relative_path(path: str | None) -> str:
    """A storage_config.path as a relative, '/'-separated path of safe components."""
    if not path:
        return ""
    parts = [p for p in re.split(r"[/\\]+", path) if p not in ("", ".")]
    return "/".join(safe_component(p, fallback="_") for p in parts)


def split_ext(name: str) -> tuple[str, str]:
    m = _EXT.search(name)
    if m and len(m.group(1)) < len(name):
        return name[: -len(m.group(1))], m.group(1)
    return name, ""


class RecordingKeys(BaseModel):
    """Where a recording's files go, relative to the destination root."""

    directory: str
    video: str
    audio: str | None
    sidecar: str

    def name_of(self, key: str) -> str:
        return posixpath.basename(key)


def _audio_ext(url: str | None) -> str:
    if url:
        _, ext = split_ext(posixpath.basename(urlsplit(url).path))
        if ext:
            return ext.lower()
    return ".m4a"


def keys_for(recording: Recording, disambiguate: bool = False) -> RecordingKeys:
    """``<storage_config.path>/<output_file_name>``, the audio and the sidecar beside it.

    With ``disambiguate`` the recording id is added to the names (used when another
    recording already owns the plain name)."""
    directory = safe_relative_path(recording.storage_config.path if recording.storage_config else None)
    video = safe_component(recording.output_file_name)
    stem, ext = split_ext(video)
    if disambiguate:
        stem = f"{stem}__{safe_component(recording.id)}"
        video = f"{stem}{ext}"
    audio = f"{stem}.audio{_audio_ext(recording.audio_download_url)}" if recording.audio_download_url else None

    def join(name: str) -> str:
        return posixpath.join(directory, name) if directory else name

    return RecordingKeys(
        directory=directory,
        video=join(video),
        audio=join(audio) if audio else None,
        sidecar=join(f"{video}.metadata.json"),
    )


_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*")


def redact_urls(text: str) -> str:
    """Drop query strings (presigned signatures) from any URL in a message."""
    return _URL_QUERY.sub(r"\1?<redacted>", text)
