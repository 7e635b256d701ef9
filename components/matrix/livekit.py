"""LiveKit: the SFU that carries MatrixRTC (Element Call) media for Element X and Element Web.

livekit.yaml is built as data. Keys and meanings: livekit/livekit-server config-sample.yaml and
pkg/config/config.go, and livekit/mediatransportutil pkg/rtcconfig (config.go, webrtc_config.go),
at the pinned tag (configs/images.yaml). What matters for calls that carry media:

- ICE candidates name only the host's public address (`commstack:publicIp`): `rtc.node_ip` set
  with `use_external_ip: false` makes LiveKit rewrite every host candidate to node_ip
  (NAT1To1 rewrite rules, replace mode, `advertise_internal_ip` off), so the Docker bridge or
  private addresses never reach clients (matrix-docker-ansible-deploy #4958). With node_ip set
  explicitly LiveKit adds no STUN servers of its own and never asks an outside STUN server
  for its address (webrtc_config.go: STUN only when node_ip is empty or auto-generated).
- Media on one UDP mux per CPU inside `rtc.udp_port` (LiveKit's share of 49160-49200,
  configs/ports.yaml); no ICE/TCP port (`tcp_port: 0`), as no port of the list is free for it.
- Clients behind strict NATs get our coturn as TURN (`rtc.turn_servers` with the shared secret,
  read from `secret_file`), with time-limited credentials LiveKit derives per participant.
- `room.auto_create: false`: only lk-jwt-service (for users of full-access homeservers) creates
  rooms (lk-jwt-service README, "Restricting room creation"); every room has a participant cap
  (ROOM_LIMITS) whatever its creator asked.
- The API key and secret are a key file (`key_file`, mode 0600; LiveKit refuses files others
  can read), never the environment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi

from components.common import ConfigFile, ContainerSpec, Hardening, published_ports, service_container, to_yaml
from components.edge.ports import ports_for

CONTAINER = "livekit"
HTTP_PORT = 7880
INTERNAL_URL = f"http://{CONTAINER}:{HTTP_PORT}"
# Its Prometheus exporter (prometheus.port), never published.
METRICS_PORT = 6789
CONFIG_PATH = "/etc/livekit/livekit.yaml"
KEY_FILE_PATH = "/etc/livekit/keys.yaml"
TURN_SECRET_PATH = "/etc/livekit/turn-secret"
# Where Traefik routes LiveKit's signalling (WebSocket /rtc) and API (/twirp) on the rtc host,
# stripped before LiveKit (element-call docs/self-hosting.md, "Matrix site endpoint routing").
PUBLIC_PATH = "/livekit/sfu"
# No capability: its ports are above 1024. Media buffers for a few calls fit well within 512 MB.
# Its files live in /etc/livekit (a config dir), so the root is read-only; it runs as nobody (the
# image would run it as root), which owns the key and TURN secret files.
HARDENING = Hardening(memory_mb=512, config_dirs=("/etc/livekit",))
RUN_AS = "65534"


# Rooms (pkg/config/config.go RoomConfig; pkg/service/roomallocator.go applies them to every room,
# including those lk-jwt-service creates with max_participants 0): only lk-jwt-service creates rooms
# (`auto_create` off); a room holds at most MAX_PARTICIPANTS (one host's SFU, not a conference
# service), and closes 5 minutes after creation if nobody joins, 20 s after the last one leaves.
MAX_PARTICIPANTS = 50
ROOM_LIMITS = {"auto_create": False, "max_participants": MAX_PARTICIPANTS, "empty_timeout": 300,
               "departure_timeout": 20}
# LimitConfig: lk-jwt-service's room names are 43-character hashes (v0.5.0 main.go), so a longer name
# was not made by it (LiveKit's default allows 256); the other limits keep LiveKit's defaults.
PARTICIPANT_LIMITS = {"max_room_name_length": 64}


def media_ports() -> tuple[int, int]:
    """LiveKit's share of the public UDP range (configs/ports.yaml `livekit-rtc`)."""
    entry, = ports_for("livekit")
    return entry.from_port, entry.to_port


@dataclass(frozen=True)
class TurnServer:
    """One TURN URI LiveKit hands clients; credentials derive from the shared secret."""

    host: str
    port: int
    protocol: str  # udp | tcp | tls


def key_file(api_key: str, api_secret: str) -> str:
    """`<key>: <secret>`: LiveKit reads it as YAML, lk-jwt-service splits it at the colon and trims."""
    for value in (api_key, api_secret):
        if not value or not value.isalnum():
            raise ValueError("the LiveKit API key and secret must be non-empty and alphanumeric")
    return f"{api_key}: {api_secret}\n"


