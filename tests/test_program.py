"""The whole program on each committed stack file, on the offline engine."""

import re

import pytest

from commstack.devtools import offline
from components.edge.ports import FEDERATION_PORT, public_ports
from tests.conftest import evaluate

STACKS = offline.committed_stacks()
STATEFUL_TYPES = {
    "docker:index/volume:Volume",
    "aws:dynamodb/table:Table",
    "aws:ssm/parameter:Parameter",
    "aws:s3/bucketV2:BucketV2",
    "aws:s3/bucket:Bucket",
}


@pytest.fixture(scope="module", params=STACKS)
def evaluation(request):
    return evaluate(request.param)


def generated_secret_values(ev: offline.Evaluation) -> set[str]:
    """Every value the emulated providers generated as a secret (passwords, keys, tokens)."""
    values = set()
    for reg in ev.registrations:
        for key, value in reg.outputs.items():
            if offline.is_secret(value) and key not in reg.inputs:
                plain = offline.unwrap(value)
                if isinstance(plain, str) and len(plain) >= 8:
                    values.add(plain)
    return values


def walk_strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from walk_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_strings(v)


def test_committed_stacks_are_dev_and_prod():
    assert {"dev", "prod"} <= set(STACKS)


def test_program_registers_resources(evaluation):
    assert len(evaluation.registrations) > 20


def test_component_type_tokens_follow_the_convention(evaluation):
    components = [r for r in evaluation.registrations if not r.custom]
    assert components
    for reg in components:
        assert re.fullmatch(r"commstack:(matrix|signal|edge):[A-Z][A-Za-z]+", reg.type), reg.type


def test_every_resource_has_a_component_parent(evaluation):
    component_urns = {r.urn for r in evaluation.registrations if not r.custom}
    for reg in evaluation.registrations:
        if reg.type.startswith("pulumi:providers:"):
            continue
        if reg.custom:
            assert reg.parent in component_urns, f"{reg.type} {reg.name} is not parented to a component"


def test_child_names_derive_from_their_parent_component(evaluation):
    # Pulumi's component guideline: names stay unique when a component is instantiated twice.
    components = {r.urn: r for r in evaluation.registrations if not r.custom}
    children = [r for r in evaluation.registrations if r.parent in components]
    assert any(r.custom for r in children)
    for reg in children:
        parent = components[reg.parent].name
        assert reg.name.startswith(f"{parent}-"), f"{reg.type} {reg.name} does not start with {parent}-"


def test_no_generated_secret_reaches_a_non_secret_input_or_output(evaluation):
    secrets = generated_secret_values(evaluation)
    assert secrets, "the program generated no secrets?"
    for reg in evaluation.registrations:
        for where, data in (("input", reg.inputs), ("output", reg.outputs)):
            for text in walk_strings(offline.strip_secrets(data)):
                leaked = [s for s in secrets if s in text]
                assert not leaked, f"{reg.type} {reg.name}: a generated secret is in a plain {where}"
    for text in walk_strings(offline.strip_secrets(evaluation.stack_outputs)):
        assert not [s for s in secrets if s in text], "a generated secret is in a plain stack output"


def test_shared_secret_output_is_secret(evaluation):
    assert offline.is_secret(evaluation.stack_outputs["registrationSharedSecret"])


def test_only_listed_ports_are_published(evaluation):
    allowed = {(n, proto) for p in public_ports() for n in p.numbers() for proto in p.protocols}
    if offline.stack_config(evaluation.stack).get("commstack:federationPort") == "8448":
        allowed |= {(FEDERATION_PORT, "tcp")}
    for reg in evaluation.of_type("docker:index/container:Container"):
        for port in reg.plain_inputs.get("ports") or []:
            published = (int(port.get("external", port["internal"])), port.get("protocol", "tcp"))
            assert published in allowed, f"{reg.name} publishes {published}"


