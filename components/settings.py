"""Every stack setting, read once, validated, and frozen.

`load_settings()` is the only place that touches `pulumi.Config`. It runs
before any resource is registered and raises one `SettingsError` that lists
every bad or missing value, each with the key, what is wrong and the
`pulumi config set …` line that fixes it.

`CONFIG_KEYS` is the config reference: the README table is checked against it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pulumi

PROJECT = "commstack"
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"

KNOWN_BRIDGES = ("whatsapp", "telegram")
# Hostnames Signal clients call (Signal-Android app/build.gradle.kts); the
# Matrix subdomains must stay clear of them when the Signal half is on.
SIGNAL_SUBDOMAINS = ("chat", "storage", "cdn", "cdn2")
_DNS_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
# Patterns are matched with fullmatch and re.ASCII: `$` would accept a trailing newline, `\d` any script's digits.
_DOMAIN_RE = re.compile(rf"(?:{_DNS_LABEL}\.)+{_DNS_LABEL}", re.ASCII)
_REGION_RE = re.compile(r"[a-z]{2}(?:-gov)?-[a-z]+-\d", re.ASCII)
_INSTANCE_TYPE_RE = re.compile(r"[a-z][a-z0-9-]*\d[a-z0-9-]*\.(?:nano|micro|small|medium|large|metal|\d*xlarge)", re.ASCII)
# An e-mail address: an RFC 5322 dot-atom local part (letters, digits and !#$%&'*+/=?^_`{|}~-, dots
# between), then a DNS name with a letter-only top-level label. Quoted local parts, comments and
# address literals are refused. Characters a shell would act on stay legal (o'brien@example.org):
# every place the address lands quotes it (components/quoting.py).
_EMAIL_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL_RE = re.compile(rf"^(?=.{{1,64}}@){_EMAIL_ATOM}(?:\.{_EMAIL_ATOM})*@(?=.{{1,253}}$)"
                       r"(?:(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)+[A-Za-z]{2,63}$", re.ASCII)
# unix:///absolute/path, tcp://host:port, ssh://[user@]host[:port], npipe:////./pipe/name.
_HOST_PART = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
_DOCKER_HOST_RE = re.compile(
    rf"^(?:unix://(?:/[A-Za-z0-9._-]+)+|tcp://{_HOST_PART}:\d{{1,5}}|ssh://(?:[A-Za-z0-9._-]+@)?{_HOST_PART}(?::\d{{1,5}})?"
    r"|npipe:////\./pipe/[A-Za-z0-9._-]+)$", re.ASCII)
# s3://bucket/key: S3's bucket naming rules, and a key of S3's "safe" characters
# (docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html) except `*`, which the key's
# IAM resource ARN (components/signal/iam.py) would read as a wildcard.
_S3_URI_RE = re.compile(r"^s3://(?!xn--)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/(?!/)[A-Za-z0-9!_.'()/-]{1,1024}$", re.ASCII)
_E164_RE = re.compile(r"^\+[1-9]\d{6,14}$", re.ASCII)
# Twilio SIDs: a two-letter type prefix and 32 hex digits (twilio.com/docs/glossary/what-is-a-sid).
_TWILIO_SID_RE = {prefix: re.compile(rf"^{prefix}[0-9a-f]{{32}}$", re.ASCII) for prefix in ("AC", "SK", "VA")}
# SMS Retriever app hash: 11 characters of base64 (developers.google.com/identity/sms-retriever/verify).
_APP_HASH_RE = re.compile(r"^[A-Za-z0-9+/]{11}$", re.ASCII)
_REPO_RE = re.compile(r"https://[A-Za-z0-9.-]+/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?(?:\.git)?", re.ASCII)
_POSITIVE_INT_RE = re.compile(r"[0-9]+", re.ASCII)
# A restored Signal table set's suffix (<stack>-signal-<Table>-<suffix>): lowercase letters, digits and inner
# hyphens, short enough that every restored name stays far below DynamoDB's 255 characters.
SIGNAL_TABLE_SUFFIX_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?", re.ASCII)
# MTProto's initConnection takes api_id as a 32-bit `int` (core.telegram.org/method/initConnection).
TELEGRAM_API_ID_MAX = 2**31 - 1
# The longest common name a certificate may carry (RFC 5280 ub-common-name); the
# generated certificates use the domain and the TURN host as theirs.
MAX_HOSTNAME_LENGTH = 64
# Graviton (arm64) families: a generation digit then `g` (t4g, m7g, c7gn, r6gd, im4gn, ...), and a1.
_ARM_INSTANCE_RE = re.compile(r"^(?:a1|[a-z]+\d+g[a-z]*)\.", re.ASCII)
# Suffixes no public CA issues for and no public DNS zone holds: RFC 6761 (localhost,
# test, invalid, example), RFC 6762 (local), RFC 8375 (home.arpa), ICANN's `internal`,
# and common private ones.
NON_PUBLIC_SUFFIXES = ("localhost", "local", "test", "invalid", "example", "internal", "home.arpa",
                       "lan", "localdomain")
# Addresses the internet cannot reach, so never DNS answers for it: "this network",
# RFC 1918, shared CGNAT space, loopback, link-local, multicast and reserved.
# (The documentation ranges stay allowed: the committed prod example uses 203.0.113.10.)
NON_ROUTABLE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4"))
# Cloudflare proxies HTTPS only on 443, 2053, 2083, 2087, 2096 and 8443
# (developers.cloudflare.com/fundamentals/reference/network-ports/), never on 8448.
CLOUDFLARE_HTTPS_PORTS = (443, 2053, 2083, 2087, 2096, 8443)


@dataclass(frozen=True)
class ConfigKey:
    """One documented stack setting."""

    name: str
    default: Any
    meaning: str
    example: str
    secret: bool = False
    namespace: str = PROJECT

    @property
    def full_name(self) -> str:
        return f"{self.namespace}:{self.name}"

    def fix(self, value: Optional[str] = None) -> str:
        flag = "--secret " if self.secret else ""
        return f"pulumi config set {flag}{self.full_name} {value or self.example}"


# commstack:volumeNames: the unscoped names of stacks made before the setting existed stay their default.
VOLUME_NAMINGS = ("legacy", "stack")

# The Postgres major of every stack made before commstack:postgresMajor existed (its default forever).
LEGACY_POSTGRES_MAJOR = 15

CONFIG_KEYS: dict[str, ConfigKey] = {
    k.full_name: k
    for k in [
        # -- the platform as a whole ------------------------------------------
        ConfigKey("domain", None, "Base domain and Matrix server_name; user IDs are @user:<domain>. Cannot change after the first deploy.", "example.org"),
        ConfigKey("dockerHost", "", "Docker engine for the containers: empty uses the local socket or DOCKER_HOST; or unix://, tcp://, ssh://user@host.", "ssh://deploy@home.example.org"),
        ConfigKey("publicIp", "127.0.0.1", "Public IPv4 of the Docker host: TURN's external-ip and the target of the DNS records.", "203.0.113.10"),
        ConfigKey("tls", "self-signed", "`self-signed` (a certificate the program generates) or `letsencrypt` (Traefik, DNS-01 through Cloudflare).", "letsencrypt"),
        ConfigKey("acmeEmail", "", "Let's Encrypt account e-mail; required when tls is letsencrypt or the Signal half runs on AWS.", "admin@example.org"),
        ConfigKey("cloudflareApiToken", None, "Cloudflare API token (secret): manages DNS records and, unless a scoped token is created, answers Traefik's DNS-01.", "<token>", secret=True),
        ConfigKey("cloudflareDns", False, "Manage the DNS records for both halves in Cloudflare (the zone is looked up by name).", "true"),
        ConfigKey("cloudflareProxyHttp", False, "Proxy the HTTP hostnames through Cloudflare (TURN and other non-HTTP names always stay DNS-only).", "true"),
        ConfigKey("cloudflareScopedDnsToken", False, "Create a Cloudflare API token limited to DNS edits in this zone, for Traefik's DNS-01.", "true"),
        # -- Matrix -------------------------------------------------------------
        ConfigKey("matrixSubdomain", "matrix", "Host of Synapse (and the proxied client/federation API): <matrixSubdomain>.<domain>.", "matrix"),
        ConfigKey("elementSubdomain", "element", "Host of Element Web: <elementSubdomain>.<domain>.", "element"),
        ConfigKey("turnSubdomain", "turn", "Host of the TURN server: <turnSubdomain>.<domain>.", "turn"),
        ConfigKey("rtcSubdomain", "rtc", "Host of MatrixRTC calls (lk-jwt-service at /livekit/jwt, LiveKit's signalling at /livekit/sfu): <rtcSubdomain>.<domain>.", "rtc"),
        ConfigKey("registration", "closed", "`closed` (admins create users) or `token` (registration needs a token an admin issues). Open registration is not offered.", "token"),
        ConfigKey("federation", True, "Federate with other homeservers.", "false"),
        ConfigKey("federationPort", 443, "443 (delegated through /.well-known/matrix/server) or 8448 (served directly, published on the host).", "8448"),
        ConfigKey("turn", True, "Run coturn for legacy 1:1 calls and as the TURN relay of MatrixRTC calls (3478, 5349, 49160-49192/udp).", "false"),
        ConfigKey("calls", True, "MatrixRTC calls for Element X and Element Web group calls: LiveKit (media on 49193-49200/udp) and lk-jwt-service; needs turn true.", "false"),
        ConfigKey("element", True, "Serve Element Web.", "false"),
        ConfigKey("bridges", [], "JSON list of mautrix bridges to run: whatsapp, telegram.", "'[\"whatsapp\",\"telegram\"]'"),
        ConfigKey("telegramApiId", None, "Telegram api_id from my.telegram.org; required when the telegram bridge is on.", "123456"),
        ConfigKey("synapseWorkers", "none", "Synapse's processes: `none` (one process, for small stacks), `balanced` (six processes that keep every core busy on a small host) or `specialized` (one process per job). Workers add Redis. See docs/workers.md.", "balanced"),
        ConfigKey("synapseWorkerCounts", {}, "JSON object: how many processes a worker group of the preset runs, for the groups that may run several (see docs/workers.md), e.g. {\"sync\": 2}.", "'{\"sync\":2}'"),
        ConfigKey("mediaRetentionRemote", "30d", "How long media cached from other homeservers is kept after it was last accessed (Nd, Nw or Ny); it is fetched again when asked for. Empty keeps it forever.", "14d"),
        ConfigKey("mediaRetentionLocal", "", "How long media uploaded on this homeserver is kept after it was last accessed (Nd, Nw or Ny); empty (the default) keeps it forever. Avatars and quarantined or protected media are always kept.", "365d"),
        ConfigKey("telegramApiHash", None, "Telegram api_hash (secret) from my.telegram.org; required when the telegram bridge is on.", "<api_hash>", secret=True),
        # -- backups ------------------------------------------------------------
        ConfigKey("backup", True, "Back up the Matrix half (databases, media, signing key, ACME store) with restic, daily, with a weekly restore drill.", "false"),
        ConfigKey("backupSchedule", "03:30", "Time of the daily backup, HH:MM in UTC; the restore drill follows Sunday's.", "02:15"),
        ConfigKey("backupRetention", '{"daily":7,"weekly":4,"monthly":6}', "JSON object: how many daily, weekly and monthly snapshots to keep.", "'{\"daily\":14,\"weekly\":8,\"monthly\":12}'"),
        ConfigKey("backupTarget", "local", "`local` (a protected Docker volume on the same host), `aws` (an S3 bucket the program creates, whose key cannot delete history; needs aws:region), `s3` (any S3-compatible endpoint) or `rest` (restic's rest-server --append-only on another machine).", "aws"),
        ConfigKey("backupS3Endpoint", "", "For backupTarget s3: the endpoint URL, e.g. https://s3.eu-central-003.backblazeb2.com.", "https://s3.eu-central-003.backblazeb2.com"),
        ConfigKey("backupS3Bucket", "", "For backupTarget s3: the bucket, which must exist (create it private and versioned).", "my-matrix-backups"),
        ConfigKey("backupS3AccessKeyId", None, "For backupTarget s3: the access key id (secret).", "<key id>", secret=True),
        ConfigKey("backupS3SecretAccessKey", None, "For backupTarget s3: the secret access key (secret).", "<secret key>", secret=True),
        ConfigKey("backupRestUrl", "", "For backupTarget rest: the rest-server repository's https URL (run with --append-only --private-repos; docs/operations.md).", "https://backup.example.org:8000/commstack/"),
        ConfigKey("backupRestUsername", "", "For backupTarget rest: the rest-server user (its .htpasswd entry; with --private-repos also the URL's path).", "commstack"),
        ConfigKey("backupRestPassword", None, "For backupTarget rest: that user's password (secret).", "<password>", secret=True),
        ConfigKey("backupRestCaCertificate", "", "For backupTarget rest: the PEM certificate of the CA that signed the rest-server's TLS certificate, when no public CA did.", "\"$(cat rest-server-ca.pem)\""),
        # -- monitoring ---------------------------------------------------------
        ConfigKey("monitoring", True, "Metrics on private networks, Prometheus with alert rules, and Alertmanager posting alerts into the Matrix room #alerts:<domain> (see docs/monitoring.md).", "false"),
        ConfigKey("alertRecipients", [], "JSON list of Matrix users invited to the alert room; empty: @admin:<domain>, the user `create-admin` makes by default.", "'[\"@alice:example.org\"]'"),
        ConfigKey("alertEmails", [], "JSON list of e-mail addresses Alertmanager also sends alerts to; needs smtpHost.", "'[\"ops@example.org\"]'"),
        ConfigKey("grafana", False, "Run Grafana (off by default) with Synapse's official dashboard, loaded at deploy time from the pinned Synapse tag; needs monitoring true.", "true"),
        # -- outgoing e-mail ------------------------------------------------------
        ConfigKey("smtpHost", "", "SMTP server for outgoing e-mail (Synapse's password resets and notifications, Alertmanager's alert e-mails); empty: no e-mail.", "smtp.example.org"),
        ConfigKey("smtpPort", 587, "SMTP server port: 587 (STARTTLS) or 465 (TLS from the first byte).", "465"),
        ConfigKey("smtpUser", "", "SMTP login; empty: the server takes mail without one.", "matrix@example.org"),
        ConfigKey("smtpPassword", None, "SMTP password (secret); required with smtpUser.", "<smtp_password>", secret=True),
        ConfigKey("smtpFrom", "", "The From address of every e-mail; required with smtpHost.", "matrix@example.org"),
        ConfigKey("smtpTls", "starttls", "`starttls` (required, never plain text) or `tls` (TLS from the first byte, usually port 465).", "tls"),
        # -- Postgres major upgrades ------------------------------------------------
        ConfigKey("postgresMajor", LEGACY_POSTGRES_MAJOR, "The Postgres major the stack's data is on (a record, not a choice): must equal the major of configs/images.yaml's postgres image unless postgresUpgradeFrom runs the upgrade. Stacks made before this setting existed are on 15.", "16"),
        ConfigKey("postgresUpgradeFrom", "", "Upgrade Postgres from this major (the data's) to configs/images.yaml's: a one-shot job backs up, dumps every database and restores it into a new protected volume; the old volume is kept. See the README's Postgres major upgrades.", "15"),
        # -- Signal -------------------------------------------------------------
        ConfigKey("signal", False, "Deploy the Signal backend as well.", "true"),
        ConfigKey("signalTarget", "aws", "`aws` (EC2, DynamoDB, S3, SSM) or `docker` (DynamoDB Local and Redis containers on the Docker host).", "docker"),
        ConfigKey("signalInstanceType", "t3.large", "EC2 instance type for Signal-Server.", "t3.xlarge"),
        ConfigKey("signalServerRepo", "https://github.com/signalapp/Signal-Server", "Signal-Server source repository (upstream or a fork such as jtof-dev/Signal-Server).", "https://github.com/jtof-dev/Signal-Server"),
        ConfigKey("signalServerRef", "v9.81.0", "Git tag of Signal-Server; must have a data file configs/signal/<ref>.yaml.", "v9.81.0"),
        ConfigKey("signalJarS3Uri", "", "Optional s3:// URI of a prebuilt TextSecureServer jar, so a replacement instance starts without building.", "s3://my-builds/TextSecureServer-9.81.0.jar"),
        ConfigKey("signalRedis", "containers", "`containers` (six-node Redis cluster on the instance) or `elasticache` (AWS ElastiCache, cluster mode).", "elasticache"),
        ConfigKey("volumeNames", "legacy", "`stack`: every Docker volume's name starts with the stack's (<stack>-synapse-media), so stacks on one Docker host keep their data apart; ./scripts/up sets it for a new stack. `legacy` (the default, for stacks made before it): the unscoped names. Changing it on a deployed stack is refused (its volumes are protected).", "stack"),
        ConfigKey("containerMemory", {}, "JSON object: memory limit per container (docker name) instead of its default, e.g. {\"synapse\": \"4g\"}; m or g.", "'{\"synapse\":\"4g\"}'"),
        ConfigKey("signalRestoredTables", [], "JSON list of suffixes of Signal table sets restored with `python -m commstack signal-restore tables`, oldest first: each set <table>-<suffix> is adopted (imported, protected) and the server uses the last; the original tables stay untouched. See \"Restore the Signal half\".", "'[\"restored-20261201-0930\"]'"),
        ConfigKey("adminCidrs", [], "JSON list of CIDRs allowed to SSH to the Signal instance; empty keeps SSH closed.", "'[\"198.51.100.7/32\"]'"),
        ConfigKey("signalTwilioAccountSid", "", "Twilio account SID (AC…): registration-service verifies phone numbers with Twilio Verify. Required when signal is on, unless signalInsecureUnverifiedRegistration.", "AC0123456789abcdef0123456789abcdef"),
        ConfigKey("signalTwilioApiKeySid", "", "SID of a Twilio API key (SK…) of that account; required with Twilio.", "SK0123456789abcdef0123456789abcdef"),
        ConfigKey("signalTwilioApiKeySecret", None, "Secret of that Twilio API key (secret); required with Twilio. Reaches registration-service through SSM or a 0600 file, never the user data.", "<api_key_secret>", secret=True),
        ConfigKey("signalTwilioVerifyServiceSid", "", "SID of the Twilio Verify service (VA…) that sends and checks the codes; required with Twilio.", "VA0123456789abcdef0123456789abcdef"),
        ConfigKey("signalTwilioAndroidAppHash", "", "The 11-character SMS Retriever hash of your Signal-Android build (its signing key), put in each code SMS; required with Twilio.", "AbCdEfGhIjK"),
        ConfigKey("signalAllowedNumbers", [], "JSON list of E.164 phone numbers that alone may register (checked before any code is sent); empty: any number Twilio verifies.", "'[\"+15551234567\"]'"),
        ConfigKey("signalInsecureUnverifiedRegistration", False, "INSECURE: run registration-service's dev environment, where the code is the number's last six digits, so anyone can register any number. Local test stacks only: refused with cloudflareDns, a public domain or signalTarget aws.", "true"),
        ConfigKey("region", None, "AWS region of the Signal half; required when signal is on and signalTarget is aws.", "eu-central-1", namespace="aws"),
    ]
}


def stack_tags(stack: str) -> dict[str, str]:
    """The tags the AWS provider puts on every resource (__main__.py); a table `signal-restore` makes
    gets them too, or adopting it would differ from the program."""
    return {"commstack:project": PROJECT, "commstack:stack": stack}


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


BACKUP_TARGETS = ("local", "aws", "s3", "rest")
# rest-server: https only (the credentials and the data travel in it); its user names (htpasswd.go validUsername).
_REST_URL_RE = re.compile(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~-]+)*/?", re.ASCII)
_REST_USER_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}", re.ASCII)
_PEM_CERTIFICATE_RE = re.compile(r"\s*(-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*)+",
                                 re.ASCII)
_HHMM_RE = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ENDPOINT_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(?::\d{1,5})?/?$")


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


SMTP_TLS_MODES = ("starttls", "tls")


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
    postgres: Optional["PostgresSettings"] = None
    monitoring: MonitoringSettings = field(default_factory=lambda: MonitoringSettings(enabled=False))
    smtp: Optional[SmtpSettings] = None  # None: no outgoing e-mail


# Every container the program can create (docker names); commstack:containerMemory may name these.
# A new container adds its name here (tests/test_program.py checks the list against the program).
SIGNAL_LOCAL_CONTAINERS = tuple(f"signal-local-{part}" for part in (
    "dynamodb", "tables", "aws-local", *(f"redis-{i}" for i in range(6)), "redis-cluster-create", "registration",
    "server"))


def known_containers() -> tuple[str, ...]:
    return ("postgres", "postgres-init", "postgres-upgrade", "synapse", "backup", "wellknown", "proxy", "turn", "element",
            "livekit", "lk-jwt-service", "prometheus", "alertmanager", "alert-relay", "node-exporter",
            "postgres-exporter", "blackbox-exporter", "redis-exporter", "grafana", "grafana-dashboards",
            *(f"bridge-{kind}" for kind in KNOWN_BRIDGES), *SIGNAL_LOCAL_CONTAINERS)


_MEMORY_RE = re.compile(r"(\d{1,6})([mg])", re.ASCII)
MIN_CONTAINER_MEMORY_MB = 32


def memory_mb(value: Any) -> Optional[int]:
    """`512m` / `4g` (or a number of MB) -> MB; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    matched = _MEMORY_RE.fullmatch(str(value).strip().lower())
    if not matched:
        return None
    return int(matched.group(1)) * (1024 if matched.group(2) == "g" else 1)


