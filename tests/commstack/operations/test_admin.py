"""commstack.operations.admin: the shared-secret MAC, and the CLI's handling of stack outputs and passwords.
(The real registration against Synapse is proven in tests/integration/test_synapse.py.)"""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import sys

import pytest
from synapse._scripts import register_new_matrix_user

from commstack.operations import admin


class _Captured:
    """Stands in for `requests` inside Synapse's own register_new_matrix_user script."""

    def __init__(self, nonce: str):
        self.nonce, self.posted = nonce, None

    def get(self, url, **_):
        return _Response({"nonce": self.nonce})

    def post(self, url, json=None, **_):
        self.posted = json
        return _Response({"user_id": "@u:x"})


class _Response:
    status_code, ok = 200, True

    def __init__(self, body):
        self.body = body

    def json(self):
        return self.body

    def raise_for_status(self):
        pass


@pytest.mark.parametrize("is_admin", [True, False])
def test_mac_equals_synapse_own_register_script(monkeypatch, is_admin):
    captured = _Captured("a-nonce-1234")
    monkeypatch.setattr(register_new_matrix_user, "requests", captured)
    register_new_matrix_user.request_registration("alice", "pässword", "http://hs", "the secret", admin=is_admin,
                                                  _print=lambda *_: None, exit=lambda *_: None)
    assert captured.posted["mac"] == admin.registration_mac("the secret", "a-nonce-1234", "alice", "pässword",
                                                            is_admin)


def test_mac_distinguishes_admin_from_user():
    assert admin.registration_mac("s", "n", "u", "p", True) != admin.registration_mac("s", "n", "u", "p", False)


@pytest.fixture
def pulumi_answering(tmp_path, monkeypatch):
    """Puts a `pulumi` on PATH that prints the given stack outputs (or fails)."""

    def install(outputs: dict, exit_code: int = 0) -> None:
        script = tmp_path / "pulumi"
        script.write_text(f"#!/bin/sh\necho '{json.dumps(outputs)}'\necho 'stack not found' >&2\nexit {exit_code}\n")
        script.chmod(stat.S_IRWXU)
        monkeypatch.setenv("PATH", str(tmp_path))

    return install


def _args(**overrides) -> argparse.Namespace:
    values = dict(stack="dev", user="admin", url=None, password_stdin=True, insecure_tls=False)
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.mark.parametrize("stack, command", [
    ("dev", "./scripts/commstack doctor --server-name commstack.localhost"),
    ("prod", "./scripts/commstack doctor --server-name example.org"),
    ("nosuch", "./scripts/commstack doctor --server-name DOMAIN"),
])
def test_missing_pulumi_cli_offers_doctors_flags_only_mode(tmp_path, monkeypatch, stack, command):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(admin.AdminError) as error:
        admin.stack_outputs(stack)
    message = str(error.value)
    assert message.startswith(f"the Pulumi CLI is not installed, so the outputs of stack '{stack}' cannot be read")
    assert f"from flags alone: {command} (add --ca-file" in message
    assert admin.PULUMI_INSTALL_URL in message and "quick start" not in message


