"""Monitoring of the Matrix half: metrics on private networks, Prometheus with tested alert rules, and
Alertmanager delivering firing and resolved alerts into a Matrix room on the stack itself.

What runs (each pinned in configs/images.yaml):
- **Prometheus** scrapes every program that exposes metrics, over one small internal network per
  target (`metrics-<container>`, components/matrix/network.py): Synapse's metrics listener, Traefik's
  metrics entry point, LiveKit's and coturn's exporters, node_exporter (the host's disks, and the
  backup job's status from its textfile), postgres_exporter and, through blackbox_exporter, the
  bridges' and (Docker target) Signal-Server's health checks. No port of any of them is published.
- **The alert rules** (`render_alert_rules`), each with a one-line runbook hint. Which metrics matter
  comes from Synapse's own monitoring material (element-hq/synapse contrib/grafana/synapse.json:
  the "Outgoing federation transaction rate" and "Event processing lag" panels; contrib/prometheus has
  recording rules only, no alerts); the rules are ours. tests/integration/test_alert_rules.py runs
  `promtool check rules` and a `promtool test rules` case for every rule.
- **Alertmanager** groups alerts (by alert name and job, so a flapping target is one message, repeated
  at most every REPEAT_INTERVAL) and posts firing and resolved notifications to the alert relay, and
  also by e-mail when SMTP is set and `alertEmails` lists recipients.
- **The alert relay** (configs/monitoring/matrix_relay.py, standard library only, in the pinned python
  image): an application service of Synapse (its own as_token, exclusive to `@alertbot` and
  `#alerts`), so it needs no password and no admin rights. It creates the room `#alerts:<domain>`,
  invites the recipients, and posts each notification as an m.notice. Why our own relay: the
  receivers the reference deployments use cannot be had here. metio/matrix-alertmanager-receiver (what
  matrix-docker-ansible-deploy installs) tags releases without the `v` Go needs (2025.9.17) and the Go
  module proxy refuses the module (403, also under its old path github.com/sebhoss/…), and so does
  silkeh/alertmanager_matrix; jaywink's matrix-alertmanager is not on npm. A receiver we cannot build
  we cannot test, and an untested alert path is worse than a small one proven end to end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import pulumi
import pulumi_docker as docker

from components.common import (ConfigFile, ContainerSpec, Hardening, generated_secret, service_container,
                               stateful_child, to_yaml)
from components.settings import CONFIGS_DIR, MonitoringSettings

PROMETHEUS = "prometheus"
ALERTMANAGER = "alertmanager"
RELAY = "alert-relay"
NODE_EXPORTER = "node-exporter"
POSTGRES_EXPORTER = "postgres-exporter"
BLACKBOX_EXPORTER = "blackbox-exporter"
REDIS_EXPORTER = "redis-exporter"
GRAFANA = "grafana"
GRAFANA_DASHBOARDS_JOB = "grafana-dashboards"

PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
RELAY_PORT = 8080
NODE_EXPORTER_PORT = 9100
POSTGRES_EXPORTER_PORT = 9187
BLACKBOX_PORT = 9115
REDIS_EXPORTER_PORT = 9121
REDIS_EXPORTER_UID = "59000"  # the image's user
REDIS_PASSWORD_FILE = "/run/secrets/redis-passwords.json"
GRAFANA_PORT = 3000
GRAFANA_PATH = "/grafana"  # served at https://<matrix host>/grafana/ through Traefik
GRAFANA_UID = "472"  # the image's grafana user
GRAFANA_DATA = "/var/lib/grafana"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
GRAFANA_DASHBOARDS_DIR = "/var/lib/grafana-dashboards"
GRAFANA_ADMIN_PASSWORD_PATH = "/run/secrets/grafana-admin-password"
GRAFANA_DATASOURCE_UID = "commstack-prometheus"
DASHBOARD_SCRIPT = CONFIGS_DIR / "monitoring" / "grafana_dashboards.py"
# Synapse's official dashboard, at the tag of the Synapse image the stack runs.
SYNAPSE_DASHBOARD_URL = "https://raw.githubusercontent.com/element-hq/synapse/{tag}/contrib/grafana/synapse.json"

PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
RULES_PATH = "/etc/prometheus/rules/commstack.yml"
PROMETHEUS_DATA = "/prometheus"
ALERTMANAGER_CONFIG = "/etc/alertmanager/alertmanager.yml"
ALERTMANAGER_DATA = "/alertmanager"
RELAY_TOKEN_PATH = "/etc/alertmanager/relay-token"  # Alertmanager's bearer token for the relay
SMTP_PASSWORD_PATH = "/etc/alertmanager/smtp-password"
BLACKBOX_CONFIG = "/etc/blackbox_exporter/config.yml"
RELAY_DIR = "/commstack"
RELAY_SCRIPT = f"{RELAY_DIR}/matrix_relay.py"
RELAY_CONFIG = f"{RELAY_DIR}/relay.json"
RELAY_AS_TOKEN_PATH = f"{RELAY_DIR}/as-token"
RELAY_WEBHOOK_TOKEN_PATH = f"{RELAY_DIR}/webhook-token"
RELAY_SOURCE = CONFIGS_DIR / "monitoring" / "matrix_relay.py"
RELAY_REGISTRATION_PATH = "/data/appservices/alert-relay.yaml"
TEXTFILE_DIR = "/textfile"  # node_exporter's textfile collector; the backup job writes backup.prom there
HOST_ROOT = "/host"

# A small host: two weeks of history, and never more than 2 GB of it.
RETENTION_TIME = "15d"
RETENTION_SIZE = "2GB"
SCRAPE_INTERVAL = "30s"
EVALUATION_INTERVAL = "30s"
# Alertmanager: wait this long for more alerts of a new group, then send; at most one message per
# group per GROUP_INTERVAL while it changes; the same still-firing group again only after REPEAT_INTERVAL.
GROUP_WAIT = "30s"
GROUP_INTERVAL = "5m"
REPEAT_INTERVAL = "12h"

BOT_LOCALPART = "alertbot"
ROOM_ALIAS_LOCALPART = "alerts"

# The daily backup plus time for it to run: the newest snapshot is never older than this on a
# working stack (configs/backup/schedule.sh runs one every 24 hours).
BACKUP_MAX_AGE_HOURS = 30
CERTIFICATE_MIN_DAYS = 14
DISK_FULL_RATIO = 0.85
POSTGRES_CONNECTIONS_RATIO = 0.8
FEDERATION_FAILURE_RATIO = 0.5
EVENT_PROCESSING_MAX_BEHIND = 1000  # stream positions (events) a processor may trail the persisted position

# Filesystems that are not disks: their fullness says nothing about the host's storage.
PSEUDO_FILESYSTEMS = "tmpfs|ramfs|overlay|squashfs|nsfs|devtmpfs|autofs|fuse.lxcfs"

# Each program's own hardening: these run as unprivileged users of their images, with a read-only root
# wherever no file is uploaded.
PROMETHEUS_HARDENING = Hardening(memory_mb=768)
ALERTMANAGER_HARDENING = Hardening(memory_mb=128)
RELAY_HARDENING = Hardening(memory_mb=64)
EXPORTER_HARDENING = Hardening(memory_mb=64)
# nobody (65534), the images' user, reads the host's root through a read-only bind mount.
NODE_EXPORTER_HARDENING = Hardening(memory_mb=64)


@dataclass(frozen=True)
class ScrapeTarget:
    """A program Prometheus scrapes: its job name, container and port on its `metrics-<container>` network."""

    job: str
    container: str
    port: int
    path: str = "/metrics"

    @property
    def address(self) -> str:
        return f"{self.container}:{self.port}"


@dataclass(frozen=True)
class Probe:
    """An HTTP health check blackbox_exporter runs for Prometheus (job `job`, 2xx is healthy)."""

    job: str
    container: str
    url: str


def render_prometheus_config(*, targets: Sequence[ScrapeTarget], probes: Sequence[Probe] = (),
                             alertmanager: str = f"{ALERTMANAGER}:{ALERTMANAGER_PORT}",
                             blackbox: str = f"{BLACKBOX_EXPORTER}:{BLACKBOX_PORT}",
                             scrape_interval: str = SCRAPE_INTERVAL,
                             evaluation_interval: str = EVALUATION_INTERVAL) -> dict:
    """prometheus.yml: one job per program (Synapse's processes are all targets of `synapse`), the probes
    through blackbox_exporter, our rule file."""
    by_job: dict[str, list[ScrapeTarget]] = {}
    for target in targets:
        by_job.setdefault(target.job, []).append(target)
    if set(by_job) & {p.job for p in probes}:
        raise ValueError(f"a probe job has a scrape target's name: {sorted(set(by_job) & {p.job for p in probes})}")
    if any(len({t.path for t in group}) != 1 for group in by_job.values()):
        raise ValueError("the targets of one job must share their metrics path")
    scrape_configs: list[dict] = [
        {"job_name": job, "metrics_path": group[0].path, "static_configs": [{"targets": [t.address for t in group]}]}
        for job, group in by_job.items()]
    for job in sorted({p.job for p in probes}):
        scrape_configs.append({
            "job_name": job,
            "metrics_path": "/probe",
            "params": {"module": ["http_2xx"]},
            "static_configs": [{"targets": [p.url], "labels": {"container": p.container}}
                               for p in probes if p.job == job],
            # blackbox_exporter's documented pattern: the URL becomes the `target` parameter and the
            # instance label, and the scrape goes to the exporter.
            "relabel_configs": [
                {"source_labels": ["__address__"], "target_label": "__param_target"},
                {"source_labels": ["__param_target"], "target_label": "instance"},
                {"target_label": "__address__", "replacement": blackbox},
            ],
        })
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval,
                   "scrape_timeout": "10s"},
        "rule_files": [RULES_PATH],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": scrape_configs,
    }


def _rule(alert: str, expr: str, for_: str, severity: str, summary: str, runbook: str) -> dict:
    rule = {"alert": alert, "expr": expr}
    if for_ != "0m":
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "runbook": runbook}
    return rule


def render_alert_rules(*, jobs: Sequence[str], probe_jobs: Sequence[str] = (), backup: bool = True,
                       backup_max_age_hours: int = BACKUP_MAX_AGE_HOURS) -> dict:
    """The alert rules, for the jobs this stack scrapes. Each has a one-line runbook hint."""
    own_alerts = {"livekit": "LiveKitDown", "turn": "TurnDown"}
    rules = [_rule(
        "TargetDown", f'up{{job!~"{"|".join(sorted(own_alerts))}"}} == 0', "5m", "critical",
        "Prometheus cannot scrape {{ $labels.job }} ({{ $labels.instance }})",
        "Is the container running? `docker ps -a --filter name={{ $labels.job }}`, then `docker logs --tail 100 <it>`.")]
    # A program that is down, with its own alert: (present in, job, alert, expr, for, summary, runbook).
    down = [
        (jobs, "livekit", "LiveKitDown", 'up{job="livekit"} == 0', "2m",
         "LiveKit is down: MatrixRTC calls (Element X, Element Web group calls) cannot start",
         "`docker logs --tail 100 livekit`; then `./scripts/commstack doctor --stack <stack>` checks signalling and media."),
        (jobs, "turn", "TurnDown", 'up{job="turn"} == 0', "2m",
         "coturn is down: legacy calls and relayed call media fail",
         "`docker logs --tail 100 turn`; check that 3478, 5349 and 49160-49192/udp are still open on the host."),
        (probe_jobs, "bridges", "BridgeDown", 'probe_success{job="bridges"} == 0', "5m",
         "The {{ $labels.container }} bridge does not answer its health check",
         "`docker logs --tail 100 {{ $labels.container }}`; a bridge that lost its login says so to its bot's room."),
        (probe_jobs, "signal", "SignalHealthCheckFailing", 'probe_success{job="signal"} == 0', "5m",
         "Signal-Server's health check fails: Signal clients cannot connect",
         "`docker logs --tail 100 signal-local-server`; its Redis cluster and DynamoDB Local must be up too."),
    ]
    rules += [_rule(alert, expr, for_, "critical", summary, runbook)
              for present, job, alert, expr, for_, summary, runbook in down if job in present]
    if backup:
        hours = int(backup_max_age_hours)
        rules += [
            _rule("BackupTooOld", f"time() - commstack_backup_last_snapshot_timestamp_seconds > {hours} * 3600",
                  "15m", "critical",
                  f"The newest backup snapshot is older than {hours} hours (the daily schedule allows 24)",
                  "`docker logs backup` says why the nightly backup failed; take one now: "
                  "`./scripts/commstack backup` (with --docker-host for a remote host)."),
            _rule("BackupStatusMissing", "absent(commstack_backup_last_snapshot_timestamp_seconds)", "1h", "warning",
                  "No backup status: the backup job has not reported since it started",
                  "Is the `backup` container running (`docker ps -a --filter name=backup`)? It writes its status at start "
                  "and after every backup."),
            _rule("BackupDrillFailed", "commstack_backup_last_drill_success == 0", "0m", "critical",
                  "The last restore drill failed: the newest backup may not restore",
                  "`docker logs backup` shows what differed; take a backup and drill it by hand: "
                  "`./scripts/commstack backup --drill`."),
        ]
    if "traefik" in jobs:
        rules.append(_rule(
            "CertificateExpiringSoon",
            f"min by (cn) (traefik_tls_certs_not_after) - time() < {CERTIFICATE_MIN_DAYS} * 86400", "1h", "warning",
            f"The certificate for {{{{ $labels.cn }}}} expires within {CERTIFICATE_MIN_DAYS} days",
            "Let's Encrypt: `docker logs proxy | grep -i acme` (DNS-01 token, rate limits); self-signed: `pulumi up` "
            "renews it."))
    if "node" in jobs:
        rules.append(_rule(
            "DiskAlmostFull",
            f'1 - node_filesystem_avail_bytes{{fstype!~"{PSEUDO_FILESYSTEMS}"}} '
            f'/ node_filesystem_size_bytes{{fstype!~"{PSEUDO_FILESYSTEMS}"}} > {DISK_FULL_RATIO}', "15m", "warning",
            f"{{{{ $labels.mountpoint }}}} is more than {int(DISK_FULL_RATIO * 100)}% full",
            "`docker system df -v` shows the volumes; Synapse's media and Postgres usually grow: set media retention "
            "or grow the disk."))
    if "redis" in jobs:
        rules.append(_rule(
            "RedisDown", "redis_up == 0", "2m", "critical",
            "Synapse's Redis does not answer: its workers stop replicating",
            "`docker logs --tail 100 synapse-redis`; the workers reconnect by themselves once it is back."))
    if "postgres" in jobs:
        rules.append(_rule(
            "PostgresConnectionsNearLimit",
            "sum by (instance) (pg_stat_activity_count) / on (instance) max by (instance) "
            f"(pg_settings_max_connections) > {POSTGRES_CONNECTIONS_RATIO}", "10m", "warning",
            f"Postgres uses more than {int(POSTGRES_CONNECTIONS_RATIO * 100)}% of its max_connections",
            "`docker exec postgres psql -U postgres -c 'select datname, usename, count(*) from pg_stat_activity "
            "group by 1, 2'` shows who holds them."))
    if "synapse" in jobs:
        attempts = 'sum(rate(synapse_util_metrics_block_count_total{block_name="_send_new_transaction"}[15m]))'
        sent = "sum(rate(synapse_federation_client_sent_transactions_total[15m]))"
        rules += [
            _rule("SynapseFederationSendingFailing",
                  f"({attempts} - {sent}) / {attempts} > {FEDERATION_FAILURE_RATIO}", "30m", "warning",
                  f"Over {int(FEDERATION_FAILURE_RATIO * 100)}% of outgoing federation transactions fail",
                  "Can the host reach other servers on 443/8448 (DNS, egress firewall)? `docker logs synapse | grep "
                  "-i 'federation'` names the destinations."),
            _rule("SynapseEventProcessingLagging",
                  "max(synapse_event_persisted_position) - on () group_right () "
                  f"synapse_event_processing_positions > {EVENT_PROCESSING_MAX_BEHIND}", "15m", "warning",
                  "Synapse's {{ $labels.name }} is more than "
                  f"{EVENT_PROCESSING_MAX_BEHIND} events behind the persisted events",
                  "Synapse is overloaded or stuck: `docker logs synapse`; CPU and Postgres load; consider workers."),
        ]
    return {"groups": [{"name": "commstack", "rules": rules}]}


def render_alertmanager_config(*, relay_url: str, relay_token_file: str = RELAY_TOKEN_PATH,
                               smtp: Optional[Any] = None, emails: Sequence[str] = (),
                               smtp_password_file: str = SMTP_PASSWORD_PATH,
                               group_wait: str = GROUP_WAIT, group_interval: str = GROUP_INTERVAL,
                               repeat_interval: str = REPEAT_INTERVAL) -> dict:
    """alertmanager.yml: one route, grouped by alert and job, into the Matrix relay (and e-mail)."""
    receiver: dict[str, Any] = {
        "name": "commstack",
        "webhook_configs": [{
            "url": relay_url,
            "send_resolved": True,
            "http_config": {"authorization": {"type": "Bearer", "credentials_file": relay_token_file}},
        }],
    }
    config: dict[str, Any] = {}
    if smtp is not None and emails:
        config["global"] = smtp_global(smtp, smtp_password_file)
        receiver["email_configs"] = [{"to": address, "send_resolved": True} for address in emails]
    config.update({
        "route": {"receiver": "commstack", "group_by": ["alertname", "job"], "group_wait": group_wait,
                  "group_interval": group_interval, "repeat_interval": repeat_interval},
        # A target that is down also fails its own alert's probe: one message, not two.
        "inhibit_rules": [{"source_matchers": ['alertname=~"LiveKitDown|TurnDown"'],
                           "target_matchers": ['alertname="TargetDown"'], "equal": ["job"]}],
        "receivers": [receiver],
    })
    return config


def smtp_global(smtp: Any, password_file: str) -> dict:
    """Alertmanager's global SMTP settings (config/config.go GlobalConfig) from SmtpSettings."""
    settings: dict[str, Any] = {
        "smtp_smarthost": f"{smtp.host}:{smtp.port}",
        "smtp_from": smtp.from_address,
        # STARTTLS required, or implicit TLS from the first byte (smtp_force_implicit_tls).
        "smtp_require_tls": smtp.tls == "starttls",
        "smtp_force_implicit_tls": smtp.tls == "tls",
    }
    if smtp.user:
        settings["smtp_auth_username"] = smtp.user
        settings["smtp_auth_password_file"] = password_file
    return settings


def render_relay_registration(*, server_name: str, as_token: str, hs_token: str) -> dict:
    """The relay's appservice registration: no URL (Synapse pushes it nothing), its bot and room alias only."""
    escaped = server_name.replace(".", "\\.")
    return {
        "id": "commstack-alert-relay",
        "url": None,
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": BOT_LOCALPART,
        "rate_limited": False,
        "namespaces": {
            "users": [{"regex": f"^@{BOT_LOCALPART}:{escaped}$", "exclusive": True}],
            "aliases": [{"regex": f"^#{ROOM_ALIAS_LOCALPART}:{escaped}$", "exclusive": True}],
            "rooms": [],
        },
    }


def render_relay_config(*, server_name: str, homeserver_url: str, recipients: Sequence[str],
                        stack: str, listen_port: int = RELAY_PORT) -> dict:
    """The relay's own settings (configs/monitoring/matrix_relay.py reads them)."""
    return {
        "homeserver": homeserver_url,
        "server_name": server_name,
        "bot_localpart": BOT_LOCALPART,
        "room_alias_localpart": ROOM_ALIAS_LOCALPART,
        "room_name": f"commstack alerts ({stack})",
        "recipients": list(recipients),
        "listen": {"host": "0.0.0.0", "port": listen_port},
        "as_token_file": RELAY_AS_TOKEN_PATH,
        "webhook_token_file": RELAY_WEBHOOK_TOKEN_PATH,
    }


def render_blackbox_config() -> dict:
    """blackbox_exporter's one module: an HTTP GET that must answer 2xx."""
    return {"modules": {"http_2xx": {"prober": "http", "timeout": "5s",
                                     "http": {"preferred_ip_protocol": "ip4", "valid_status_codes": []}}}}


def synapse_dashboard_url(synapse_image: str) -> str:
    """The pinned upstream source of Synapse's dashboard: the Synapse image's tag (v1.163.2)."""
    return SYNAPSE_DASHBOARD_URL.format(tag=synapse_image.rpartition(":")[2])


def render_grafana_provisioning() -> dict[str, dict]:
    """Grafana's provisioning files: the stack's Prometheus as data source, our dashboard directory."""
    return {
        f"{GRAFANA_PROVISIONING}/datasources/commstack.yaml": {"apiVersion": 1, "datasources": [{
            "name": "Prometheus", "uid": GRAFANA_DATASOURCE_UID, "type": "prometheus", "access": "proxy",
            "url": f"http://{PROMETHEUS}:{PROMETHEUS_PORT}", "isDefault": True, "editable": False}]},
        f"{GRAFANA_PROVISIONING}/dashboards/commstack.yaml": {"apiVersion": 1, "providers": [{
            "name": "commstack", "type": "file", "disableDeletion": True, "allowUiUpdates": False,
            "options": {"path": GRAFANA_DASHBOARDS_DIR}}]},
    }


def grafana_environment(root_url: str) -> dict[str, str]:
    """Grafana's settings (GF_<SECTION>_<KEY>): behind Traefik under /grafana (prefix stripped), no sign-up,
    no anonymous access, its own /metrics closed (it would be public through the route), no phoning home."""
    return {
        "GF_SERVER_ROOT_URL": root_url,
        "GF_SERVER_SERVE_FROM_SUB_PATH": "false",
        "GF_SECURITY_ADMIN_USER": "admin",
        "GF_SECURITY_ADMIN_PASSWORD__FILE": GRAFANA_ADMIN_PASSWORD_PATH,
        "GF_SECURITY_COOKIE_SECURE": "true",
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_AUTH_ANONYMOUS_ENABLED": "false",
        "GF_METRICS_ENABLED": "false",
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
        "GF_PLUGINS_PREINSTALL_DISABLED": "true",
    }


def prometheus_command(config: str = PROMETHEUS_CONFIG, data: str = PROMETHEUS_DATA,
                       listen: str = f"0.0.0.0:{PROMETHEUS_PORT}") -> list[str]:
    return [f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--storage.tsdb.retention.time={RETENTION_TIME}", f"--storage.tsdb.retention.size={RETENTION_SIZE}",
            f"--web.listen-address={listen}"]


def alertmanager_command(config: str = ALERTMANAGER_CONFIG, data: str = ALERTMANAGER_DATA,
                         listen: str = f"0.0.0.0:{ALERTMANAGER_PORT}") -> list[str]:
    # --cluster.listen-address= turns clustering off: no gossip port (9094) listening anywhere.
    return [f"--config.file={config}", f"--storage.path={data}", f"--web.listen-address={listen}",
            "--cluster.listen-address="]


def node_exporter_command(rootfs: str = HOST_ROOT, textfile: str = TEXTFILE_DIR,
                          listen: str = f"0.0.0.0:{NODE_EXPORTER_PORT}") -> list[str]:
    return [f"--path.rootfs={rootfs}", f"--collector.textfile.directory={textfile}",
            f"--web.listen-address={listen}"]


@dataclass
class MonitoringArgs:
    settings: MonitoringSettings
    stack: str
    server_name: str
    alerting_network: pulumi.Input[str]  # Prometheus, Alertmanager and the relay
    appservice_network: pulumi.Input[str]  # the relay reaches Synapse there, as the bridges do
    # container -> its metrics-<container> network (Prometheus, or blackbox_exporter for probes, joins it)
    metrics_networks: dict[str, pulumi.Input[str]]
    targets: Sequence[ScrapeTarget]
    probes: Sequence[Probe] = ()
    backup: bool = False
    textfile_volume: Optional[pulumi.Input[str]] = None  # the backup job's status for node_exporter
    # postgres_exporter's login: its role (pg_monitor) and password (secret), and Postgres's host:port.
    postgres_user: Optional[str] = None
    postgres_password: Optional[pulumi.Output[str]] = None
    postgres_address: str = "postgres:5432"
    # Synapse's Redis (workers on): its redis:// address, its password (secret) and the network to reach it.
    redis_address: Optional[str] = None
    redis_password: Optional[pulumi.Output[str]] = None
    redis_network: Optional[pulumi.Input[str]] = None
    database_network: Optional[pulumi.Input[str]] = None  # postgres_exporter's way to Postgres
    egress_network: Optional[pulumi.Input[str]] = None  # Alertmanager's way to an SMTP server
    smtp: Optional[Any] = None  # SmtpSettings, when e-mail is set
    homeserver_url: str = "http://synapse:8008"
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)
    # Grafana (commstack:grafana): its network with the proxy, the public URL it is served at, egress for the
    # dashboard job.
    grafana_web_network: Optional[pulumi.Input[str]] = None
    grafana_root_url: str = ""


