"""The whole Matrix half: network, Postgres, Synapse, well-known, proxy, TURN,
Element and the enabled bridges, wired so every shared value is made once.

Shared values: the TURN secret is generated here and the same Output goes
to coturn and Synapse; each database's credentials come from Postgres to
their one consumer; each bridge's registration goes into Synapse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_docker as docker
import pulumi_tls as tls

from components.common import child, generated_secret, stateful_child
from components.edge.dns import cloudflare_proxy_ranges
from components.edge.records import DnsRecordSpec
from components.matrix.backup import Backup, BackupArgs, BackupRepository
from components.matrix.bridges import BRIDGE_SPECS, MAX_OPEN_CONNS as BRIDGE_POOL, BridgeArgs, MautrixBridge
from components.matrix.calls import Calls, CallsArgs, calls_routes, rtc_transports
from components.matrix import monitoring as mon
from components.matrix.lkjwt import CONTAINER as LK_JWT_CONTAINER
from components.matrix.livekit import CONTAINER as LIVEKIT_CONTAINER, METRICS_PORT as LIVEKIT_METRICS_PORT, media_ports
from components.matrix.monitoring import Monitoring, MonitoringArgs
from components.matrix.element import LOGICAL_NAME as ELEMENT_CONTAINER, Element, ElementArgs
from components.matrix.network import Network, NetworkArgs
from components.matrix.postgres import MONITOR_ROLE, DatabaseSpec, Postgres, PostgresArgs
from components.matrix.proxy import (CONTAINER as PROXY_CONTAINER, METRICS_PORT as PROXY_METRICS_PORT, ReverseProxy,
                                     ReverseProxyArgs, Route)
from components.matrix.redis import SynapseRedis, SynapseRedisArgs
from components.matrix.synapse import (LOGICAL_NAME as SYNAPSE_CONTAINER, METRICS_PATH as SYNAPSE_METRICS_PATH,
                                       METRICS_PORT as SYNAPSE_METRICS_PORT, RedisEndpoint, Synapse, SynapseArgs,
                                       WorkerNetworks)
from components.matrix.turn import CONTAINER as TURN_CONTAINER, METRICS_PORT as TURN_METRICS_PORT, Turn, TurnArgs
from components.matrix.wellknown import CONTAINER as WELLKNOWN_CONTAINER, WellKnown, WellKnownArgs
from components.matrix.workers import ROLE_SLACK, max_connections, synapse_connection_limit, worker_plan
from components.settings import (BackupSettings, EdgeSettings, MatrixSettings, MonitoringSettings, PostgresSettings,
                                 non_routable_ipv4)

SYNAPSE_DATABASE = DatabaseSpec("synapse", "synapse", synapse_locale=True)
# One limit for Synapse's max_upload_size and nginx's client_max_body_size.
MAX_UPLOAD_SIZE = "50M"
WELLKNOWN_UPSTREAM = f"http://{WELLKNOWN_CONTAINER}:80"


@dataclass
class HomeserverArgs:
    matrix: MatrixSettings
    edge: EdgeSettings
    # Traefik's DNS-01 token when the edge makes a zone-scoped one; else the stack's Cloudflare token.
    dns_api_token: Optional[pulumi.Output[str]] = None
    # More hosts the proxy serves on this network (e.g. chat.<domain> for Signal on the Docker target).
    extra_routes: Sequence[Route] = ()
    # Scheduled backups (on unless the stack turns them off); the repository when not the local volume.
    backup: Optional[BackupSettings] = None
    backup_repository: Optional[BackupRepository] = None
    # The data's Postgres major and any major upgrade under way (None: the legacy major).
    postgres: Optional[PostgresSettings] = None
    # Metrics, Prometheus, alerts into the Matrix room (None or not enabled: off).
    monitoring: Optional[MonitoringSettings] = None
    # Docker target, monitoring on: Signal-Server's health check URL, which blackbox_exporter probes.
    signal_health_url: Optional[str] = None
    # Outgoing e-mail (SmtpSettings) for Alertmanager's second channel; None: no e-mail.
    smtp: Optional[object] = None


def monitoring_targets(m: MatrixSettings, bridge_specs: dict, signal_health_url: Optional[str] = None,
                       workers: Sequence[str] = ()) -> tuple[list[mon.ScrapeTarget], list[mon.Probe]]:
    """What Prometheus scrapes on this stack, and the health checks blackbox_exporter probes for it.
    Synapse's worker processes are targets of the `synapse` job beside the main process."""
    targets = [
        mon.ScrapeTarget("prometheus", mon.PROMETHEUS, mon.PROMETHEUS_PORT),
        mon.ScrapeTarget("alertmanager", mon.ALERTMANAGER, mon.ALERTMANAGER_PORT),
        mon.ScrapeTarget("synapse", SYNAPSE_CONTAINER, SYNAPSE_METRICS_PORT, SYNAPSE_METRICS_PATH),
        *(mon.ScrapeTarget("synapse", worker, SYNAPSE_METRICS_PORT, SYNAPSE_METRICS_PATH) for worker in workers),
        mon.ScrapeTarget("traefik", PROXY_CONTAINER, PROXY_METRICS_PORT),
        mon.ScrapeTarget("node", mon.NODE_EXPORTER, mon.NODE_EXPORTER_PORT),
        mon.ScrapeTarget("postgres", mon.POSTGRES_EXPORTER, mon.POSTGRES_EXPORTER_PORT),
    ]
    if workers:  # their Redis
        targets.append(mon.ScrapeTarget("redis", mon.REDIS_EXPORTER, mon.REDIS_EXPORTER_PORT))
    if m.calls:
        targets.append(mon.ScrapeTarget("livekit", LIVEKIT_CONTAINER, LIVEKIT_METRICS_PORT))
    if m.turn:
        targets.append(mon.ScrapeTarget("turn", TURN_CONTAINER, TURN_METRICS_PORT))
    probes = [mon.Probe("bridges", spec.container, f"http://{spec.container}:{spec.port}/_matrix/mau/live")
              for spec in bridge_specs.values()]
    if signal_health_url:
        probes.append(mon.Probe("signal", "signal-server", signal_health_url))
    if probes:
        targets.append(mon.ScrapeTarget("blackbox", mon.BLACKBOX_EXPORTER, mon.BLACKBOX_PORT))
    return targets, probes


