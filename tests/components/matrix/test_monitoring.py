"""Monitoring as the program renders it: on by default in dev and prod, every metrics endpoint on a private
network shared with its scraper only, nothing published, Prometheus's and Alertmanager's configs, the
alert relay's appservice registration, and the settings' refusals."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from commstack.devtools import offline
from components.matrix import monitoring
from components.matrix.synapse import METRICS_PORT as SYNAPSE_METRICS_PORT
from components.settings import SettingsError
from tests.conftest import evaluate

MONITORING_CONTAINERS = {monitoring.PROMETHEUS, monitoring.ALERTMANAGER, monitoring.RELAY, monitoring.NODE_EXPORTER,
                         monitoring.POSTGRES_EXPORTER, monitoring.BLACKBOX_EXPORTER}


def files(evaluation, container: str) -> dict[str, str]:
    uploads = offline.unwrap(evaluation.container(container).inputs["uploads"])
    return {u["file"]: offline.unwrap(u["content"]) for u in uploads}


def networks(evaluation) -> dict[str, set[str]]:
    """container -> the docker networks it joins."""
    return {reg.plain_inputs["name"]: {n["name"] for n in reg.plain_inputs.get("networksAdvanced") or []}
            for reg in evaluation.of_type("docker:index/container:Container")}


def network_props(evaluation) -> dict[str, dict]:
    return {reg.plain_inputs["name"]: reg.plain_inputs for reg in evaluation.of_type("docker:index/network:Network")}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_on_by_default_and_every_target_scraped_over_its_own_private_network(stack, dev_evaluation, prod_evaluation):
    evaluation = dev_evaluation if stack == "dev" else prod_evaluation
    joined = networks(evaluation)
    props = network_props(evaluation)
    assert MONITORING_CONTAINERS - {monitoring.BLACKBOX_EXPORTER} <= set(joined)
    config = yaml.safe_load(files(evaluation, monitoring.PROMETHEUS)[monitoring.PROMETHEUS_CONFIG])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"synapse", "traefik", "node", "postgres", "prometheus", "alertmanager"} <= set(jobs)
    assert jobs["synapse"]["metrics_path"] == "/_synapse/metrics"
    assert jobs["synapse"]["static_configs"] == [{"targets": [f"synapse:{SYNAPSE_METRICS_PORT}"]}]
    for job in config["scrape_configs"]:
        if job["job_name"] in ("prometheus", "alertmanager") or "params" in job:
            continue
        container = job["static_configs"][0]["targets"][0].split(":")[0]
        shared = joined[container] & joined[monitoring.PROMETHEUS]
        # Exactly one network in common: metrics-<container>, internal, and nobody else on it.
        assert shared == {f"commstack-matrix-metrics-{container}"}, (container, shared)
        network = shared.pop()
        assert props[network]["internal"] is True
        assert {c for c, nets in joined.items() if network in nets} == {container, monitoring.PROMETHEUS}
    assert config["rule_files"] == [monitoring.RULES_PATH]
    assert config["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]
    # The deployed intervals; only the loopback adaptation shortens them.
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "30s"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_no_monitoring_port_is_published_and_the_rest_is_internal(stack, dev_evaluation, prod_evaluation):
    evaluation = dev_evaluation if stack == "dev" else prod_evaluation
    props = network_props(evaluation)
    for reg in evaluation.of_type("docker:index/container:Container"):
        name = reg.plain_inputs["name"]
        if name in MONITORING_CONTAINERS:
            assert not reg.plain_inputs.get("ports"), name
            nets = {n["name"] for n in reg.plain_inputs.get("networksAdvanced") or []}
            outside = {n for n in nets if not props[n]["internal"]}
            assert outside == set(), (name, outside)  # no e-mail set: Alertmanager needs no egress either
    # Synapse's metrics listener, Traefik's and LiveKit's metrics ports: none is published.
    for name in ("synapse", "proxy", "livekit", "turn"):
        published = {p["external"] for p in evaluation.container(name).plain_inputs.get("ports") or []}
        assert not published & {SYNAPSE_METRICS_PORT, 8083, 6789, 9641}, name


def test_metrics_endpoints_are_switched_on_in_each_program(dev_evaluation):
    homeserver = yaml.safe_load(files(dev_evaluation, "synapse")["/data/homeserver.yaml"])
    assert homeserver["enable_metrics"] is True
    metrics = [l for l in homeserver["listeners"] if l["type"] == "metrics"]
    assert metrics == [{"port": SYNAPSE_METRICS_PORT, "type": "metrics", "tls": False, "bind_addresses": ["0.0.0.0"]}]
    traefik = yaml.safe_load(files(dev_evaluation, "proxy")["/etc/traefik/traefik.yml"])
    assert traefik["metrics"]["prometheus"]["entryPoint"] == "metrics"
    livekit = yaml.safe_load(next(v for k, v in files(dev_evaluation, "livekit").items() if k.endswith(".yaml")))
    assert livekit["prometheus"] == {"port": 6789}
    assert "\nprometheus\n" in files(dev_evaluation, "turn")["/etc/coturn/turnserver.conf"]
    # The backup job writes its status into the volume node_exporter reads.
    backup_env = files(dev_evaluation, "backup")["/commstack/env.sh"]
    assert "export METRICS_DIR=/metrics" in backup_env
    mounts = {v["containerPath"]: v for v in dev_evaluation.container("node-exporter").plain_inputs["volumes"]}
    assert mounts[monitoring.TEXTFILE_DIR]["readOnly"] is True and mounts[monitoring.HOST_ROOT]["readOnly"] is True


def test_monitoring_off_leaves_no_trace():
    evaluation = evaluate("dev", monitoring="false")
    names = {reg.plain_inputs["name"] for reg in evaluation.of_type("docker:index/container:Container")}
    assert not names & MONITORING_CONTAINERS
    homeserver = yaml.safe_load(files(evaluation, "synapse")["/data/homeserver.yaml"])
    assert homeserver["enable_metrics"] is False
    assert [l["type"] for l in homeserver["listeners"]] == ["http"]
    assert not any("alert-relay" in path for path in homeserver["app_service_config_files"])
    assert "metrics" not in yaml.safe_load(files(evaluation, "proxy")["/etc/traefik/traefik.yml"])
    assert not [n for n in network_props(evaluation) if "metrics" in n or "alerting" in n]
    assert "alertRoom" not in evaluation.stack_outputs


def test_alerts_go_to_the_relay_grouped_and_resolved(dev_evaluation):
    config = yaml.safe_load(files(dev_evaluation, monitoring.ALERTMANAGER)[monitoring.ALERTMANAGER_CONFIG])
    route = config["route"]
    assert route["group_by"] == ["alertname", "job"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("30s", "5m", "12h")
    (webhook,) = config["receivers"][0]["webhook_configs"]
    assert webhook["url"] == "http://alert-relay:8080/alerts" and webhook["send_resolved"] is True
    assert webhook["http_config"]["authorization"]["credentials_file"] == monitoring.RELAY_TOKEN_PATH
    assert "email_configs" not in config["receivers"][0] and "global" not in config
    # The relay and Alertmanager share the webhook token; both files are secret.
    relay = files(dev_evaluation, monitoring.RELAY)
    assert relay[monitoring.RELAY_WEBHOOK_TOKEN_PATH] == files(dev_evaluation, monitoring.ALERTMANAGER)[monitoring.RELAY_TOKEN_PATH]
    assert len(relay[monitoring.RELAY_WEBHOOK_TOKEN_PATH]) >= 32
    # No gossip port: clustering off.
    command = dev_evaluation.container(monitoring.ALERTMANAGER).plain_inputs["command"]
    assert "--cluster.listen-address=" in command


def test_the_relay_is_an_appservice_with_only_its_bot_and_room(dev_evaluation):
    synapse = files(dev_evaluation, "synapse")
    registration = yaml.safe_load(synapse[monitoring.RELAY_REGISTRATION_PATH])
    assert registration["url"] is None and registration["sender_localpart"] == "alertbot"
    assert registration["namespaces"]["users"] == [{"regex": r"^@alertbot:commstack\.localhost$", "exclusive": True}]
    assert registration["namespaces"]["aliases"] == [{"regex": r"^#alerts:commstack\.localhost$", "exclusive": True}]
    homeserver = yaml.safe_load(synapse["/data/homeserver.yaml"])
    assert monitoring.RELAY_REGISTRATION_PATH in homeserver["app_service_config_files"]
    relay = files(dev_evaluation, monitoring.RELAY)
    assert relay[monitoring.RELAY_AS_TOKEN_PATH] == registration["as_token"]
    config = json.loads(relay[monitoring.RELAY_CONFIG])
    assert config["recipients"] == ["@admin:commstack.localhost"]  # the default: create-admin's user
    assert config["homeserver"] == "http://synapse:8008"
    assert dev_evaluation.stack_outputs["alertRoom"] == "#alerts:commstack.localhost"


def test_alert_recipients_are_a_setting():
    evaluation = evaluate("dev", alertRecipients='["@alice:commstack.localhost", "@bob:example.org"]')
    config = json.loads(files(evaluation, monitoring.RELAY)[monitoring.RELAY_CONFIG])
    assert config["recipients"] == ["@alice:commstack.localhost", "@bob:example.org"]


@pytest.mark.parametrize("overrides, key, fragment", [
    ({"alertRecipients": '["alice"]'}, "commstack:alertRecipients", "not Matrix user IDs"),
    ({"alertRecipients": '["@Alice:example.org"]'}, "commstack:alertRecipients", "not Matrix user IDs"),
    ({"alertRecipients": '"@alice:example.org"'}, "commstack:alertRecipients", "must be a JSON list of strings"),
    ({"alertEmails": '["not-an-address"]'}, "commstack:alertEmails", "not e-mail addresses"),
    ({"monitoring": "maybe"}, "commstack:monitoring", "must be true or false"),
    ({"monitoring": "false", "grafana": "true"}, "commstack:grafana", "needs commstack:monitoring true"),
])
def test_bad_monitoring_settings_are_refused_with_a_fix(overrides, key, fragment):
    with pytest.raises(SettingsError) as raised:
        evaluate("dev", **overrides)
    problems = [p for p in raised.value.problems if p.startswith(key)]
    assert problems and fragment in problems[0], raised.value.problems
    assert "Fix: pulumi config set " + key in problems[0] or "Fix: pulumi config rm " + key in problems[0]


def test_rules_follow_the_stack():
    rules = monitoring.render_alert_rules(jobs=["synapse", "node"], backup=False)
    names = {rule["alert"] for rule in rules["groups"][0]["rules"]}
    assert names == {"TargetDown", "DiskAlmostFull", "SynapseFederationSendingFailing", "SynapseEventProcessingLagging"}
    for rule in rules["groups"][0]["rules"]:
        assert set(rule["annotations"]) == {"summary", "runbook"} and rule["labels"]["severity"] in ("warning", "critical")


def _relay_module():
    spec = importlib.util.spec_from_file_location("matrix_relay", monitoring.RELAY_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_relay_renders_firing_and_resolved_notifications():
    relay = _relay_module()
    payload = {"status": "firing", "groupLabels": {"alertname": "BridgeDown"}, "alerts": [
        {"status": "firing", "labels": {"alertname": "BridgeDown"},
         "annotations": {"summary": "The bridge-whatsapp bridge does not answer <its> health check",
                         "runbook": "`docker logs bridge-whatsapp`"}}]}
    body, formatted = relay.render(payload)
    assert body.splitlines()[0] == "[FIRING] BridgeDown"
    assert "what to do: `docker logs bridge-whatsapp`" in body
    assert "&lt;its&gt;" in formatted and "<its>" not in formatted
    body, _ = relay.render({**payload, "status": "resolved", "alerts": [{**payload["alerts"][0], "status": "resolved"}]})
    assert body.splitlines()[0] == "[RESOLVED] BridgeDown" and "what to do" not in body


# -- outgoing e-mail (commstack:smtp*) ------------------------------------------------------------------

SMTP = {"smtpHost": "smtp.example.org", "smtpFrom": "matrix@example.org", "smtpUser": "matrix@example.org"}


def _with_password(**overrides):
    from tests.conftest import stack_config

    config = stack_config("dev", **{**SMTP, **overrides})
    config["commstack:smtpPassword"] = "smtp-secret-0123456789"
    return evaluate("dev", config=config)


def test_smtp_settings_reach_synapse_and_alertmanager():
    evaluation = _with_password(alertEmails='["ops@example.org"]')
    homeserver = yaml.safe_load(files(evaluation, "synapse")["/data/homeserver.yaml"])
    assert homeserver["email"] == {
        "smtp_host": "smtp.example.org", "smtp_port": 587, "force_tls": False, "require_transport_security": True,
        "enable_tls": True, "notif_from": "%(app)s <matrix@example.org>", "enable_notifs": True,
        "notif_for_new_users": True, "validation_token_lifetime": "1h", "smtp_user": "matrix@example.org",
        "smtp_pass": "smtp-secret-0123456789", "client_base_url": "https://element.commstack.localhost/"}
    am_files = files(evaluation, monitoring.ALERTMANAGER)
    config = yaml.safe_load(am_files[monitoring.ALERTMANAGER_CONFIG])
    assert config["global"] == {"smtp_smarthost": "smtp.example.org:587", "smtp_from": "matrix@example.org",
                                "smtp_require_tls": True, "smtp_force_implicit_tls": False,
                                "smtp_auth_username": "matrix@example.org",
                                "smtp_auth_password_file": monitoring.SMTP_PASSWORD_PATH}
    assert config["receivers"][0]["email_configs"] == [{"to": "ops@example.org", "send_resolved": True}]
    assert am_files[monitoring.SMTP_PASSWORD_PATH] == "smtp-secret-0123456789"
    # The password stays secret: in the files it is a secret output, never in Alertmanager's YAML.
    assert "smtp-secret" not in am_files[monitoring.ALERTMANAGER_CONFIG]
    secret_paths = " ".join(offline.secret_paths(evaluation.container(monitoring.ALERTMANAGER).inputs))
    assert "uploads" in secret_paths
    # Alertmanager reaches the SMTP server through the egress network, now that it mails.
    assert "commstack-matrix-egress" in networks(evaluation)[monitoring.ALERTMANAGER]


def test_implicit_tls_and_no_login():
    evaluation = evaluate("dev", smtpHost="mail.example.org", smtpFrom="m@example.org", smtpTls="tls", smtpPort="465")
    email = yaml.safe_load(files(evaluation, "synapse")["/data/homeserver.yaml"])["email"]
    assert (email["force_tls"], email["require_transport_security"], email["smtp_port"]) == (True, False, 465)
    assert "smtp_user" not in email and "smtp_pass" not in email


def test_no_smtp_no_email_section(dev_evaluation):
    assert "email" not in yaml.safe_load(files(dev_evaluation, "synapse")["/data/homeserver.yaml"])


@pytest.mark.parametrize("overrides, key, fragment", [
    ({"smtpHost": "smtp example.org", "smtpFrom": "m@example.org"}, "commstack:smtpHost", "not a host name"),
    ({"smtpHost": "smtp.example.org"}, "commstack:smtpFrom", "is required with smtpHost"),
    ({"smtpHost": "smtp.example.org", "smtpFrom": "not-an-address"}, "commstack:smtpFrom", "not an e-mail address"),
    ({"smtpHost": "smtp.example.org", "smtpFrom": "m@example.org", "smtpPort": "70000"}, "commstack:smtpPort",
     "is out of range: a TCP port"),
    ({"smtpHost": "smtp.example.org", "smtpFrom": "m@example.org", "smtpTls": "none"}, "commstack:smtpTls",
     "must be one of starttls, tls"),
    ({"smtpHost": "smtp.example.org", "smtpFrom": "m@example.org", "smtpTls": "tls"}, "commstack:smtpPort",
     "587 is the STARTTLS port"),
    ({"smtpHost": "smtp.example.org", "smtpFrom": "m@example.org", "smtpUser": "u"}, "commstack:smtpPassword",
     "is required with smtpUser"),
    ({"smtpFrom": "m@example.org"}, "commstack:smtpFrom", "is set, but smtpHost is empty, so e-mail is off"),
    ({"alertEmails": '["ops@example.org"]'}, "commstack:alertEmails", "needs outgoing e-mail"),
])
def test_bad_smtp_settings_are_refused_with_a_fix(overrides, key, fragment):
    with pytest.raises(SettingsError) as raised:
        evaluate("dev", **overrides)
    problems = [p for p in raised.value.problems if p.startswith(key)]
    assert problems and fragment in problems[0], raised.value.problems
    assert "Fix: pulumi config set " in problems[0] or "Fix: pulumi config rm " in problems[0]


def test_grafana_only_when_asked_with_the_pinned_synapse_dashboard(dev_evaluation):
    from components.common import image

    names = {reg.plain_inputs["name"] for reg in dev_evaluation.of_type("docker:index/container:Container")}
    assert not names & {monitoring.GRAFANA, monitoring.GRAFANA_DASHBOARDS_JOB}  # off by default
    evaluation = evaluate("dev", grafana="true")
    job = evaluation.container(monitoring.GRAFANA_DASHBOARDS_JOB).plain_inputs
    tag = image("synapse").rpartition(":")[2]
    assert f"https://raw.githubusercontent.com/element-hq/synapse/{tag}/contrib/grafana/synapse.json" in job["command"]
    assert job["restart"] == "no"
    grafana = evaluation.container(monitoring.GRAFANA).plain_inputs
    assert not grafana.get("ports")
    envs = dict(e.split("=", 1) for e in offline.unwrap(evaluation.container(monitoring.GRAFANA).inputs["envs"]))
    assert envs["GF_SERVER_ROOT_URL"] == "https://matrix.commstack.localhost/grafana/"
    assert envs["GF_METRICS_ENABLED"] == "false" and envs["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    provisioning = files(evaluation, monitoring.GRAFANA)
    datasource = yaml.safe_load(provisioning[f"{monitoring.GRAFANA_PROVISIONING}/datasources/commstack.yaml"])
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    # Reached through Traefik under /grafana on the matrix host, and Prometheus over its own network.
    dynamic = yaml.safe_load(files(evaluation, "proxy")["/etc/traefik/dynamic.yml"])
    rules = [router["rule"] for router in dynamic["http"]["routers"].values()]
    assert any("PathPrefix(`/grafana`)" in rule and "matrix.commstack.localhost" in rule for rule in rules)
    joined = networks(evaluation)
    assert joined[monitoring.GRAFANA] & joined[monitoring.PROMETHEUS] == {"commstack-matrix-metrics-grafana"}
    assert "grafanaAdminPassword" in evaluation.stack_outputs
    # Not a scrape target: its own /metrics stays closed.
    config = yaml.safe_load(files(evaluation, monitoring.PROMETHEUS)[monitoring.PROMETHEUS_CONFIG])
    assert "grafana" not in {job["job_name"] for job in config["scrape_configs"]}


def test_every_synapse_process_is_scraped_over_its_own_network():
    evaluation = evaluate("dev", synapseWorkers="balanced")
    workers = sorted(reg.plain_inputs["name"] for reg in evaluation.of_type("docker:index/container:Container")
                     if reg.plain_inputs["name"].startswith("synapse-") and reg.plain_inputs["name"] != "synapse-redis")
    assert workers
    config = yaml.safe_load(files(evaluation, monitoring.PROMETHEUS)[monitoring.PROMETHEUS_CONFIG])
    (synapse_job,) = [job for job in config["scrape_configs"] if job["job_name"] == "synapse"]
    (group,) = synapse_job["static_configs"]
    assert sorted(group["targets"]) == sorted([f"synapse:{SYNAPSE_METRICS_PORT}",
                                               *(f"{w}:{SYNAPSE_METRICS_PORT}" for w in workers)])
    joined = networks(evaluation)
    for worker in workers:
        worker_config = yaml.safe_load(files(evaluation, worker)["/data/homeserver.yaml"])
        assert {"port": SYNAPSE_METRICS_PORT, "type": "metrics", "tls": False,
                "bind_addresses": ["0.0.0.0"]} in worker_config["worker_listeners"]
        assert joined[worker] & joined[monitoring.PROMETHEUS] == {f"commstack-matrix-metrics-{worker}"}


def test_the_workers_redis_is_watched_with_its_password_in_a_file():
    evaluation = evaluate("dev", synapseWorkers="balanced")
    exporter = evaluation.container(monitoring.REDIS_EXPORTER).plain_inputs
    assert exporter["command"] == ["--redis.addr=redis://synapse-redis:6379",
                                   f"--redis.password-file={monitoring.REDIS_PASSWORD_FILE}",
                                   f"--web.listen-address=:{monitoring.REDIS_EXPORTER_PORT}"]
    passwords = json.loads(files(evaluation, monitoring.REDIS_EXPORTER)[monitoring.REDIS_PASSWORD_FILE])
    redis_conf = next(v for k, v in files(evaluation, "synapse-redis").items() if k.endswith(".conf"))
    assert f'requirepass "{passwords["redis://synapse-redis:6379"]}"' in redis_conf or \
        f"requirepass {passwords['redis://synapse-redis:6379']}" in redis_conf
    assert "envs" not in exporter or not exporter["envs"]
    joined = networks(evaluation)
    assert joined[monitoring.REDIS_EXPORTER] & joined["synapse-redis"] == {"commstack-matrix-replication"}
    assert joined[monitoring.REDIS_EXPORTER] & joined[monitoring.PROMETHEUS] == {"commstack-matrix-metrics-redis-exporter"}
    rules = yaml.safe_load(files(evaluation, monitoring.PROMETHEUS)[monitoring.RULES_PATH])
    assert "RedisDown" in {rule["alert"] for rule in rules["groups"][0]["rules"]}
    # No workers, no Redis, no exporter.
    names = {reg.plain_inputs["name"] for reg in evaluate("dev").of_type("docker:index/container:Container")}
    assert monitoring.REDIS_EXPORTER not in names
