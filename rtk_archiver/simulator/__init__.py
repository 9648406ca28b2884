"""A faithful local simulator of the RealtimeKit Recordings API (see ``app`` for the details)."""

from .content import iter_media, media_bytes, media_sha256, media_source
from .server import SimulatorServer, serve
from .state import SimRecording, SimulatorState, generate_recordings

__all__ = [
    "SimRecording",
    "SimulatorServer",
    "SimulatorState",
    "generate_recordings",
    "iter_media",
    "media_bytes",
    "media_sha256",
    "media_source",
    "serve",
]
