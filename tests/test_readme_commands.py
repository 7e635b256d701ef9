"""Every command the README shows, pasted in the order shown into one shell on a fresh
machine: a sandbox copy of the project (tests/sandbox.py) where the Pulumi CLI, Docker,
curl and package downloads are stand-ins that behave like the real ones at their edges
(a stack must exist, secrets need the passphrase, `config set` writes the stack file).
Our own commands run for real on the offline engine. So the README cannot drift: a
command that would fail when pasted fails here.

What the test changes, and why:
* `<placeholder>` values become dummy values (a reader types their own);
* `/tmp/` paths land in the test's temporary directory;
* `./scripts/test` is a recorder (it is the command running this test; CI runs it for real);
* `bench` gets `--repeat 1 --skip-harness` (the full run boots the loopback harness;
  tests/commstack/test_bench.py covers it);
* each command's stdin is a file holding the test password (what a reader types at a prompt);
* a `python -m pytest FILE…` line (the session-only tests that need jars built outside the
  clone) only checks that its test files exist: this suite runs them itself, and they skip here.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.sandbox import Sandbox

PASSWORD = "correct horse battery staple"
PLACEHOLDER = re.compile(r"<([a-z_][a-z_ ]*)>")
# Commands that may fail because nothing is deployed behind the stand-ins (no homeserver answers
# on the stack's addresses), and what they must print then.
MAY_FIND_NOTHING_DEPLOYED = {"commstack doctor": "checks:"}


def readme_commands(readme: str) -> list[str]:
    """Each command line of each ```bash block, in order (continuation lines joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            line = pending + line
            pending = ""
            if line.strip() and not line.strip().startswith("#"):
                commands.append(line.strip())
    return commands


def pasted(command: str, tmp: str) -> str:
    command = PLACEHOLDER.sub(lambda m: f"sandbox-{re.sub('[_ ]', '-', m.group(1))}-0123456789abcdef", command)
    command = command.replace("/tmp/", f"{tmp}/")
    if " -m pytest " in command:
        files = [word for word in command.split() if word.endswith(".py")]
        return " && ".join(f"test -f {f}" for f in files) or "false"
    if "-m commstack bench" in command:
        command = command.replace("-m commstack bench", "-m commstack bench --repeat 1 --skip-harness")
    return command


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    box = Sandbox(tmp)
    (box.root / "scripts" / "test").write_text('#!/bin/sh\necho "{\\"cmd\\": \\"scripts/test\\", \\"args\\": \\"$*\\"}" '
                                                '>> "$SANDBOX_LOG"\n')
    box.git_init()
    # What a deployed dev stack would answer, on addresses where nothing listens (doctor finds
    # nothing deployed and says so, as it would before `pulumi up` finished).
    box.outputs = {"serverName": "127.0.0.1", "homeserverUrl": "https://127.0.0.1:9/", "publicIp": "127.0.0.1",
                   "dockerHost": "",
                   "turnUris": [], "registrationSharedSecret": "sandbox-shared-secret-0123456789",
                   "createAdminCommand": ".venv/bin/python -m commstack create-admin --stack dev --user admin"}
    expiry = int((time.time() + 7 * 86400) * 1000)
    answer = json.dumps({"step": "new", "status": 200,
                         "body": {"token": "sandboxTOKEN123", "uses_allowed": 1, "expiry_time": expiry}})
    readme = (box.root / "README.md").read_text()
    commands = readme_commands(readme)
    (tmp / "typed").write_text(f"{PASSWORD}\n" * 3)
    script = ["set -u"]
    for index, command in enumerate(commands):
        line = re.sub(r"\s+#\s.*$", "", pasted(command, str(tmp)))  # the comment, so the redirect is not in it
        script += [f'{line} < "{tmp}/typed"', f'echo "::rc {index} $?"']
    (tmp / "pasted.sh").write_text("\n".join(script) + "\n")
    done = subprocess.run(["bash", str(tmp / "pasted.sh")], cwd=box.root, env=box.env(SANDBOX_DOCKER_EXEC_ANSWER=answer),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
                          start_new_session=True)  # no terminal: password prompts read stdin
    codes = {int(i): int(rc) for i, rc in re.findall(r"^::rc (\d+) (\d+)$", done.stdout, flags=re.M)}
    return box, commands, codes, done


def test_the_readme_shows_the_commands_a_newcomer_needs(session):
    _, commands, _, _ = session
    joined = "\n".join(commands)
    for needed in ("./scripts/up dev", "export PULUMI_CONFIG_PASSPHRASE_FILE=", "create-admin --stack dev",
                   "registration-token --stack dev", "doctor --stack dev", "render --stack", "render-diff --base"):
        assert needed in joined, needed


def test_every_command_runs_when_pasted_in_order(session):
    box, commands, codes, done = session
    assert len(codes) == len(commands), done.stdout[-3000:] + done.stderr[-3000:]
    failed = []
    for index, command in enumerate(commands):
        allowed = next((m for m in MAY_FIND_NOTHING_DEPLOYED if m in command), None)
        if codes[index] != 0 and not (allowed and codes[index] == 1):
            failed.append(f"{command!r} exited {codes[index]}")
    assert not failed, "\n".join(failed) + "\n--- stderr ---\n" + done.stderr[-4000:]
    assert "Traceback" not in done.stdout + done.stderr


def test_nothing_deployed_is_reported_as_such(session):
    _, _, _, done = session
    assert MAY_FIND_NOTHING_DEPLOYED["commstack doctor"] in done.stdout


def test_pulumi_got_the_passphrase_and_the_stacks_it_needed(session):
    box, _, _, _ = session
    pulumi = [e for e in box.entries() if e["cmd"] == "pulumi"]
    passfile = str(box.home / ".config" / "commstack" / "passphrase")
    secret_calls = [e for e in pulumi if "--secret" in e["args"] or e["args"][:1] in (["up"], ["preview"])]
    assert secret_calls and all(e["passphrase_file"] == passfile for e in secret_calls)
    config = (box.root / "Pulumi.prod.yaml").read_text()
    assert "commstack:cloudflareApiToken:\n    secure:" in config and "commstack:telegramApiHash:\n    secure:" in config
    assert ["preview", "--policy-pack", "policy"] in [e["args"] for e in pulumi if e["args"][:1] == ["preview"]] or any(
        e["args"][:1] == ["preview"] and "policy" in e["args"] for e in pulumi)


def test_the_issued_registration_token_is_printed(session):
    box, _, _, done = session
    assert "\nsandboxTOKEN123\n" in done.stdout
    exec_calls = [args for args in box.calls("docker") if "exec" in args]
    assert exec_calls and PASSWORD not in json.dumps(exec_calls)


def test_the_test_command_and_the_policy_venv_were_reached(session):
    box, commands, _, _ = session
    # Once per README line that runs it, and `bench --test-command`/`--cold` run it too.
    direct = [c for c in commands if c.split()[0] == "./scripts/test"]
    assert direct and len(box.calls("scripts/test")) >= len(direct)
    assert any("policy/requirements.txt" in args for args in box.calls("pip"))
