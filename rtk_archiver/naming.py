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

from rtk_archiver.models import Recording, TrackFile

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


class TrackKey(BaseModel):
    """Where one file of a track recording goes, and which file it is (layer, RealtimeKit's name)."""

    key: str
    layer: str
    source_name: str


class RecordingKeys(BaseModel):
    """Where a recording's files go, relative to the destination root. A composite recording
    has a video (and maybe an audio); a track recording (``type: TRACK``) has no video but
    one key per participant file (``tracks``)."""

    directory: str
    video: str | None
    audio: str | None
    sidecar: str
    tracks: list[TrackKey] = []

    def all(self) -> list[str]:
        return [k for k in (self.video, self.audio, *(t.key for t in self.tracks), self.sidecar) if k]

    def files(self) -> list[tuple[str, str]]:
        """(kind, key) of every file the recording has, in transfer order (not the sidecar)."""
        out = [(kind, key) for kind, key in (("video", self.video), ("audio", self.audio)) if key]
        return out + [("track", t.key) for t in self.tracks]

    @property
    def main(self) -> str:
        """The key that names the recording in logs and reports: its video, else its sidecar."""
        return self.video or self.sidecar

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


#: a template placeholder in a track recording's output_file_name (``{{user_id}}``)
_PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")
TRACKS_INFIX = ".track-"


def track_keys(recording: Recording, directory: str | None = None, id_suffix: str = "") -> RecordingKeys:
    """A track recording's names: ``<base>.metadata.json`` and one ``<base>.track-<file>`` per
    participant file, all in the recording's directory. ``<base>`` is the output_file_name
    without its template placeholders and extension, always with the recording id (the
    template is the same for every track recording). A file name is made safe like any
    other, bounded, and made unique within the recording (``~2``...); no track name ends
    like an audio file or a sidecar."""
    if directory is None:
        directory = safe_relative_path(recording.storage_config.path if recording.storage_config else None)
    stem = split_ext(_PLACEHOLDER.sub("", recording.output_file_name))[0].strip("_-. ")
    base = split_ext(video_name((stem or "tracks") + ".x", recording.id + id_suffix))[0]

    def join(name: str) -> str:
        return posixpath.join(directory, name) if directory else name

    tracks: list[TrackKey] = []
    used: set[str] = set()
    for f in sorted(recording.track_files, key=lambda f: (f.layer, f.name)):
        layer = "" if f.layer == "default" else safe_component(f.layer, "layer") + "."
        raw = f"{base}{TRACKS_INFIX}{layer}{safe_component(f.name, 'file')}"
        name = video_name(raw)  # bounded; never ends like audio or a sidecar
        n = 1
        while name.casefold() in used:
            n += 1
            stem2, ext = split_ext(raw)
            name = video_name(f"{stem2}~{n}{ext}")
        used.add(name.casefold())
        tracks.append(TrackKey(key=join(name), layer=f.layer, source_name=f.name))
    return RecordingKeys(directory=directory, video=None, audio=None, sidecar=join(f"{base}{SIDECAR_SUFFIX}"), tracks=tracks)


def track_key_for(keys: RecordingKeys, track: TrackFile) -> str | None:
    return next((t.key for t in keys.tracks if t.layer == track.layer and t.source_name == track.name), None)


def candidate_keys(recording: Recording, directory: str | None = None) -> list[RecordingKeys]:
    """The only names a recording may ever take, in order: its plain name, the name with its
    id, and a second name with its id (``rtk_archiver.plan`` picks one; the scrub looks for
    sidecars at all of them). A track recording's names always carry its id: two of them."""
    if recording.is_track:
        return [track_keys(recording, directory), track_keys(recording, directory, "~2")]
    return [keys_for(recording, False, directory), keys_for(recording, True, directory), keys_for(recording, True, directory, "~2")]


_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*")


def redact_urls(text: str) -> str:
    """Drop query strings (presigned signatures) from any URL in a message."""
    return _URL_QUERY.sub(r"\1?<redacted>", text)
