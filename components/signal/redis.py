"""Redis for Signal-Server: a six-node cluster (3 masters + 3 replicas) formed by a one-shot
`redis-cli --cluster create --cluster-yes`, or AWS ElastiCache in cluster mode.

Signal-Server v9.81.0 builds every *Cluster entry as a Lettuce cluster client
(WhisperServerService.java, FaultTolerantRedisCluster), so Redis must run in cluster mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi

from components.common import child, image, stateful_child

NODES = 6
REPLICAS_PER_MASTER = 1
FIRST_PORT = 7000


def node_ports() -> list[int]:
    return [FIRST_PORT + i for i in range(NODES)]


def cluster_uri(host: str = "127.0.0.1", port: int = FIRST_PORT, tls: bool = False) -> str:
    return f"{'rediss' if tls else 'redis'}://{host}:{port}"


def node_command(port: int, announce_hostname: Optional[str] = None) -> list[str]:
    command = ["redis-server", "--port", str(port), "--cluster-enabled", "yes",
               "--cluster-config-file", f"nodes-{port}.conf", "--appendonly", "yes", "--dir", "/data"]
    if announce_hostname:
        # On a Docker network the nodes advertise names, not container IPs that change on restart.
        command += ["--cluster-announce-hostname", announce_hostname, "--cluster-preferred-endpoint-type", "hostname"]
    else:
        command += ["--bind", "127.0.0.1"]
    return command


# How long the job waits for every node to agree the cluster is formed before it fails.
CLUSTER_READY_SECONDS = 60


def cluster_create_script(addresses: Sequence[str], probe: str) -> str:
    """Forms the cluster once (a no-op when it is already formed: later boots, replacements), then
    exits only once every node reports cluster_state:ok and knows all NODES, so whatever waits
    for this job starts against a settled cluster. `addresses` may be shell expressions (Docker
    DNS lookups); `probe` is host:port of one node."""
    host, port = probe.rsplit(":", 1)
    return (
        f"until redis-cli -h {host} -p {port} ping; do sleep 1; done; "
        # Resolved once, after the first node answers; used for forming and for the wait.
        f"nodes=\"{' '.join(addresses)}\"; "
        f"if ! redis-cli -h {host} -p {port} cluster info | grep -q cluster_state:ok; then "
        f"redis-cli --cluster create $nodes --cluster-replicas {REPLICAS_PER_MASTER} --cluster-yes || exit 1; fi; "
        f"for node in $nodes; do waited=0; "
        f"until info=$(redis-cli -h \"${{node%:*}}\" -p \"${{node##*:}}\" cluster info | tr -d '\\r') "
        f"&& printf '%s\\n' \"$info\" | grep -qx cluster_state:ok "
        f"&& printf '%s\\n' \"$info\" | grep -qx cluster_known_nodes:{NODES}; do "
        f"waited=$((waited + 1)); [ $waited -gt {CLUSTER_READY_SECONDS * 5} ] && echo \"$node never settled\" >&2 && exit 1; "
        f"sleep 0.2; done; done"
    )


# The redis image's own user (uid and gid 999 in the Debian images). Run as it from the start, a container needs
# no capability at all: the image's entrypoint chowns and drops privileges only when started as root.
REDIS_USER = "999:999"


def hardened(service: dict, memory: str) -> dict:
    """Like the Docker target's containers (components/common.py Hardening): non-root, every capability dropped,
    no privilege escalation, a read-only root with a small /tmp, a memory cap."""
    return {**service, "user": REDIS_USER, "read_only": True, "tmpfs": ["/tmp:size=16m"], "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"], "mem_limit": memory}


def compose_services(data_dir: str) -> dict:
    """docker-compose services for the instance: host networking bound to 127.0.0.1 (never public), hardened;
    each node's data directory belongs to REDIS_USER (components/signal/host.py makes it so before they start)."""
    services = {}
    for port in node_ports():
        services[f"redis-{port}"] = hardened({
            "image": image("redis"), "network_mode": "host", "restart": "unless-stopped",
            "command": node_command(port), "volumes": [f"{data_dir}/redis/{port}:/data"],
            "healthcheck": {"test": ["CMD", "redis-cli", "-p", str(port), "ping"], "interval": "5s", "retries": 10},
        }, memory="256m")
    services["redis-cluster-create"] = hardened({
        "image": image("redis"), "network_mode": "host", "restart": "no",
        "depends_on": {name: {"condition": "service_healthy"} for name in list(services)},
        # `$$` is a literal `$` to docker-compose, which would otherwise interpolate the script's shell variables.
        "command": ["sh", "-c", cluster_create_script([f"127.0.0.1:{p}" for p in node_ports()],
                                                      f"127.0.0.1:{FIRST_PORT}").replace("$", "$$")],
    }, memory="64m")
    return services


@dataclass
class ElastiCacheRedisArgs:
    client_security_group_id: pulumi.Input[str]  # the instance's group; the only one let in
    node_type: str = "cache.t4g.small"


class ElastiCacheRedis(pulumi.ComponentResource):
    """Cluster-mode ElastiCache with encryption in transit and at rest."""

    uri: pulumi.Output

    def __init__(self, name: str, args: ElastiCacheRedisArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:signal:ElastiCacheRedis", name, None, opts)
        import pulumi_aws as aws  # AWS target only: the docker target never loads the SDK

        access = aws.ec2.SecurityGroup(
            f"{name}-access", description="Redis from the Signal instance only",
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=6379, to_port=6379,
                                                      security_groups=[args.client_security_group_id])],
            opts=child(self))
        group = aws.elasticache.ReplicationGroup(
            f"{name}-redis", description="Signal-Server Redis (cluster mode)", engine="redis", engine_version="7.1",
            node_type=args.node_type, port=6379, cluster_mode="enabled", num_node_groups=NODES // 2,
            replicas_per_node_group=REPLICAS_PER_MASTER, automatic_failover_enabled=True, multi_az_enabled=True,
            transit_encryption_enabled=True, at_rest_encryption_enabled=True,
            security_group_ids=[access.id],
            # Protected: replacing it drops the message cache and every session of the running server.
            opts=stateful_child(self))
        self.uri = group.configuration_endpoint_address.apply(lambda host: cluster_uri(host, 6379, tls=True))
        self.register_outputs({"uri": self.uri})
