"""Synapse: homeserver.yaml built as data, secrets generated, signing key kept.

Keys and their meaning: element-hq/synapse docs/usage/configuration/config_documentation.md
(v1.163.2); the container's start-up: element-hq/synapse docker/start.py.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import pulumi
import pulumi_docker as docker
import pulumi_tls as tls

from components.common import (ConfigFile, ContainerSpec, Hardening, generated_secret, merge_config,
                               service_container, stateful_child, to_yaml)
from components.matrix.postgres import DatabaseCredentials
from components.matrix.workers import (MAIN, MAIN_REPLICATION_PORT, WORKER_APP, WORKER_PORT, WorkerPlan,
                                       WorkerProcess)
from components.settings import CONFIGS_DIR

LOGICAL_NAME = "synapse"
HTTP_PORT = 8008
# Synapse's metrics listener (type: metrics), on the metrics-synapse network only (docs/metrics-howto.md).
METRICS_PORT = 9000
METRICS_PATH = "/_synapse/metrics"
INTERNAL_URL = f"http://{LOGICAL_NAME}:{HTTP_PORT}"
DATA_DIR = "/data"
CONFIG_PATH = f"{DATA_DIR}/homeserver.yaml"
# docker/start.py drops root to 991:991 but only chowns the data dir in
# `generate` mode, so a fresh media volume must be handed over at start.
SYNAPSE_UID_GID = "991:991"
SYNAPSE_UID = "991"
# The entrypoint chowns the media volume (CHOWN); docker/start.py then drops to 991 with gosu
# (SETUID, SETGID). Everything after that runs unprivileged.
HARDENING = Hardening(capabilities=("CHOWN", "SETGID", "SETUID"), memory_mb=2048,
                      why="chown of the media volume, then gosu to 991:991 (docker/start.py)")

# Private, loopback, link-local and reserved ranges Synapse must never
# contact on a user's behalf (the documented ip_range_blacklist example).
PRIVATE_RANGES = (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "192.0.0.0/24", "169.254.0.0/16", "192.88.99.0/24", "198.18.0.0/15", "192.0.2.0/24",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "::1/128", "fe80::/10", "fc00::/7",
    "2001:db8::/32", "ff00::/8", "fec0::/10",
)


# What MatrixRTC (Element Call) needs from Synapse, from element-call docs/self-hosting.md, each
# key checked against the pinned Synapse (v1.163.2) sources named beside it.
MATRIX_RTC_SETTINGS = {
    # synapse/config/experimental.py: MSC4143 serves /_matrix/client/unstable/org.matrix.msc4143/
    # rtc/transports (synapse/rest/client/matrixrtc.py) from matrix_rtc.transports; MSC4222 adds
    # sync v2 `state_after`, which Element Call needs to track room state; MSC4354 sticky events,
    # which Element Call 0.17+ uses for call memberships (matrix-docker-ansible-deploy sets it).
    # MSC3266 (room summaries) is stable since Synapse 1.153 and has no flag any more.
    "experimental_features": {"msc4143_enabled": True, "msc4222_enabled": True, "msc4354_enabled": True},
    # synapse/config/server.py: how far ahead MSC4140 delayed events may be scheduled (call
    # memberships are delayed "leave" events that fire when a client vanishes).
    "max_event_delay_duration": "24h",
    # synapse/config/ratelimiting.py: room-key sharing is bursty, and the delayed-event heartbeat
    # runs every 5 s (defaults 0.2/10 and 1/5 would throttle calls).
    "rc_message": {"per_second": 0.5, "burst_count": 30},
    "rc_delayed_event_mgmt": {"per_second": 1, "burst_count": 20},
}


# The bridges' encryption (encryption.appservice): Synapse pushes the bot's to-device events
# (MSC2409), device list changes and one-time key counts (MSC3202) in appservice transactions,
# because it refuses an appservice user's own /sync. Without them the bot cannot read encrypted DMs.
APPSERVICE_ENCRYPTION_SETTINGS = {
    "experimental_features": {"msc2409_to_device_messages_enabled": True, "msc3202_transaction_extensions": True},
}


def blocked_ranges(public_ip: Optional[str] = None) -> list[str]:
    """PRIVATE_RANGES plus the host's own public address, unless one of them already covers it: a
    remote server (or a federation request naming this host) must not make Synapse call services
    published on the host itself."""
    ranges = list(PRIVATE_RANGES)
    if public_ip:
        address = ipaddress.ip_address(public_ip)
        if not any(address in ipaddress.ip_network(cidr) for cidr in ranges):
            ranges.append(str(ipaddress.ip_network(address)))
    return ranges


def data_paths(data_dir: str = DATA_DIR) -> dict[str, str]:
    return {
        "signing_key_path": f"{data_dir}/signing.key",
        "log_config": f"{data_dir}/log.config",
        "media_store_path": f"{data_dir}/media_store",
    }


def render_homeserver_config(
    *,
    server_name: str,
    public_baseurl: str,
    database: Mapping[str, Any],
    registration: str,
    federation: bool,
    registration_shared_secret: str,
    macaroon_secret_key: str,
    form_secret: str,
    turn_uris: Sequence[str] = (),
    turn_shared_secret: Optional[str] = None,
    app_service_config_files: Sequence[str] = (),
    element_url: Optional[str] = None,
    max_upload_size: str = "50M",
    data_dir: str = DATA_DIR,
    matrix_rtc_transports: Sequence[Mapping[str, Any]] = (),
    public_ip: Optional[str] = None,
    media_retention: Optional[Mapping[str, str]] = None,
    workers: WorkerPlan = WorkerPlan(),
    process: str = MAIN,
    redis: Optional[Mapping[str, Any]] = None,
    replication_secret: Optional[str] = None,
    metrics: bool = False,
    email: Optional[Mapping[str, Any]] = None,
) -> dict:
    """homeserver.yaml as data. `database` holds user, password, database, host, port.
    `matrix_rtc_transports` (lk-jwt-service's URL) turns on what MatrixRTC calls need.
    `public_ip` (the host's own address) joins the ranges Synapse never contacts.
    `media_retention` holds local_media_lifetime and/or remote_media_lifetime (Synapse durations).

    With workers (`workers`, components/matrix/workers.py) every process gets its own complete
    file from here: `process` is `main` or a worker's name, `redis` (host, port, password) is the
    replication bus and `replication_secret` authenticates the processes' HTTP replication."""
    if registration not in ("closed", "token"):
        raise ValueError(f"registration must be closed or token, not {registration!r}")
    if turn_uris and not turn_shared_secret:
        raise ValueError("turn_uris need the TURN shared secret")
    config: dict[str, Any] = {
        "server_name": server_name,
        "public_baseurl": public_baseurl,
        # nginx serves /.well-known/matrix/*; Synapse stays behind the proxy.
        "serve_server_wellknown": False,
        "listeners": [{
            "port": HTTP_PORT,
            "type": "http",
            "tls": False,
            "bind_addresses": ["0.0.0.0"],  # inside the private network only
            "x_forwarded": True,
            # lk-jwt-service checks OpenID tokens at /_matrix/federation/v1/openid/userinfo:
            # `federation` serves it, and `openid` alone when not federating (synapse/config/server.py).
            "resources": [{"names": ["client", "federation"] if federation
                           else ["client", "openid"] if matrix_rtc_transports else ["client"], "compress": False}],
        }],
        "database": {
            "name": "psycopg2",
            "args": {
                "user": database["user"],
                "password": database["password"],
                "database": database["database"],
                "host": database["host"],
                "port": int(database["port"]),
                "cp_min": 5,
                "cp_max": workers.main_pool,
            },
        },
        **data_paths(data_dir),
        "report_stats": False,
        # Its own listener, never routed by the proxy: only Prometheus reaches it (monitoring on).
        "enable_metrics": metrics,
        "registration_shared_secret": registration_shared_secret,
        "macaroon_secret_key": macaroon_secret_key,
        "form_secret": form_secret,
        # Never registration without verification: closed, or gated by admin tokens.
        "enable_registration": registration == "token",
        "registration_requires_token": registration == "token",
        "allow_guest_access": False,
        "trusted_key_servers": [{"server_name": "matrix.org"}],
        "suppress_key_server_warning": True,
        # Still the key v1.163.2 reads (synapse/config/server.py); only its attribute became ip_range_blocklist.
        "ip_range_blacklist": blocked_ranges(public_ip),
        "federation_client_minimum_tls_version": "1.2",
        "max_upload_size": max_upload_size,
        "url_preview_enabled": False,
        "app_service_config_files": list(app_service_config_files),
    }
    if email:
        config["email"] = dict(email)
    # Each feature below adds its own keys; merge_config keeps every one of them (the bridges' and
    # MatrixRTC's flags share `experimental_features`) and refuses two values for one key.
    if app_service_config_files:
        config = merge_config(config, APPSERVICE_ENCRYPTION_SETTINGS)
    if not federation:
        # An empty whitelist federates with nobody.
        config["federation_domain_whitelist"] = []
    if turn_uris:
        config.update(
            turn_uris=list(turn_uris),
            turn_shared_secret=turn_shared_secret,
            turn_user_lifetime="1h",
            turn_allow_guests=False,
        )
    if element_url:
        config["web_client_location"] = element_url
    if matrix_rtc_transports:
        # synapse/config/matrixrtc.py: each entry is {type: livekit, livekit_service_url: ...}.
        config = merge_config(config, MATRIX_RTC_SETTINGS,
                              {"matrix_rtc": {"transports": [dict(t) for t in matrix_rtc_transports]}})
    if media_retention:
        config = merge_config(config, {"media_retention": _media_retention(media_retention)})
    if workers.enabled:
        config = merge_config(config, _shared_worker_settings(workers, process, redis, replication_secret))
        _set_process_listeners(config, workers, process, data_dir)
    elif process != MAIN:
        raise ValueError(f"there are no workers, so no process {process!r}")
    if metrics:
        # Every process its own metrics listener (a worker's among its worker_listeners), never routed
        # by the proxy: only Prometheus reaches it, on the process's metrics-<process> network.
        listeners = config["worker_listeners"] if "worker_app" in config else config["listeners"]
        listeners.append({"port": METRICS_PORT, "type": "metrics", "tls": False, "bind_addresses": ["0.0.0.0"]})
    return config


def email_config(*, host: str, port: int, from_address: str, tls: str, user: str = "",
                 password: Optional[str] = None, client_base_url: Optional[str] = None) -> dict:
    """homeserver.yaml's `email` section (synapse/config/emailconfig.py): password resets and notifications.

    TLS is never optional: `starttls` requires STARTTLS (require_transport_security), `tls` speaks TLS from
    the first byte (force_tls)."""
    if tls not in ("starttls", "tls"):
        raise ValueError(f"tls must be starttls or tls, not {tls!r}")
    if user and not password:
        raise ValueError("an SMTP user needs its password")
    config: dict[str, Any] = {
        "smtp_host": host,
        "smtp_port": int(port),
        "force_tls": tls == "tls",
        "require_transport_security": tls == "starttls",
        "enable_tls": True,
        "notif_from": f"%(app)s <{from_address}>",
        "enable_notifs": True,
        "notif_for_new_users": True,
        "validation_token_lifetime": "1h",
    }
    if user:
        config.update(smtp_user=user, smtp_pass=password)
    if client_base_url:
        config["client_base_url"] = client_base_url  # links in notification e-mails open Element
    return config


def _media_retention(retention: Mapping[str, str]) -> dict:
    """synapse/config/repository.py `media_retention`: media not accessed for a lifetime is deleted."""
    unknown = set(retention) - {"local_media_lifetime", "remote_media_lifetime"}
    if unknown:
        raise ValueError(f"media_retention takes local_media_lifetime and remote_media_lifetime, not {sorted(unknown)}")
    return {key: value for key, value in retention.items() if value}


def _shared_worker_settings(plan: WorkerPlan, process: str, redis: Optional[Mapping[str, Any]],
                            replication_secret: Optional[str]) -> dict:
    """What every process of a worker deployment shares (docs/workers.md, "Shared configuration"):
    Redis, the replication secret, instance_map, stream_writers and the duties."""
    if not redis or not replication_secret:
        raise ValueError("workers need Redis (host, port, password) and the replication secret")
    shared = {
        "redis": {"enabled": True, "host": redis["host"], "port": int(redis["port"]), "password": redis["password"]},
        "worker_replication_secret": replication_secret,
        "instance_map": plan.instance_map(main_host=LOGICAL_NAME),
        "stream_writers": plan.stream_writers(),
        **plan.duties(),
    }
    media = plan.with_role("media")
    if media:
        # Only the media worker loads the media repository (synapse/config/repository.py
        # can_load_media_repo); everyone else leaves its endpoints and jobs to it.
        shared["enable_media_repo"] = process == media[0].name
    return shared


def _set_process_listeners(config: dict, plan: WorkerPlan, process: str, data_dir: str) -> None:
    """This process's own part: the main process's replication listener, or a worker's
    worker_app, name, listener, log config and pool (its listeners replace the main process's)."""
    if process == MAIN:
        config["listeners"].append({
            "port": MAIN_REPLICATION_PORT, "type": "http", "tls": False, "bind_addresses": ["0.0.0.0"],
            "resources": [{"names": ["replication"], "compress": False}],
        })
        return
    worker: WorkerProcess = plan.process(process)
    del config["listeners"]
    config.update({
        "worker_app": WORKER_APP,
        "worker_name": worker.name,
        "worker_listeners": [{
            "port": WORKER_PORT, "type": "http", "tls": False, "bind_addresses": ["0.0.0.0"],
            "x_forwarded": True,
            "resources": [{"names": list(worker.resources), "compress": False}],
        }],
        "worker_log_config": data_paths(data_dir)["log_config"],
    })
    config["database"]["args"].update(cp_min=1, cp_max=worker.pool)
# A logging filter (configs/synapse/commstack_log_redaction.py) that redacts every query value in
# Synapse's log lines: Synapse itself redacts only access_token and client_secret.
LOG_REDACTION_MODULE = "commstack_log_redaction"
LOG_REDACTION_SOURCE = CONFIGS_DIR / "synapse" / f"{LOG_REDACTION_MODULE}.py"
PYTHON_PATH_DIR = "/usr/local/lib/commstack"


def render_log_config() -> dict:
    """Console logging only: Docker keeps the logs and nothing fills the data dir. Every line goes
    through the query-string redaction filter (its module is on PYTHONPATH, see Synapse below)."""
    return {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
        "filters": {"redact_query_strings": {"()": f"{LOG_REDACTION_MODULE}.RedactQueryStrings"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "precise",
                                 "filters": ["redact_query_strings"]}},
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["console"]},
        "disable_existing_loggers": False,
    }


def signing_key_id(public_key_pem: str) -> str:
    """A stable key version derived from the public key (Synapse's own are `a_` + 4 chars)."""
    return "a_" + hashlib.sha256(public_key_pem.encode()).hexdigest()[:4]


def signing_key_line(private_key_pem_pkcs8: str, key_id: str) -> str:
    """Synapse's signing.key format: `ed25519 <key id> <unpadded base64 of the 32-byte seed>`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = serialization.load_pem_private_key(private_key_pem_pkcs8.encode(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("the Synapse signing key must be ed25519")
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return f"ed25519 {key_id} {base64.b64encode(seed).decode().rstrip('=')}\n"


@dataclass
class SynapseArgs:
    network: pulumi.Input[str]
    server_name: str
    public_baseurl: str
    database: DatabaseCredentials
    registration: str = "closed"
    federation: bool = True
    turn_uris: Sequence[str] = ()
    turn_shared_secret: Optional[pulumi.Output[str]] = None
    # path inside the synapse container -> registration YAML (secret)
    appservice_registrations: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    element_url: Optional[str] = None
    # Keep equal to the well-known nginx's client_max_body_size.
    max_upload_size: str = "50M"
    # Networks besides `network` (components/matrix/network.py).
    extra_networks: Sequence[pulumi.Input[str]] = ()
    # MatrixRTC transports (lk-jwt-service's public URL); empty leaves calls off.
    matrix_rtc_transports: Sequence[Mapping[str, Any]] = ()
    # Prometheus's network to the metrics listener; None leaves metrics off.
    metrics_network: Optional[pulumi.Input[str]] = None
    # Outgoing e-mail (components.settings.SmtpSettings); None: no e-mail.
    smtp: Optional[Any] = None
    # The host's public address (commstack:publicIp), never contacted by Synapse.
    public_ip: Optional[str] = None
    # Synapse's media_retention (local_media_lifetime, remote_media_lifetime); empty keeps all media.
    media_retention: Mapping[str, str] = field(default_factory=dict)
    # The worker processes (commstack:synapseWorkers), their Redis and their networks.
    workers: WorkerPlan = field(default_factory=WorkerPlan)
    redis: Optional["RedisEndpoint"] = None
    worker_networks: Optional["WorkerNetworks"] = None


@dataclass
class RedisEndpoint:
    """Where the processes reach Redis (components/matrix/redis.py), and its password (secret)."""

    host: str
    port: int
    password: pulumi.Output[str]
    container: pulumi.Resource  # what the main process waits for


@dataclass
class WorkerNetworks:
    """components/matrix/network.py's networks a worker may join; each joins only those its roles need."""

    database: pulumi.Input[str]
    replication: pulumi.Input[str]
    front: pulumi.Input[str]  # the `synapse` network, where nginx reaches the routed workers
    egress: pulumi.Input[str]
    appservice: Optional[pulumi.Input[str]] = None  # with bridges
    # process name -> its metrics-<process> network, shared with Prometheus only (monitoring on)
    metrics: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)


