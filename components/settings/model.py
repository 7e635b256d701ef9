"""The validated settings, as the components receive them: frozen dataclasses, one per part."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pulumi

from components.paths import CONFIGS_DIR


class SettingsError(ValueError):
    """Raised with every problem found in the stack config."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "The stack config has "
            + (f"{len(problems)} problems" if len(problems) > 1 else "a problem")
            + ":\n  - "
            + "\n  - ".join(problems)
        )


# -- settings objects -----------------------------------------------------------


@dataclass(frozen=True)
class EdgeSettings:
    public_ip: str
    tls: str
    acme_email: str
    cloudflare_dns: bool
    cloudflare_proxy_http: bool
    cloudflare_scoped_dns_token: bool
    cloudflare_api_token: Optional[pulumi.Output] = field(default=None, repr=False)

    @property
    def letsencrypt(self) -> bool:
        return self.tls == "letsencrypt"


@dataclass(frozen=True)
class MatrixSettings:
    domain: str
    matrix_host: str
    element_host: str
    turn_host: str
    registration: str
    federation: bool
    federation_port: int
    turn: bool
    element: bool
    bridges: tuple[str, ...]
    telegram_api_id: Optional[int] = None
    telegram_api_hash: Optional[pulumi.Output] = field(default=None, repr=False)
    # MatrixRTC (Element Call): LiveKit and lk-jwt-service on rtc_host.
    calls: bool = False
    rtc_host: str = ""
    # Synapse's worker preset and per-group counts (components/matrix/workers.py).
    synapse_workers: str = "none"
    synapse_worker_counts: tuple[tuple[str, int], ...] = ()
    # Synapse's media_retention lifetimes ("" keeps that media forever).
    media_retention_local: str = ""
    media_retention_remote: str = ""

    @property
    def server_name(self) -> str:
        return self.domain

    @property
    def public_baseurl(self) -> str:
        return f"https://{self.matrix_host}/"


@dataclass(frozen=True)
class BackupSettings:
    enabled: bool
    schedule: str  # HH:MM, UTC
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    target: str  # local | aws | s3
    region: Optional[str] = None  # aws target
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_access_key_id: Optional[pulumi.Output] = field(default=None, repr=False)
    s3_secret_access_key: Optional[pulumi.Output] = field(default=None, repr=False)
    rest_url: str = ""
    rest_username: str = ""
    rest_password: Optional[pulumi.Output] = field(default=None, repr=False)
    rest_ca_certificate: str = ""


@dataclass(frozen=True)
class SignalSettings:
    enabled: bool
    target: str
    region: Optional[str]
    instance_type: str
    server_repo: str
    server_ref: str
    jar_s3_uri: str
    redis: str
    admin_cidrs: tuple[str, ...]
    # How registration-service verifies numbers (components/signal/registration.py).
    twilio_account_sid: str = ""
    twilio_api_key_sid: str = ""
    twilio_verify_service_sid: str = ""
    twilio_android_app_hash: str = ""
    twilio_api_key_secret: Optional[pulumi.Output] = field(default=None, repr=False)
    allowed_numbers: tuple[str, ...] = ()
    insecure_unverified_registration: bool = False
    # Suffixes of the table sets `signal-restore tables` made, oldest first; the server uses the last (none: the originals).
    restored_tables: tuple[str, ...] = ()

    @property
    def data_file(self) -> Path:
        return CONFIGS_DIR / "signal" / f"{self.server_ref}.yaml"


@dataclass(frozen=True)
class SmtpSettings:
    """Outgoing e-mail. TLS is always required: STARTTLS, or TLS from the first byte."""

    host: str
    port: int
    from_address: str
    tls: str
    user: str = ""
    password: Optional[pulumi.Output] = field(default=None, repr=False)


@dataclass(frozen=True)
class MonitoringSettings:
    enabled: bool
    alert_recipients: tuple[str, ...] = ()
    alert_emails: tuple[str, ...] = ()
    grafana: bool = False


@dataclass(frozen=True)
class Settings:
    stack: str
    docker_host: str
    edge: EdgeSettings
    matrix: MatrixSettings
    signal: SignalSettings
    # Advice that does not stop the program (each also logged as a Pulumi warning).
    warnings: tuple[str, ...] = ()
    backup: Optional[BackupSettings] = None
    # Container name -> memory limit in MB, overriding the container's default (components.common.Hardening).
    container_memory: dict = field(default_factory=dict)
    # Docker volume names: "legacy" (unscoped, stacks made before commstack:volumeNames) or "stack".
    volume_names: str = "legacy"
    monitoring: MonitoringSettings = field(default_factory=lambda: MonitoringSettings(enabled=False))
    smtp: Optional[SmtpSettings] = None  # None: no outgoing e-mail
    postgres: Optional["PostgresSettings"] = None


@dataclass(frozen=True)
class PostgresSettings:
    """Which Postgres major the data is on, which one configs/images.yaml runs, and the upgrade between.

    steady:    no upgrade; data and image are one major.
    upgrading: postgresUpgradeFrom F with postgresMajor F: the server stays on F (images.yaml's
               postgres-F) while the one-shot job backs up, dumps and restores into a new volume for N.
    upgraded:  postgresUpgradeFrom F with postgresMajor N: the server runs N on the new volume; the
               old volume is still declared (protected), for a rollback.
    """

    data_major: int
    image_major: int
    upgrade_from: Optional[int] = None

    @property
    def phase(self) -> str:
        if self.upgrade_from is None:
            return "steady"
        return "upgrading" if self.data_major == self.upgrade_from else "upgraded"

    @property
    def server_major(self) -> int:
        """The major the `postgres` container runs in this phase."""
        return self.data_major
