"""`python -m commstack create-admin`: the first admin user, without exposing the admin API.

No proxy serves /_synapse/admin (configs/nginx-matrix.conf.tmpl, components/matrix/proxy.py). The
admin path is the Docker host connection instead: `synapse_exec` runs a command inside the Synapse
container over the stack's `dockerHost` (its DOCKER_HOST), and `register_via_docker` runs Synapse's
own `register_new_matrix_user` there against its loopback listener, the way Synapse's docker/README.md
documents. The script reads the shared secret from homeserver.yaml inside the container, so the
secret never leaves the host; the password goes in on stdin, never on a command line.

`register` is the same shared-secret registration over HTTP (element-hq/synapse
docs/admin_api/register_api.md and synapse/rest/admin/users.py, v1.163.2): GET a nonce from
/_synapse/admin/v1/register, then POST the user with an HMAC-SHA1 keyed by
`registration_shared_secret` over nonce NUL user NUL password NUL ("admin" | "notadmin"). It is for
a URL that reaches Synapse privately (`--url` through an SSH tunnel, the test harness); the secret is
read from stack state and only ever held in memory. Nothing here prints a secret.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import requests

REGISTER_PATH = "/_synapse/admin/v1/register"
TIMEOUT = 15
MIN_PASSWORD_LENGTH = 12  # the README's create-admin line says so
# The Synapse container (components/matrix/synapse.py LOGICAL_NAME), the user its image drops to
# (docker/start.py; homeserver.yaml is that user's, mode 0600) and its loopback listener.
SYNAPSE_CONTAINER = "synapse"
SYNAPSE_USER = "991:991"
SYNAPSE_CONFIG = "/data/homeserver.yaml"
SYNAPSE_LOCAL_URL = "http://localhost:8008"
EXEC_TIMEOUT = 120
# The Pulumi project (Pulumi.yaml) whose stacks our commands name, wherever they are run from.
PROJECT_DIR = Path(__file__).resolve().parents[2]
PULUMI_INSTALL_URL = "https://www.pulumi.com/docs/iac/download-install/"


class AdminError(RuntimeError):
    """A failure the user can act on; the message says how."""


def registration_mac(shared_secret: str, nonce: str, username: str, password: str, admin: bool) -> str:
    mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce, username, password):
        mac.update(part.encode())
        mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    return mac.hexdigest()


def register_user(base_url: str, shared_secret: str, username: str, password: str, admin: bool = True,
                  verify: bool = True) -> str:
    """Creates `username` on the homeserver at `base_url`; returns the full user id."""
    return register(base_url, shared_secret, username, password, admin=admin, verify=verify)["user_id"]


def register(base_url: str, shared_secret: str, username: str, password: str, admin: bool = True,
             verify: bool = True) -> dict:
    """Shared-secret registration; returns Synapse's answer (user_id, access_token, device_id)."""
    url = base_url.rstrip("/") + REGISTER_PATH
    nonce_response = requests.get(url, timeout=TIMEOUT, verify=verify)
    if nonce_response.status_code != 200:
        raise AdminError(f"GET {url} answered {nonce_response.status_code}: is registration_shared_secret set "
                         f"and /_synapse/admin reachable at this URL? ({nonce_response.text[:200]})")
    nonce = nonce_response.json()["nonce"]
    body = {
        "nonce": nonce,
        "username": username,
        "password": password,
        "admin": admin,
        "mac": registration_mac(shared_secret, nonce, username, password, admin),
    }
    response = requests.post(url, json=body, timeout=TIMEOUT, verify=verify)
    if response.status_code != 200:
        error = _matrix_error(response)
        hint = {
            "M_USER_IN_USE": "that user already exists; pick another --user",
            "M_UNKNOWN": "check that the shared secret in stack state matches the deployed homeserver.yaml",
        }.get(error.get("errcode", ""), "see the homeserver log")
        raise AdminError(f"registration of {username!r} failed ({response.status_code} "
                         f"{error.get('errcode')}: {error.get('error')}); {hint}")
    return response.json()


def synapse_exec(docker_host: str, argv: list[str], stdin: str = "", *, container: str = SYNAPSE_CONTAINER,
                 user: str = SYNAPSE_USER, docker: str = "docker") -> subprocess.CompletedProcess:
    """Runs `argv` inside the Synapse container over the stack's Docker host connection
    (`docker exec`, DOCKER_HOST from the stack's dockerHost; empty keeps the caller's own).
    `stdin` is the place for anything secret: it never shows in `ps` or the Docker host's logs."""
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    command = [docker, "exec", "-i", "--user", user, container, *argv]
    try:
        return subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, check=False,
                              timeout=EXEC_TIMEOUT)
    except FileNotFoundError as exc:
        raise AdminError(f"the Docker CLI ({docker}) is not installed; it reaches the stack's Docker host "
                         "to run the admin command inside the Synapse container") from exc
    except subprocess.TimeoutExpired as exc:
        raise AdminError(f"`docker exec {container}` did not finish within {EXEC_TIMEOUT} s; "
                         "is the Docker host reachable (dockerHost)?") from exc


def register_via_docker(docker_host: str, server_name: str, username: str, password: str, admin: bool = True,
                        docker: str = "docker") -> str:
    """Creates `username` with Synapse's own register_new_matrix_user inside its container; returns
    the user id. The shared secret is read from homeserver.yaml in the container."""
    argv = ["register_new_matrix_user", "-c", SYNAPSE_CONFIG, "-u", username, "--password-file", "/dev/stdin",
            "--admin" if admin else "--no-admin", SYNAPSE_LOCAL_URL]
    done = synapse_exec(docker_host, argv, stdin=password + "\n", docker=docker)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        hint = ("that user already exists; pick another --user" if "User ID already taken" in output
                else "is the stack deployed and the synapse container running (`docker ps`)?")
        # The script prints only its own messages (never the secret or the password).
        raise AdminError(f"registering {username!r} in the synapse container failed: {output[-300:]}; {hint}")
    return f"@{username}:{server_name}"