# -- reading ----------------------------------------------------------------------


class _Reader:
    """Reads raw values and collects problems instead of failing on the first."""

    def __init__(self) -> None:
        self._configs = {ns: pulumi.Config(ns) for ns in {k.namespace for k in CONFIG_KEYS.values()}}
        self.problems: list[str] = []

    def problem(self, key: str, what: str, fix_value: Optional[str] = None) -> None:
        spec = CONFIG_KEYS[key]
        self.problems.append(f"{spec.full_name}: {what}. Fix: {spec.fix(fix_value)}")

    def raw(self, key: str) -> Optional[str]:
        spec = CONFIG_KEYS[key]
        cfg = self._configs[spec.namespace]
        if spec.secret:
            # Presence only; the value stays inside an Output.
            return None if cfg.get_secret(spec.name) is None else "<secret>"
        return cfg.get(spec.name)

    def secret(self, key: str) -> Optional[pulumi.Output]:
        spec = CONFIG_KEYS[key]
        output = self._configs[spec.namespace].get_secret(spec.name)
        if output is not None and secret_is_blank(spec.full_name):
            # Only whether it is empty is looked at; the value itself is never shown.
            self.problem(key, "is set but empty; set the real value (or remove it with "
                              f"`pulumi config rm {spec.full_name}` if nothing needs it)")
        return output

    def text(self, key: str) -> str:
        value = self.raw(key)
        if value is None:
            default = CONFIG_KEYS[key].default
            return "" if default is None else str(default)
        return value.strip()

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in choices:
            self.problem(key, f"must be one of {', '.join(choices)}, not {value!r}", choices[0])
        return value

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if value is None:
            return bool(CONFIG_KEYS[key].default)
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        self.problem(key, f"must be true or false, not {value!r}", "true")
        return bool(CONFIG_KEYS[key].default)

    def string_list(self, key: str) -> tuple[str, ...]:
        value = self.raw(key)
        if value is None:
            return tuple(CONFIG_KEYS[key].default)
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
            self.problem(key, f"must be a JSON list of strings, not {value!r}")
            return ()
        return tuple(parsed)

    def check(self, ok: bool, key: str, what: str, fix_value: Optional[str] = None) -> None:
        if not ok:
            self.problem(key, what, fix_value)


