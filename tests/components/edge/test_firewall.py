"""The security group opens exactly configs/ports.yaml, SSH only from admin CIDRs, nothing else."""

import pulumi

from components.edge.firewall import Firewall, FirewallArgs

PUBLIC = {("tcp", 80, 80), ("tcp", 443, 443), ("tcp", 3478, 3478), ("udp", 3478, 3478),
          ("tcp", 5349, 5349), ("udp", 5349, 5349), ("udp", 49160, 49200)}


def _rules(reg):
    return {(r["protocol"], r["fromPort"], r["toPort"]): r for r in reg.plain_inputs["ingress"]}


@pulumi.runtime.test
def test_ssh_closed_by_default_and_only_the_public_list_open(recorded):
    fw = Firewall("fw", FirewallArgs())

    def check(_):
        reg = recorded.of_type("aws:ec2/securityGroup:SecurityGroup")[0]
        rules = _rules(reg)
        assert set(rules) == PUBLIC
        assert len(reg.plain_inputs["ingress"]) == len(PUBLIC)
        assert all(r["cidrBlocks"] == ["0.0.0.0/0"] for r in rules.values())
        assert [(e["protocol"], e["fromPort"], e["toPort"]) for e in reg.plain_inputs["egress"]] == [("-1", 0, 0)]

    return fw.security_group.id.apply(check)


@pulumi.runtime.test
def test_ssh_only_from_admin_cidrs(recorded):
    fw = Firewall("fw-admin", FirewallArgs(admin_cidrs=["198.51.100.7/32", "2001:db8::/64"]))

    def check(_):
        rules = _rules(recorded.of_type("aws:ec2/securityGroup:SecurityGroup")[0])
        assert set(rules) == PUBLIC | {("tcp", 22, 22)}
        ssh = rules[("tcp", 22, 22)]
        assert ssh["cidrBlocks"] == ["198.51.100.7/32"]
        assert ssh["ipv6CidrBlocks"] == ["2001:db8::/64"]

    return fw.security_group.id.apply(check)