class Monitoring(pulumi.ComponentResource):
    relay_registration_yaml: pulumi.Output[str]  # secret; Synapse loads it like a bridge's
    relay_registration_path: str = RELAY_REGISTRATION_PATH
    room_alias: str

    def __init__(self, name: str, args: MonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:Monitoring", name, None, opts)
        s = args.settings
        metrics_net = args.metrics_networks
        self.room_alias = f"#{ROOM_ALIAS_LOCALPART}:{args.server_name}"

        # -- the relay, an appservice of Synapse
        as_token = generated_secret(f"{name}-relay-as-token", self, length=64)
        hs_token = generated_secret(f"{name}-relay-hs-token", self, length=64)
        webhook_token = generated_secret(f"{name}-relay-webhook-token", self)
        self.relay_registration_yaml = pulumi.Output.secret(pulumi.Output.all(as_token, hs_token).apply(
            lambda t: to_yaml(render_relay_registration(server_name=args.server_name, as_token=t[0], hs_token=t[1]))))
        relay_config = render_relay_config(server_name=args.server_name, homeserver_url=args.homeserver_url,
                                           recipients=s.alert_recipients, stack=args.stack)
        self.relay = service_container(RELAY, ContainerSpec(
            image_key="python", network=args.alerting_network, aliases=[RELAY],
            extra_networks=[(args.appservice_network, [RELAY])],
            files=[ConfigFile(RELAY_SCRIPT, RELAY_SOURCE.read_text()),
                   ConfigFile(RELAY_CONFIG, json.dumps(relay_config, indent=2)),
                   # The image runs as root; nobody else in the container reads them.
                   ConfigFile(RELAY_AS_TOKEN_PATH, as_token, permissions="0400", owner="0"),
                   ConfigFile(RELAY_WEBHOOK_TOKEN_PATH, webhook_token, permissions="0400", owner="0")],
            command=["python3", "-u", RELAY_SCRIPT, RELAY_CONFIG],
            healthcheck=["CMD", "python3", "-c", "import urllib.request; "
                         f"urllib.request.urlopen('http://127.0.0.1:{RELAY_PORT}/health', timeout=4)"],
            hardening=RELAY_HARDENING,
        ), parent=self, resource_name=f"{name}-relay", depends_on=args.depends_on)

        # -- Alertmanager
        email = args.smtp is not None and bool(s.alert_emails)
        am_config = render_alertmanager_config(relay_url=f"http://{RELAY}:{RELAY_PORT}/alerts",
                                               smtp=args.smtp if email else None, emails=s.alert_emails)
        am_files = [ConfigFile(ALERTMANAGER_CONFIG, to_yaml(am_config)),
                    # The image runs as nobody (65534).
                    ConfigFile(RELAY_TOKEN_PATH, webhook_token, permissions="0400", owner="65534")]
        if email and args.smtp.user:
            am_files.append(ConfigFile(SMTP_PASSWORD_PATH, pulumi.Output.secret(args.smtp.password),
                                       permissions="0400", owner="65534"))
        # Silences live here: losing them would re-page what someone deliberately silenced.
        am_data = docker.Volume(f"{name}-alertmanager-data", name=f"{ALERTMANAGER}-data", opts=stateful_child(self))
        self.alertmanager = service_container(ALERTMANAGER, ContainerSpec(
            image_key="alertmanager", network=args.alerting_network, aliases=[ALERTMANAGER],
            extra_networks=[(args.egress_network, [])] if email and args.egress_network is not None else [],
            files=am_files, command=alertmanager_command(),
            volumes=[docker.ContainerVolumeArgs(volume_name=am_data.name, container_path=ALERTMANAGER_DATA)],
            healthcheck=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{ALERTMANAGER_PORT}/-/healthy"],
            hardening=ALERTMANAGER_HARDENING,
        ), parent=self, resource_name=f"{name}-alertmanager")

        # -- exporters
        if NODE_EXPORTER in metrics_net:
            volumes = [docker.ContainerVolumeArgs(host_path="/", container_path=HOST_ROOT, read_only=True)]
            if args.textfile_volume is not None:
                volumes.append(docker.ContainerVolumeArgs(volume_name=args.textfile_volume,
                                                          container_path=TEXTFILE_DIR, read_only=True))
            service_container(NODE_EXPORTER, ContainerSpec(
                image_key="node-exporter", network=metrics_net[NODE_EXPORTER], aliases=[NODE_EXPORTER],
                command=node_exporter_command(), volumes=volumes, hardening=NODE_EXPORTER_HARDENING,
                healthcheck=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{NODE_EXPORTER_PORT}/metrics"],
            ), parent=self, resource_name=f"{name}-node-exporter")
        if POSTGRES_EXPORTER in metrics_net and args.postgres_password is not None:
            password_file = "/run/secrets/postgres-exporter-password"
            service_container(POSTGRES_EXPORTER, ContainerSpec(
                image_key="postgres-exporter", network=metrics_net[POSTGRES_EXPORTER], aliases=[POSTGRES_EXPORTER],
                extra_networks=[(args.database_network, [])] if args.database_network is not None else [],
                # The password reaches it as a file (DATA_SOURCE_PASS_FILE), never the environment; the
                # image runs as nobody.
                files=[ConfigFile(password_file, pulumi.Output.secret(args.postgres_password),
                                  permissions="0400", owner="65534")],
                envs={"DATA_SOURCE_URI": f"{args.postgres_address}/postgres?sslmode=disable",
                      "DATA_SOURCE_USER": args.postgres_user or "", "DATA_SOURCE_PASS_FILE": password_file},
                command=[f"--web.listen-address=:{POSTGRES_EXPORTER_PORT}"],
                healthcheck=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{POSTGRES_EXPORTER_PORT}/metrics"],
                hardening=EXPORTER_HARDENING,
            ), parent=self, resource_name=f"{name}-postgres-exporter")
        if REDIS_EXPORTER in metrics_net and args.redis_password is not None:
            # redis_exporter's password file: {redis address: password} (exporter/pwd_file.go), never the environment.
            passwords = pulumi.Output.secret(args.redis_password).apply(
                lambda password: json.dumps({args.redis_address: password}))
            service_container(REDIS_EXPORTER, ContainerSpec(
                image_key="redis-exporter", network=metrics_net[REDIS_EXPORTER], aliases=[REDIS_EXPORTER],
                extra_networks=[(args.redis_network, [])] if args.redis_network is not None else [],
                files=[ConfigFile(REDIS_PASSWORD_FILE, passwords, permissions="0400", owner=REDIS_EXPORTER_UID)],
                command=[f"--redis.addr={args.redis_address}", f"--redis.password-file={REDIS_PASSWORD_FILE}",
                         f"--web.listen-address=:{REDIS_EXPORTER_PORT}"],
                healthcheck=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{REDIS_EXPORTER_PORT}/health"],
                hardening=EXPORTER_HARDENING,
            ), parent=self, resource_name=f"{name}-redis-exporter")
        if args.probes:
            probe_networks = [(metrics_net[p.container], []) for p in args.probes if p.container in metrics_net]
            service_container(BLACKBOX_EXPORTER, ContainerSpec(
                image_key="blackbox-exporter", network=metrics_net[BLACKBOX_EXPORTER], aliases=[BLACKBOX_EXPORTER],
                extra_networks=probe_networks,
                files=[ConfigFile(BLACKBOX_CONFIG, to_yaml(render_blackbox_config()))],
                command=[f"--config.file={BLACKBOX_CONFIG}", f"--web.listen-address=:{BLACKBOX_PORT}"],
                healthcheck=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{BLACKBOX_PORT}/-/healthy"],
                hardening=EXPORTER_HARDENING,
            ), parent=self, resource_name=f"{name}-blackbox-exporter")

        # -- Prometheus
        probe_jobs = sorted({p.job for p in args.probes})
        prom_config = render_prometheus_config(targets=args.targets, probes=args.probes)
        rules = render_alert_rules(jobs=[t.job for t in args.targets], probe_jobs=probe_jobs, backup=args.backup)
        # The metrics history, protected like every volume (retention bounds its size).
        prom_data = docker.Volume(f"{name}-prometheus-data", name=f"{PROMETHEUS}-data", opts=stateful_child(self))
        # Its targets' networks, and Grafana's (which reads it there).
        scraped = sorted({t.container for t in args.targets if t.container in metrics_net}
                         | ({GRAFANA} & set(metrics_net)))
        self.prometheus = service_container(PROMETHEUS, ContainerSpec(
            image_key="prometheus", network=args.alerting_network, aliases=[PROMETHEUS],
            extra_networks=[(metrics_net[container], []) for container in scraped],
            files=[ConfigFile(PROMETHEUS_CONFIG, to_yaml(prom_config)), ConfigFile(RULES_PATH, to_yaml(rules))],
            command=prometheus_command(),
            volumes=[docker.ContainerVolumeArgs(volume_name=prom_data.name, container_path=PROMETHEUS_DATA)],
            healthcheck=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{PROMETHEUS_PORT}/-/healthy"],
            hardening=PROMETHEUS_HARDENING,
        ), parent=self, resource_name=f"{name}-prometheus")

        self.grafana_admin_password = None
        if s.grafana:
            self._grafana(name, args)

        self.register_outputs({"room_alias": self.room_alias})

    def _grafana(self, name: str, args: MonitoringArgs) -> None:
        """Grafana with the stack's Prometheus and Synapse's official dashboard, fetched at deploy time from
        the pinned Synapse tag by a one-shot job into a volume Grafana reads (never copied into this repo)."""
        from components.common import image

        dashboards = docker.Volume(f"{name}-grafana-dashboards", name=GRAFANA_DASHBOARDS_JOB, opts=stateful_child(self))
        data = docker.Volume(f"{name}-grafana-data", name=f"{GRAFANA}-data", opts=stateful_child(self))
        job = service_container(GRAFANA_DASHBOARDS_JOB, ContainerSpec(
            image_key="python", network=args.egress_network, aliases=[],
            files=[ConfigFile("/commstack/grafana_dashboards.py", DASHBOARD_SCRIPT.read_text())],
            command=["python3", "/commstack/grafana_dashboards.py", synapse_dashboard_url(image("synapse")),
                     f"{GRAFANA_DASHBOARDS_DIR}/synapse.json", GRAFANA_DATASOURCE_UID],
            volumes=[docker.ContainerVolumeArgs(volume_name=dashboards.name, container_path=GRAFANA_DASHBOARDS_DIR)],
            one_shot=True, hardening=Hardening(memory_mb=64),
        ), parent=self, resource_name=f"{name}-grafana-dashboards")
        self.grafana_admin_password = generated_secret(f"{name}-grafana-admin-password", self)
        files = [ConfigFile(path, to_yaml(content)) for path, content in render_grafana_provisioning().items()]
        files.append(ConfigFile(GRAFANA_ADMIN_PASSWORD_PATH, self.grafana_admin_password, permissions="0400",
                                owner=GRAFANA_UID))
        service_container(GRAFANA, ContainerSpec(
            image_key="grafana", network=args.grafana_web_network, aliases=[GRAFANA],
            extra_networks=[(args.metrics_networks[GRAFANA], [GRAFANA])],
            files=files, envs=grafana_environment(args.grafana_root_url),
            volumes=[docker.ContainerVolumeArgs(volume_name=data.name, container_path=GRAFANA_DATA),
                     docker.ContainerVolumeArgs(volume_name=dashboards.name, container_path=GRAFANA_DASHBOARDS_DIR,
                                                read_only=True)],
            healthcheck=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{GRAFANA_PORT}/api/health"],
            hardening=Hardening(memory_mb=256),
        ), parent=self, resource_name=f"{name}-grafana", depends_on=[job])