def _valid_ipv4(value: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)
    except ValueError:
        return False


def _valid_cidr(value: str) -> bool:
    return cidr_problem(value) is None


def cidr_problem(value: str) -> Optional[str]:
    """Why `value` is not a network in CIDR notation (None when it is one)."""
    try:
        ipaddress.ip_network(value, strict=True)
        return None
    except ValueError as exc:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return str(exc)
        address = value.split("/", 1)[0]
        return (f"it has host bits set: the network is {network}, "
                f"the single address {address}/{network.max_prefixlen}")


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        return False


def given_config_keys() -> set[str]:
    """Every config key the engine handed the program (`pulumi config` of the stack)."""
    from pulumi.runtime import config as runtime_config

    return set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())


def secret_is_blank(full_key: str) -> bool:
    from pulumi.runtime import config as runtime_config

    value = runtime_config.get_config(full_key)
    return isinstance(value, str) and not value.strip()


def unknown_key_problems(keys: set[str]) -> list[str]:
    """A problem for each key in the project's namespace (or a misspelling of it) that is not in
    CONFIG_KEYS, with the nearest known key. Values are never shown: a mistyped key may hold a secret."""
    known = {k.lower(): k for k in CONFIG_KEYS}
    problems = []
    for key in sorted(keys):
        namespace, sep, name = key.partition(":")
        if not sep or key in CONFIG_KEYS:
            continue
        if namespace != PROJECT and difflib.SequenceMatcher(None, namespace.lower(), PROJECT).ratio() < 0.75:
            continue  # another provider's or tool's setting (aws:profile, docker:host, ...)
        wanted = known.get(f"{PROJECT}:{name}".lower()) or known.get(key.lower())
        if wanted is None:
            close = difflib.get_close_matches(f"{PROJECT}:{name}".lower(), list(known), n=1, cutoff=0.6)
            wanted = known[close[0]] if close else None
        if wanted is None:
            problems.append(f"{key}: is not a setting of this program (the config reference in README.md lists "
                            f"them all). Fix: pulumi config rm {key}")
            continue
        spec = CONFIG_KEYS[wanted]
        problems.append(f"{key}: is not a setting of this program; did you mean {wanted}? "
                        f"Fix: pulumi config rm {key} && {spec.fix()}")
    return problems


