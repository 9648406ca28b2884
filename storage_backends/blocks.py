"""The per-destination credentials Blocks (``storage_backends.credentials`` finds them by name).

They live here, apart from the backends, because defining a Block imports Prefect (~80 MiB of
memory, most of an ``archive-one`` run's): a backend imports this module only when it looks
for a block (``ARCHIVE_CREDENTIAL_BLOCKS``, with a Prefect API to ask), so a run without
blocks never imports Prefect for its storage. Each backend module still exposes its block by
name (``from storage_backends.s3 import S3Credentials``), imported on first use.

Each block builds its backend's client with the backend's own function (a block's fields
first, then the standard chains / environment), as a backend does without a block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

if TYPE_CHECKING:
    from rtk_archiver.settings import Settings

    from .destination import Destination


class S3Credentials(Block):
    """Credentials for one S3 / S3-compatible destination (name it rtk-s3-<bucket>)."""

    _block_type_name = "RTK S3 Credentials"
    _block_type_slug = "rtk-s3-credentials"

    aws_access_key_id: str | None = Field(default=None, description="Access key id.")
    aws_secret_access_key: SecretStr | None = Field(default=None, description="Secret access key.")
    aws_session_token: SecretStr | None = Field(default=None, description="Session token, for temporary credentials.")
    region_name: str | None = Field(default=None, description="Region, if not the recording's.")
    endpoint_url: str | None = Field(default=None, description="Endpoint for S3-compatible stores (MinIO, R2, ...).")
    sse: str | None = Field(default=None, description="Server-side encryption: AES256 or aws:kms.")
    kms_key_id: str | None = Field(default=None, description="KMS key id or ARN (with sse aws:kms).")
    storage_class: str | None = Field(default=None, description="Storage class (STANDARD_IA, GLACIER_IR, ...).")
    checksum: str | None = Field(default=None, description="SHA256 (default) or off, for stores without S3 checksums.")

    storage_option_fields: ClassVar[tuple[str, ...]] = ("sse", "kms_key_id", "storage_class", "checksum")

    def get_client(self, destination: "Destination", settings: "Settings | None" = None, config: Any = None):
        """A boto3 S3 client for destination: this block's keys, else boto3's standard chain
        (an empty block = the chain)."""
        from .s3 import s3_client

        return s3_client(destination, settings, config, self)


class R2Credentials(Block):
    """Credentials for one Cloudflare R2 destination (name it rtk-r2-<bucket>): an R2 API
    token's S3 credentials. Empty: R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY, then boto3's chain."""

    _block_type_name = "RTK R2 Credentials"
    _block_type_slug = "rtk-r2-credentials"

    access_key_id: str | None = Field(default=None, description="The R2 API token's Access Key ID.")
    secret_access_key: SecretStr | None = Field(default=None, description="The R2 API token's Secret Access Key.")
    account_id: str | None = Field(
        default=None, description="Cloudflare account id of the bucket, if not the storage_config's nor CLOUDFLARE_ACCOUNT_ID."
    )
    endpoint_url: str | None = Field(
        default=None, description="Endpoint, if not https://<account_id>.r2.cloudflarestorage.com (e.g. the EU jurisdiction's)."
    )
    storage_class: str | None = Field(default=None, description="Storage class: STANDARD or STANDARD_IA.")
    checksum: str | None = Field(default=None, description="SHA256 (default) or off.")

    storage_option_fields: ClassVar[tuple[str, ...]] = ("account_id", "storage_class", "checksum")

    def get_client(self, destination: "Destination", settings: "Settings | None" = None, config: Any = None):
        """A boto3 S3 client on R2 for destination: this block's keys, else R2_ACCESS_KEY_ID /
        R2_SECRET_ACCESS_KEY, else boto3's standard chain."""
        from .r2 import r2_client

        return r2_client(destination, settings, config, self)


class GCSCredentials(Block):
    """Credentials for one GCS destination (name it rtk-gcs-<bucket>)."""

    _block_type_name = "RTK GCS Credentials"
    _block_type_slug = "rtk-gcs-credentials"

    service_account_info: SecretStr | None = Field(default=None, description="Service account key (JSON text).")
    project: str | None = Field(default=None, description="Project id, if not the key's.")
    storage_class: str | None = Field(default=None, description="Storage class of new objects (NEARLINE, COLDLINE, ...).")
    kms_key_name: str | None = Field(default=None, description="Cloud KMS key for new objects (projects/.../cryptoKeys/...).")

    storage_option_fields: ClassVar[tuple[str, ...]] = ("storage_class", "kms_key_name")

    def get_client(self):
        """A storage client: this block's service account, else (an empty block) anonymous
        credentials for an emulator (STORAGE_EMULATOR_HOST), else application default credentials."""
        from .gcs import gcs_client

        return gcs_client(self)


class AzureCredentials(Block):
    """Credentials for one Azure Blob destination (name it rtk-azure-<container>). Empty: the
    environment, then DefaultAzureCredential."""

    _block_type_name = "RTK Azure Credentials"
    _block_type_slug = "rtk-azure-credentials"

    connection_string: SecretStr | None = Field(default=None, description="Storage account connection string.")
    account_url: str | None = Field(default=None, description="https://<account>.blob.core.windows.net")
    account_key: SecretStr | None = Field(default=None, description="Account key (with account_url).")
    sas_token: SecretStr | None = Field(default=None, description="SAS token (with account_url).")
    access_tier: str | None = Field(default=None, description="Access tier of new blobs: Hot, Cool or Cold.")

    storage_option_fields: ClassVar[tuple[str, ...]] = ("access_tier",)

    def get_service_client(self, connection_timeout: float = 20.0, read_timeout: float = 120.0):
        """A BlobServiceClient from this block's fields, else the environment, else
        DefaultAzureCredential (NoAzureCredentials when there is nothing to use)."""
        from .azure import azure_service_client

        return azure_service_client(self, connection_timeout, read_timeout)


class SFTPCredentials(Block):
    """Credentials for one SFTP destination (name it rtk-sftp-<username>-at-<host>)."""

    _block_type_name = "RTK SFTP Credentials"
    _block_type_slug = "rtk-sftp-credentials"

    password: SecretStr | None = Field(
        default=None, description="Login password (auth_method PASSWORD) or the private key's passphrase (KEY)."
    )
    private_key: SecretStr | None = Field(default=None, description="Private key text (OpenSSH or PEM format).")
    known_hosts: str | None = Field(default=None, description="known_hosts lines for this host.")
