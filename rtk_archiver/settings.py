"""All settings in one place, read from the environment (pydantic-settings).

A missing or invalid setting stops a run before any work, with one message that names the
variable (see ``load_settings``). Secrets are ``SecretStr`` and never printed.

Every number has a lower and an upper bound and must be finite (``inf``, ``nan`` and values
like ``1e30`` are refused here, not discovered later as an OverflowError or "timestamp out
of range" in the middle of a run). URLs must not carry a user name or password: they are
printed in messages and stored with the run in the Prefect database.
"""

from __future__ import annotations

from typing import Literal

import os
from functools import lru_cache
from pathlib import Path

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
#: the longest wait between two task retries (ARCHIVE_RETRY_DELAY_SECONDS x 3^(retries - 1))
MAX_RETRY_WAIT_SECONDS = 24 * 3600
#: flow-run heartbeats: Prefect's minimum period (flows.heartbeat_frequency >= 30) and ours
MIN_HEARTBEAT_SECONDS = 30
DEFAULT_HEARTBEAT_SECONDS = 30
#: a run is marked Crashed no sooner than one heartbeat period plus this after its last heartbeat
CRASH_MARGIN_SECONDS = 15


#: Prefect's client retries 408, 429, 502 and 503 answers and lost connections (5 times, backing
#: off 2-32 s); a busy server on PostgreSQL also answers 500 (its connection pool timing out) and
#: 504: retried too, in every flow-run process (measured: a 10,000-recording backfill failed on one
#: 500 while reading a child run)
PREFECT_CLIENT_RETRIES = {"PREFECT_CLIENT_RETRY_EXTRA_CODES": "500,504"}


class SettingsError(Exception):
    """A setting is missing or invalid. The message names the variable and never holds a secret."""


