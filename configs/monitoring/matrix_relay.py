"""commstack's alert relay: Alertmanager's webhook in, Matrix messages out (standard library only).

It runs as an application service of Synapse (its registration gives it the exclusive user
@<bot_localpart> and the alias #<room_alias_localpart>), so it needs neither a password nor admin
rights. At start it registers its bot (once), creates the alert room if the alias does not resolve
(private, invite only, not encrypted: the relay has no crypto), and invites every recipient who is not
in it yet. Then it serves:

    POST /alerts   Alertmanager's webhook (version 4), with `Authorization: Bearer <webhook token>`:
                   one m.notice per notification, firing or resolved, with each alert's summary and
                   runbook hint.
    GET  /health   200 once the room is ready.

Why our own: see components/matrix/monitoring.py. Alertmanager's webhook payload:
prometheus/alertmanager docs/configuration.md (<webhook_config>); the Matrix calls: the client-server
API (register with m.login.application_service, directory lookups, createRoom, invite, send).
"""

from __future__ import annotations

import hmac
import html
import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20  # Alertmanager's payloads are small; refuse anything larger


class MatrixError(RuntimeError):
    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body
        super().__init__(f"{status} {body.get('errcode', '')}: {body.get('error', body)}")


class Matrix:
    def __init__(self, homeserver: str, as_token: str, user_id: str):
        self.homeserver, self.as_token, self.user_id = homeserver.rstrip("/"), as_token, user_id

    def call(self, method: str, path: str, body: dict | None = None, as_user: bool = True) -> dict:
        query = "?" + urllib.parse.urlencode({"user_id": self.user_id}) if as_user else ""
        request = urllib.request.Request(
            self.homeserver + path + query, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.as_token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            try:
                detail = json.loads(err.read() or b"{}")
            except ValueError:
                detail = {}
            raise MatrixError(err.code, detail) from None


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def ensure_room(matrix: Matrix, config: dict) -> str:
    """Registers the bot if new, finds or creates the alert room (invites follow: invite_missing)."""
    try:
        matrix.call("POST", "/_matrix/client/v3/register",
                    {"type": "m.login.application_service", "username": config["bot_localpart"]}, as_user=False)
    except MatrixError as err:
        if err.body.get("errcode") != "M_USER_IN_USE":
            raise
    alias = f"#{config['room_alias_localpart']}:{config['server_name']}"
    try:
        room_id = matrix.call("GET", f"/_matrix/client/v3/directory/room/{quote(alias)}")["room_id"]
    except MatrixError as err:
        if err.status != 404:
            raise
        room_id = matrix.call("POST", "/_matrix/client/v3/createRoom", {
            "preset": "private_chat", "visibility": "private", "name": config["room_name"],
            "topic": "Alerts from this stack's Prometheus, through Alertmanager. Silence one in Alertmanager "
                     "(see docs/monitoring.md).",
            "room_alias_name": config["room_alias_localpart"],
        })["room_id"]
    return room_id


def invite_missing(matrix: Matrix, room_id: str, recipients: list) -> list:
    """Invites each recipient not in the room (joined or invited); returns those still missing. A
    recipient who does not exist yet (the admin `create-admin` makes after the first deploy) is invited
    by a later call: the relay calls this again before each notification until nobody is missing."""
    members = matrix.call("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/members")
    present = {event["state_key"] for event in members.get("chunk", [])
               if event.get("content", {}).get("membership") in ("join", "invite")}
    missing = []
    for user in recipients:
        if user in present:
            continue
        try:
            matrix.call("POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite", {"user_id": user})
        except MatrixError as err:  # an unknown or banned user must not stop the alerts
            print(f"cannot invite {user} yet: {err}", file=sys.stderr, flush=True)
            missing.append(user)
    return missing


def render(payload: dict) -> tuple[str, str]:
    """(plain body, HTML) for one Alertmanager notification."""
    status = payload.get("status", "firing")
    alerts = payload.get("alerts", [])
    name = payload.get("groupLabels", {}).get("alertname") or payload.get("commonLabels", {}).get("alertname", "alert")
    head = f"[{status.upper()}] {name}" + (f" ({len(alerts)} alerts)" if len(alerts) > 1 else "")
    lines, items = [head], []
    for alert in alerts:
        annotations, labels = alert.get("annotations", {}), alert.get("labels", {})
        summary = annotations.get("summary") or labels.get("alertname", "")
        state = alert.get("status", status)
        line = f"- {state}: {summary}"
        runbook = annotations.get("runbook", "")
        if runbook and state == "firing":
            line += f"\n  what to do: {runbook}"
        lines.append(line)
        items.append(f"<li><b>{html.escape(state)}</b>: {html.escape(summary)}"
                     + (f"<br/><i>what to do:</i> {html.escape(runbook)}" if runbook and state == "firing" else "")
                     + "</li>")
    return "\n".join(lines), f"<p><b>{html.escape(head)}</b></p><ul>{''.join(items)}</ul>"


def serve(config: dict) -> None:
    as_token = open(config["as_token_file"]).read().strip()
    webhook_token = open(config["webhook_token_file"]).read().strip().encode()
    matrix = Matrix(config["homeserver"], as_token, f"@{config['bot_localpart']}:{config['server_name']}")
    state: dict = {"room_id": None, "missing": list(config["recipients"])}
    lock = threading.Lock()

    def room() -> str:
        with lock:
            if state["room_id"] is None:
                state["room_id"] = ensure_room(matrix, config)
            if state["missing"]:
                state["missing"] = invite_missing(matrix, state["room_id"], state["missing"])
            return state["room_id"]

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code: int, text: str) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path != "/health":
                return self.reply(404, "not found")
            return self.reply(200, "ok") if state["room_id"] else self.reply(503, "room not ready")

        def do_POST(self) -> None:
            if self.path != "/alerts":
                return self.reply(404, "not found")
            given = self.headers.get("Authorization", "").removeprefix("Bearer ").encode()
            if not hmac.compare_digest(given, webhook_token):
                return self.reply(401, "unauthorized")
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                return self.reply(413, "bad length")
            try:
                payload = json.loads(self.rfile.read(length))
                body, formatted = render(payload)
                content = {"msgtype": "m.notice", "body": body, "format": "org.matrix.custom.html",
                           "formatted_body": formatted}
                # Alertmanager retries a failed webhook; a fresh transaction id per delivery attempt.
                matrix.call("PUT", f"/_matrix/client/v3/rooms/{quote(room())}/send/m.room.message/{uuid.uuid4().hex}",
                            content)
            except (ValueError, KeyError, TypeError) as err:
                return self.reply(400, f"bad payload: {err}")
            except (MatrixError, OSError) as err:
                print(f"cannot post to Matrix: {err}", file=sys.stderr, flush=True)
                return self.reply(502, "matrix unavailable")  # Alertmanager will retry
            self.reply(200, "sent")

        def log_message(self, *args) -> None:  # no request logs: the payloads are in Alertmanager's
            pass

    server = ThreadingHTTPServer((config["listen"]["host"], int(config["listen"]["port"])), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    delay = 1.0
    while True:  # Synapse may start after us: keep trying until the room is ready
        try:
            print(f"alert room {room()} ready", flush=True)
            break
        except (MatrixError, OSError) as err:
            print(f"alert room not ready yet ({err}); retrying in {delay:.0f} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    threading.Event().wait()


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        serve(json.load(handle))