def _free_label(key: str, taken: set[str]) -> str:
    """A subdomain for `key` that no other key uses: its default if free, else a numbered one."""
    default = str(CONFIG_KEYS[key].default)
    candidates = [default] + [f"{default}{n}" for n in range(2, 10)]
    return next(c for c in candidates if c not in taken and c not in SIGNAL_SUBDOMAINS)


def non_public_domain(domain: str) -> bool:
    return any(domain == suffix or domain.endswith(f".{suffix}") for suffix in NON_PUBLIC_SUFFIXES)


def non_routable_ipv4(value: str) -> bool:
    return _valid_ipv4(value) and any(ipaddress.ip_address(value) in net for net in NON_ROUTABLE_NETWORKS)


def arm_instance_type(instance_type: str) -> bool:
    return bool(_ARM_INSTANCE_RE.match(instance_type))


def valid_git_ref(ref: str) -> bool:
    """The rules of `git check-ref-format` that matter for a tag or branch name."""
    if not ref or ref.startswith(("-", "/")) or ref.endswith((".", "/", ".lock")):
        return False
    if ".." in ref or "@{" in ref or "//" in ref:
        return False
    return not any(c in ref for c in " ~^:?*[\\\t\n") and ref.isprintable()


def supported_signal_refs() -> list[str]:
    return sorted(p.stem for p in (CONFIGS_DIR / "signal").glob("v*.yaml"))


INSECURE_REGISTRATION_KEY = "commstack:signalInsecureUnverifiedRegistration"
TWILIO_KEYS = ("commstack:signalTwilioAccountSid", "commstack:signalTwilioApiKeySid",
               "commstack:signalTwilioApiKeySecret", "commstack:signalTwilioVerifyServiceSid",
               "commstack:signalTwilioAndroidAppHash")


def internet_facing_reasons(domain: str, cloudflare_dns: bool, signal_target: str) -> list[str]:
    """Why a stack's Signal half can be reached from the internet (empty: local only)."""
    reasons = []
    if cloudflare_dns:
        reasons.append("cloudflareDns is true (public DNS records)")
    if domain and not non_public_domain(domain):
        reasons.append(f"{domain!r} is a public domain")
    if signal_target == "aws":
        reasons.append("signalTarget is aws (the instance answers on a public Elastic IP)")
    return reasons


def _signal_verification(r: "_Reader", domain: str, cloudflare_dns: bool, target: str) -> dict:
    """How registration-service verifies numbers; every way of letting unverified numbers register is a problem,
    except the explicit insecure setting on a stack no one outside can reach."""
    insecure = r.boolean(INSECURE_REGISTRATION_KEY)
    values = {"twilio_account_sid": r.text("commstack:signalTwilioAccountSid"),
              "twilio_api_key_sid": r.text("commstack:signalTwilioApiKeySid"),
              "twilio_verify_service_sid": r.text("commstack:signalTwilioVerifyServiceSid"),
              "twilio_android_app_hash": r.text("commstack:signalTwilioAndroidAppHash")}
    secret = r.secret("commstack:signalTwilioApiKeySecret")
    allowed = r.string_list("commstack:signalAllowedNumbers")
    # The non-secret Twilio settings say which mode the stack meant (a stored secret alone is ignored).
    given = [key for key, value in zip(TWILIO_KEYS, (values["twilio_account_sid"], values["twilio_api_key_sid"],
                                                     None, values["twilio_verify_service_sid"],
                                                     values["twilio_android_app_hash"]))
             if value]
    if insecure:
        facing = internet_facing_reasons(domain, cloudflare_dns, target)
        r.check(not facing, INSECURE_REGISTRATION_KEY,
                "lets anyone register any phone number (registration-service's dev environment derives the code "
                f"from the number), and this stack faces the internet: {'; '.join(facing)}. Configure Twilio Verify "
                "(signalTwilio* settings) instead", "false")
        r.check(not given, INSECURE_REGISTRATION_KEY,
                f"conflicts with the Twilio settings ({', '.join(given)}): choose Twilio Verify or the insecure "
                "dev environment, not both", "false")
        r.check(not allowed, "commstack:signalAllowedNumbers",
                "is enforced only when numbers are verified (Twilio Verify); with signalInsecureUnverifiedRegistration "
                "anyone could still register a listed number", "'[]'")
    else:
        why = ("is required: the Signal half verifies phone numbers with Twilio Verify, and without a real sender "
               "registration-service could only run its dev environment, where anyone can register any number")
        for key, field_name, pattern, what in (
                ("commstack:signalTwilioAccountSid", "twilio_account_sid", _TWILIO_SID_RE["AC"], "an account SID (AC + 32 hex digits)"),
                ("commstack:signalTwilioApiKeySid", "twilio_api_key_sid", _TWILIO_SID_RE["SK"], "an API key SID (SK + 32 hex digits)"),
                ("commstack:signalTwilioVerifyServiceSid", "twilio_verify_service_sid", _TWILIO_SID_RE["VA"], "a Verify service SID (VA + 32 hex digits)"),
                ("commstack:signalTwilioAndroidAppHash", "twilio_android_app_hash", _APP_HASH_RE, "an 11-character SMS Retriever app hash")):
            value = values[field_name]
            if not value:
                r.problem(key, why)
            else:
                r.check(bool(pattern.fullmatch(value)), key, f"{value!r} is not {what}")
        r.check(secret is not None, "commstack:signalTwilioApiKeySecret", why)
        bad = [n for n in allowed if not _E164_RE.fullmatch(n)]
        r.check(not bad, "commstack:signalAllowedNumbers", f"not E.164 phone numbers (+ and 7 to 15 digits): "
                f"{', '.join(map(repr, bad))}", '\'["+15551234567"]\'')
        r.check(len(set(allowed)) == len(allowed), "commstack:signalAllowedNumbers", "lists a number twice",
                '\'["+15551234567"]\'')
    return {**values, "twilio_api_key_secret": None if insecure else secret, "allowed_numbers": tuple(allowed),
            "insecure_unverified_registration": insecure}


