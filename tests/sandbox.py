"""A throwaway copy of the project with stand-ins for the external commands, in which
scripts/up and the README's commands run as a newcomer would run them.

Stand-ins (on PATH before the real tools):
* `pulumi` keeps a small state file: which backend it is logged in to, the stacks made with
  `stack select --create`, and writes `config set` into Pulumi.<stack>.yaml as the CLI does
  (secrets as `secure:` values). Every command that needs the passphrase secrets provider
  fails without PULUMI_CONFIG_PASSPHRASE or a readable PULUMI_CONFIG_PASSPHRASE_FILE, with the
  CLI's own message, and a stack that was never created is an error, so dead ends show.
* `docker` answers `info`, and `exec` with a canned success: register_new_matrix_user's
  "Success!", else $SANDBOX_DOCKER_EXEC_ANSWER (what it ran is logged).
* `curl` fails (no installer downloads).
* `.venv/bin/python` is the real interpreter, but `-m pip` only logs (no network).
* `python3 -m venv DIR` makes DIR/bin/pip, which checks the requirements file exists and logs, and
  DIR/bin/python, the same stand-in as `.venv/bin/python`.
Every call of a stand-in is appended, as JSON, to $SANDBOX_LOG.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_PULUMI = r'''#!{python}
import json, os, sys
import yaml
args = sys.argv[1:]
state_path = os.environ["SANDBOX_PULUMI_STATE"]
state = json.load(open(state_path)) if os.path.exists(state_path) else {{"backend": None, "stacks": [], "current": None}}
with open(os.environ["SANDBOX_LOG"], "a") as log:
    log.write(json.dumps({{"cmd": "pulumi", "args": args,
                          "passphrase_file": os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")}}) + "\n")
def save():
    json.dump(state, open(state_path, "w"))
def fail(message, code=255):
    print("error: " + message, file=sys.stderr)
    sys.exit(code)
def flag(name):
    if name in args:
        i = args.index(name)
        value = args[i + 1]
        del args[i:i + 2]
        return value
    return None
def passphrase():
    if os.environ.get("PULUMI_CONFIG_PASSPHRASE"):
        return
    path = os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if not path or not os.path.isfile(path):
        fail("constructing secrets manager of type \"passphrase\": unable to find either `PULUMI_CONFIG_PASSPHRASE` "
             "or `PULUMI_CONFIG_PASSPHRASE_FILE` when loading source stack")
def stack_named(name):
    name = name or state["current"]
    if name is None:
        fail("no stack selected; please use `pulumi stack select`")
    if name not in state["stacks"]:
        fail(f"no stack named '{{name}}' found")
    return name
stack = flag("--stack") or flag("-s")
if args[:1] == ["version"]:
    print("v3.272.0")
elif args[:1] == ["whoami"]:
    if state["backend"] is None:
        fail("could not determine current cloud: not logged in")
    print("Backend URL: " + state["backend"] if "-v" in args else "user")
elif args[:1] == ["login"]:
    state["backend"] = "file://~" if "--local" in args else (args[1] if len(args) > 1 else "https://api.pulumi.com")
    save()
    print("Logged in to " + state["backend"])
elif args[:2] == ["stack", "select"]:
    if state["backend"] is None:
        fail("not logged in")
    name = stack or args[-1]
    if name not in state["stacks"]:
        if "--create" not in args and "-c" not in args:
            fail(f"no stack named '{{name}}' found")
        passphrase()
        state["stacks"].append(name)
    state["current"] = name
    save()
elif args[:2] == ["stack", "init"]:
    if state["backend"] is None:
        fail("not logged in")
    name = stack or [a for a in args[2:] if not a.startswith("-")][0]
    if name in state["stacks"]:
        fail(f"stack '{{name}}' already exists")
    passphrase()
    state["stacks"].append(name)
    if "--no-select" not in args:
        state["current"] = name
    save()
elif args[:2] == ["config", "set"]:
    name = stack_named(stack)
    secret = "--secret" in args
    rest = [a for a in args[2:] if a not in ("--secret", "--plaintext")]
    key, value = rest[0], rest[1]
    if secret:
        passphrase()
    path = f"Pulumi.{{name}}.yaml"
    document = (yaml.safe_load(open(path)) if os.path.exists(path) else None) or {{}}
    document.setdefault("config", {{}})
    full = key if ":" in key else "commstack:" + key
    document["config"][full] = {{"secure": "v1:sandbox"}} if secret else value
    yaml.safe_dump(document, open(path, "w"), sort_keys=False)
elif args[:2] == ["stack", "output"]:
    name = stack_named(stack)
    if "--show-secrets" in args:
        passphrase()
    outputs = json.loads(os.environ.get("SANDBOX_OUTPUTS", "{{}}"))
    wanted = [a for a in args[2:] if not a.startswith("-")]
    if wanted:
        print(outputs.get(wanted[0], "") if not isinstance(outputs.get(wanted[0]), (dict, list)) else json.dumps(outputs[wanted[0]]))
    else:
        print(json.dumps(outputs))
elif args[:1] in (["up"], ["preview"], ["refresh"]):
    stack_named(stack)
    passphrase()
    print(args[0] + ": done (sandbox)")
else:
    fail("the sandbox pulumi does not know: " + " ".join(args), 2)
'''

FAKE_DOCKER = r'''#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["SANDBOX_LOG"], "a") as log:
    log.write(json.dumps({{"cmd": "docker", "args": args}}) + "\n")
if args[:1] == ["--host"]:
    args = args[2:]
if args[:1] == ["info"]:
    sys.exit(0)
if args[:1] == ["exec"]:
    sys.stdin.read()
    if "register_new_matrix_user" in args:  # what Synapse's script prints when it made the user
        print("Sending registration request...\nSuccess!")
    elif any(a.endswith("snapshots.sh") for a in args):  # the backup job's restic list: none taken yet
        print("[]")
    else:
        print(os.environ.get("SANDBOX_DOCKER_EXEC_ANSWER", ""))
    sys.exit(0)
sys.exit(0)
'''

FAKE_VENV_PYTHON = r'''#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  printf '{"cmd": "pip", "args": "%s"}\n' "$*" >> "$SANDBOX_LOG"
  exit 0
fi
exec @PYTHON@ "$@"
'''

FAKE_PYTHON3 = r'''#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  cat > "$3/bin/pip" <<'PIP'
#!/bin/sh
file=""; prev=""; for a in "$@"; do [ "$prev" = -r ] && file=$a; prev=$a; done
[ "$1" = install ] && [ -n "$file" ] && [ -f "$file" ] || { echo "pip: no such requirements file: $file" >&2; exit 1; }
printf '{"cmd": "pip", "args": "%s"}\n' "$*" >> "$SANDBOX_LOG"
PIP
  chmod +x "$3/bin/pip"
  cat > "$3/bin/python" <<'PYTHON'
@VENV_PYTHON@PYTHON
  chmod +x "$3/bin/python"
  printf '{"cmd": "venv", "args": "%s"}\n' "$3" >> "$SANDBOX_LOG"
  exit 0
fi
exec @PYTHON3@ "$@"
'''


def _tracked_files() -> list[str]:
    done = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, check=True)
    return [name for name in done.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


def write_script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


class Sandbox:
    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "commstack"
        self.home = tmp_path / "home"
        self.bin = tmp_path / "bin"
        self.log = tmp_path / "calls.jsonl"
        self.home.mkdir()
        for name in _tracked_files():
            target = self.root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
        python = sys.executable
        python3 = os.path.realpath(sys.executable)  # not a version manager's shim
        write_script(self.bin / "pulumi", FAKE_PULUMI.format(python=python))
        write_script(self.bin / "docker", FAKE_DOCKER.format(python=python))
        write_script(self.bin / "curl", "#!/bin/sh\necho 'curl: (6) Could not resolve host' >&2\nexit 6\n")
        venv_python = FAKE_VENV_PYTHON.replace("@PYTHON@", python)
        write_script(self.bin / "python3", FAKE_PYTHON3.replace("@PYTHON3@", python3).replace("@VENV_PYTHON@", venv_python))
        write_script(self.root / ".venv" / "bin" / "python", venv_python)
        self.outputs: dict = {}

    def git_init(self, remote_ref: str = "refs/remotes/origin/main") -> None:
        """Makes the copy a repository whose `origin/main` is its first commit."""
        git = ["git", "-C", str(self.root), "-c", "user.name=sandbox", "-c", "user.email=sandbox@example.invalid"]
        (self.root / ".gitignore").write_text(".venv/\npolicy/venv/\n")
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "sandbox"], check=True)
        subprocess.run([*git, "update-ref", remote_ref, "HEAD"], check=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "SANDBOX_LOG": str(self.log),
            "SANDBOX_PULUMI_STATE": str(self.root.parent / "pulumi-state.json"),
            "SANDBOX_OUTPUTS": json.dumps(self.outputs),
            "TMPDIR": str(self.root.parent),
        }
        env.update(extra)
        return env

    def calls(self, command: str) -> list[list[str]]:
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [e["args"] for e in entries if e["cmd"] == command]

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def set_pulumi_state(self, **state) -> None:
        path = self.root.parent / "pulumi-state.json"
        current = json.loads(path.read_text()) if path.exists() else {"backend": None, "stacks": [], "current": None}
        current.update(state)
        path.write_text(json.dumps(current))
