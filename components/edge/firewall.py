"""The AWS security group of the Signal instance: the public port list and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_aws as aws

from components.common import child
from components.edge.ports import PublicPort, firewall_ranges, public_ports

SSH_PORT = 22
WORLD = "0.0.0.0/0"


def ingress_rules(ports: Sequence[PublicPort], admin_cidrs: Sequence[str]) -> list[dict]:
    """One rule per (protocol, run of adjacent ports), open to the world; SSH only from `admin_cidrs`."""
    ports = tuple(ports)
    rules = []
    for span in firewall_ranges(ports):
        inside = [p.name for p in ports if span.protocol in p.protocols
                  and span.from_port <= p.from_port and p.to_port <= span.to_port]
        rules.append({"description": " + ".join(inside), "protocol": span.protocol, "from_port": span.from_port,
                      "to_port": span.to_port, "cidr_blocks": [WORLD]})
    v4 = [c for c in admin_cidrs if ":" not in c]
    v6 = [c for c in admin_cidrs if ":" in c]
    if admin_cidrs:
        rules.append({"description": "ssh from admin CIDRs", "protocol": "tcp", "from_port": SSH_PORT,
                      "to_port": SSH_PORT, "cidr_blocks": v4, "ipv6_cidr_blocks": v6})
    return rules


@dataclass
class FirewallArgs:
    admin_cidrs: Sequence[str] = ()  # empty keeps SSH closed
    vpc_id: Optional[pulumi.Input[str]] = None  # None: the default VPC


class Firewall(pulumi.ComponentResource):
    security_group: aws.ec2.SecurityGroup

    def __init__(self, name: str, args: FirewallArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:edge:Firewall", name, None, opts)
        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            description="commstack public ports (configs/ports.yaml) and admin SSH",
            vpc_id=args.vpc_id,
            ingress=[aws.ec2.SecurityGroupIngressArgs(**rule) for rule in ingress_rules(public_ports(), args.admin_cidrs)],
            # Outbound: packages, the source build, AWS APIs and Let's Encrypt.
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0, cidr_blocks=[WORLD],
                                                    ipv6_cidr_blocks=["::/0"], description="all outbound")],
            opts=child(self),
        )
        self.register_outputs({"security_group_id": self.security_group.id})