def load_settings(stack: Optional[str] = None) -> Settings:
    """Reads and validates the whole stack config; raises SettingsError."""
    stack = stack or pulumi.get_stack()
    # A misspelt key leaves the setting it was meant for at its default, so the other
    # checks would judge a config nobody meant: these are reported first, alone.
    unknown = unknown_key_problems(given_config_keys())
    if unknown:
        raise SettingsError(unknown)
    r = _Reader()
    warnings: list[str] = []

    # -- edge
    domain = r.text("commstack:domain").lower()
    if not domain:
        r.problem("commstack:domain", "is required (the Matrix server_name; user IDs become @user:<domain>)")
    elif _valid_ip(domain):
        r.problem("commstack:domain", f"{domain!r} is an IP address, but the Matrix server_name and the "
                                      "matrix./element. hosts need a DNS name; use a domain you control "
                                      "(or commstack.localhost to try it on this machine)")
    elif not _DOMAIN_RE.fullmatch(domain):
        r.problem("commstack:domain", f"{domain!r} is not a valid DNS name (lowercase labels joined by dots)")
    elif domain.rsplit(".", 1)[-1].isdigit():
        r.problem("commstack:domain", f"{domain!r} ends in an all-digit label, which no top-level domain is")
    elif len(domain) > MAX_HOSTNAME_LENGTH:
        r.problem("commstack:domain", f"{domain!r} is {len(domain)} characters; certificates carry it as their "
                                      f"common name, which may be at most {MAX_HOSTNAME_LENGTH}")
    domain_ok = bool(domain) and not r.problems

    docker_host = r.text("commstack:dockerHost")
    r.check(not docker_host or bool(_DOCKER_HOST_RE.fullmatch(docker_host)), "commstack:dockerHost",
            f"{docker_host!r} is not a Docker host URL (unix:///path, tcp://host:port or ssh://user@host[:port])")

    public_ip = r.text("commstack:publicIp")
    r.check(_valid_ipv4(public_ip), "commstack:publicIp", f"{public_ip!r} is not an IPv4 address")

    tls = r.choice("commstack:tls", ("self-signed", "letsencrypt"))
    acme_email = r.text("commstack:acmeEmail")
    r.check(not acme_email or bool(_EMAIL_RE.fullmatch(acme_email)), "commstack:acmeEmail",
            f"{acme_email!r} is not an e-mail address (name@example.org: a dot-separated local part, then a DNS name)")

    cloudflare_dns = r.boolean("commstack:cloudflareDns")
    cloudflare_proxy_http = r.boolean("commstack:cloudflareProxyHttp")
    scoped_token = r.boolean("commstack:cloudflareScopedDnsToken")
    cloudflare_token = r.secret("commstack:cloudflareApiToken")
    if tls == "letsencrypt":
        r.check(bool(acme_email), "commstack:acmeEmail", "is required when tls is letsencrypt")
    needs_cloudflare = [why for why, on in (("tls is letsencrypt (DNS-01)", tls == "letsencrypt"),
                                           ("cloudflareDns is true", cloudflare_dns),
                                           ("cloudflareScopedDnsToken is true", scoped_token)) if on]
    if needs_cloudflare and cloudflare_token is None:
        r.problem("commstack:cloudflareApiToken", f"is required because {' and '.join(needs_cloudflare)}")
    r.check(not scoped_token or cloudflare_dns, "commstack:cloudflareScopedDnsToken",
            "needs cloudflareDns true (the token is scoped to the zone the program looks up)", "false")
    r.check(not cloudflare_proxy_http or cloudflare_dns, "commstack:cloudflareProxyHttp",
            "needs cloudflareDns true", "false")
    if domain_ok and non_public_domain(domain):
        r.check(tls != "letsencrypt", "commstack:tls",
                f"letsencrypt cannot issue for {domain!r}, which is not a public domain "
                f"({', '.join(NON_PUBLIC_SUFFIXES)} are reserved or private)", "self-signed")
    r.check(not (cloudflare_dns and non_routable_ipv4(public_ip)), "commstack:publicIp",
            f"{public_ip!r} is a loopback, private or reserved address, which public DNS records "
            "(cloudflareDns true) must not point at; give the host's public IPv4", "203.0.113.10")

    # -- matrix
    subdomains = {}
    valid_labels = {}
    for key in ("commstack:matrixSubdomain", "commstack:elementSubdomain", "commstack:turnSubdomain",
                "commstack:rtcSubdomain"):
        label = r.text(key).lower()
        if not re.fullmatch(_DNS_LABEL, label, re.ASCII):
            r.problem(key, f"{label!r} is not a single DNS label", _free_label(key, set()))
        elif domain_ok and len(f"{label}.{domain}") > MAX_HOSTNAME_LENGTH:
            blame = key if len(f"{CONFIG_KEYS[key].default}.{domain}") <= MAX_HOSTNAME_LENGTH else "commstack:domain"
            r.problem(blame, f"{label}.{domain} is {len(label) + 1 + len(domain)} characters; a hostname may be at "
                             f"most {MAX_HOSTNAME_LENGTH} here (certificates carry it as their common name)",
                      _free_label(key, set()) if blame == key else None)
        else:
            valid_labels[key] = label
        subdomains[key] = label
    # Two hosts on one name: blame the key that left its default (the one the user changed),
    # and offer a name nothing else uses.
    by_label: dict[str, list[str]] = {}
    for key, label in valid_labels.items():
        by_label.setdefault(label, []).append(key)
    for label, keys in by_label.items():
        if len(keys) < 2:
            continue
        keeper = next((k for k in keys if CONFIG_KEYS[k].default == label), keys[0])
        others = [k for k in keys if k != keeper]
        for key in others:
            free = _free_label(key, set(valid_labels.values()))
            r.problem(key, f"{label!r} is also {keeper.split(':')[1]}'s subdomain; matrix, element, turn "
                           "and rtc subdomains must all differ", free)

    registration = r.choice("commstack:registration", ("closed", "token"))
    federation = r.boolean("commstack:federation")
    federation_port_text = r.text("commstack:federationPort")
    federation_port = int(federation_port_text) if federation_port_text in ("443", "8448") else 443
    r.check(federation_port_text in ("443", "8448"), "commstack:federationPort",
            f"must be 443 or 8448, not {federation_port_text!r}", "443")
    r.check(not (federation and federation_port not in CLOUDFLARE_HTTPS_PORTS and cloudflare_proxy_http),
            "commstack:federationPort",
            f"{federation_port} is not a port Cloudflare proxies, and cloudflareProxyHttp is true; "
            "delegate federation through 443", "443")
    # Other homeservers verify the certificate of federation requests (Matrix server-server
    # API, "TLS"), so a generated one only federates behind a proxy that presents its own.
    cloudflare_fronts_federation = cloudflare_proxy_http and federation_port in CLOUDFLARE_HTTPS_PORTS
    if federation and tls == "self-signed" and not cloudflare_fronts_federation and domain_ok:
        if non_public_domain(domain):
            warnings.append(f"commstack:federation is true but tls is self-signed: other homeservers refuse that "
                            f"certificate (and cannot reach {domain}, which is not a public name), so this stack "
                            "federates with nobody. To say so: pulumi config set commstack:federation false")
        else:
            r.problem("commstack:federation",
                      "federation cannot work with tls self-signed: other homeservers refuse a certificate the "
                      "program generated; use tls letsencrypt (pulumi config set commstack:tls letsencrypt) "
                      "or turn federation off", "false")
    turn = r.boolean("commstack:turn")
    element = r.boolean("commstack:element")
    calls = r.boolean("commstack:calls")
    # Clients behind strict NATs reach LiveKit only through coturn (LiveKit hands them its credentials).
    r.check(not calls or turn, "commstack:calls",
            "needs commstack:turn true (coturn is the TURN relay LiveKit hands clients behind strict NATs); "
            "set turn true, or calls false", "false")

    bridges = r.string_list("commstack:bridges")
    unknown = [b for b in bridges if b not in KNOWN_BRIDGES]
    r.check(not unknown, "commstack:bridges",
            f"unknown bridge(s) {', '.join(unknown)}; known: {', '.join(KNOWN_BRIDGES)}", '\'["whatsapp"]\'')
    r.check(len(set(bridges)) == len(bridges), "commstack:bridges", "lists a bridge twice", '\'["whatsapp"]\'')
    bridges = tuple(b for b in dict.fromkeys(bridges) if b in KNOWN_BRIDGES)

    telegram_api_id: Optional[int] = None
    telegram_api_hash = r.secret("commstack:telegramApiHash")
    api_id = r.text("commstack:telegramApiId")
    if api_id or "telegram" in bridges:
        if not api_id:
            r.problem("commstack:telegramApiId", "is required when the telegram bridge is on (get it at my.telegram.org)")
        elif not _POSITIVE_INT_RE.fullmatch(api_id) or int(api_id) == 0:
            r.problem("commstack:telegramApiId", f"must be a positive whole number (the api_id my.telegram.org "
                                                 f"shows), not {api_id!r}")
        elif int(api_id) > TELEGRAM_API_ID_MAX:
            r.problem("commstack:telegramApiId", f"{api_id} is too large for a Telegram api_id (a 32-bit number, "
                                                 f"at most {TELEGRAM_API_ID_MAX})")
        else:
            telegram_api_id = int(api_id)
    if "telegram" in bridges:
        r.check(telegram_api_hash is not None, "commstack:telegramApiHash",
                "is required when the telegram bridge is on (get it at my.telegram.org)")

    synapse_workers, worker_counts = _read_workers(r)
    media_retention = {key: _read_duration(r, key) for key in ("commstack:mediaRetentionLocal",
                                                              "commstack:mediaRetentionRemote")}

    backup = _read_backup(r)
    postgres = _read_postgres(r, backup)
    monitoring = _read_monitoring(r, domain)
    smtp = _read_smtp(r)
    r.check(smtp is not None or not monitoring.alert_emails, "commstack:alertEmails",
            "needs outgoing e-mail: set commstack:smtpHost (and smtpFrom) first, or send alerts to the Matrix room only",
            "'[]'")

    # -- signal
    signal_on = r.boolean("commstack:signal")
    target = r.choice("commstack:signalTarget", ("aws", "docker"))
    region = r.text("aws:region") or None
    instance_type = r.text("commstack:signalInstanceType")
    repo = r.text("commstack:signalServerRepo")
    ref = r.text("commstack:signalServerRef")
    jar = r.text("commstack:signalJarS3Uri")
    redis = r.choice("commstack:signalRedis", ("containers", "elasticache"))
    admin_cidrs = r.string_list("commstack:adminCidrs")
    if signal_on:
        for key, label in valid_labels.items():
            r.check(label not in SIGNAL_SUBDOMAINS, key,
                    f"{label!r} is a Signal hostname ({', '.join(SIGNAL_SUBDOMAINS)}) and the Signal half is on",
                    _free_label(key, set(valid_labels.values()) - {label}))
        if target == "aws":
            if region is None:
                r.problem("aws:region", "is required when signal is on and signalTarget is aws")
            else:
                r.check(bool(_REGION_RE.fullmatch(region)), "aws:region", f"{region!r} is not an AWS region name")
            r.check(bool(acme_email), "commstack:acmeEmail", "is required for the Signal TLS front (certbot)")
        r.check(not (redis == "elasticache" and target == "docker"), "commstack:signalRedis",
                "elasticache needs signalTarget aws", "containers")
        r.check(bool(_INSTANCE_TYPE_RE.fullmatch(instance_type)), "commstack:signalInstanceType",
                f"{instance_type!r} is not an EC2 instance type", "t3.large")
        # components/signal/host.py looks up an x86_64 AMI (its `architecture` filter).
        r.check(not (target == "aws" and arm_instance_type(instance_type)), "commstack:signalInstanceType",
                f"{instance_type!r} is an ARM (Graviton) type, but the Signal instance runs an x86_64 image",
                "t3.large")
        r.check(bool(_REPO_RE.fullmatch(repo)), "commstack:signalServerRepo",
                f"{repo!r} is not an https git repository URL")
        if not valid_git_ref(ref):
            r.problem("commstack:signalServerRef", f"{ref!r} is not a valid git ref")
        elif ref not in supported_signal_refs():
            r.problem("commstack:signalServerRef",
                      f"{ref!r} has no data file configs/signal/{ref}.yaml; supported: {', '.join(supported_signal_refs())}",
                      "v9.81.0")
        r.check(not jar or bool(_S3_URI_RE.fullmatch(jar)), "commstack:signalJarS3Uri", f"{jar!r} is not an s3://bucket/key URI (key of letters, digits and ! - _ . ' ( ) /)")
        bad_cidrs = {c: cidr_problem(c) for c in admin_cidrs if not _valid_cidr(c)}
        if bad_cidrs:
            fixed = [c if c not in bad_cidrs else (f"{c.split('/', 1)[0]}/32" if "host bits" in bad_cidrs[c]
                                                   and _valid_ipv4(c.split("/", 1)[0]) else "198.51.100.7/32")
                     for c in admin_cidrs]
            r.problem("commstack:adminCidrs",
                      "not CIDRs: " + "; ".join(f"{c!r} ({why})" for c, why in bad_cidrs.items()),
                      "'" + json.dumps(list(dict.fromkeys(fixed))) + "'")
        open_world = [c for c in admin_cidrs if _valid_cidr(c) and ipaddress.ip_network(c).prefixlen == 0]
        r.check(not open_world, "commstack:adminCidrs", "must not open SSH to the whole internet (0.0.0.0/0 or ::/0)",
                '\'["198.51.100.7/32"]\'')
        verification = _signal_verification(r, domain, cloudflare_dns, target)
        restored_tables = _signal_restored_tables(r, target)
    else:
        verification = {}
        restored_tables = ()

    volume_names = r.choice("commstack:volumeNames", VOLUME_NAMINGS)

    container_memory: dict[str, int] = {}
    memory_text = r.raw("commstack:containerMemory")
    if memory_text is not None:
        try:
            parsed_memory = json.loads(memory_text)
        except (ValueError, RecursionError):
            parsed_memory = None
        if not isinstance(parsed_memory, dict):
            r.problem("commstack:containerMemory", f"must be a JSON object of container name to size, not {memory_text!r}")
        else:
            known = (*known_containers(), *worker_containers(synapse_workers, worker_counts))
            unknown_containers = sorted(set(parsed_memory) - set(known))
            r.check(not unknown_containers, "commstack:containerMemory",
                    f"no container is named {', '.join(unknown_containers)}; containers: {', '.join(known)}")
            for container, size in parsed_memory.items():
                mb = memory_mb(size)
                if mb is None or mb < MIN_CONTAINER_MEMORY_MB:
                    r.problem("commstack:containerMemory",
                              f"{container}: {size!r} is not a memory size of at least {MIN_CONTAINER_MEMORY_MB}m (e.g. 512m or 4g)")
                elif container in known:
                    container_memory[container] = mb

    if r.problems:
        raise SettingsError(r.problems)
    for warning in warnings:
        pulumi.log.warn(warning)

    return Settings(
        stack=stack,
        docker_host=docker_host,
        edge=EdgeSettings(
            public_ip=public_ip,
            tls=tls,
            acme_email=acme_email,
            cloudflare_dns=cloudflare_dns,
            cloudflare_proxy_http=cloudflare_proxy_http,
            cloudflare_scoped_dns_token=scoped_token,
            cloudflare_api_token=cloudflare_token,
        ),
        matrix=MatrixSettings(
            domain=domain,
            matrix_host=f"{subdomains['commstack:matrixSubdomain']}.{domain}",
            element_host=f"{subdomains['commstack:elementSubdomain']}.{domain}",
            turn_host=f"{subdomains['commstack:turnSubdomain']}.{domain}",
            calls=calls,
            rtc_host=f"{subdomains['commstack:rtcSubdomain']}.{domain}",
            registration=registration,
            federation=federation,
            federation_port=federation_port,
            turn=turn,
            element=element,
            bridges=bridges,
            telegram_api_id=telegram_api_id,
            telegram_api_hash=telegram_api_hash if "telegram" in bridges else None,
            synapse_workers=synapse_workers,
            synapse_worker_counts=worker_counts,
            media_retention_local=media_retention["commstack:mediaRetentionLocal"],
            media_retention_remote=media_retention["commstack:mediaRetentionRemote"],
        ),
        signal=SignalSettings(
            enabled=signal_on,
            target=target,
            region=region,
            instance_type=instance_type,
            server_repo=repo,
            server_ref=ref,
            jar_s3_uri=jar,
            redis=redis,
            admin_cidrs=tuple(admin_cidrs),
            restored_tables=restored_tables,
            **verification,
        ),
        warnings=tuple(warnings),
        backup=backup,
        container_memory=container_memory,
        postgres=postgres,
        monitoring=monitoring,
        smtp=smtp,
        volume_names=volume_names,
    )


