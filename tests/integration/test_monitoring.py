"""The alert pipeline on real programs, inside the harness's one boot: Prometheus scrapes every target the
harness runs; a stopped bridge fires BridgeDown, which Alertmanager hands to the alert relay, which posts
it into the Matrix room where a recipient reads it with matrix-nio; the restarted bridge resolves it the
same way; and the real backup scripts' status for a repository whose newest snapshot is three days old
fires BackupTooOld.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
import yaml
from nio import AsyncClient, JoinResponse, LoginResponse, RoomMessageNotice, SyncResponse

from commstack.operations.admin import register_user
from components.matrix import backup as backup_component
from components.matrix import monitoring
from tests.integration import gobuild, loopback, monitoring_backend
from tests.integration.harness import PG_BIN, wait_until
from tests.integration.loopback import host_path

READER = "alerts-reader"  # harness_config's alertRecipients
ALERT_TIMEOUT = 60.0


def prometheus(harness, path: str, **params) -> dict:
    response = requests.get(f"{monitoring_backend.prometheus_url(harness)}{path}", params=params, timeout=5)
    response.raise_for_status()
    return response.json()["data"]


def firing(harness, alertname: str) -> list[dict]:
    return [a for a in prometheus(harness, "/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def test_every_scrape_target_the_harness_runs_is_up(harness):
    rendered = yaml.safe_load(harness.rendered.text(monitoring.PROMETHEUS, monitoring.PROMETHEUS_CONFIG))
    expected = {job["job_name"] for job in rendered["scrape_configs"]} - set(loopback.NOT_BOOTED_TARGETS)
    assert {"synapse", "traefik", "livekit", "node", "prometheus", "alertmanager", "bridges", "blackbox"} <= expected

    def all_up() -> bool:
        targets = prometheus(harness, "/api/v1/targets")["activeTargets"]
        return {t["labels"]["job"] for t in targets} == expected and all(t["health"] == "up" for t in targets)

    try:
        wait_until("every scrape target up", all_up, timeout=30)
    except Exception:
        targets = prometheus(harness, "/api/v1/targets")["activeTargets"]
        pytest.fail("targets: " + repr([(t["labels"]["job"], t["health"], t.get("lastError")) for t in targets]))
    # Real metrics from each: Synapse's own, Traefik's certificate expiry, LiveKit's, the bridges' probe.
    for query in ("synapse_build_info", "traefik_tls_certs_not_after", "livekit_room_total",
                  'probe_success{job="bridges"}', "node_filesystem_size_bytes", "alertmanager_build_info"):
        assert prometheus(harness, "/api/v1/query", query=query)["result"], query
    # The rendered rules loaded as they are (only `for` shortened).
    groups = prometheus(harness, "/api/v1/rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    rendered_rules = yaml.safe_load(harness.rendered.text(monitoring.PROMETHEUS, monitoring.RULES_PATH))
    assert loaded == {rule["alert"] for group in rendered_rules["groups"] for rule in group["rules"]}


@pytest.fixture(scope="module")
def reader(harness) -> tuple[str, str]:
    """The alert room's recipient (harness_config's alertRecipients): (user id, password)."""
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    password = secrets.token_urlsafe(18)
    return register_user(harness.synapse_url, secret, READER, password, admin=False), password


async def _reader(harness, reader: tuple[str, str]) -> AsyncClient:
    user_id, password = reader
    client = AsyncClient(harness.synapse_url, user_id)
    assert isinstance(await client.login(password), LoginResponse)
    return client


async def _wait_for_notice(client: AsyncClient, prefix: str, seen: list[str], deadline: float) -> str:
    """Syncs (joining the alert room when invited) until an m.notice starting with `prefix` arrives."""
    while time.monotonic() < deadline:
        response = await client.sync(timeout=1000)
        if not isinstance(response, SyncResponse):
            continue
        for room_id in response.rooms.invite:  # the relay invites a recipient before its first notice
            assert isinstance(await client.join(room_id), JoinResponse)
        for room in response.rooms.join.values():
            for event in room.timeline.events:
                if isinstance(event, RoomMessageNotice):
                    seen.append(event.body)
                    if event.body.startswith(prefix):
                        return event.body
    raise AssertionError(f"no notice starting {prefix!r} in the alert room; seen: {seen}")


def test_a_stopped_bridge_alerts_into_the_room_then_resolves(harness, reader):
    assert "whatsapp" in harness.bridges, "the whatsapp bridge is booted in CI"

    async def scenario() -> tuple[str, str]:
        client = await _reader(harness, reader)
        seen: list[str] = []
        try:
            # The relay invited the recipient at its start (a local user may be invited before it exists):
            # the first sync has the invite, and the join gives the room's recent notices (other alerts).
            await _wait_for_notice(client, "[", seen, time.monotonic() + ALERT_TIMEOUT)
            harness.stop_bridge("whatsapp")
            try:
                fired = await _wait_for_notice(client, "[FIRING] BridgeDown", seen, time.monotonic() + ALERT_TIMEOUT)
            finally:
                harness.start_bridge("whatsapp")
            resolved = await _wait_for_notice(client, "[RESOLVED] BridgeDown", seen, time.monotonic() + ALERT_TIMEOUT)
            return fired, resolved
        finally:
            await client.close()

    fired, resolved = asyncio.run(scenario())
    assert "bridge-whatsapp bridge does not answer its health check" in fired
    assert "what to do: `docker logs --tail 100 bridge-whatsapp`" in fired
    assert "resolved: The bridge-whatsapp bridge does not answer its health check" in resolved
    # The room is the stack's own alias, created by the relay.
    alias = f"#{monitoring.ROOM_ALIAS_LOCALPART}:commstack.localhost"
    found = requests.get(f"{harness.synapse_url}/_matrix/client/v3/directory/room/{requests.utils.quote(alias)}",
                         timeout=5)
    assert found.status_code == 200


def test_a_repository_without_a_recent_snapshot_fires_backup_too_old(harness, tmp_path):
    """The backup job's own metrics.sh, with the pinned restic, reads a repository whose newest snapshot
    is three days old and writes its status where node_exporter serves it; the rule fires."""
    restic = gobuild.binary("restic")
    rendered = harness.rendered.files[backup_component.CONTAINER]
    job_root = tmp_path / "backup-job"
    scripts = job_root / "commstack"
    scripts.mkdir(parents=True)
    for script in backup_component.SCRIPTS:
        (scripts / script).write_text(rendered[f"{backup_component.SCRIPTS_DIR}/{script}"])
    env = loopback.backup_env(rendered[backup_component.ENV_PATH], root=harness.root, job_root=job_root,
                              ports=harness.ports, tools=[str(restic.parent), str(PG_BIN)])
    # Into the directory node_exporter's textfile collector reads (the shared volume in Docker).
    env += f"export METRICS_DIR={monitoring_backend.textfile_dir(harness)}\n"
    (scripts / "env.sh").write_text(env)
    password_file = host_path(job_root, "backup", backup_component.PASSWORD_FILE)
    password_file.parent.mkdir(parents=True)
    password_file.write_text(rendered[backup_component.PASSWORD_FILE])
    repository = host_path(job_root, "backup", backup_component.LOCAL_REPOSITORY)
    restic_env = {**os.environ, "RESTIC_REPOSITORY": str(repository), "RESTIC_PASSWORD_FILE": str(password_file)}
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("old")
    three_days_ago = (datetime.now(timezone.utc) - timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S")
    for command in (["init"], ["backup", "--host", backup_component.BACKUP_HOST, "--tag", "commstack",
                               "--time", three_days_ago, str(data)]):
        done = subprocess.run([str(restic), *command], env=restic_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    done = subprocess.run(["sh", str(scripts / "metrics.sh")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    status = (monitoring_backend.textfile_dir(harness) / "backup.prom").read_text()
    newest = int(next(line.split()[1] for line in status.splitlines()
                      if line.startswith("commstack_backup_last_snapshot_timestamp_seconds ")))
    assert abs(time.time() - 3 * 86400 - newest) < 120
    wait_until("BackupTooOld firing", lambda: bool(firing(harness, "BackupTooOld")), timeout=ALERT_TIMEOUT)
    assert not firing(harness, "BackupStatusMissing")
    # A fresh snapshot clears it: the status follows the repository.
    done = subprocess.run([str(restic), "backup", "--host", backup_component.BACKUP_HOST, "--tag", "commstack",
                           str(data)], env=restic_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(["sh", str(scripts / "metrics.sh")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    wait_until("BackupTooOld resolved", lambda: not firing(harness, "BackupTooOld"), timeout=ALERT_TIMEOUT)


def test_doctor_monitoring_rows(harness, reader):
    """doctor's monitoring rows against the harness: Prometheus's targets, and a test alert through the real
    Alertmanager and relay into the room, read through the public chain with the recipient's token (who
    joined the room in the test above)."""
    from commstack.checks import doctor_monitoring

    user_id, password = reader
    session = harness.public()
    base_url = "https://matrix.commstack.localhost"
    login = session.post(f"{base_url}/_matrix/client/v3/login", timeout=10, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}, "password": password})
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    target = doctor_monitoring.MonitoringTarget(
        prometheus_url=monitoring_backend.prometheus_url(harness),
        alertmanager_url=f"http://127.0.0.1:{harness.ports.alertmanager}",
        alert_room=f"#{monitoring.ROOM_ALIAS_LOCALPART}:commstack.localhost", delivery_timeout=ALERT_TIMEOUT)
    rows = {row[0]: row for row in doctor_monitoring.check_monitoring(target, base_url, token, session=harness.public)}
    assert rows["prometheus targets"][1] == "PASS", rows
    assert rows["alert delivery"][1] == "PASS", rows
    assert rows["alert delivery"][2].startswith("a test alert reached #alerts:commstack.localhost")
    # Without a reader's token the delivery row says what it needs; a dead Alertmanager fails it.
    assert doctor_monitoring.check_delivery(target, base_url, None, session=harness.public)[1] == "SKIP"
    from tests.integration.harness import free_port

    dead = doctor_monitoring.MonitoringTarget(prometheus_url=f"http://127.0.0.1:{free_port()}",
                                              alertmanager_url=f"http://127.0.0.1:{free_port()}",
                                              alert_room=target.alert_room, delivery_timeout=5)
    failed = doctor_monitoring.check_monitoring(dead, base_url, token, session=harness.public)
    assert [row[1] for row in failed] == ["FAIL", "FAIL"], failed
    assert "cannot post a test alert" in failed[1][2]
