"""`python -m commstack create-admin`: the first admin user, with the shared secret.

Implements Synapse's shared-secret registration (element-hq/synapse
docs/admin_api/register_api.md and synapse/rest/admin/users.py, v1.163.2):
GET a nonce from /_synapse/admin/v1/register, then POST the user with an
HMAC-SHA1 keyed by `registration_shared_secret` over
nonce NUL user NUL password NUL ("admin" | "notadmin").

The secret is read from stack state (`pulumi stack output --show-secrets`)
and only ever held in memory; nothing here prints it.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import requests

REGISTER_PATH = "/_synapse/admin/v1/register"
TIMEOUT = 15
MIN_PASSWORD_LENGTH = 12  # the README's create-admin line says so


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
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=pulumi_env())
    except FileNotFoundError as exc:
        raise AdminError("the Pulumi CLI is not installed; see the README's quick start") from exc
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


# -- the stack's Docker host -----------------------------------------------------------------


def stack_docker_host(stack: str) -> str:
    """The stack's `commstack:dockerHost` (empty: the local engine or DOCKER_HOST), from its stack file."""
    import yaml

    from commstack import offline

    try:
        return (offline.stack_config(stack).get("commstack:dockerHost") or "").strip()
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise AdminError(f"cannot read the stack file of {stack!r}: {exc}") from exc


def docker_exec(stack: str, container: str, command: Sequence[str], stdin: str = "",
                timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs `command` in the stack's `container` over the stack's Docker host connection
    (the same engine `pulumi up` deployed to); `stdin` carries anything secret, never argv."""
    host = stack_docker_host(stack)
    argv = ["docker", *(["--host", host] if host else []), "exec", "-i", container, *command]
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise AdminError("the Docker CLI is not installed; it reaches the stack's containers "
                         "(https://docs.docker.com/engine/install/)") from exc
    except subprocess.TimeoutExpired as exc:
        raise AdminError(f"`docker exec {container}` gave no answer in {timeout:.0f} s "
                         f"(Docker host: {host or 'local'})") from exc


def _stack_ca_file(outputs: dict) -> Optional[str]:
    """A tls self-signed stack's own certificate (its public tlsCertificate output) in a temporary
    file, for requests' `verify`; None for a stack with publicly trusted certificates."""
    import atexit
    import tempfile

    pem = outputs.get("tlsCertificate")
    if not isinstance(pem, str) or not pem.strip():
        return None
    handle = tempfile.NamedTemporaryFile("w", prefix="commstack-ca-", suffix=".pem", delete=False)
    with handle:
        handle.write(pem)
    atexit.register(lambda: os.path.exists(handle.name) and os.unlink(handle.name))
    return handle.name


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password for the new admin: ")
        if password != getpass.getpass("Repeat the password: "):
            raise AdminError("the passwords differ")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AdminError(f"use a password of at least {MIN_PASSWORD_LENGTH} characters")
    return password


def main(args: Any) -> int:
    """`create-admin --stack NAME --user NAME [--url URL] [--password-stdin] [--insecure-tls]`."""
    try:
        outputs = stack_outputs(args.stack, show_secrets=True)
        secret: Optional[str] = outputs.get("registrationSharedSecret")
        if not secret:
            raise AdminError(f"stack {args.stack!r} has no registrationSharedSecret output; run `pulumi up` first")
        url = getattr(args, "url", None) or outputs.get("homeserverUrl")
        if not url:
            raise AdminError("no --url given and the stack has no homeserverUrl output")
        password = _read_password(getattr(args, "password_stdin", False))
        verify = False if getattr(args, "insecure_tls", False) else (_stack_ca_file(outputs) or True)
        user_id = register_user(url, secret, args.user, password, admin=True, verify=verify)
    except (AdminError, requests.RequestException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(user_id)
    return 0


def add_arguments(parser) -> None:
    """The `create-admin` options, for the dispatcher in commstack/__main__.py."""
    parser.add_argument("--stack", required=True, help="Pulumi stack whose shared secret to use")
    parser.add_argument("--user", default="admin", help="localpart of the new admin (default: admin)")
    parser.add_argument("--url", help="homeserver base URL (default: the stack's homeserverUrl output)")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    parser.add_argument("--insecure-tls", action="store_true",
                        help="skip the certificate check (a self-signed stack's own certificate, its tlsCertificate "
                             "output, is trusted without it)")
