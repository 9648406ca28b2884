"""Destinations: where recordings go, parsed from a URL or a recording's ``storage_config``.

A ``Destination`` says where, never with which secret: credentials are resolved by the
backend module itself (environment, standard chains, Prefect Blocks).
"""

from __future__ import annotations

import posixpath
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, Field, field_validator

from rtk_archiver.models import StorageConfig

from .registry import KINDS, REGISTRY, SCHEMES, STORAGE_TYPES, url_examples  # noqa: F401 - STORAGE_TYPES re-exported

#: a backend kind: one of ``registry.KINDS`` (checked when a Destination is made)
BackendKind = str


class UnsupportedDestination(Exception):
    """The recording's storage type is not one this archiver writes to (skip, with reason)."""


class InvalidDestination(ValueError):
    """A destination is missing something it needs; the message names the field."""


def validate_options(kind: str, options: dict[str, str], where: str = "destination URL") -> dict[str, str]:
    """The storage options, normalised; InvalidDestination naming any unknown option or value."""
    known = REGISTRY[kind].options
    out: dict[str, str] = {}
    for name, value in options.items():
        opt = known.get(name)
        if opt is None:
            accepted = ", ".join(sorted(known)) or "none"
            raise InvalidDestination(f"unknown storage option {name!r} in the {where} for {kind} (accepted: {accepted})")
        if value is None or not str(value).strip():
            raise InvalidDestination(f"storage option {name!r} in the {where} is empty")
        value = str(value).strip()
        if opt.normalise is not None:
            value = opt.normalise(value)
        if opt.choices is not None and value not in opt.choices:
            raise InvalidDestination(
                f"storage option {name}={value!r} in the {where} is not one of {', '.join(opt.choices)}"
            )
        if not opt.matches(value):
            raise InvalidDestination(f"storage option {name}={value!r} in the {where} is not {opt.pattern_word or 'valid'}")
        out[name] = value
    if kind == "s3" and "kms_key_id" in out and not out.get("sse", "").startswith("aws:kms"):
        raise InvalidDestination(f"storage option kms_key_id in the {where} needs sse=aws:kms")
    return out


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
    #: storage options (encryption, storage class, tier: see ``registry``), from the URL's
    #: query; a credentials block may add more (``with_options``)
    options: dict[str, str] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in REGISTRY:
            raise ValueError(f"unknown backend kind {v!r} (known: {', '.join(KINDS)})")
        return v

    def with_options(self, defaults: dict[str, str | None], where: str) -> "Destination":
        """This destination with ``defaults`` (a credentials block's options) under its own."""
        given = {k: v for k, v in defaults.items() if v}
        merged = {**validate_options(self.kind, given, where), **self.options}
        return self if merged == self.options else self.model_copy(update={"options": merged})

    def display_url(self, key: str = "") -> str:
        path = posixpath.join(self.root, key) if key else self.root
        spec = REGISTRY[self.kind]
        if spec.addressing == "path":
            return f"{spec.schemes[0]}://" + path
        if spec.addressing == "bucket":
            return f"{spec.schemes[0]}://{self.bucket}/{path.lstrip('/')}"
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
    """file:///abs/path, s3://bucket/prefix, r2://bucket/prefix, gs://bucket/prefix, az://container/prefix,
    sftp://user@host:port/path (the schemes are ``registry.SCHEMES``).

    Bucket URLs take storage options as query parameters (``s3://b/p?storage_class=STANDARD_IA``);
    unknown ones are refused. For sftp, ``/~/dir`` is relative to the login directory (curl's convention) and any
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
    if parts.fragment:
        raise InvalidDestination("destination URLs take no fragment")
    if scheme in SCHEMES and REGISTRY[SCHEMES[scheme]].addressing == "bucket" and ("@" in parts.netloc or port is not None):
        word = REGISTRY[SCHEMES[scheme]].bucket_word
        raise InvalidDestination(
            f"{scheme}:// URLs take a {word} only, no user or port: {scheme}://{word}/prefix "
            "(credentials come from the environment or a credentials block)"
        )
    path = unquote(parts.path)
    kind = SCHEMES.get(scheme)
    if kind is None:
        raise InvalidDestination(
            f"unsupported destination scheme {scheme + '://' if scheme else '(none)'}; use {url_examples()}"
        )
    options = _query_options(kind, parts.query)
    if REGISTRY[kind].addressing == "path":
        if parts.netloc not in ("", "localhost"):
            raise InvalidDestination("file URLs must look like file:///absolute/path")
        if not path.startswith("/"):
            raise InvalidDestination("file URLs need an absolute path: file:///absolute/path")
        return Destination(kind="file", root="/" + _clean_root(path))
    if REGISTRY[kind].addressing == "bucket":
        word = REGISTRY[kind].bucket_word
        if not parts.hostname:
            raise InvalidDestination(f"{scheme}:// URLs need a {word}: {scheme}://{word}/prefix")
        region = "auto" if kind == "r2" else None  # R2's one S3 region
        return Destination(kind=kind, bucket=parts.netloc, root=_clean_root(path), region=region, source_type="url", options=options)
    if REGISTRY[kind].addressing == "host":
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
    raise AssertionError(f"addressing of {kind!r}")  # pragma: no cover - every spec has one


def _query_options(kind: str, query: str) -> dict[str, str]:
    if not query:
        return {}
    if not REGISTRY[kind].options:
        raise InvalidDestination(f"{kind} destination URLs take no query parameters (no storage options)")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidDestination("the destination URL's query is not name=value&name=value") from None
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise InvalidDestination("a storage option appears twice in the destination URL")
    return validate_options(kind, dict(pairs))


def destination_from_storage_config(sc: StorageConfig) -> Destination:
    """The destination a recording's storage_config names (without its ``path``, which is
    the recording's own sub-directory and applied by the caller)."""
    stype = (sc.type or "").lower()
    if not stype:
        raise InvalidDestination("storage_config.type is missing")
    kind = STORAGE_TYPES.get(stype)
    if kind is None:
        supported = ", ".join(sorted(STORAGE_TYPES))
        raise UnsupportedDestination(f"storage type {stype!r} is not supported (supported: {supported})")
    if REGISTRY[kind].addressing == "bucket":
        if not sc.bucket:
            raise InvalidDestination(f"storage_config.bucket is missing for type {stype!r}")
        if kind == "r2":
            # R2's S3 API has one region, "auto"; the account id names the endpoint (else
            # CLOUDFLARE_ACCOUNT_ID, see storage_backends.r2)
            given = {"account_id": sc.account_id} if sc.account_id else {}
            options = validate_options(kind, given, "storage_config")
            return Destination(kind=kind, bucket=sc.bucket, region="auto", source_type=stype, options=options)
        return Destination(kind=kind, bucket=sc.bucket, region=sc.region, source_type=stype)
    # host addressing: sftp
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
