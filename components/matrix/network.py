"""The private Docker network every Matrix container joins.

Containers find each other by their logical names (network aliases); nothing
on it is reachable from outside unless a container publishes a host port,
and only the proxy and TURN do.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.common import child


@dataclass
class NetworkArgs:
    internal_name: str  # the docker network's name on the host


class Network(pulumi.ComponentResource):
    name: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("commstack:matrix:Network", name, None, opts)
        # Not `internal`: Synapse federates and the bridges reach WhatsApp and
        # Telegram, so containers need outbound traffic; inbound stays closed.
        network = docker.Network(
            f"{name}-bridge",
            name=args.internal_name,
            driver="bridge",
            attachable=False,
            ipv6=False,
            labels=[docker.NetworkLabelArgs(label="commstack.component", value="matrix")],
            opts=child(self),
        )
        self.name = network.name
        self.register_outputs({"name": self.name})
