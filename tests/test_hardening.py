"""The whole program on every committed stack (and one with every feature on): each container is
hardened and on networks of its own, checked on what the program registers."""

from __future__ import annotations

import pytest

from commstack.devtools import offline
from components.settings import SettingsError, known_containers, worker_containers
from policy import rules
from tests.conftest import evaluate

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"


@pytest.fixture(scope="module", params=["dev", "prod", "all", "workers"])
def evaluation(request) -> offline.Evaluation:
    if request.param == "all":
        return evaluate("dev", bridges='["whatsapp","telegram"]', telegramApiId="123456", federationPort="8448")
    if request.param == "workers":  # the specialized preset: every kind of Synapse worker
        return evaluate("dev", bridges='["whatsapp","telegram"]', telegramApiId="123456",
                        synapseWorkers="specialized")
    return evaluate(request.param)


def synapse_workers(ev: offline.Evaluation) -> set[str]:
    """The stack's Synapse worker containers (components/matrix/workers.py), if any."""
    return {name for name in containers(ev) if name.startswith("synapse-") and name != "synapse-redis"}


def containers(ev: offline.Evaluation) -> dict[str, dict]:
    return {reg.plain_inputs["name"]: reg.plain_inputs for reg in ev.of_type(CONTAINER)}


def networks_of(ev: offline.Evaluation) -> dict[str, set[str]]:
    return {name: {n["name"] for n in props.get("networksAdvanced") or []} for name, props in containers(ev).items()}


def network_props(ev: offline.Evaluation) -> dict[str, dict]:
    return {reg.plain_inputs["name"]: reg.plain_inputs for reg in ev.of_type(NETWORK)}


def members(ev: offline.Evaluation, network: str) -> set[str]:
    return {name for name, joined in networks_of(ev).items() if network in joined}


# -- item 5: networks --------------------------------------------------------------------


def test_postgres_shares_networks_only_with_its_clients(evaluation):
    joined = networks_of(evaluation)
    assert joined["postgres"] == {"commstack-matrix-database"}
    bridges = {name for name in joined if name.startswith("bridge-")}
    # The backup job (pg_dump, pg_restore) is a Postgres client too, and so is postgres_exporter (pg_monitor).
    assert members(evaluation, "commstack-matrix-database") == {"postgres", "postgres-init", "synapse", "backup",
                                                                "postgres-exporter", *bridges,
                                                                *synapse_workers(evaluation)}


def test_coturn_is_on_no_internal_network(evaluation):
    nets = network_props(evaluation)
    turn = networks_of(evaluation).get("turn")
    if turn is None:
        pytest.skip("turn is off in this stack")
    # Its metrics network is shared with Prometheus alone (monitoring on).
    assert turn == {"commstack-matrix-egress", "commstack-matrix-metrics-turn"}
    assert members(evaluation, "commstack-matrix-metrics-turn") == {"turn", "prometheus"}
    assert not nets["commstack-matrix-egress"].get("internal")


def test_element_is_reachable_only_from_the_proxy(evaluation):
    joined = networks_of(evaluation)
    for network in joined["element"]:
        assert members(evaluation, network) == {"element", "proxy"}, network


def test_synapse_is_reached_over_http_only_through_the_well_known_nginx(evaluation):
    joined = networks_of(evaluation)
    reach = {peer for network in joined["synapse"] - {"commstack-matrix-egress"} for peer in members(evaluation, network)}
    bridges = {name for name in joined if name.startswith("bridge-")}
    # backup and postgres_exporter: over Postgres; Prometheus: the metrics listener; the alert relay: appservice;
    # its own workers and Redis, and redis_exporter (which reads that Redis): over the replication network.
    processes = synapse_workers(evaluation) | ({"synapse-redis", "redis-exporter"} if synapse_workers(evaluation)
                                               else set())
    assert reach - {"synapse"} == {"postgres", "postgres-init", "backup", "postgres-exporter", "wellknown",
                                   "prometheus", "alert-relay", *bridges, *processes}
    assert "proxy" not in reach and "turn" not in reach and "element" not in reach


def test_networks_without_outside_need_are_internal_and_the_outside_one_isolates(evaluation):
    nets = network_props(evaluation)
    outside = {name for name, props in nets.items() if not props.get("internal")}
    assert outside <= {"commstack-matrix-egress", "signal-local-egress"}
    for name in outside:
        assert nets[name]["options"] == {"com.docker.network.bridge.enable_icc": "false"}, name


def test_dev_signal_containers_are_on_their_own_network(evaluation):
    joined = networks_of(evaluation)
    signal = {name: nets for name, nets in joined.items() if name.startswith("signal-local-")}
    if not signal:
        pytest.skip("no Signal containers in this stack")
    for name, nets in signal.items():
        matrix_nets = {n for n in nets if n.startswith("commstack-matrix-")}
        assert matrix_nets <= {"commstack-matrix-web-signal-server", "commstack-matrix-metrics-signal-server"}, name
        assert "signal-local-net" in nets
    assert members(evaluation, "commstack-matrix-web-signal-server") == {"proxy", "signal-local-server"}
    # blackbox_exporter probes its health check (monitoring on), and nothing else shares that network.
    assert members(evaluation, "commstack-matrix-metrics-signal-server") == {"blackbox-exporter", "signal-local-server"}
    assert members(evaluation, "signal-local-egress") == {"signal-local-server", "signal-local-registration"}


