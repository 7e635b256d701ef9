"""`python -m commstack registration-token --stack NAME`: issue a registration token.

For stacks with `registration: token`, where a new user needs a token an admin
issued. Synapse's admin API (docs/usage/administration/admin_api/registration_tokens.md,
`POST /_synapse/admin/v1/registration_tokens/new`) is not published, so the call runs
inside the Synapse container against its own local listener, reached with
`docker exec` over the stack's Docker host connection (commstack.operations.admin.synapse_exec,
the way create-admin runs register_new_matrix_user).
An admin's access token comes from logging in there with the admin's password (read
from the terminal or stdin, handed over on the exec's stdin, never in argv) and is
logged out again; or give one in COMMSTACK_ACCESS_TOKEN.

The token is printed alone on stdout (for scripts); what it allows goes to stderr.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from typing import Any, Optional

from commstack.operations.admin import SYNAPSE_CONTAINER, SYNAPSE_LOCAL_URL, AdminError, stack_outputs, synapse_exec

# Synapse's plain-HTTP listener inside its container (components/matrix/synapse.py HTTP_PORT).
LOCAL_URL = SYNAPSE_LOCAL_URL

# Runs in the Synapse image's Python (standard library only). Reads its request as JSON on
# stdin and prints one JSON line: the step it reached, the HTTP status and the answer.
IN_CONTAINER = r"""
import json, sys, urllib.error, urllib.request
base, request = sys.argv[1].rstrip("/"), json.load(sys.stdin)
def call(method, path, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.load(err)
        except ValueError:
            return err.code, {}
    except OSError as err:
        return 0, {"error": str(err)}
token, logged_in = request.get("access_token"), False
if not token:
    status, body = call("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": request["user"]},
        "password": request["password"], "initial_device_display_name": "commstack registration-token"})
    if status != 200:
        print(json.dumps({"step": "login", "status": status, "body": body}))
        sys.exit(0)
    token, logged_in = body["access_token"], True
try:
    status, body = call("POST", "/_synapse/admin/v1/registration_tokens/new", request["token"], token)
    print(json.dumps({"step": "new", "status": status, "body": body}))
finally:
    if logged_in:
        call("POST", "/_matrix/client/v3/logout", {}, token)
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 <= value <= 3650:
        raise argparse.ArgumentTypeError("must be between 0 (never expires) and 3650 days")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", required=True, help="stack with registration: token")
    parser.add_argument("--user", default="admin", help="an admin's localpart or user id (default: admin)")
    parser.add_argument("--uses", type=_positive_int, default=1, help="how many registrations it allows (default: 1)")
    parser.add_argument("--expires-in", type=_days, default=7.0, metavar="DAYS",
                        help="days until it expires; 0 never (default: 7)")
    parser.add_argument("--password-stdin", action="store_true", help="read the admin's password from stdin")
    parser.add_argument("--container", default=SYNAPSE_CONTAINER, help=argparse.SUPPRESS)


def stack_registration(stack: str) -> str:
    from commstack.devtools import offline

    try:
        config = offline.stack_config(stack)
    except FileNotFoundError as exc:
        raise AdminError(str(exc)) from exc
    return (config.get("commstack:registration") or "closed").strip()


def token_request(args: Any, now: Optional[float] = None) -> dict:
    """The body of registration_tokens/new: uses_allowed and expiry_time (ms since the epoch)."""
    now = time.time() if now is None else now
    body: dict[str, Any] = {"uses_allowed": args.uses}
    if args.expires_in:
        body["expiry_time"] = int((now + args.expires_in * 86400) * 1000)
    return body


def stack_docker_host(stack: str) -> str:
    """The Docker host the stack deployed to (its dockerHost output; empty: the local engine)."""
    outputs = stack_outputs(stack)
    if "dockerHost" not in outputs:
        raise AdminError(f"stack {stack!r} has no dockerHost output; run `pulumi up` first")
    return outputs["dockerHost"] or ""


def issue(args: Any, docker_host: str, password: Optional[str], access_token: Optional[str]) -> dict:
    request = {"user": args.user, "token": token_request(args)}
    if access_token:
        request["access_token"] = access_token
    else:
        request["password"] = password
    done = synapse_exec(docker_host, ["python", "-c", IN_CONTAINER, LOCAL_URL], stdin=json.dumps(request),
                        container=args.container)
    if done.returncode != 0:
        # docker's own complaint (no such container, engine unreachable); never the request.
        raise AdminError(f"`docker exec {args.container}` failed ({done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-300:]}; is the stack deployed (`pulumi up`) "
                         "and its Docker host reachable?")
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AdminError(f"unexpected answer from inside {args.container}: {done.stdout.strip()[-200:]!r}") from None
    body = answer.get("body") or {}
    status = answer.get("status")
    if answer.get("step") == "login" and status != 200:
        hint = ("wrong user or password" if body.get("errcode") == "M_FORBIDDEN"
                else "Synapse did not answer on its local listener" if status == 0 else "see the Synapse log")
        raise AdminError(f"logging in as {args.user!r} failed (HTTP {status} {body.get('errcode', '')}): {hint}")
    if status != 200 or "token" not in body:
        hint = ("that user is not a server admin (create one with create-admin)" if status == 403
                else "see the Synapse log")
        raise AdminError(f"Synapse refused to issue a token (HTTP {status} {body.get('errcode', '')}: "
                         f"{body.get('error', '')}); {hint}")
    return body


def main(args: Any) -> int:
    try:
        registration = stack_registration(args.stack)
        if registration != "token":
            raise AdminError(f"stack {args.stack!r} has registration {registration!r}, where tokens let nobody in; "
                             "first: pulumi config set commstack:registration token && pulumi up")
        docker_host = stack_docker_host(args.stack)
        access_token = os.environ.get("COMMSTACK_ACCESS_TOKEN")
        password = None
        if not access_token:
            password = (sys.stdin.readline().rstrip("\n") if args.password_stdin
                        else getpass.getpass(f"Password of {args.user}: "))
            if not password:
                raise AdminError("no password given")
        token = issue(args, docker_host, password, access_token)
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("error: cancelled", file=sys.stderr)
        return 1
    expiry = token.get("expiry_time")
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expiry / 1000)) if expiry else "never expires"
    print(f"registration token for {token.get('uses_allowed') or 'unlimited'} registration(s), "
          f"{'valid until ' + until if expiry else until}; the new user enters it when registering", file=sys.stderr)
    print(token["token"])
    return 0