def test_the_offered_doctor_command_runs_without_the_pulumi_cli(tmp_path):
    """create-admin without the CLI offers doctor's command; that command runs as printed (nothing is
    deployed here, so its checks fail, as they would before `pulumi up`)."""
    import shlex
    import subprocess

    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}  # no pulumi
    script = str(admin.PROJECT_DIR / "scripts" / "commstack")
    done = subprocess.run([script, "create-admin", "--stack", "dev", "--password-stdin"], input="x" * 20 + "\n",
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "the Pulumi CLI is not installed" in done.stderr
    command = done.stderr.split("from flags alone: ", 1)[1].split(" (add --ca-file", 1)[0]
    assert command == "./scripts/commstack doctor --server-name commstack.localhost"
    argv = shlex.split(command)
    doctor = subprocess.run([str(admin.PROJECT_DIR / argv[0]), *argv[1:]], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert doctor.returncode == 1, doctor.stderr
    assert "dns commstack.localhost" in doctor.stdout and "checks:" in doctor.stdout


def test_failing_stack_output_reports_the_cli_error(pulumi_answering):
    pulumi_answering({}, exit_code=255)
    with pytest.raises(admin.AdminError, match="stack not found"):
        admin.stack_outputs("nope")


def test_main_with_a_url_requires_the_shared_secret_output(pulumi_answering, capsys):
    pulumi_answering({"homeserverUrl": "https://matrix.example.org/"})
    assert admin.main(_args(url="http://127.0.0.1:8008")) == 1
    assert "no registrationSharedSecret output" in capsys.readouterr().err


def test_main_over_docker_requires_the_docker_host_output(pulumi_answering, capsys):
    pulumi_answering({"serverName": "example.org"})
    assert admin.main(_args()) == 1
    assert "no dockerHost output" in capsys.readouterr().err


def test_main_refuses_a_short_password_without_printing_the_secret(pulumi_answering, monkeypatch, capsys):
    pulumi_answering({"registrationSharedSecret": "very-secret-value", "homeserverUrl": "http://127.0.0.1:9"})
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert admin.main(_args(url="http://127.0.0.1:9")) == 1
    out, err = capsys.readouterr()
    assert "at least 12 characters" in err
    assert "very-secret-value" not in out + err


def test_add_arguments_defaults():
    parser = argparse.ArgumentParser()
    admin.add_arguments(parser)
    parsed = parser.parse_args(["--stack", "prod"])
    assert (parsed.stack, parsed.user, parsed.url, parsed.password_stdin) == ("prod", "admin", None, False)


# -- the admin path: docker exec over the stack's Docker host ---------------------------------


@pytest.fixture
def docker_stub(tmp_path, monkeypatch):
    """A `docker` on PATH that records its argv, DOCKER_HOST and stdin, and answers like `docker exec`."""
    record = tmp_path / "docker-call.json"
    script = tmp_path / "docker"
    script.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'docker_host': os.environ.get('DOCKER_HOST'), "
        f"'stdin': sys.stdin.read()}}, open({str(record)!r}, 'w'))\n"
        "print('Sending registration request...')\nprint('Success!')\n")
    script.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    return lambda: json.loads(record.read_text())


def test_register_via_docker_runs_synapses_script_in_its_container(docker_stub):
    user_id = admin.register_via_docker("ssh://deploy@home.example.org", "example.org", "alice",
                                        "a long password here", admin=True)
    assert user_id == "@alice:example.org"
    call = docker_stub()
    assert call["docker_host"] == "ssh://deploy@home.example.org"
    assert call["argv"] == ["exec", "-i", "--user", "991:991", "synapse", "register_new_matrix_user",
                            "-c", "/data/homeserver.yaml", "-u", "alice", "--password-file", "/dev/stdin", "--admin",
                            "http://localhost:8008"]
    # The password only travels on stdin; no shared secret is involved at all.
    assert call["stdin"] == "a long password here\n"
    assert not [word for word in call["argv"] if "password here" in word]


def test_synapse_exec_keeps_the_callers_docker_host_when_the_stack_names_none(docker_stub, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")
    admin.synapse_exec("", ["true"])
    assert docker_stub()["docker_host"] == "unix:///run/user/1000/docker.sock"


def test_main_creates_the_admin_over_the_stacks_docker_host(pulumi_answering, docker_stub, monkeypatch, capsys):
    pulumi_answering({"dockerHost": "ssh://deploy@home.example.org", "serverName": "example.org",
                      "registrationSharedSecret": "very-secret-value"})
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    assert admin.main(_args(user="root")) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "@root:example.org"
    call = docker_stub()
    assert call["docker_host"] == "ssh://deploy@home.example.org" and "-u" in call["argv"]
    assert "very-secret-value" not in json.dumps(call) + out + err


def test_a_failed_registration_in_the_container_is_a_clear_error(tmp_path, monkeypatch):
    script = tmp_path / "docker"
    script.write_text("#!/bin/sh\necho 'ERROR! Received 400 Bad Request' >&2\necho 'User ID already taken.' >&2\nexit 1\n")
    script.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(admin.AdminError, match="already exists; pick another --user"):
        admin.register_via_docker("", "example.org", "alice", "a long password here")


def test_a_missing_docker_cli_is_a_clear_error(tmp_path):
    with pytest.raises(admin.AdminError, match="Docker CLI"):
        admin.synapse_exec("", ["true"], docker=str(tmp_path / "no-docker"))
