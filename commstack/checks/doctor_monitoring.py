"""`doctor --monitoring`: is the stack watching itself, and do its alerts arrive?

Two rows:
- `prometheus targets`: every target Prometheus scrapes is up (its /api/v1/targets);
- `alert delivery`: a test alert posted to Alertmanager (/api/v2/alerts) arrives as a message in the
  alert room (the stack's `alertRoom`), read through the public client API with a recipient's access
  token. Alertmanager waits its group_wait (30 s) before the first message of a group, so this row
  takes about half a minute. The test alert is resolved again at once.

Prometheus and Alertmanager are never published, so doctor reaches them either at private URLs
(`--prometheus-url`, `--alertmanager-url`: an SSH tunnel, say) or, by default, inside their containers
over the stack's Docker host connection (`docker exec prometheus wget …`; both images ship busybox's
wget).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Optional
from urllib.parse import quote

import requests

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
TEST_ALERT = "CommstackDoctorTestAlert"
PROMETHEUS_LOCAL = "http://localhost:9090"
ALERTMANAGER_LOCAL = "http://localhost:9093"
EXEC_TIMEOUT = 60
DELIVERY_TIMEOUT = 90.0  # Alertmanager's group_wait (30 s) plus the relay and Synapse


@dataclass
class MonitoringTarget:
    docker_host: Optional[str] = None  # the stack's dockerHost, for `docker exec` (None: DOCKER_HOST/local)
    prometheus_url: Optional[str] = None  # a private URL instead of `docker exec prometheus`
    alertmanager_url: Optional[str] = None
    alert_room: Optional[str] = None  # the stack's alertRoom (#alerts:<domain>)
    delivery_timeout: float = DELIVERY_TIMEOUT


class Unreachable(RuntimeError):
    pass


def _docker_get(docker_host: Optional[str], container: str, url: str, post: Optional[str] = None) -> str:
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    command = ["docker", "exec", container, "wget", "-q", "-O", "-"]
    if post is not None:
        command += ["--header", "Content-Type: application/json", f"--post-data={post}"]
    try:
        done = subprocess.run([*command, url], capture_output=True, text=True, env=env, timeout=EXEC_TIMEOUT)
    except FileNotFoundError as exc:
        raise Unreachable("the Docker CLI is not installed; give --prometheus-url and --alertmanager-url instead") from exc
    except subprocess.TimeoutExpired as exc:
        raise Unreachable(f"`docker exec {container}` did not finish within {EXEC_TIMEOUT} s") from exc
    if done.returncode != 0:
        raise Unreachable(f"`docker exec {container} wget {url}` failed: {(done.stderr or done.stdout).strip()[:200]}")
    return done.stdout


def _fetch(target: MonitoringTarget, which: str, path: str, post: Optional[dict] = None) -> dict | list:
    url = target.prometheus_url if which == "prometheus" else target.alertmanager_url
    body = None if post is None else json.dumps(post)
    if url:
        try:
            if body is None:
                response = requests.get(url.rstrip("/") + path, timeout=10)
            else:
                response = requests.post(url.rstrip("/") + path, data=body, timeout=10,
                                         headers={"Content-Type": "application/json"})
        except requests.RequestException as exc:
            raise Unreachable(f"{url}: {exc}") from exc
        if not response.ok:
            raise Unreachable(f"{url}{path} answered {response.status_code}: {response.text[:200]}")
        text = response.text
    else:
        local = PROMETHEUS_LOCAL if which == "prometheus" else ALERTMANAGER_LOCAL
        text = _docker_get(target.docker_host, which, local + path, post=body)
    return json.loads(text) if text.strip() else {}


def check_targets(target: MonitoringTarget) -> tuple[str, str, str, str]:
    name = "prometheus targets"
    try:
        data = _fetch(target, "prometheus", "/api/v1/targets")
    except (Unreachable, ValueError) as exc:
        return name, FAIL, str(exc), "is the prometheus container running? `docker logs prometheus`"
    active = data.get("data", {}).get("activeTargets", [])
    down = [t for t in active if t.get("health") != "up"]
    if not active:
        return name, FAIL, "Prometheus scrapes nothing", "check /etc/prometheus/prometheus.yml in the container"
    if down:
        detail = "; ".join(f"{t['labels'].get('job')} {t['labels'].get('instance')}: {t.get('health')} "
                           f"{(t.get('lastError') or '')[:80]}".strip() for t in down)
        return name, FAIL, f"{len(down)} of {len(active)} down: {detail}", \
            "`docker ps -a` and `docker logs <container>` for each; the TargetDown alert names them too"
    return name, PASS, f"{len(active)} targets up ({', '.join(sorted({t['labels'].get('job', '') for t in active}))})", ""


def _alert(nonce: str, ends: datetime) -> list[dict]:
    return [{"labels": {"alertname": TEST_ALERT, "severity": "info", "job": "doctor", "doctor_run": nonce},
             "annotations": {"summary": f"commstack doctor test alert {nonce}: the alert path works",
                             "runbook": "nothing to do; doctor resolves it right away"},
             "endsAt": ends.isoformat().replace("+00:00", "Z")}]


def check_delivery(target: MonitoringTarget, base_url: str, access_token: Optional[str],
                   session: Callable[[], requests.Session] = requests.Session) -> tuple[str, str, str, str]:
    """Posts a test alert and waits for it in the alert room (read with a recipient's token)."""
    name = "alert delivery"
    if not target.alert_room:
        return name, SKIP, "the stack has no alertRoom output (monitoring off?)", "pulumi config set commstack:monitoring true"
    if not access_token:
        return name, SKIP, "no access token of an alert room member to read the room with", \
            "COMMSTACK_ACCESS_TOKEN=<a recipient's token> (commstack:alertRecipients)"
    client = session()
    headers = {"Authorization": f"Bearer {access_token}"}
    base = base_url.rstrip("/")
    try:
        found = client.get(f"{base}/_matrix/client/v3/directory/room/{quote(target.alert_room, safe='')}", timeout=10)
    except requests.RequestException as exc:
        return name, FAIL, f"cannot resolve {target.alert_room}: {exc}", "is Synapse up? see the rows above"
    if found.status_code != 200:
        return name, FAIL, f"{target.alert_room} does not resolve ({found.status_code})", \
            "the alert relay creates it at start: `docker logs alert-relay`"
    room_id = found.json()["room_id"]
    nonce = secrets.token_hex(6)
    now = datetime.now(timezone.utc)
    try:
        _fetch(target, "alertmanager", "/api/v2/alerts", post=_alert(nonce, now + timedelta(minutes=10)))
    except (Unreachable, ValueError) as exc:
        return name, FAIL, f"cannot post a test alert: {exc}", "is the alertmanager container running? `docker logs alertmanager`"
    started = time.monotonic()
    try:
        while time.monotonic() - started < target.delivery_timeout:
            messages = client.get(f"{base}/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages",
                                  params={"dir": "b", "limit": 30}, headers=headers, timeout=10)
            if messages.status_code in (401, 403):
                return name, FAIL, f"the token cannot read {target.alert_room} ({messages.status_code})", \
                    "use the token of a recipient who joined the room (commstack:alertRecipients)"
            if messages.ok and any(nonce in (event.get("content", {}).get("body") or "")
                                   for event in messages.json().get("chunk", [])):
                return name, PASS, f"a test alert reached {target.alert_room} in {time.monotonic() - started:.0f} s", ""
            time.sleep(2)
    finally:
        try:  # resolve it: Alertmanager sends the resolved message, and nothing lingers
            _fetch(target, "alertmanager", "/api/v2/alerts", post=_alert(nonce, datetime.now(timezone.utc)))
        except (Unreachable, ValueError):
            pass
    return name, FAIL, f"the test alert did not arrive in {target.alert_room} within {target.delivery_timeout:.0f} s", \
        "`docker logs alertmanager` (webhook errors) and `docker logs alert-relay` (Matrix errors)"


def check_monitoring(target: MonitoringTarget, base_url: Optional[str], access_token: Optional[str],
                     session: Callable[[], requests.Session] = requests.Session) -> list[tuple[str, str, str, str]]:
    rows = [check_targets(target)]
    if base_url:
        rows.append(check_delivery(target, base_url, access_token, session))
    return rows