def _matrix_error(response: requests.Response) -> dict:
    try:
        return response.json()
    except ValueError:
        return {"error": response.text[:200]}


def passphrase_file() -> Path:
    """Where ./scripts/up keeps the stack passphrase (generated once, never printed)."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "commstack" / "passphrase"


def pulumi_env() -> dict[str, str]:
    """The environment for Pulumi CLI subprocesses: the caller's, plus the passphrase file
    ./scripts/up made when the caller gives no passphrase of their own."""
    env = dict(os.environ)
    if not env.get("PULUMI_CONFIG_PASSPHRASE") and not env.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        if passphrase_file().is_file():
            env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(passphrase_file())
    return env


def stack_outputs(stack: str, show_secrets: bool = False) -> dict[str, Any]:
    """The stack's outputs from the Pulumi CLI (values stay in this process)."""
    command = ["pulumi", "stack", "output", "--stack", stack, "--json"]
    if show_secrets:
        command.insert(3, "--show-secrets")
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=pulumi_env(), cwd=PROJECT_DIR)
    except FileNotFoundError as exc:
        raise AdminError(pulumi_cli_missing(stack)) from exc
    if done.returncode != 0:
        # stderr never holds output values, only the CLI's complaint.
        complaint = done.stderr.strip()[:300]
        hint = ""
        if "passphrase" in complaint.lower():
            hint = (f"; export PULUMI_CONFIG_PASSPHRASE_FILE={passphrase_file()} (./scripts/up keeps it there) "
                    "or PULUMI_CONFIG_PASSPHRASE")
        raise AdminError(f"`pulumi stack output --stack {stack}` failed: {complaint}{hint}")
    try:
        outputs = json.loads(done.stdout or "{}")
    except ValueError as exc:
        raise AdminError(f"`pulumi stack output --stack {stack} --json` did not print JSON") from exc
    if not isinstance(outputs, dict):
        raise AdminError(f"`pulumi stack output --stack {stack} --json` did not print an object")
    return outputs


def doctor_flags_command(stack: str) -> str:
    """doctor's flags-only command for `stack`, which needs no Pulumi CLI: the server name is the
    domain in Pulumi.<stack>.yaml (doctor finds the rest from the well-known documents)."""
    from commstack.devtools import offline

    try:
        domain = offline.stack_config(stack, PROJECT_DIR).get("commstack:domain", "").strip()
    except (OSError, ValueError):
        domain = ""
    return f"./scripts/commstack doctor --server-name {shlex.quote(domain) if domain else 'DOMAIN'}"


def pulumi_cli_missing(stack: str) -> str:
    """What to do without the Pulumi CLI: install it, or check the stack with doctor's flags alone."""
    return (f"the Pulumi CLI is not installed, so the outputs of stack {stack!r} cannot be read. Install it "
            f"({PULUMI_INSTALL_URL}; ./scripts/up does when it can). Without it, doctor checks the deployed stack "
            f"from flags alone: {doctor_flags_command(stack)} (add --ca-file FILE with the stack's certificate "
            "if its tls is self-signed; --access-token TOKEN for the TURN and call rows)")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password for the new admin: ")
        if password != getpass.getpass("Repeat the password: "):
            raise AdminError("the passwords differ")
    if password != password.strip():
        raise AdminError("the password must not start or end with whitespace")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AdminError(f"use a password of at least {MIN_PASSWORD_LENGTH} characters")
    return password


def main(args: Any) -> int:
    """`create-admin --stack NAME --user NAME [--url URL] [--password-stdin] [--insecure-tls]`.

    By default over the stack's Docker host (`docker exec`); with `--url`, shared-secret registration
    over HTTP at a URL that reaches Synapse privately (no proxy serves /_synapse/admin)."""
    try:
        url = getattr(args, "url", None)
        if url:
            outputs = stack_outputs(args.stack, show_secrets=True)
            secret: Optional[str] = outputs.get("registrationSharedSecret")
            if not secret:
                raise AdminError(f"stack {args.stack!r} has no registrationSharedSecret output; run `pulumi up` first")
            password = _read_password(getattr(args, "password_stdin", False))
            user_id = register_user(url, secret, args.user, password, admin=True,
                                    verify=not getattr(args, "insecure_tls", False))
        else:
            outputs = stack_outputs(args.stack)
            missing = [key for key in ("dockerHost", "serverName") if key not in outputs]
            if missing:
                raise AdminError(f"stack {args.stack!r} has no {' or '.join(missing)} output; run `pulumi up` first")
            password = _read_password(getattr(args, "password_stdin", False))
            user_id = register_via_docker(outputs["dockerHost"], outputs["serverName"], args.user, password, admin=True)
    except (AdminError, requests.RequestException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(user_id)
    return 0


def add_arguments(parser) -> None:
    """The `create-admin` options, for the dispatcher in commstack/__main__.py."""
    parser.add_argument("--stack", required=True, help="Pulumi stack whose shared secret to use")
    parser.add_argument("--user", default="admin", help="localpart of the new admin (default: admin)")
    parser.add_argument("--url", help="register over HTTP at this private URL of Synapse (e.g. an SSH tunnel to "
                                      "synapse:8008) instead of `docker exec` over the stack's dockerHost")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    parser.add_argument("--insecure-tls", action="store_true", help="with --url: accept a self-signed certificate")