def bridge_network_config(kind: str, matrix: MatrixSettings) -> dict:
    """The `network:` values a bridge needs from the stack (see configs/bridges.yaml)."""
    if kind == "telegram":
        return {"api_id": matrix.telegram_api_id, "api_hash": matrix.telegram_api_hash}
    return {}


def dns_records(matrix: MatrixSettings, edge: EdgeSettings) -> list[DnsRecordSpec]:
    records = [
        DnsRecordSpec(matrix.domain, "A", edge.public_ip, http=True, purpose="well-known delegation"),
        DnsRecordSpec(matrix.matrix_host, "A", edge.public_ip, http=True, purpose="Synapse client and federation API"),
    ]
    if matrix.element:
        records.append(DnsRecordSpec(matrix.element_host, "CNAME", matrix.matrix_host, http=True, purpose="Element Web"))
    if matrix.turn:
        # Media relays cannot pass through an HTTP proxy.
        records.append(DnsRecordSpec(matrix.turn_host, "A", edge.public_ip, http=False, purpose="TURN"))
    if matrix.calls:
        # HTTPS and WebSocket only: LiveKit's media goes to publicIp itself (its ICE candidates), not this name.
        records.append(DnsRecordSpec(matrix.rtc_host, "A", edge.public_ip, http=True,
                                     purpose="MatrixRTC: lk-jwt-service and LiveKit signalling"))
    return records