def worker_containers(preset: str, counts: tuple[tuple[str, int], ...] = ()) -> tuple[str, ...]:
    """The docker names of a worker preset's containers (its workers and their Redis)."""
    from components.matrix import workers

    if preset not in workers.PRESETS or workers.count_problems(preset, dict(counts)):
        return ()
    plan = workers.worker_plan(preset, dict(counts))
    return (*(p.name for p in plan.processes), "synapse-redis") if plan.enabled else ()


def _read_workers(r: "_Reader") -> tuple[str, tuple[tuple[str, int], ...]]:
    """commstack:synapseWorkers (a preset) and commstack:synapseWorkerCounts (per-group counts)."""
    from components.matrix import workers

    preset = r.choice("commstack:synapseWorkers", tuple(workers.PRESETS))
    key = "commstack:synapseWorkerCounts"
    text = r.raw(key)
    if text is None or preset not in workers.PRESETS:
        return preset, ()
    try:
        counts = json.loads(text)
    except (ValueError, RecursionError):
        counts = None
    scalable = workers.scalable_groups(preset)
    example = f"'{{\"{scalable[0]}\":2}}'" if scalable else "'{}'"
    if not isinstance(counts, dict):
        r.problem(key, f"must be a JSON object of worker group to number of processes, not {text!r}", example)
        return preset, ()
    problems = workers.count_problems(preset, counts)
    for problem in problems:
        r.problem(key, problem, example)
    return preset, (() if problems else tuple(sorted(counts.items())))


