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


#: what only sidecars end with
SIDECAR_SUFFIX = ".metadata.json"
#: what only audio files end with: ``.audio.<ext>``
_AUDIO_SUFFIX = re.compile(r"\.audio(\.[A-Za-z0-9]{1,5})$", re.IGNORECASE)
_ID_TAG_BYTES = 40


class RecordingKeys(BaseModel):
    """Where a recording's files go, relative to the destination root."""

    directory: str
    video: str
    audio: str | None
    sidecar: str

    def all(self) -> list[str]:
        return [k for k in (self.video, self.audio, self.sidecar) if k]

    def name_of(self, key: str) -> str:
        return posixpath.basename(key)

    def beside(self, name: str) -> str:
        """A file name in this recording's directory (names recorded in a sidecar)."""
        return posixpath.join(self.directory, name) if self.directory else name


def _audio_ext(url: str | None) -> str:
    if url:
        _, ext = split_ext(posixpath.basename(urlsplit(url).path))
        if ext:
            return ext.lower()
    return ".m4a"


def _bounded(name: str, original: str) -> str:
    """``name`` cut to MAX_NAME_BYTES, keeping its extension and a digest of ``original``."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    _, ext = split_ext(name)
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    budget = MAX_NAME_BYTES - len(ext.encode()) - len(digest) - 1
    head = name[: len(name) - len(ext)].encode()[:budget].decode("utf-8", "ignore")
    return f"{head}~{digest}{ext}"


def id_tag(recording_id: str) -> str:
    """The recording id as it appears in a disambiguated name (bounded)."""
    tag = safe_component(recording_id, fallback="id")
    if len(tag.encode()) > _ID_TAG_BYTES:
        digest = hashlib.sha256(recording_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        tag = tag.encode()[:24].decode("utf-8", "ignore") + "~" + digest
    return tag


def video_name(output_file_name: str, recording_id: str | None = None) -> str:
    """The video's file name: the API's name made safe, with the recording id when given.

    Never ends like an audio file (``.audio.<ext>``) or a sidecar (``.metadata.json``): such
    a name gets a ``_`` before its extension. So a video name can never be another
    recording's audio or sidecar name, and every name stays within MAX_NAME_BYTES."""
    name = safe_component(output_file_name)
    if recording_id is not None:
        stem, ext = split_ext(name)
        name = _bounded(f"{stem}__{id_tag(recording_id)}{ext}", f"{output_file_name}\x00{recording_id}")
    if name.lower().endswith(SIDECAR_SUFFIX):
        name = name[: -len(".json")] + "_.json"
    else:
        m = _AUDIO_SUFFIX.search(name)
        if m:
            name = name[: m.start(1)] + "_" + m.group(1)
    return _bounded(name, output_file_name if recording_id is None else f"{output_file_name}\x00{recording_id}")


def keys_for(
    recording: Recording, disambiguate: bool = False, directory: str | None = None, id_suffix: str = ""
) -> RecordingKeys:
    """``<directory>/<video>``, ``<video>.audio.<ext>`` and ``<video>.metadata.json`` beside it.

    ``directory`` defaults to the recording's ``storage_config.path`` made relative and safe.
    With ``disambiguate`` the recording id is added to the video name (when another recording
    or a file the archiver did not write has the plain name). The three kinds of names end
    differently (see ``video_name``) and audio and sidecar names extend the whole video name,
    so the keys of two recordings with different video names never meet. ``id_suffix``: a
    further name with the id (when even the name with the id is taken)."""
    if directory is None:
        directory = safe_relative_path(recording.storage_config.path if recording.storage_config else None)
    video = video_name(recording.output_file_name, recording.id + id_suffix if disambiguate else None)
    audio = f"{video}.audio{_audio_ext(recording.audio_download_url)}" if recording.audio_download_url else None

    def join(name: str) -> str:
        return posixpath.join(directory, name) if directory else name

    return RecordingKeys(
        directory=directory,
        video=join(video),
        audio=join(audio) if audio else None,
        sidecar=join(f"{video}{SIDECAR_SUFFIX}"),
    )


def candidate_keys(recording: Recording, directory: str | None = None) -> list[RecordingKeys]:
    """The only names a recording may ever take, in order: its plain name, the name with its
    id, and a second name with its id (``rtk_archiver.plan`` picks one; the scrub looks for
    sidecars at all of them)."""
    return [keys_for(recording, False, directory), keys_for(recording, True, directory), keys_for(recording, True, directory, "~2")]


_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*")


def redact_urls(text: str) -> str:
    """Drop query strings (presigned signatures) from any URL in a message."""
    return _URL_QUERY.sub(r"\1?<redacted>", text)