class Homeserver(pulumi.ComponentResource):
    dns_records: list[DnsRecordSpec]
    homeserver_url: str
    element_url: Optional[str]
    server_name: str
    turn_uris: list[str]
    registration_shared_secret: pulumi.Output[str]
    create_admin_command: str

    def __init__(self, name: str, args: HomeserverArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:Homeserver", name, None, opts)
        m, edge = args.matrix, args.edge
        letsencrypt = edge.tls == "letsencrypt"

        routes = [Route(m.domain, WELLKNOWN_UPSTREAM), Route(m.matrix_host, WELLKNOWN_UPSTREAM)]
        if m.element:
            routes.append(Route(m.element_host, Element.internal_url))
        routes += args.extra_routes
        if m.calls:
            # MatrixRTC on its own host, by path: lk-jwt-service and LiveKit each get a web-<backend> network.
            routes += calls_routes(m.rtc_host)
        grafana_on = args.monitoring is not None and args.monitoring.enabled and args.monitoring.grafana
        if grafana_on:
            # Grafana (commstack:grafana) under https://<matrix host>/grafana/, behind its own login.
            routes.append(Route(m.matrix_host, f"http://{mon.GRAFANA}:{mon.GRAFANA_PORT}", path_prefix=mon.GRAFANA_PATH))
        # Synapse's processes (commstack:synapseWorkers): the main one alone, or with workers.
        plan = worker_plan(m.synapse_workers, dict(m.synapse_worker_counts))
        self.workers = plan
        bridge_specs = {kind: BRIDGE_SPECS[kind] for kind in m.bridges}
        monitoring_on = args.monitoring is not None and args.monitoring.enabled
        backup_on = args.backup is not None and args.backup.enabled
        targets, probes = (monitoring_targets(m, bridge_specs, args.signal_health_url,
                                              [p.name for p in plan.processes]) if monitoring_on else ([], []))
        metrics_containers = [t.container for t in targets if t.container not in (mon.PROMETHEUS, mon.ALERTMANAGER)]
        metrics_containers += [p.container for p in probes]
        if grafana_on:
            metrics_containers.append(mon.GRAFANA)  # Grafana reads Prometheus over it (nothing scrapes Grafana)
        # One small network per role (components/matrix/network.py): each container joins only its own.
        self.network = Network(f"{name}-network", NetworkArgs(
            internal_name=f"commstack-{name}", web_backends=[route.backend for route in routes],
            replication=plan.enabled, alerting=monitoring_on, metrics_targets=metrics_containers), opts=child(self))
        nets = self.network
        metrics_net = nets.metrics.get

        # Every role gets a connection limit that fits its pools, and the server room for all of them.
        databases = [DatabaseSpec(SYNAPSE_DATABASE.name, SYNAPSE_DATABASE.owner, synapse_locale=True,
                                  connection_limit=synapse_connection_limit(plan))]
        databases += [DatabaseSpec(s.database, s.database, connection_limit=BRIDGE_POOL + ROLE_SLACK)
                      for s in bridge_specs.values()]
        self.postgres = Postgres(f"{name}-postgres", PostgresArgs(
            network=nets.database,
            databases=databases,
            version=args.postgres,
            max_connections=max_connections([d.connection_limit for d in databases]),
            monitor_role=monitoring_on,
        ), opts=child(self))

        self.bridges = {
            kind: MautrixBridge(f"{name}-bridge-{kind}", BridgeArgs(
                kind=kind,
                network=nets.database,
                # Synapse both ways, and the bridged network (WhatsApp, Telegram) outside.
                extra_networks=[nets.appservice, nets.egress],
                server_name=m.server_name,
                # With workers the bridges call Synapse through nginx, which sends each request to the
                # process that serves it (media uploads, for one, only the media worker takes).
                homeserver_url=WELLKNOWN_UPSTREAM if plan.enabled else Synapse.internal_url,
                database_uri=self.postgres.credentials[spec.database].uri(),
                network_config=bridge_network_config(kind, m),
            ), opts=child(self))
            for kind, spec in bridge_specs.items()
        }

        element_url = f"https://{m.element_host}/" if m.element else None
        certificate_hosts = [m.domain, m.matrix_host] + ([m.element_host] if m.element else [])
        if m.turn and not letsencrypt:
            # coturn reuses the proxy's self-signed certificate for 5349.
            certificate_hosts.append(m.turn_host)
        if m.calls:
            certificate_hosts.append(m.rtc_host)

        self.element = None
        if m.element:
            self.element = Element(f"{name}-element", ElementArgs(
                network=nets.web[ELEMENT_CONTAINER], homeserver_base_url=m.public_baseurl, server_name=m.server_name),
                opts=child(self))
        certificate_hosts += [route.host for route in args.extra_routes if route.host not in certificate_hosts]

        # Behind Cloudflare's proxy every request comes from its ranges; believing their
        # X-Forwarded-For (and nobody else's) keeps each client's own address for Synapse.
        cloudflare_ranges = cloudflare_proxy_ranges() if edge.cloudflare_proxy_http else ()
        serve_8448 = m.federation and m.federation_port == 8448
        self.proxy = ReverseProxy(f"{name}-proxy", ReverseProxyArgs(
            network=nets.egress,
            extra_networks=[net for backend, net in nets.web.items() if backend != LK_JWT_CONTAINER],
            # On lk-jwt-service's network the public names are Traefik itself: the service checks OpenID
            # tokens at <domain>/.well-known and matrix.<domain>, and creates rooms at rtc.<domain>.
            aliased_networks=[(nets.web[LK_JWT_CONTAINER], [m.domain, m.matrix_host, m.rtc_host])] if m.calls else [],
            routes=routes,
            tls=edge.tls,
            acme_email=edge.acme_email,
            dns_api_token=(args.dns_api_token or edge.cloudflare_api_token) if letsencrypt else None,
            certificate_hosts=certificate_hosts,
            serve_federation_8448=serve_8448,
            # Through the well-known nginx too: the proxy shares no network with Synapse.
            federation_upstream=WELLKNOWN_UPSTREAM,
            trusted_ips=cloudflare_ranges,
            metrics_network=metrics_net(PROXY_CONTAINER),
        ), opts=child(self))

        self.turn = None
        turn_secret = None
        if m.turn:
            turn_secret = generated_secret(f"{name}-turn-shared-secret", self)
            cert_pem, key_pem = self._turn_certificate(name, m.turn_host, letsencrypt)
            self.turn = Turn(f"{name}-turn", TurnArgs(
                network=nets.egress, realm=m.turn_host, external_ip=edge.public_ip, shared_secret=turn_secret,
                tls_cert_pem=cert_pem, tls_key_pem=key_pem, host=m.turn_host,
                # See _turn_certificate: with letsencrypt nobody trusts 5349's certificate.
                advertise_tls=not letsencrypt, metrics_network=metrics_net(TURN_CONTAINER)), opts=child(self))

        self.calls = None
        if m.calls:
            assert turn_secret is not None, "settings require turn for calls"
            self.calls = Calls(f"{name}-calls", CallsArgs(
                egress_network=nets.egress, livekit_network=nets.web[LIVEKIT_CONTAINER],
                jwt_network=nets.web[LK_JWT_CONTAINER], server_name=m.server_name, rtc_host=m.rtc_host,
                public_ip=edge.public_ip, turn_host=m.turn_host, turn_shared_secret=turn_secret,
                turn_tls=not letsencrypt, extra_ca_pem=None if letsencrypt else self.proxy.certificate_pem,
                livekit_metrics_network=metrics_net(LIVEKIT_CONTAINER),
                federation=m.federation,
            ), opts=child(self))
        transports = rtc_transports(m.rtc_host) if m.calls else []

        self.redis = None
        redis = None
        if plan.enabled:
            self.redis = SynapseRedis(f"{name}-synapse-redis", SynapseRedisArgs(network=nets.replication),
                                      opts=child(self))
            redis = RedisEndpoint(host=self.redis.host, port=self.redis.port, password=self.redis.password,
                                  container=self.redis.container)
        self.monitoring = None
        self.metrics_volume = None
        appservice_registrations = {b.registration_path: b.registration_yaml for b in self.bridges.values()}
        if monitoring_on:
            if backup_on:
                # The backup job writes its status here; node_exporter serves it (configs/backup/metrics.sh).
                self.metrics_volume = docker.Volume(f"{name}-backup-metrics", name="backup-metrics",
                                                    opts=stateful_child(self))
            self.monitoring = Monitoring(f"{name}-monitoring", MonitoringArgs(
                settings=args.monitoring, stack=pulumi.get_stack(), server_name=m.server_name,
                alerting_network=nets.alerting, appservice_network=nets.appservice, metrics_networks=dict(nets.metrics),
                targets=targets, probes=probes, backup=backup_on,
                textfile_volume=self.metrics_volume.name if self.metrics_volume is not None else None,
                postgres_user=MONITOR_ROLE, postgres_password=self.postgres.monitor_password,
                database_network=nets.database, egress_network=nets.egress, smtp=args.smtp,
                grafana_web_network=nets.web.get(mon.GRAFANA),
                grafana_root_url=f"https://{m.matrix_host}{mon.GRAFANA_PATH}/",
                redis_address=f"redis://{redis.host}:{redis.port}" if redis else None,
                redis_password=redis.password if redis else None, redis_network=nets.replication,
            ), opts=child(self))
            appservice_registrations[self.monitoring.relay_registration_path] = self.monitoring.relay_registration_yaml

        media_retention = {"local_media_lifetime": m.media_retention_local,
                           "remote_media_lifetime": m.media_retention_remote}
        self.synapse = Synapse(f"{name}-synapse", SynapseArgs(
            network=nets.database,
            # Its HTTP front, its bridges (if any) and federation outside.
            extra_networks=[nets.synapse, *([nets.appservice] if self.bridges or monitoring_on else []), nets.egress],
            server_name=m.server_name,
            public_baseurl=m.public_baseurl,
            database=self.postgres.credentials[SYNAPSE_DATABASE.name],
            registration=m.registration,
            federation=m.federation,
            turn_uris=self.turn.uris if self.turn else (),
            turn_shared_secret=turn_secret,
            appservice_registrations=appservice_registrations,
            element_url=element_url,
            max_upload_size=MAX_UPLOAD_SIZE,
            matrix_rtc_transports=transports,
            metrics_network=metrics_net(SYNAPSE_CONTAINER),
            smtp=args.smtp,
            public_ip=edge.public_ip,
            media_retention={k: v for k, v in media_retention.items() if v},
            workers=plan,
            redis=redis,
            worker_networks=WorkerNetworks(
                database=nets.database, replication=nets.replication, front=nets.synapse, egress=nets.egress,
                appservice=nets.appservice if self.bridges else None,
                metrics={p.name: nets.metrics[p.name] for p in plan.processes if p.name in nets.metrics},
            ) if plan.enabled else None,
        ), opts=child(self))

        self.wellknown = WellKnown(f"{name}-wellknown", WellKnownArgs(
            network=nets.web[WELLKNOWN_CONTAINER],
            # With workers it is also the bridges' way to Synapse.
            extra_networks=[nets.synapse, *([nets.appservice] if plan.enabled and self.bridges else [])],
            workers=plan,
            server_name=m.server_name,
            matrix_host=m.matrix_host,
            public_baseurl=m.public_baseurl,
            federation_port=m.federation_port,
            federation=m.federation,
            synapse_upstream=Synapse.internal_url,
            max_body_size=MAX_UPLOAD_SIZE,
            upstream_proxies=cloudflare_ranges,
            rtc_foci=transports,
        ), opts=child(self))

        self.backup = None
        if args.backup is not None and args.backup.enabled:
            from components.matrix.postgres import LOGICAL_NAME as POSTGRES_HOST, PORT as POSTGRES_PORT, SUPERUSER

            self.backup = Backup(f"{name}-backup", BackupArgs(
                # A Postgres client; the internet only to reach an S3 repository.
                network=nets.database,
                extra_networks=[nets.egress] if args.backup_repository is not None else [],
                settings=args.backup,
                postgres_host=POSTGRES_HOST,
                postgres_port=POSTGRES_PORT,
                superuser=SUPERUSER,
                superuser_password=self.postgres.superuser_password,
                databases=[SYNAPSE_DATABASE.name] + [s.database for s in bridge_specs.values()],
                media_volume=self.synapse.media_volume.name,
                signing_key=self.synapse.signing_key_file,
                acme_volume=self.proxy.acme_volume.name if self.proxy.acme_volume is not None else None,
                repository=args.backup_repository,
                stop_containers=["synapse", *(p.name for p in plan.processes)]
                + [spec.container for spec in bridge_specs.values()],
                metrics_volume=self.metrics_volume.name if self.metrics_volume is not None else None,
                faces_internet=edge.letsencrypt or edge.cloudflare_dns or not non_routable_ipv4(edge.public_ip),
            ), opts=child(self, depends_on=[self.postgres.provisioner]))

        self.postgres_upgrade = None
        if self.postgres.upgrade_volume is not None:
            self.postgres_upgrade = postgres_upgrade_job(f"{name}-postgres-upgrade", self.postgres, self.backup,
                                                          nets.database, self)

        self.dns_records = dns_records(m, edge)
        self.homeserver_url = m.public_baseurl
        self.element_url = element_url
        self.server_name = m.server_name
        self.turn_uris = list(self.turn.uris) if self.turn else []
        self.rtc_transports = transports
        self.livekit_url = self.calls.livekit_url if self.calls else None
        # LiveKit's share of the public UDP range (configs/ports.yaml), for doctor's media row.
        self.livekit_media_ports = "{}-{}".format(*media_ports()) if self.calls else None
        self.registration_shared_secret = self.synapse.registration_shared_secret
        # Over the Docker host connection (`docker exec`): no proxy serves the admin API.
        self.create_admin_command = f"./scripts/commstack create-admin --stack {pulumi.get_stack()} --user admin"
        self.bridge_tokens = pulumi.Output.secret(
            pulumi.Output.all(**{kind: bridge.as_token for kind, bridge in self.bridges.items()})
            if self.bridges else pulumi.Output.from_input({})
        )
        self.register_outputs({
            "homeserver_url": self.homeserver_url,
            "element_url": self.element_url,
            "server_name": self.server_name,
            "turn_uris": self.turn_uris,
            "rtc_transports": self.rtc_transports,
            "livekit_media_ports": self.livekit_media_ports,
            "registration_shared_secret": self.registration_shared_secret,
            "create_admin_command": self.create_admin_command,
            "bridge_tokens": self.bridge_tokens,
        })

    def _turn_certificate(self, name: str, turn_host: str, letsencrypt: bool) -> tuple[pulumi.Input[str], pulumi.Output[str]]:
        """The certificate coturn serves on 5349.

        Self-signed stacks share the proxy's certificate: a client that trusts
        it for the homeserver trusts `turns:` too. Traefik keeps its Let's
        Encrypt certificates inside acme.json, and handing them to coturn would
        take a dumper sidecar plus coturn reloads on renewal (and Let's Encrypt
        chains on 5349 break some Chromium WebRTC clients, per Synapse's
        docs/setup/turn/coturn.md). So letsencrypt stacks give coturn its own
        generated certificate for the TURN host, keep the 5349 listener, and do
        not advertise `turns:` (clients that verify TLS would fail); the `turn:`
        URIs on 3478 need no certificate.
        """
        if not letsencrypt:
            return self.proxy.certificate_pem, self.proxy.private_key_pem
        key = tls.PrivateKey(f"{name}-turn-tls-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child(self))
        cert = tls.SelfSignedCert(
            f"{name}-turn-tls-cert",
            private_key_pem=key.private_key_pem,
            dns_names=[turn_host],
            subject=tls.SelfSignedCertSubjectArgs(common_name=turn_host, organization="commstack"),
            validity_period_hours=24 * 365,
            early_renewal_hours=24 * 30,
            allowed_uses=["digital_signature", "key_encipherment", "server_auth"],
            opts=child(self),
        )
        return cert.cert_pem, pulumi.Output.secret(key.private_key_pem)


def postgres_upgrade_job(name: str, postgres: Postgres, backup: Optional[Backup], network: pulumi.Input[str],
                         parent: pulumi.Resource):
    """The one-shot Postgres major upgrade (components/matrix/postgres_upgrade.py), in the backup job's
    image and with its files, so its first step is the backup job's own backup."""
    from components.matrix.backup import STAGING_DIR
    from components.matrix.postgres_upgrade import PostgresUpgrade, PostgresUpgradeArgs

    if backup is None:  # settings refuse this first (commstack:backup)
        raise ValueError("the Postgres major upgrade takes a backup first: it needs backups on")
    version = postgres.version
    return PostgresUpgrade(name, PostgresUpgradeArgs(
        network=network,
        old_major=version.upgrade_from,
        new_major=version.image_major,
        new_volume=postgres.upgrade_volume.name,
        superuser_password=postgres.superuser_password,
        backup_image=backup.image_id,
        backup_files=backup.files,
        backup_volumes=backup.volumes,
        staging_dir=STAGING_DIR,
        depends_on=[postgres.provisioner, backup.container],
    ), opts=child(parent))