# Synapse durations (synapse/config/_base.py parse_duration) in days, weeks or years.
_RETENTION_RE = re.compile(r"[1-9][0-9]{0,4}[dwy]", re.ASCII)


def _read_duration(r: "_Reader", key: str) -> str:
    value = r.text(key).strip()
    r.check(not value or bool(_RETENTION_RE.fullmatch(value)), key,
            f"{value!r} is not a lifetime such as 30d, 8w or 1y (a whole number of days, weeks or years); "
            "empty keeps the media forever")
    return value if _RETENTION_RE.fullmatch(value) else ""


def _signal_restored_tables(r: "_Reader", target: str) -> tuple[str, ...]:
    """commstack:signalRestoredTables: suffixes of restored table sets (components/signal/storage.py)."""
    key = "commstack:signalRestoredTables"
    suffixes = r.string_list(key)
    if not suffixes:
        return ()
    example = CONFIG_KEYS[key].example
    r.check(target == "aws", key, "is for signalTarget aws: DynamoDB Local on the docker target has no "
            "point-in-time recovery to restore from", "'[]'")
    bad = [s for s in suffixes if not SIGNAL_TABLE_SUFFIX_RE.fullmatch(s)]
    r.check(not bad, key, f"not table suffixes (1-40 lowercase letters, digits and inner hyphens): "
            f"{', '.join(repr(s) for s in bad)}", example)
    # Dropping an earlier set would make `pulumi up` delete protected tables; repeating one would register it twice.
    r.check(len(set(suffixes)) == len(suffixes), key, "lists a suffix twice",
            "'" + json.dumps(list(dict.fromkeys(suffixes))) + "'")
    return tuple(suffixes)


# A Matrix user ID of this or another server: @localpart:server (the spec's historical user ID grammar).
_MXID_RE = re.compile(r"@[a-z0-9._=/+-]{1,255}:(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?", re.ASCII)


def _read_monitoring(r: _Reader, domain: str) -> MonitoringSettings:
    """commstack:monitoring and its alert recipients."""
    enabled = r.boolean("commstack:monitoring")
    recipients = r.string_list("commstack:alertRecipients")
    bad = [u for u in recipients if not _MXID_RE.fullmatch(u)]
    r.check(not bad, "commstack:alertRecipients",
            f"not Matrix user IDs (@localpart:server, localpart in lowercase a-z 0-9 . _ = - / +): "
            f"{', '.join(repr(u) for u in bad)}", f"'[\"@admin:{domain or 'example.org'}\"]'")
    emails = r.string_list("commstack:alertEmails")
    bad_emails = [e for e in emails if not _EMAIL_RE.match(e)]
    r.check(not bad_emails, "commstack:alertEmails",
            f"not e-mail addresses: {', '.join(repr(e) for e in bad_emails)}", "'[\"ops@example.org\"]'")
    grafana = r.boolean("commstack:grafana")
    r.check(not grafana or enabled, "commstack:grafana", "needs commstack:monitoring true (Grafana reads its "
            "Prometheus)", "false")
    return MonitoringSettings(enabled=enabled,
                              alert_recipients=tuple(dict.fromkeys(recipients or [f"@admin:{domain}"])),
                              alert_emails=tuple(dict.fromkeys(emails)), grafana=grafana)


def _read_smtp(r: _Reader) -> Optional[SmtpSettings]:
    """commstack:smtp*: None when smtpHost is empty (then every other smtp key must be too)."""
    host = r.text("commstack:smtpHost").lower()
    port_text = r.text("commstack:smtpPort")
    user = r.text("commstack:smtpUser")
    password = r.secret("commstack:smtpPassword")
    from_address = r.text("commstack:smtpFrom")
    tls = r.choice("commstack:smtpTls", SMTP_TLS_MODES)
    port = int(port_text) if _POSITIVE_INT_RE.fullmatch(port_text) else 0
    r.check(0 < port < 65536, "commstack:smtpPort", f"{port_text!r} is not a TCP port (1-65535)", "587")
    if not host:
        given = [key for key, value in (("smtpUser", user), ("smtpFrom", from_address),
                                         ("smtpPassword", password)) if value]
        r.check(not given, "commstack:smtpHost", f"is empty, so e-mail is off, but {', '.join(given)} "
                f"{'is' if len(given) == 1 else 'are'} set; name the SMTP server")
        return None
    r.check(bool(_DOMAIN_RE.fullmatch(host)) or _valid_ip(host), "commstack:smtpHost",
            f"{host!r} is not a host name or IP address")
    r.check(bool(from_address), "commstack:smtpFrom", "is required with smtpHost (the From address of every e-mail)")
    r.check(not from_address or bool(_EMAIL_RE.match(from_address)), "commstack:smtpFrom",
            f"{from_address!r} is not an e-mail address")
    r.check(not user or password is not None, "commstack:smtpPassword", "is required with smtpUser")
    r.check(bool(user) or password is None, "commstack:smtpUser", "is required with smtpPassword (the login it "
            "belongs to)")
    r.check(not (tls == "tls" and port == 587), "commstack:smtpPort", "587 is the STARTTLS port, but smtpTls is "
            "tls (TLS from the first byte, port 465); use 465, or smtpTls starttls", "465")
    return SmtpSettings(host=host, port=port, from_address=from_address, tls=tls, user=user,
                        password=password if user else None)


