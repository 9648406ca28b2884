"""Destinations: where recordings go, parsed from a URL or a recording's ``storage_config``.

A ``Destination`` says where, never with which secret: credentials are resolved by the
backend module itself (environment, standard chains, Prefect Blocks).
"""

from __future__ import annotations

import posixpath
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field

from rtk_archiver.models import StorageConfig

BackendKind = Literal["file", "s3", "gcs", "sftp"]

#: storage_config.type -> backend kind. Types not listed here are skipped with a reason.
STORAGE_TYPES: dict[str, BackendKind] = {"aws": "s3", "digitalocean": "s3", "gcs": "gcs", "sftp": "sftp"}


class UnsupportedDestination(Exception):
    """The recording's storage type is not one this archiver writes to (skip, with reason)."""


class InvalidDestination(ValueError):
    """A destination is missing something it needs; the message names the field."""


class Destination(BaseModel):
    kind: BackendKind
    #: root inside the store: base directory (file), key prefix (s3/gcs), directory (sftp:
    #: relative to the login directory unless it starts with '/').
    root: str = ""
    bucket: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    #: the storage_config type it came from ("aws", "digitalocean", ...), or "url"
    source_type: str = "url"
    host: str | None = None
    #: 1-65535 (None: 22); 0 is never read as "the default" (see _url_port)
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = None
    auth_method: Literal["PASSWORD", "KEY"] | None = None

    def display_url(self, key: str = "") -> str:
        path = posixpath.join(self.root, key) if key else self.root
        if self.kind == "file":
            return "file://" + path
        if self.kind == "s3":
            return f"s3://{self.bucket}/{path.lstrip('/')}"
        if self.kind == "gcs":
            return f"gs://{self.bucket}/{path.lstrip('/')}"
        port = f":{self.port}" if self.port and self.port != 22 else ""
        shown = path if path.startswith("/") else "/~/" + path
        return f"sftp://{self.username}@{self.host}{port}{shown}"


def _clean_root(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidDestination("destination path must not contain '..'")
    return "/".join(parts)


def _url_port(netloc: str) -> int | None:
    """The port of a URL's netloc: None if absent (or empty, ``host:``), else 1-65535.
    Only ASCII digits: urlsplit's own ``.port`` reads port 0 as a port and, on some Python
    versions, accepts '+22' or non-ASCII digits."""
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):  # [IPv6]:port
        _, _, rest = hostport.partition("]")
        raw = rest[1:] if rest.startswith(":") else None
    else:
        raw = hostport.rpartition(":")[2] if ":" in hostport else None
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError("the port must be a number")
    port = int(raw)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    return port


def parse_destination_url(url: str) -> Destination:
    """file:///abs/path, s3://bucket/prefix, gs://bucket/prefix, sftp://user@host:port/path.

    For sftp, ``/~/dir`` is relative to the login directory (curl's convention) and any
    other path is absolute. Passwords in URLs are refused: use SFTP_PASSWORD.
    """
    try:
        parts = urlsplit(url.strip())
        port = _url_port(parts.netloc)
    except ValueError as exc:
        raise InvalidDestination(f"not a valid destination URL ({exc})") from None
    scheme = parts.scheme.lower()
    if parts.password is not None:
        raise InvalidDestination("destination URLs must not contain a password (use SFTP_PASSWORD)")
    if scheme in ("s3", "gs", "gcs") and ("@" in parts.netloc or port is not None):
        raise InvalidDestination(
            f"{scheme}:// URLs take a bucket only, no user or port: {scheme}://bucket/prefix "
            "(credentials come from the environment or a credentials block)"
        )
    if parts.query or parts.fragment:
        raise InvalidDestination("destination URLs take no query or fragment")
    path = unquote(parts.path)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidDestination("file URLs must look like file:///absolute/path")
        if not path.startswith("/"):
            raise InvalidDestination("file URLs need an absolute path: file:///absolute/path")
        return Destination(kind="file", root="/" + _clean_root(path))
    if scheme in ("s3", "gs", "gcs"):
        if not parts.hostname:
            raise InvalidDestination(f"{scheme}:// URLs need a bucket: {scheme}://bucket/prefix")
        kind: BackendKind = "s3" if scheme == "s3" else "gcs"
        return Destination(kind=kind, bucket=parts.netloc, root=_clean_root(path), source_type="url")
    if scheme == "sftp":
        if not parts.hostname:
            raise InvalidDestination("sftp URLs need a host: sftp://user@host:port/path")
        if not parts.username:
            raise InvalidDestination("sftp URLs need a user: sftp://user@host:port/path")
        if path.startswith("/~/") or path in ("/~", ""):
            root = _clean_root(path[2:])
        else:
            root = "/" + _clean_root(path)
        return Destination(
            kind="sftp", host=parts.hostname, port=22 if port is None else port, username=unquote(parts.username), root=root
        )
    raise InvalidDestination(
        f"unsupported destination scheme {scheme + '://' if scheme else '(none)'}; "
        "use file://, s3://, gs:// or sftp://"
    )


def destination_from_storage_config(sc: StorageConfig) -> Destination:
    """The destination a recording's storage_config names (without its ``path``, which is
    the recording's own sub-directory and applied by the caller)."""
    stype = (sc.type or "").lower()
    if not stype:
        raise InvalidDestination("storage_config.type is missing")
    kind = STORAGE_TYPES.get(stype)
    if kind is None:
        raise UnsupportedDestination(f"storage type {stype!r} is not supported (supported: aws, digitalocean, gcs, sftp)")
    if kind in ("s3", "gcs"):
        if not sc.bucket:
            raise InvalidDestination(f"storage_config.bucket is missing for type {stype!r}")
        return Destination(kind=kind, bucket=sc.bucket, region=sc.region, source_type=stype)
    # sftp
    if not sc.host:
        raise InvalidDestination("storage_config.host is missing for type 'sftp'")
    if not sc.username:
        raise InvalidDestination("storage_config.username is missing for type 'sftp'")
    auth = (sc.auth_method or "").upper()
    if auth not in ("PASSWORD", "KEY"):
        raise InvalidDestination(
            "storage_config.auth_method must be PASSWORD or KEY for type 'sftp'"
            + (" (it is missing)" if not sc.auth_method else "")
        )
    port = 22 if sc.port is None else sc.port  # not `or 22`: port 0 is an error, not the default
    if not 0 < port < 65536:
        raise InvalidDestination(f"storage_config.port must be between 1 and 65535 (it is {port})")
    return Destination(
        kind="sftp", host=sc.host, port=port, username=sc.username, auth_method=auth, source_type="sftp"
    )