def render_livekit_config(*, node_ip: str, udp_ports: tuple[int, int], turn_servers: Sequence[TurnServer] = (),
                          turn_secret_path: Optional[str] = TURN_SECRET_PATH, port: int = HTTP_PORT,
                          key_file_path: str = KEY_FILE_PATH, metrics_port: Optional[int] = None) -> dict:
    """livekit.yaml as data; it holds no secret (they are in the key file and the TURN secret file)."""
    address = ipaddress.ip_address(node_ip)  # raises on anything but an address
    if address.version != 4:
        raise ValueError(f"node_ip must be the host's public IPv4, not {node_ip!r}")
    low, high = udp_ports
    if not 1024 <= low <= high < 65536:
        raise ValueError(f"bad LiveKit UDP port range {low}-{high}")
    if turn_servers and not turn_secret_path:
        raise ValueError("TURN servers need the shared secret file")
    rtc: dict = {
        "udp_port": f"{low}-{high}" if high > low else str(low),
        "tcp_port": 0,
        "use_external_ip": False,
        "node_ip": node_ip,
        "advertise_internal_ip": False,
        "enable_loopback_candidate": False,
        "use_mdns": False,
        "stun_servers": [],
    }
    if turn_servers:
        rtc["turn_servers"] = [{"host": s.host, "port": s.port, "protocol": s.protocol, "secret_file": turn_secret_path,
                                "ttl": 3600} for s in turn_servers]
    config = {
        "port": port,
        "logging": {"level": "info"},
        "rtc": rtc,
        "room": dict(ROOM_LIMITS),
        "limit": dict(PARTICIPANT_LIMITS),
        # Its embedded TURN server stays off: coturn owns 3478 and 5349.
        "turn": {"enabled": False},
        "key_file": key_file_path,
    }
    if metrics_port is not None:
        # pkg/config/config.go PrometheusConfig; not published, Prometheus scrapes it on metrics-livekit.
        config["prometheus"] = {"port": metrics_port}
    return config


@dataclass
class LiveKitArgs:
    network: pulumi.Input[str]  # egress: its published media ports
    node_ip: str  # commstack:publicIp
    api_key: pulumi.Output[str]
    api_secret: pulumi.Output[str]
    turn_servers: Sequence[TurnServer] = ()
    turn_shared_secret: Optional[pulumi.Output[str]] = None
    extra_networks: Sequence[pulumi.Input[str]] = ()  # web-livekit, shared with Traefik only
    metrics_network: Optional[pulumi.Input[str]] = None  # metrics-livekit, shared with Prometheus only


class LiveKit(pulumi.ComponentResource):
    internal_url: str = INTERNAL_URL

    def __init__(self, name: str, args: LiveKitArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:LiveKit", name, None, opts)
        if args.turn_servers and args.turn_shared_secret is None:
            raise ValueError("turn_servers need turn_shared_secret")
        config = render_livekit_config(node_ip=args.node_ip, udp_ports=media_ports(), turn_servers=args.turn_servers,
                                       metrics_port=METRICS_PORT if args.metrics_network is not None else None)
        keys = pulumi.Output.all(args.api_key, args.api_secret).apply(lambda kv: key_file(kv[0], kv[1]))
        # Only LiveKit's own user reads the secrets.
        files = [ConfigFile(CONFIG_PATH, to_yaml(config)),
                 ConfigFile(KEY_FILE_PATH, pulumi.Output.secret(keys), permissions="0600", owner=RUN_AS)]
        if args.turn_servers:
            files.append(ConfigFile(TURN_SECRET_PATH, pulumi.Output.secret(args.turn_shared_secret),
                                    permissions="0600", owner=RUN_AS))
        self.container = service_container(
            CONTAINER,
            ContainerSpec(
                image_key="livekit",
                network=args.network,
                aliases=[CONTAINER],
                extra_networks=[(network, [CONTAINER]) for network in
                                [*args.extra_networks, *([args.metrics_network] if args.metrics_network is not None else [])]],
                files=files,
                command=["--config", CONFIG_PATH],
                user=f"{RUN_AS}:{RUN_AS}",
                hardening=HARDENING,
                # Published 1:1: the port in each ICE candidate is the one clients reach.
                ports=published_ports(ports_for("livekit")),
                # LiveKit answers GET / with 200 once it serves; busybox wget ships in the image.
                healthcheck=["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{HTTP_PORT}/"],
            ),
            parent=self,
            resource_name=name,
        )
        self.register_outputs({"internal_url": self.internal_url})