def _read_backup(r: _Reader) -> BackupSettings:
    """The backup settings; the retention is a JSON object of three positive counts."""
    enabled = r.boolean("commstack:backup")
    schedule = r.text("commstack:backupSchedule")
    r.check(bool(_HHMM_RE.match(schedule)), "commstack:backupSchedule",
            f"{schedule!r} is not a time of day HH:MM (24-hour, UTC)", "03:30")
    retention = json.loads(CONFIG_KEYS["commstack:backupRetention"].default)
    raw = r.raw("commstack:backupRetention")
    if raw is not None:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = None
        fix = "'{\"daily\":7,\"weekly\":4,\"monthly\":6}'"
        if (not isinstance(parsed, dict) or set(parsed) - set(retention)
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1000 for v in parsed.values())):
            r.problem("commstack:backupRetention",
                      f"must be a JSON object with daily, weekly and monthly counts (0-1000), not {raw!r}", fix)
        else:
            retention.update(parsed)
            r.check(sum(retention.values()) > 0, "commstack:backupRetention", "keeps no snapshot at all", fix)
    target = r.choice("commstack:backupTarget", BACKUP_TARGETS)
    region = r.text("aws:region") or None
    endpoint = r.text("commstack:backupS3Endpoint")
    bucket = r.text("commstack:backupS3Bucket")
    key_id, secret_key = r.secret("commstack:backupS3AccessKeyId"), r.secret("commstack:backupS3SecretAccessKey")
    if enabled and target == "aws":
        if region is None:
            r.problem("aws:region", "is required when backupTarget is aws (the region of the backup bucket)")
        else:
            r.check(bool(_REGION_RE.match(region)), "aws:region", f"{region!r} is not an AWS region name")
    if enabled and target == "s3":
        r.check(bool(_ENDPOINT_RE.match(endpoint)), "commstack:backupS3Endpoint",
                f"{endpoint!r} is not an http(s)://host[:port] URL (required when backupTarget is s3)")
        r.check(bool(_BUCKET_RE.match(bucket)), "commstack:backupS3Bucket",
                f"{bucket!r} is not an S3 bucket name (required when backupTarget is s3)")
        r.check(key_id is not None, "commstack:backupS3AccessKeyId", "is required when backupTarget is s3")
        r.check(secret_key is not None, "commstack:backupS3SecretAccessKey", "is required when backupTarget is s3")
    rest_url, rest_user = r.text("commstack:backupRestUrl"), r.text("commstack:backupRestUsername")
    rest_password, rest_ca = r.secret("commstack:backupRestPassword"), r.text("commstack:backupRestCaCertificate")
    if enabled and target == "rest":
        r.check(bool(_REST_URL_RE.fullmatch(rest_url)), "commstack:backupRestUrl",
                f"{rest_url!r} is not an https://host[:port]/path/ URL (required when backupTarget is rest; the "
                "credentials and the snapshots travel in it, so plain http is refused)",
                "https://backup.example.org:8000/commstack/")
        r.check(bool(_REST_USER_RE.fullmatch(rest_user)), "commstack:backupRestUsername",
                f"{rest_user!r} is not a rest-server user name (letters, digits, _ - . @; required when backupTarget "
                "is rest)", "commstack")
        r.check(rest_password is not None, "commstack:backupRestPassword", "is required when backupTarget is rest")
        r.check(not rest_ca or bool(_PEM_CERTIFICATE_RE.fullmatch(rest_ca)), "commstack:backupRestCaCertificate",
                "is not a PEM certificate (-----BEGIN CERTIFICATE----- ...)", "\"$(cat rest-server-ca.pem)\"")
    return BackupSettings(
        enabled=enabled, schedule=schedule, keep_daily=retention["daily"], keep_weekly=retention["weekly"],
        keep_monthly=retention["monthly"], target=target, region=region if target == "aws" else None,
        s3_endpoint=endpoint.rstrip("/"), s3_bucket=bucket,
        s3_access_key_id=key_id if target == "s3" else None,
        s3_secret_access_key=secret_key if target == "s3" else None,
        rest_url=rest_url if target == "rest" else "", rest_username=rest_user if target == "rest" else "",
        rest_password=rest_password if target == "rest" else None,
        rest_ca_certificate=rest_ca.strip() + "\n" if target == "rest" and rest_ca else "")


# -- Postgres major upgrades -------------------------------------------------------


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


def postgres_image_major(reference: str) -> Optional[int]:
    """15 for postgres:15.14-bookworm; None for a tag that names no major."""
    matched = re.match(r"^(\d+)(?:[.-]|$)", reference.rpartition(":")[2])
    return int(matched.group(1)) if matched else None


def postgres_upgrade_steps(old: int, new: int) -> str:
    return (f"take a backup (python -m commstack backup), then `pulumi config set commstack:postgresUpgradeFrom {old}` "
            f"and `pulumi up`: a one-shot job backs up again, dumps every database from Postgres {old} and restores "
            f"them into a new volume for Postgres {new}, keeping the old one; then `pulumi config set "
            f"commstack:postgresMajor {new}` and `pulumi up` to switch (README, Postgres major upgrades)")


def _read_postgres(r: _Reader, backup: BackupSettings) -> PostgresSettings:
    """The refusal of a Postgres major change that no upgrade covers, before any resource exists."""
    from components.common import images

    pinned = images()
    reference = pinned.get("postgres", "")
    image_major = postgres_image_major(reference) or LEGACY_POSTGRES_MAJOR

    def major(key: str, raw: Optional[str]) -> Optional[int]:
        if raw is None or not raw.strip():
            return None
        if not re.fullmatch(r"[0-9]{2}", raw.strip()) or not 9 < int(raw) < 100:
            r.problem(key, f"must be a Postgres major version number such as {image_major}, not {raw!r}")
            return None
        return int(raw)

    data_major = major("commstack:postgresMajor", r.raw("commstack:postgresMajor")) or LEGACY_POSTGRES_MAJOR
    upgrade_from = major("commstack:postgresUpgradeFrom", r.raw("commstack:postgresUpgradeFrom"))
    settings = PostgresSettings(data_major=data_major, image_major=image_major, upgrade_from=upgrade_from)
    if upgrade_from is None:
        if data_major < image_major:
            r.problem("commstack:postgresUpgradeFrom",
                      f"configs/images.yaml runs {reference} (Postgres {image_major}) but this stack's data is on "
                      f"Postgres {data_major} (commstack:postgresMajor), and a new major cannot open an old major's "
                      f"data directory. Nothing was changed. To upgrade: {postgres_upgrade_steps(data_major, image_major)}. "
                      f"(A new stack with no data yet: pulumi config set commstack:postgresMajor {image_major})",
                      str(data_major))
        elif data_major > image_major:
            r.problem("commstack:postgresMajor",
                      f"this stack's data is on Postgres {data_major}, but configs/images.yaml runs {reference} "
                      f"(Postgres {image_major}), an older major that cannot read it; pin postgres back to a "
                      f"{data_major}.x tag in configs/images.yaml (or, after a rollback to the kept volume of "
                      f"{image_major}, record it)", str(image_major))
        return settings
    if upgrade_from >= image_major:
        r.problem("commstack:postgresUpgradeFrom",
                  f"upgrades go to a newer major: {upgrade_from} is not older than configs/images.yaml's "
                  f"Postgres {image_major} ({reference}); remove it with `pulumi config rm "
                  f"commstack:postgresUpgradeFrom`", str(data_major))
    elif f"postgres-{upgrade_from}" not in pinned:
        known = sorted(int(k.split("-", 1)[1]) for k in pinned if re.fullmatch(r"postgres-\d+", k))
        r.problem("commstack:postgresUpgradeFrom",
                  f"configs/images.yaml pins no image for Postgres {upgrade_from} (a postgres-{upgrade_from} entry), "
                  f"which runs the old server during the upgrade; majors it can upgrade from: "
                  f"{', '.join(map(str, known)) or 'none'}", str(data_major))
    elif data_major not in (upgrade_from, image_major):
        r.problem("commstack:postgresMajor",
                  f"during the upgrade from Postgres {upgrade_from} to {image_major} it is {upgrade_from} (the job "
                  f"has not switched yet) or {image_major} (switched), not {data_major}", str(upgrade_from))
    elif backup is None or not backup.enabled:
        r.problem("commstack:backup", f"the upgrade from Postgres {upgrade_from} takes a backup first; turn backups "
                                      "on for it", "true")
    return settings