def test_stateful_resources_are_protected(evaluation):
    stateful = [r for r in evaluation.registrations if r.type in STATEFUL_TYPES]
    assert stateful
    for reg in stateful:
        assert reg.protect is True, f"{reg.type} {reg.name} is not protected"


def test_images_are_pinned(evaluation):
    for reg in evaluation.of_type("docker:index/remoteImage:RemoteImage"):
        name = reg.plain_inputs["name"]
        assert ":" in name.rsplit("/", 1)[-1] and not name.endswith(":latest"), name


def test_bridge_tokens_output_is_secret_and_matches_each_registration(evaluation):
    import yaml

    tokens = evaluation.stack_outputs["bridgeTokens"]
    assert offline.is_secret(tokens)
    synapse = evaluation.container("synapse")
    registrations = {u["file"]: yaml.safe_load(u["content"]) for u in synapse.plain_inputs["uploads"]
                     if u["file"].startswith("/data/appservices/")}
    # The bridges' (doctor pings each); not the alert relay's, which has no URL to ping.
    expected = {doc["id"]: doc["as_token"] for doc in registrations.values() if doc["url"] is not None}
    assert expected and offline.unwrap(tokens) == expected


def test_signal_health_url_is_the_chat_host(evaluation):
    domain = offline.stack_config(evaluation.stack)["commstack:domain"]
    assert evaluation.plain_stack_outputs["signalHealthUrl"] == f"https://chat.{domain}/v1/accounts/whoami"


def test_aws_resources_use_the_tagged_regional_provider():
    ev = evaluate("prod")
    providers = ev.of_type("pulumi:providers:aws")
    assert len(providers) == 1
    provider = providers[0]
    assert provider.plain_inputs["region"] == offline.stack_config("prod")["aws:region"]
    import json

    tags = provider.plain_inputs["defaultTags"]
    tags = json.loads(tags) if isinstance(tags, str) else tags  # providers take nested config as JSON
    assert tags["tags"] == {"commstack:project": "commstack", "commstack:stack": "prod"}
    aws_resources = [r for r in ev.registrations if r.type.startswith("aws:")]
    assert aws_resources
    for reg in aws_resources:
        assert reg.provider.startswith(provider.urn), f"{reg.type} {reg.name} uses another AWS provider"


def test_doctor_finds_everything_it_checks_in_the_stack_outputs(evaluation):
    import argparse

    from commstack.checks import doctor

    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    args = parser.parse_args(["--stack", evaluation.stack])
    target = doctor.target_from_args(args, outputs=lambda stack: evaluation.plain_stack_outputs)
    outputs = evaluation.plain_stack_outputs
    config = offline.stack_config(evaluation.stack)
    assert target.server_name == config["commstack:domain"]
    assert target.homeserver_url == outputs["homeserverUrl"]
    assert target.public_ip == config["commstack:publicIp"]
    assert target.turn_uris and target.turn_uris == outputs["turnUris"]
    assert target.shared_secret == outputs["registrationSharedSecret"]
    assert set(target.bridges) == set(json_list(config["commstack:bridges"]))
    assert target.signal_health_url == outputs["signalHealthUrl"]


def json_list(text):
    import json

    return json.loads(text)