class Settings(BaseSettings):
    # allow_inf_nan=False: "inf" / "nan" are refused with "Input should be a finite number"
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False, allow_inf_nan=False)

    # --- RealtimeKit API -------------------------------------------------------------------
    cloudflare_api_token: SecretStr = Field(description="API token with the Realtime permission.")
    cloudflare_account_id: str = Field(min_length=1, max_length=32)
    realtimekit_app_id: str = Field(min_length=1, max_length=32)
    cloudflare_base_url: str = DEFAULT_BASE_URL
    api_page_size: int = Field(default=50, ge=1, le=1000, alias="ARCHIVE_API_PAGE_SIZE")
    api_max_retries: int = Field(default=5, ge=0, le=20, alias="ARCHIVE_API_MAX_RETRIES")
    api_timeout_seconds: float = Field(default=60.0, ge=0.1, le=3600, alias="ARCHIVE_API_TIMEOUT_SECONDS")

    # --- Archive behaviour -----------------------------------------------------------------
    archive_default_destination: str | None = Field(
        default=None,
        description="Where recordings without a storage_config go: file:///abs/path, s3://bucket/prefix, "
        "r2://bucket/prefix, gs://bucket/prefix, az://container/prefix or sftp://user@host:port/path.",
    )
    # RealtimeKit keeps files ~7 days; look back that far plus a margin by default.
    archive_lookback_days: float = Field(default=8.0, gt=0, le=3650)
    archive_poll_interval_minutes: float = Field(default=15, ge=0.05, le=24 * 60, description="Schedule of the poll deployment (at least 3 s).")
    archive_poll_overlap_minutes: int = Field(default=30, ge=0, le=24 * 60)
    archive_max_concurrent: int = Field(default=4, ge=1, le=64)
    archive_task_retries: int = Field(default=3, ge=0, le=20)
    archive_retry_delay_seconds: float = Field(
        default=10.0, ge=0, le=3600, description="First retry delay; tripled at each retry (the longest at most a day)."
    )
    archive_download_timeout_seconds: float = Field(default=60.0, ge=0.1, le=3600, description="A stalled download is resumed after this long.")
    archive_download_stall_seconds: float = Field(
        default=60.0, ge=0.1, le=3600,
        description="A download that receives less than 64 KiB in this long is stalled: resumed like a reset.",
    )
    archive_upload_stall_seconds: float = Field(
        default=120.0, ge=0.1, le=3600,
        description="An upload that makes no progress for this long fails (SFTP channel, S3 and GCS timeouts).",
    )
    archive_rtk_upload_proof: Literal["sha256", "size"] = Field(
        default="sha256",
        description="How RealtimeKit's own upload to a storage_config is proven to be the recording before no second copy "
        "is stored: sha256 (the recording is downloaded once through the hashes and compared with the store's hash, or "
        "read back), or size (its size only: no download; a same-size damaged upload goes unnoticed).",
    )
    archive_download_resumes: int = Field(default=5, ge=0, le=100, description="Resumes (Range requests) per file and attempt.")
    archive_api_requests_per_second: float = Field(
        default=4.0, ge=0.01, le=1000, description="Shared rate limit on RealtimeKit API calls, across all runs and workers."
    )
    archive_max_transfers_per_backend: int = Field(
        default=4, ge=1, le=256, description="Transfers at once per backend kind, across all runs and workers."
    )
    archive_chunk_size: int = Field(
        default=1024 * 1024, ge=16 * 1024, le=64 * 1024 * 1024, description="Bytes read from a download at a time."
    )
    archive_read_ahead_chunks: int = Field(
        default=8, ge=0, le=256,
        description="Chunks the download may run ahead of the upload, in a thread (0: none; memory: this x chunk size).",
    )

    # --- Object stores ---------------------------------------------------------------------
    # boto3 and google-cloud-storage read their own credential chains (AWS_*, GOOGLE_*,
    # STORAGE_EMULATOR_HOST); these only add what those chains do not cover.
    archive_credential_blocks: bool = Field(
        default=True, description="Look up per-destination credentials Blocks (see storage_backends/credentials.py)."
    )
    s3_endpoint_url: str | None = Field(default=None, alias="ARCHIVE_S3_ENDPOINT_URL")
    digitalocean_endpoint_url: str | None = Field(default=None, alias="ARCHIVE_DIGITALOCEAN_ENDPOINT_URL")
    # Cloudflare R2 (storage_config type "cloudflare", r2:// URLs): storage_backends/r2.py
    r2_endpoint_url: str | None = Field(
        default=None, alias="ARCHIVE_R2_ENDPOINT_URL",
        description="R2's S3 endpoint, instead of https://<account_id>.r2.cloudflarestorage.com (a jurisdiction's, "
        "e.g. https://<account_id>.eu.r2.cloudflarestorage.com; a test server).",
    )
    r2_access_key_id: str | None = Field(
        default=None, alias="R2_ACCESS_KEY_ID", description="R2 API token's access key id (else an R2 block, else AWS_*)."
    )
    r2_secret_access_key: SecretStr | None = Field(default=None, alias="R2_SECRET_ACCESS_KEY", description="Its secret.")

    # --- SFTP (the API's own semantics) ----------------------------------------------------
    sftp_password: SecretStr | None = Field(
        default=None, description="Login password (auth_method PASSWORD) or the private key's passphrase (KEY)."
    )
    sftp_private_key: SecretStr | None = Field(default=None, description="Private key text (OpenSSH or PEM).")
    sftp_private_key_file: Path | None = None
    sftp_known_hosts: Path = Field(default_factory=lambda: Path.home() / ".ssh" / "known_hosts")
    sftp_trust_unknown_hosts: bool = Field(
        default=False, description="Accept (and remember) unknown host keys. Never the default."
    )

    # --- Transfer tuning per backend (BENCHMARKS.md "Over an emulated WAN") ------------------
    # Memory held by an upload is about size x in flight (plus the read-ahead): raise either
    # for long fat links, lower them to save memory.
    archive_s3_part_size: int = Field(
        default=8 * 1024 * 1024, ge=5 * 1024 * 1024, le=512 * 1024 * 1024,
        description="S3 multipart part size in bytes (S3's minimum is 5 MiB; 10,000 parts at most per object).",
    )
    archive_s3_concurrency: int = Field(
        default=3, ge=1, le=64,
        description="S3 parts in memory at once: uploading, or one being read (3 x 8 MiB: the 120 MiB memory budget).",
    )
    archive_gcs_chunk_size: int = Field(
        default=16 * 1024 * 1024, ge=256 * 1024, le=256 * 1024 * 1024,
        description="GCS resumable-upload chunk in bytes (a multiple of 256 KiB); each chunk is one request.",
    )
    archive_azure_block_size: int = Field(
        default=8 * 1024 * 1024, ge=256 * 1024, le=256 * 1024 * 1024, description="Azure block size in bytes (Put Block)."
    )
    archive_azure_concurrency: int = Field(default=4, ge=1, le=64, description="Azure blocks staged at once.")
    archive_sftp_window_size: int = Field(
        default=64 * 1024 * 1024, ge=1024 * 1024, le=512 * 1024 * 1024,
        description="SSH channel window in bytes: how much an SFTP upload may have in flight unacknowledged.",
    )
    archive_sftp_channels: int = Field(
        default=4, ge=1, le=8,
        description="SFTP channels of the one SSH connection an upload of 16 MiB or more writes over, disjoint "
        "ranges of the temp file. Each channel has its own window (OpenSSH: 2 MiB), which caps one channel at "
        "2 MiB per round trip (26 MB/s at 80 ms). Measured at 80 ms / 1 Gbit/s: 1 channel 1.14x rclone's time, "
        "2 channels 0.75x, 4 channels 0.62x; on loopback 4 were no slower (BENCHMARKS.md). 1: one channel.",
    )
    archive_sftp_connections: int = Field(
        default=1, ge=1, le=16,
        description="SSH connections an SFTP upload of 16 MiB or more spreads its writes over: the archiver's own "
        "plus worker processes, each writing disjoint ranges of the temp file (1: one connection, no workers). "
        "Helps with idle CPU cores or a long link (each SSH channel has its own window); on a CPU-saturated "
        "machine it was slower (BENCHMARKS.md).",
    )

    # --- Watching for loss: expiry watchdog and scrub ----------------------------------------
    archive_expiry_warning_hours: float = Field(
        default=48.0, ge=0, le=24 * 365,
        description="A finished recording not archived whose files on RealtimeKit expire within this many hours "
        "is reported at risk and fails the run.",
    )
    archive_verify_ops_per_second: float = Field(
        default=25.0, gt=0, le=10000,
        description="Storage operations per second (list pages, stats, reads) the scrub makes on each destination.",
    )
    # --- Webhook receiver (`rtk-archiver webhook`, rtk_archiver/webhook.py) -----------------
    # The receiver reads only these (it needs no API token): see webhook.load_webhook_settings.
    rtk_webhook_public_key: str | None = Field(
        default=None, description="PEM public key that verifies the rtk-signature of RealtimeKit's webhooks."
    )
    rtk_webhook_public_key_file: Path | None = Field(default=None, description="File holding that PEM public key.")
    rtk_webhook_max_body_bytes: int = Field(
        default=256 * 1024, ge=1024, le=16 * 1024 * 1024, description="Larger webhook requests are refused (413)."
    )
    rtk_webhook_dedup_seconds: float = Field(
        default=24 * 3600.0, ge=0, le=30 * 86400,
        description="A delivery id or (recording, status) seen within this long is acknowledged and ignored.",
    )
    rtk_webhook_header_timeout_seconds: float = Field(
        default=10.0, ge=0.1, le=600,
        description="A webhook connection that has not sent its request's headers within this long is closed.",
    )
    rtk_webhook_body_timeout_seconds: float = Field(
        default=30.0, ge=0.1, le=3600,
        description="A webhook request whose body has not all arrived this long after its headers is closed.",
    )
    rtk_webhook_max_pending_connections: int = Field(
        default=64, ge=1, le=10000,
        description="Webhook connections still sending their request at once; beyond this the oldest is closed.",
    )
    rtk_webhook_refused_alert_seconds: float = Field(
        default=300.0, ge=1, le=7 * 86400,
        description="While webhooks are refused as unsigned or badly signed (401, which RealtimeKit never "
        "retries), at most one ERROR line and one rtk.webhook.refused Prefect event per this many seconds.",
    )

    # --- Dead runs (README "When a run dies") -------------------------------------------------
    archive_heartbeat_seconds: int = Field(
        default=DEFAULT_HEARTBEAT_SECONDS, ge=MIN_HEARTBEAT_SECONDS, le=3600,
        description="Seconds between a flow run's heartbeat events, on every path (Prefect's "
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY, formerly PREFECT_RUNNER_HEARTBEAT_FREQUENCY; Prefect's minimum is 30).",
    )
    archive_crashed_after_seconds: int = Field(
        default=120, ge=MIN_HEARTBEAT_SECONDS + CRASH_MARGIN_SECONDS, le=24 * 3600,
        description="A run of the archiver's flows without a heartbeat for this long is marked Crashed by the "
        "deployments' automation (at least ARCHIVE_HEARTBEAT_SECONDS + 15).",
    )

    @field_validator("archive_gcs_chunk_size")
    @classmethod
    def _gcs_chunk(cls, v: int) -> int:
        if v % (256 * 1024):
            raise ValueError("must be a multiple of 256 KiB (262144 bytes), as GCS resumable uploads require")
        return v

    @field_validator("cloudflare_api_token")
    @classmethod
    def _token(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("cloudflare_base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return _http_url(v, "the API token goes in CLOUDFLARE_API_TOKEN").rstrip("/")

    @field_validator("s3_endpoint_url", "digitalocean_endpoint_url")
    @classmethod
    def _endpoint_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        return _http_url(v, "use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an S3Credentials block")

    @field_validator("r2_endpoint_url")
    @classmethod
    def _r2_endpoint_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        return _http_url(v, "use R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY or an R2Credentials block")

    @field_validator("r2_access_key_id")
    @classmethod
    def _r2_key(cls, v: str | None) -> str | None:
        return (v or "").strip() or None

    @model_validator(mode="after")
    def _r2_pair(self) -> "Settings":
        if bool(self.r2_access_key_id) != bool(self.r2_secret_access_key and self.r2_secret_access_key.get_secret_value()):
            raise ValueError("R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY go together: set both or neither")
        return self

    @model_validator(mode="after")
    def _retry_wait(self) -> "Settings":
        # the task retry delays are ARCHIVE_RETRY_DELAY_SECONDS x 3^i (flows/archive.py
        # retry_delays); the longest must stay a sane time away (else Prefect schedules a
        # retry centuries ahead, or overflows)
        longest = self.archive_retry_delay_seconds * 3 ** max(0, self.archive_task_retries - 1)
        if longest > MAX_RETRY_WAIT_SECONDS:
            raise ValueError(
                f"ARCHIVE_RETRY_DELAY_SECONDS x 3^(ARCHIVE_TASK_RETRIES - 1), the longest wait between retries, "
                f"must be at most {MAX_RETRY_WAIT_SECONDS} seconds (one day): lower either"
            )
        return self

    @model_validator(mode="after")
    def _crash_window(self) -> "Settings":
        if self.archive_crashed_after_seconds < self.archive_heartbeat_seconds + CRASH_MARGIN_SECONDS:
            raise ValueError(
                f"ARCHIVE_CRASHED_AFTER_SECONDS must be at least ARCHIVE_HEARTBEAT_SECONDS + {CRASH_MARGIN_SECONDS} "
                "(a live run would be marked Crashed between two heartbeats)"
            )
        return self

    @field_validator("archive_default_destination")
    @classmethod
    def _destination(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        from storage_backends.destination import parse_destination_url

        parse_destination_url(v)  # raises ValueError with a clear message
        return v


def _http_url(value: str, where_secrets_go: str) -> str:
    """An http(s) URL with a host, a valid port and no user name or password in it. The
    messages never repeat the value (it may hold a secret)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise ValueError("is not a valid URL (bad host or port)") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    if "@" in parts.netloc:
        raise ValueError(f"must not contain a user name or password ({where_secrets_go})")
    if port == 0:
        raise ValueError("has port 0: use a port between 1 and 65535")
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query or fragment ('?...', '#...')")
    return value.strip()


def _env_name(loc: tuple) -> str:
    field = str(loc[0]) if loc else "?"
    info = Settings.model_fields.get(field)
    if info is not None and info.alias:
        return info.alias.upper()
    return field.upper()


def load_settings(**overrides) -> Settings:
    """Read settings from the environment; raise SettingsError naming every bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = err.get("loc", ())
            msg = "is not set" if err.get("type") == "missing" else str(err.get("msg", "is invalid"))
            msg = msg.removeprefix("Value error, ")
            # a check across settings (loc empty) names its variables itself
            problems.append(f"{_env_name(loc)} {msg}" if loc else msg)
        raise SettingsError("Invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def project_defaults() -> dict[str, str]:
    """Prefect settings this project defaults to (no telemetry, no host look-ups)."""
    return {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LOG_PRINTS": "true",
    }


def apply_project_defaults() -> None:
    for key, value in project_defaults().items():
        os.environ.setdefault(key, value)
    os.environ.update(flow_run_env())


def heartbeat_seconds_from_env() -> int:
    """``ARCHIVE_HEARTBEAT_SECONDS`` read before anything else (the settings as a whole may
    not load yet: a missing token): the default when unset or invalid (``load_settings`` then
    names the bad variable)."""
    raw = os.environ.get("ARCHIVE_HEARTBEAT_SECONDS", "").strip()
    try:
        value = int(raw)
    except ValueError:
        return DEFAULT_HEARTBEAT_SECONDS
    return value if MIN_HEARTBEAT_SECONDS <= value <= 3600 else DEFAULT_HEARTBEAT_SECONDS


def flow_run_env(settings: Settings | None = None) -> dict[str, str]:
    """Prefect settings every flow-run process of the archiver runs with, on every path: the
    CLI (``apply_project_defaults``), ``serve``'s runner (``rtk_archiver.serving``) and the work
    pool's processes (the deployments' job variables, ``deployments/``). Their heartbeats are
    what the deployments' automation watches (``deployments.crashed_runs_automation``): it
    marks a run Crashed after ``ARCHIVE_CRASHED_AFTER_SECONDS`` without one."""
    seconds = settings.archive_heartbeat_seconds if settings is not None else heartbeat_seconds_from_env()
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(seconds), **PREFECT_CLIENT_RETRIES}
