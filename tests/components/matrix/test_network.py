"""Network: one private bridge network, parented to the component."""

import pulumi

from components.matrix.network import Network, NetworkArgs


@pulumi.runtime.test
def test_network_is_a_named_bridge_parented_to_the_component(recorded):
    network = Network("matrix-net", NetworkArgs(internal_name="commstack-matrix"))

    def check(name):
        assert name == "commstack-matrix"
        component = recorded.of_type("commstack:matrix:Network")[0]
        (docker_network,) = recorded.of_type("docker:index/network:Network")
        assert docker_network.parent == component.urn
        assert docker_network.name == "matrix-net-bridge"
        inputs = docker_network.plain_inputs
        assert inputs["driver"] == "bridge"
        # Outbound traffic is needed for federation and the bridges.
        assert not inputs.get("internal")
        assert not inputs.get("attachable")

    return network.name.apply(check)