def test_dev_routes_the_signal_api_through_the_proxy_to_the_server():
    """On the Docker target chat.<domain> is served by Traefik, and the server is on Traefik's network."""
    import yaml

    ev = evaluate("dev")
    domain = offline.stack_config("dev")["commstack:domain"]
    proxy = ev.container("proxy")
    dynamic = yaml.safe_load(next(u["content"] for u in proxy.plain_inputs["uploads"]
                                  if u["file"].endswith("dynamic.yml")))
    routers = dynamic["http"]["routers"]
    chat = [r for r in routers.values() if f"Host(`chat.{domain}`)" in r["rule"]]
    assert len(chat) == 1
    upstream = dynamic["http"]["services"][chat[0]["service"]]["loadBalancer"]["servers"][0]["url"]
    assert upstream == "http://signal-server:8080"

    # On the proxy's own network with the server (web-signal-server), and only there.
    network = next(r for r in ev.of_type("docker:index/network:Network") if r.name == "matrix-network-web-signal-server")
    server = ev.container("signal-local-server")
    joined = {n["name"]: n.get("aliases") for n in server.plain_inputs["networksAdvanced"]}
    assert joined[network.plain_outputs["name"]] == ["signal-server"]
    proxy_networks = {n["name"] for n in proxy.plain_inputs["networksAdvanced"]}
    assert network.plain_outputs["name"] in proxy_networks
    # and the self-signed certificate covers the new host
    cert_hosts = [r for r in ev.of_type("tls:index/selfSignedCert:SelfSignedCert") if r.parent.endswith("matrix-proxy")]
    assert cert_hosts and f"chat.{domain}" in cert_hosts[0].plain_inputs["dnsNames"]


def test_aws_target_adds_no_proxy_route_for_signal():
    import yaml

    ev = evaluate("prod")
    proxy = ev.container("proxy")
    dynamic = next(u["content"] for u in proxy.plain_inputs["uploads"] if u["file"].endswith("dynamic.yml"))
    assert "chat." not in dynamic


def test_no_container_takes_a_secret_in_its_environment_or_command(evaluation):
    """Env vars and commands show in `docker inspect` and `ps` on the host; secrets go in files."""
    for reg in evaluation.of_type("docker:index/container:Container"):
        for field in ("envs", "command", "entrypoints"):
            assert not offline.secret_paths({field: reg.inputs.get(field)}), f"{reg.plain_inputs['name']}: secret in {field}"


# The Docker names of an existing stack's volumes, as deployed before commstack:volumeNames existed: any
# change would replace a protected volume, so it must never happen.
# Monitoring (on by default): metrics history, Alertmanager's silences, the backup job's status.
MONITORING_VOLUMES = {"prometheus-data", "alertmanager-data", "backup-metrics"}
LEGACY_VOLUMES = {
    "dev": {"synapse-media", "postgres-data", "backup-repository", "signal-local-dynamodb-data", "signal-local-secrets",
            *{f"signal-local-redis-{i}-data" for i in range(6)}, *MONITORING_VOLUMES},
    "prod": {"synapse-media", "postgres-data", "matrix-proxy-acme", *MONITORING_VOLUMES},
}


def _volumes(ev) -> dict[str, str]:
    """Pulumi resource name -> Docker volume name."""
    return {reg.name: reg.plain_inputs["name"] for reg in ev.of_type("docker:index/volume:Volume")}


@pytest.mark.parametrize("stack", sorted(LEGACY_VOLUMES))
def test_an_existing_stack_keeps_its_volume_names(stack):
    legacy = _volumes(evaluate(stack))
    assert set(legacy.values()) == LEGACY_VOLUMES[stack]
    assert _volumes(evaluate(stack, volumeNames="legacy")) == legacy


def test_a_new_stack_names_its_volumes_after_itself():
    """Same volume resources (nothing else changes), each Docker name prefixed with the stack's, and every
    container mounts the renamed volume."""
    legacy, scoped_ev = _volumes(evaluate("dev")), evaluate("dev", volumeNames="stack")
    scoped = _volumes(scoped_ev)
    assert scoped == {resource: f"dev-{name}" for resource, name in legacy.items()}
    mounted = {v["volumeName"] for reg in scoped_ev.of_type("docker:index/container:Container")
               for v in reg.plain_inputs.get("volumes") or [] if v.get("volumeName")}
    assert mounted and mounted <= set(scoped.values())


def test_volume_names_refuse_other_values():
    from components.settings import SettingsError

    with pytest.raises(SettingsError) as raised:
        evaluate("dev", volumeNames="scoped")
    assert any("commstack:volumeNames: must be one of legacy, stack" in p for p in raised.value.problems)
