"""Network: one small network per role, parented to the component; only `egress` reaches outside,
and on it containers cannot reach each other."""

import pulumi

from components.matrix.network import ICC_OPTION, NETWORK_ROLES, Network, NetworkArgs


@pulumi.runtime.test
def test_networks_are_named_per_role_and_only_egress_reaches_outside(recorded):
    network = Network("matrix-net", NetworkArgs(internal_name="commstack-matrix", web_backends=["element", "element"]))

    def check(names):
        assert names == ["commstack-matrix-egress", "commstack-matrix-database", "commstack-matrix-web-element"]
        component = recorded.of_type("commstack:matrix:Network")[0]
        networks = {r.plain_inputs["name"]: r for r in recorded.of_type("docker:index/network:Network")}
        assert set(networks) == {f"commstack-matrix-{key}" for key in [*NETWORK_ROLES, "web-element"]}
        for name, reg in networks.items():
            assert reg.parent == component.urn and reg.name.startswith("matrix-net-")
            inputs = reg.plain_inputs
            assert inputs["driver"] == "bridge" and not inputs.get("attachable")
            if name == "commstack-matrix-egress":
                # Outbound for federation, the bridges and ACME; containers cannot talk through it.
                assert not inputs.get("internal") and inputs["options"] == {ICC_OPTION: "false"}
            else:
                assert inputs["internal"] is True, name

    return pulumi.Output.all(network.egress, network.database, network.web["element"]).apply(check)
