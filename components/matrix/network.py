"""The Matrix half's Docker networks: a few named networks, each shared only by the containers
that talk over it, so every container reaches only what it needs.

| network         | internal | containers on it                                   | why                                  |
|-----------------|----------|----------------------------------------------------|--------------------------------------|
| `egress`        | no, ICC off | proxy, coturn, Synapse, the bridges             | the internet and published ports; ICC off, so they cannot reach each other through it |
| `database`      | yes      | Postgres, postgres-init, Synapse, the bridges      | Postgres and its clients only        |
| `synapse`       | yes      | Synapse, the well-known nginx                      | nginx is Synapse's only HTTP front   |
| `appservice`    | yes      | Synapse, the bridges (and nginx with workers)      | appservice transactions, both ways   |
| `replication`   | yes      | Synapse's processes, their Redis (workers only)    | Redis pub/sub and HTTP replication between the processes |
| `web-<backend>` | yes      | the proxy and that one routed backend              | e.g. `web-element`: Element is reachable only from the proxy |
| `alerting`      | yes      | Prometheus, Alertmanager, the alert relay          | alerts flow Prometheus -> Alertmanager -> relay (monitoring on) |
| `metrics-<name>`| yes      | Prometheus (or blackbox_exporter) and that one target | e.g. `metrics-synapse`: only the scraper reaches Synapse's metrics listener |

coturn is on `egress` only (no internal network); Element only on `web-element`; the Signal
containers of the Docker target have their own network (components/signal/local.py), and only
Signal-Server joins the proxy's `web-signal-server`.

A new container declares its networks in its ContainerSpec: `network` (the first) and
`extra_networks`, using the names of this component's networks (`Network.egress`, `.database`,
`.synapse`, `.appservice`, `.web[<backend>]`). Pick the fewest: `egress` only if it needs the
internet or publishes a port; `database` only if it is a Postgres client (a backup job is);
a `web-<backend>` network if the proxy routes to it (list the backend in `NetworkArgs.web_backends`,
which the Homeserver derives from its routes). A role that needs a new kind of peer gets a new
row in NETWORK_ROLES rather than joining an existing network. tests/test_program.py and the
policy pack (policy/rules.py, `networks-segmented`) check the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import pulumi
import pulumi_docker as docker

from components.common import child

# Docker's bridge driver option that stops containers on one network from reaching each other.
ICC_OPTION = "com.docker.network.bridge.enable_icc"


@dataclass(frozen=True)
class NetworkRole:
    internal: bool  # no route to the outside
    isolated: bool = False  # inter-container traffic off (Docker's enable_icc false)
    purpose: str = ""


NETWORK_ROLES: dict[str, NetworkRole] = {
    "egress": NetworkRole(internal=False, isolated=True,
                          purpose="the internet and published ports; its containers cannot reach each other"),
    "database": NetworkRole(internal=True, purpose="Postgres and its clients"),
    "synapse": NetworkRole(internal=True, purpose="Synapse and its HTTP front, the well-known nginx"),
    "appservice": NetworkRole(internal=True, purpose="Synapse and the bridges"),
}
# Made only when Synapse runs workers (components/matrix/workers.py).
REPLICATION_ROLE = NetworkRole(internal=True, purpose="Synapse's processes and their Redis")
WEB_ROLE = NetworkRole(internal=True, purpose="the proxy and one backend it routes to")
ALERTING_ROLE = NetworkRole(internal=True, purpose="Prometheus, Alertmanager and the alert relay")
METRICS_ROLE = NetworkRole(internal=True, purpose="the scraper (Prometheus or blackbox_exporter) and one target")


@dataclass
class NetworkArgs:
    internal_name: str  # prefix of the docker networks' names on the host
    # The container names the proxy routes to; each gets its own `web-<backend>` network.
    web_backends: Sequence[str] = field(default_factory=list)
    # Synapse runs workers: the `replication` network joins its processes and Redis.
    replication: bool = False
    # Monitoring on: the `alerting` network, and a `metrics-<name>` network for each scraped container.
    alerting: bool = False
    metrics_targets: Sequence[str] = field(default_factory=list)


def network_options(role: NetworkRole) -> dict:
    return {ICC_OPTION: "false"} if role.isolated else {}


class Network(pulumi.ComponentResource):
    egress: pulumi.Output[str]
    database: pulumi.Output[str]
    synapse: pulumi.Output[str]
    appservice: pulumi.Output[str]
    replication: Optional[pulumi.Output[str]]
    web: dict[str, pulumi.Output[str]]
    alerting: pulumi.Output[str] | None
    metrics: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("commstack:matrix:Network", name, None, opts)

        def make(key: str, role: NetworkRole) -> pulumi.Output[str]:
            return docker.Network(
                f"{name}-{key}",
                name=f"{args.internal_name}-{key}",
                driver="bridge",
                internal=role.internal,
                attachable=False,
                ipv6=False,
                options=network_options(role),
                labels=[docker.NetworkLabelArgs(label="commstack.component", value="matrix"),
                        docker.NetworkLabelArgs(label="commstack.network-role", value=key)],
                opts=child(self),
            ).name

        for key, role in NETWORK_ROLES.items():
            setattr(self, key, make(key, role))
        self.replication = make("replication", REPLICATION_ROLE) if args.replication else None
        self.web = {backend: make(f"web-{backend}", WEB_ROLE) for backend in dict.fromkeys(args.web_backends)}
        self.alerting = make("alerting", ALERTING_ROLE) if args.alerting else None
        self.metrics = {target: make(f"metrics-{target}", METRICS_ROLE) for target in dict.fromkeys(args.metrics_targets)}
        self.register_outputs({"egress": self.egress, "database": self.database, "synapse": self.synapse,
                               "appservice": self.appservice, "replication": self.replication, "web": self.web,
                               "alerting": self.alerting, "metrics": self.metrics})