def test_the_policy_pack_finds_no_segmentation_problem(evaluation):
    stack = {name: ([props.get("image") or ""], [n["name"] for n in props.get("networksAdvanced") or []])
             for name, props in containers(evaluation).items()}
    # Image references as the policy sees them (RemoteImage names, built image names).
    images = {reg.urn: reg.plain_inputs.get("name") or reg.plain_inputs.get("imageName")
              for reg in evaluation.registrations if reg.type in (rules.REMOTE_IMAGE, rules.BUILT_IMAGE)}
    for reg in evaluation.of_type(CONTAINER):
        refs = [images[urn] for urn in reg.dependencies if urn in images]
        stack[reg.plain_inputs["name"]] = (refs, stack[reg.plain_inputs["name"]][1])
    assert rules.segmentation_problems(network_props(evaluation), stack) == []


# -- item 6: hardening --------------------------------------------------------------------

# Capabilities each container keeps, and why (the component documents it beside its Hardening).
EXPECTED_CAPABILITIES = {
    "postgres": {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"},  # entrypoint chown/chmod, gosu
    "postgres-init": set(),
    # The major upgrade job: root reads the media for its backup, runuser to postgres for initdb and the new server.
    "postgres-upgrade": {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"},
    "synapse": {"CHOWN", "SETGID", "SETUID"},  # chown of the media volume, gosu
    "wellknown": {"CHOWN", "NET_BIND_SERVICE", "SETGID", "SETUID"},  # nginx master
    "proxy": {"NET_BIND_SERVICE"},  # :80 :443
    "turn": {"NET_BIND_SERVICE"},  # turnserver's file capability must be in the bounding set
    "element": set(),  # nginx as its own user
    "livekit": set(), "lk-jwt-service": set(),  # unprivileged ports, no user switch
    "backup": {"CHOWN", "DAC_OVERRIDE", "FOWNER"},  # root reads the media (991) and restores it with its owners
    "bridge-whatsapp": {"CHOWN", "SETGID", "SETUID"}, "bridge-telegram": {"CHOWN", "SETGID", "SETUID"},
    "signal-local-dynamodb": {"DAC_OVERRIDE"},
    # Run as the redis image's user from the start (components/signal/redis.py REDIS_USER): no chown, no gosu.
    **{f"signal-local-redis-{i}": set() for i in range(6)},
    "signal-local-redis-cluster-create": set(), "signal-local-tables": set(),
    "signal-local-aws-local": {"NET_BIND_SERVICE"},
    "signal-local-registration": set(), "signal-local-server": set(),
    # Monitoring: each runs as its image's user (or root reading only its own files), keeping nothing.
    "prometheus": set(), "alertmanager": set(), "alert-relay": set(), "node-exporter": set(),
    "postgres-exporter": set(), "blackbox-exporter": set(), "redis-exporter": set(), "grafana": set(),
    "grafana-dashboards": set(),
}


def test_every_container_the_program_makes_is_a_known_container(evaluation):
    workers = set(worker_containers("specialized"))
    assert set(containers(evaluation)) <= set(known_containers()) | workers
    assert set(known_containers()) == set(EXPECTED_CAPABILITIES)
    assert synapse_workers(evaluation) | ({"synapse-redis"} if synapse_workers(evaluation) else set()) <= workers


def expected_capabilities(name: str) -> set[str]:
    """A Synapse worker drops to 991 with gosu like the main process; the media worker also chowns its volume;
    their Redis runs as its own user from the start."""
    if name == "synapse-redis":
        return set()
    if name.startswith("synapse-"):
        return {"CHOWN", "SETGID", "SETUID"} if name.startswith("synapse-media-") else {"SETGID", "SETUID"}
    return EXPECTED_CAPABILITIES[name]


def test_every_container_is_confined(evaluation):
    for name, props in containers(evaluation).items():
        assert props["securityOpts"] == ["no-new-privileges:true"], name
        assert props["capabilities"]["drops"] == ["ALL"], name
        assert set(props["capabilities"]["adds"]) == expected_capabilities(name), name
        assert not props.get("privileged"), name
        assert props["memory"] > 0 and props["memorySwap"] == props["memory"], name
        assert props["logDriver"] == "json-file" and props["logOpts"] == {"max-size": "10m", "max-file": "3"}, name
        assert rules.container_hardening_problems(props) == [], name


def _in_a_volume(props: dict, path: str) -> bool:
    return any(path.startswith(v["containerPath"].rstrip("/") + "/") for v in props.get("volumes") or [])


def test_root_is_read_only_wherever_every_upload_goes_into_a_volume(evaluation):
    """Docker refuses uploads into a read-only root but not into a volume (moby daemon/archive.go):
    a container whose uploads all land in volumes (its config dirs) has a read-only root."""
    for name, props in containers(evaluation).items():
        uploads = [u["file"] for u in props.get("uploads") or []]
        assert bool(props.get("readOnly")) is all(_in_a_volume(props, path) for path in uploads), name
        if props.get("readOnly"):
            assert props["tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}, name


# Matrix containers with a read-only root although files are uploaded (into anonymous config volumes),
# and those that run as a user of their own; every other keeps its image's choice, for the reason
# docs/security.md gives.
READ_ONLY_WITH_CONFIG = {"proxy": {"/etc/traefik", "/run/secrets"}, "livekit": {"/etc/livekit"},
                         "lk-jwt-service": {"/etc/lk-jwt-service"}}
NON_ROOT = {"livekit": "65534:65534", "lk-jwt-service": "65534:65534"}


def test_config_dirs_are_fresh_anonymous_volumes_and_the_root_is_read_only():
    ev = evaluate("prod")
    props = containers(ev)
    for name, dirs in READ_ONLY_WITH_CONFIG.items():
        anonymous = {v["containerPath"] for v in props[name].get("volumes") or [] if not v.get("volumeName")}
        assert anonymous == dirs, name
        assert props[name]["readOnly"] is True, name
        assert all(_in_a_volume(props[name], u["file"]) for u in props[name]["uploads"]), name
    for name, user in NON_ROOT.items():
        assert props[name]["user"] == user, name


def test_every_service_has_a_health_check(evaluation):
    for name, props in containers(evaluation).items():
        if props.get("restart") != "no":
            assert (props.get("healthcheck") or {}).get("tests"), name


# Who reads each container's secret files (the user its image runs as).
SECRET_OWNERS = {"postgres": "999", "postgres-init": "0", "backup": "0", "synapse": "991", "proxy": "0", "turn": "65534",
                 "livekit": "65534", "lk-jwt-service": "65534",
                 "bridge-whatsapp": "1337", "bridge-telegram": "1337", "signal-local-aws-local": "0",
                 "signal-local-registration": "10001", "signal-local-server": "0",  # registration: components/signal/registration.py RUN_UID
                 # Monitoring: Alertmanager and postgres_exporter run as nobody, the relay as root of its image.
                 "alertmanager": "65534", "postgres-exporter": "65534", "alert-relay": "0",
                 "grafana": "472", "redis-exporter": "59000"}


def test_every_secret_file_is_0400_or_0600_and_its_readers(evaluation):
    found = 0
    for reg in evaluation.of_type(CONTAINER):
        name = reg.plain_inputs["name"]
        secret_paths = " ".join(offline.secret_paths(reg.inputs))
        for index, upload in enumerate(reg.plain_inputs.get("uploads") or []):
            secret = f"uploads[{index}]" in secret_paths
            if secret or rules.is_secret_file(upload["file"]):
                found += 1
                assert upload.get("permissions") in ("0400", "0600"), (name, upload["file"])
                owner = "991" if name in synapse_workers(evaluation) else "999" if name == "synapse-redis" else SECRET_OWNERS[name]
                assert upload.get("owner") == upload.get("group") == owner, (name, upload["file"])
    assert found


def test_memory_limits_are_a_setting(tmp_path):
    ev = evaluate("dev", containerMemory='{"synapse": "4g", "element": 100}')
    limits = {name: (props["memory"], props["memorySwap"]) for name, props in containers(ev).items()}
    assert limits["synapse"] == (4096, 4096) and limits["element"] == (100, 100)
    assert limits["proxy"] == (256, 256)  # its default
    with pytest.raises(SettingsError) as raised:
        evaluate("dev", containerMemory='{"synaps": "4g"}')
    assert any("commstack:containerMemory: no container is named synaps" in p for p in raised.value.problems)
    with pytest.raises(SettingsError) as raised:
        evaluate("dev", containerMemory='{"synapse": "lots"}')
    assert any("is not a memory size" in p for p in raised.value.problems)


@pytest.mark.parametrize("stack, public_ip, bound", [("dev", None, "127.0.0.1"), ("prod", None, None),
                                                     ("dev", "192.168.1.20", None)])
def test_published_ports_bind_to_loopback_when_the_stack_is_local(stack, public_ip, bound):
    """dev (publicIp 127.0.0.1) publishes nothing on the LAN, its insecure Signal registration
    included; a public or LAN address publishes on every interface (what the firewall or router
    forwards to)."""
    ev = evaluate(stack, **({"publicIp": public_ip} if public_ip else {}))
    published = {name: props["ports"] for name, props in containers(ev).items() if props.get("ports")}
    assert {"proxy", "turn"} <= set(published)
    for name, ports in published.items():
        assert {port.get("ip") for port in ports} == {bound}, (name, ports)