# Workers drop to 991:991 with gosu as the main process does (SETUID, SETGID); only the media worker,
# which mounts the media volume, also chowns it (the main process's HARDENING).
WORKER_HARDENING = Hardening(capabilities=("SETGID", "SETUID"), memory_mb=512,
                             why="gosu to 991:991 (docker/start.py)")


def worker_container_spec(process: WorkerProcess, files: Sequence[ConfigFile], networks: WorkerNetworks,
                          media: Optional[docker.ContainerVolumeArgs] = None) -> ContainerSpec:
    """One worker as a service: the Synapse image started as `generic_worker` by the image's own
    start.py (SYNAPSE_WORKER), its files, the networks its roles need, a /health probe on its listener,
    and the main process's hardening with the worker's own memory limit."""
    joined = [networks.replication]
    if process.routed:
        joined.append(networks.front)
    if process.egress:
        joined.append(networks.egress)
    if process.appservice and networks.appservice is not None:
        joined.append(networks.appservice)
    if process.name in networks.metrics:
        joined.append(networks.metrics[process.name])
    hardening = dataclasses.replace(HARDENING if media else WORKER_HARDENING, memory_mb=process.memory_mb)
    start = f"chown {SYNAPSE_UID_GID} {media.container_path} && exec /start.py" if media else "exec /start.py"
    return ContainerSpec(
        image_key="synapse",
        network=networks.database,
        aliases=[process.name],
        extra_networks=[(network, [process.name]) for network in joined],
        files=files,
        envs={"SYNAPSE_CONFIG_PATH": CONFIG_PATH, "SYNAPSE_WORKER": WORKER_APP, "PYTHONPATH": PYTHON_PATH_DIR},
        entrypoint=["/bin/sh", "-c", start],
        volumes=[media] if media else [],
        healthcheck=["CMD-SHELL", f"curl -fSs http://localhost:{WORKER_PORT}/health || exit 1"],
        hardening=hardening,
        extra={"wait": True, "wait_timeout": 300},
    )


