"""commstack.admin: the shared-secret MAC, and the CLI's handling of stack outputs and passwords.
(The real registration against Synapse is proven in tests/integration/test_synapse.py.)"""

from __future__ import annotations

import argparse
import io
import json
import stat

import pytest
from synapse._scripts import register_new_matrix_user

from commstack import admin


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


def test_missing_pulumi_cli_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(admin.AdminError, match="Pulumi CLI is not installed"):
        admin.stack_outputs("dev")


def test_failing_stack_output_reports_the_cli_error(pulumi_answering):
    pulumi_answering({}, exit_code=255)
    with pytest.raises(admin.AdminError, match="stack not found"):
        admin.stack_outputs("nope")


def test_main_requires_the_shared_secret_output(pulumi_answering, capsys):
    pulumi_answering({"homeserverUrl": "https://matrix.example.org/"})
    assert admin.main(_args()) == 1
    assert "no registrationSharedSecret output" in capsys.readouterr().err


def test_main_refuses_a_short_password_without_printing_the_secret(pulumi_answering, monkeypatch, capsys):
    pulumi_answering({"registrationSharedSecret": "very-secret-value", "homeserverUrl": "http://127.0.0.1:9"})
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert admin.main(_args()) == 1
    out, err = capsys.readouterr()
    assert "at least 12 characters" in err
    assert "very-secret-value" not in out + err


def test_add_arguments_defaults():
    parser = argparse.ArgumentParser()
    admin.add_arguments(parser)
    parsed = parser.parse_args(["--stack", "prod"])
    assert (parsed.stack, parsed.user, parsed.url, parsed.password_stdin) == ("prod", "admin", None, False)
