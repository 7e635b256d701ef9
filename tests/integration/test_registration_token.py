"""`commstack registration-token` against the real Synapse of the harness: the in-container
script logs in as an admin, issues a token through the admin API on the local listener, and a
new user registers with it (once: the token allows one use).

`docker` is a stand-in on PATH that runs the exec'd command here instead of in the container,
with the container's local listener replaced by the harness's Synapse; `pulumi` answers the
stack's dockerHost output."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap

import requests

from commstack.devtools import offline
from commstack.operations.admin import register_user
from commstack.operations.registration_token import LOCAL_URL

FAKE_DOCKER = textwrap.dedent("""\
    #!{python}
    import json, os, subprocess, sys
    argv = sys.argv[1:]
    with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
        log.write(json.dumps({{"argv": argv, "DOCKER_HOST": os.environ.get("DOCKER_HOST")}}) + "\\n")
    assert argv[:2] == ["exec", "-i"] and "synapse" in argv[2:5], argv
    argv = argv[argv.index("synapse") + 1:]
    command = [os.environ["FAKE_SYNAPSE_URL"] if a == {local!r} else a for a in argv]
    command[0] = sys.executable if command[0] == "python" else command[0]
    sys.exit(subprocess.run(command).returncode)
    """)


def run_cli(tmp_path, harness, *args, stdin=""):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable, local=LOCAL_URL))
    docker.chmod(0o755)
    pulumi = bin_dir / "pulumi"  # prod's outputs: the Docker host over SSH
    pulumi.write_text("#!/bin/sh\necho '{\"dockerHost\": \"ssh://deploy@home.example.org\", \"serverName\": \"example.org\"}'\n")
    pulumi.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
           "FAKE_SYNAPSE_URL": harness.synapse_url}
    env.pop("COMMSTACK_ACCESS_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "commstack", "registration-token", *args], input=stdin,
                          capture_output=True, text=True, cwd=offline.ROOT, env=env, timeout=120)


def register_with_token(harness, token: str) -> requests.Response:
    """Matrix client-server API registration through the m.login.registration_token stage."""
    url = f"{harness.synapse_url}/_matrix/client/v3/register"
    body = {"username": f"newcomer-{secrets.token_hex(3)}", "password": secrets.token_urlsafe(18)}
    first = requests.post(url, json=body, timeout=15)
    assert first.status_code == 401, first.text
    session = first.json()["session"]
    answer = requests.post(url, json={**body, "auth": {"type": "m.login.registration_token", "token": token,
                                                       "session": session}}, timeout=15)
    if answer.status_code == 401 and "m.login.dummy" in json.dumps(answer.json().get("flows", [])):
        answer = requests.post(url, json={**body, "auth": {"type": "m.login.dummy", "session": session}}, timeout=15)
    return answer


def test_issues_a_token_a_newcomer_can_register_with_once(harness, tmp_path):
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    admin, password = f"admin-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    register_user(harness.synapse_url, secret, admin, password, admin=True)

    # prod: registration token, Docker host over SSH.
    done = run_cli(tmp_path, harness, "--stack", "prod", "--user", admin, "--password-stdin", stdin=password + "\n")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token and "\n" not in token
    assert "1 registration(s)" in done.stderr and "valid until" in done.stderr
    call = json.loads((tmp_path / "docker.log").read_text().splitlines()[0])
    assert call["DOCKER_HOST"] == "ssh://deploy@home.example.org" and call["argv"][:2] == ["exec", "-i"]
    assert password not in json.dumps(call["argv"]), "the password went into argv"

    assert register_with_token(harness, token).status_code == 200
    second = register_with_token(harness, token)  # the token allowed one registration
    assert second.status_code == 401, second.text
    assert "m.login.registration_token" not in second.json().get("completed", []), second.text


def test_a_wrong_password_is_a_clear_error(harness, tmp_path):
    done = run_cli(tmp_path, harness, "--stack", "prod", "--user", "nobody-here", "--password-stdin",
                   stdin="not the password\n")
    assert done.returncode == 1 and done.stdout == ""
    assert "logging in as 'nobody-here' failed" in done.stderr and "wrong user or password" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_non_admin_is_told_so(harness, tmp_path):
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    user, password = f"plain-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    register_user(harness.synapse_url, secret, user, password, admin=False)
    done = run_cli(tmp_path, harness, "--stack", "prod", "--user", user, "--password-stdin", stdin=password + "\n")
    assert done.returncode == 1 and "not a server admin" in done.stderr, done.stderr