class Synapse(pulumi.ComponentResource):
    registration_shared_secret: pulumi.Output[str]
    container: docker.Container
    internal_url: str = INTERNAL_URL

    def __init__(self, name: str, args: SynapseArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:Synapse", name, None, opts)
        if args.turn_uris and args.turn_shared_secret is None:
            raise ValueError("turn_uris need turn_shared_secret")
        for path in args.appservice_registrations:
            if not path.startswith(f"{DATA_DIR}/appservices/"):
                raise ValueError(f"appservice registration {path!r} must live under {DATA_DIR}/appservices/")

        # Losing this key breaks federation: generated once, protected, never rotated by the program.
        signing_key = tls.PrivateKey(f"{name}-signing-key", algorithm="ED25519", opts=stateful_child(self))
        self.registration_shared_secret = generated_secret(f"{name}-registration-shared-secret", self)
        macaroon_secret_key = generated_secret(f"{name}-macaroon-secret-key", self)
        form_secret = generated_secret(f"{name}-form-secret", self)
        media = docker.Volume(f"{name}-media", name=f"{LOGICAL_NAME}-media", opts=stateful_child(self))
        self.media_volume = media  # the backup job mounts it

        db = args.database
        appservice_paths = sorted(args.appservice_registrations)
        plan = args.workers
        if plan.enabled and (args.redis is None or args.worker_networks is None):
            raise ValueError("workers need Redis and the worker networks (SynapseArgs.redis, worker_networks)")
        replication_secret = generated_secret(f"{name}-replication-secret", self) if plan.enabled else None
        redis = args.redis

        def homeserver_yaml(process: str) -> pulumi.Output[str]:
            """One process's homeserver.yaml: every process's comes from the same renderer."""
            return pulumi.Output.all(
                db_password=db.password,
                registration_shared_secret=self.registration_shared_secret,
                macaroon_secret_key=macaroon_secret_key,
                form_secret=form_secret,
                turn_shared_secret=args.turn_shared_secret,
                replication_secret=replication_secret,
                redis_password=redis.password if redis else None,
                smtp_password=args.smtp.password if args.smtp is not None else None,
            ).apply(lambda s: to_yaml(render_homeserver_config(
                server_name=args.server_name,
                public_baseurl=args.public_baseurl,
                database={"user": db.user, "password": s["db_password"], "database": db.database,
                          "host": db.host, "port": db.port},
                registration=args.registration,
                federation=args.federation,
                registration_shared_secret=s["registration_shared_secret"],
                macaroon_secret_key=s["macaroon_secret_key"],
                form_secret=s["form_secret"],
                turn_uris=args.turn_uris,
                turn_shared_secret=s["turn_shared_secret"],
                app_service_config_files=appservice_paths,
                element_url=args.element_url,
                max_upload_size=args.max_upload_size,
                matrix_rtc_transports=args.matrix_rtc_transports,
                public_ip=args.public_ip,
                media_retention=args.media_retention,
                workers=plan,
                process=process,
                redis={"host": redis.host, "port": redis.port, "password": s["redis_password"]} if redis else None,
                replication_secret=s["replication_secret"],
                metrics=args.metrics_network is not None,
                email=email_config(host=args.smtp.host, port=args.smtp.port, from_address=args.smtp.from_address,
                                   tls=args.smtp.tls, user=args.smtp.user, password=s["smtp_password"],
                                   client_base_url=args.element_url) if args.smtp is not None else None,
            )))

        signing_key_file = pulumi.Output.all(signing_key.private_key_pem_pkcs8, signing_key.public_key_pem).apply(
            lambda keys: signing_key_line(keys[0], signing_key_id(keys[1]))
        )
        self.signing_key_file = pulumi.Output.secret(signing_key_file)  # also kept in every backup
        paths = data_paths()

        def files(process: str) -> list[ConfigFile]:
            """What every process reads: its own homeserver.yaml, and the shared log config, signing
            key and appservice registrations. Secrets are readable by the user Synapse runs as alone."""
            return [
                ConfigFile(CONFIG_PATH, pulumi.Output.secret(homeserver_yaml(process)), permissions="0400",
                           owner=SYNAPSE_UID),
                ConfigFile(paths["log_config"], to_yaml(render_log_config())),
                ConfigFile(f"{PYTHON_PATH_DIR}/{LOG_REDACTION_MODULE}.py", LOG_REDACTION_SOURCE.read_text()),
                ConfigFile(paths["signing_key_path"], pulumi.Output.secret(signing_key_file), permissions="0400",
                           owner=SYNAPSE_UID),
            ] + [ConfigFile(path, pulumi.Output.secret(args.appservice_registrations[path]), permissions="0400",
                            owner=SYNAPSE_UID) for path in appservice_paths]

        media_path = paths["media_store_path"]
        media_mount = docker.ContainerVolumeArgs(volume_name=media.name, container_path=media_path)
        replication_networks = [(args.worker_networks.replication, [LOGICAL_NAME])] if plan.enabled else []
        self.container = service_container(
            LOGICAL_NAME,
            ContainerSpec(
                image_key="synapse",
                network=args.network,
                aliases=[LOGICAL_NAME],
                extra_networks=[(network, [LOGICAL_NAME]) for network in
                                [*args.extra_networks, *([args.metrics_network] if args.metrics_network is not None else [])]]
                + replication_networks,
                files=files(MAIN),
                envs={"SYNAPSE_CONFIG_PATH": CONFIG_PATH, "PYTHONPATH": PYTHON_PATH_DIR},
                entrypoint=["/bin/sh", "-c", f"chown {SYNAPSE_UID_GID} {media_path} && exec /start.py"],
                volumes=[media_mount],
                # The same probe as the image's own HEALTHCHECK.
                healthcheck=["CMD-SHELL", f"curl -fSs http://localhost:{HTTP_PORT}/health || exit 1"],
                hardening=HARDENING,
                extra={"wait": True, "wait_timeout": 300},
            ),
            parent=self,
            resource_name=name,
            depends_on=[args.redis.container] if plan.enabled else (),
        )
        # Each worker: the same image, files and hardening, its own homeserver.yaml, networks and memory.
        # They start once the main process is healthy: it alone migrates the database schema.
        self.workers = {
            process.name: service_container(
                process.name,
                worker_container_spec(process, files(process.name), args.worker_networks,
                                      media_mount if "media" in process.roles else None),
                parent=self,
                resource_name=f"{name}-{process.name.removeprefix(LOGICAL_NAME + '-')}",
                depends_on=[self.container],
            )
            for process in plan.processes
        }
        self.register_outputs({"internal_url": self.internal_url,
                               "registration_shared_secret": self.registration_shared_secret})
