"""`./scripts/commstack COMMAND …` (`python -m commstack` in the project's .venv): dispatches to one subcommand module.

Every subcommand module exposes `add_arguments(parser)` and
`main(args: argparse.Namespace) -> int`. Only the module of the command
being run is imported, so `doctor` never pays for the Pulumi SDKs and
`render` never for `requests`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

COMMANDS = {
    "render": ("commstack.devtools.render", "write every file the program would deploy, from the offline engine"),
    "render-diff": ("commstack.devtools.render_diff", "diff the redacted renders of a git ref and the working tree"),
    "bench": ("commstack.devtools.bench", "time each committed stack on the offline engine and the harness cold boot"),
    "doctor": ("commstack.checks.doctor", "check a deployed stack from outside: DNS, TLS, well-known, APIs, TURN, bridges"),
    "create-admin": ("commstack.operations.admin", "create the first Synapse admin (register_new_matrix_user in its container, over the stack's dockerHost)"),
    "registration-token": ("commstack.operations.registration_token",
                           "issue a registration token on a stack with registration: token"),
    "backup": ("commstack.operations.backup", "take a backup of the Matrix half now (databases, media, signing key, ACME store)"),
    "backups": ("commstack.operations.backups", "list the backup snapshots with their age and size"),
    "restore": ("commstack.operations.restore", "restore a snapshot into the stack; refuses over live data unless told"),
    "backup-prune": ("commstack.operations.backup_prune",
                     "apply the retention policy to an off-host backup repository, with the admin's credentials"),
    "signal-restore": ("commstack.operations.signal_restore",
                       "Signal half: DynamoDB tables to a point in time (new tables), S3 object versions, SSM secrets"),
    "config-reference": ("components.settings.reference",
                         "print the configuration reference (docs/configuration.md) generated from the settings schema"),
}


def _module(command: str) -> ModuleType:
    return importlib.import_module(COMMANDS[command][0])


def build_parser(selected: Optional[str] = None) -> argparse.ArgumentParser:
    """The CLI parser; only `selected`'s options are added (its module is imported)."""
    parser = argparse.ArgumentParser(prog="./scripts/commstack",
                                     description="Offline render and bench of the commstack program; checks of a deployed stack.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, (_, help_text) in COMMANDS.items():
        sub = commands.add_parser(command, help=help_text, description=help_text)
        if command == selected:
            _module(command).add_arguments(sub)
    return parser


# Exit status for a failure no command anticipated (sysexits.h EX_SOFTWARE).
INTERNAL_ERROR = 70
# Exit status when a module the command needs is missing: another interpreter than the project's
# virtualenv, or a virtualenv without its requirements (sysexits.h EX_UNAVAILABLE).
MISSING_MODULE = 69
PROJECT_DIR = Path(__file__).resolve().parents[1]
OWN_PACKAGES = ("commstack", "components", "tests", "policy")


def in_project_venv() -> bool:
    """Whether this interpreter is the project's virtualenv (.venv, the one Pulumi.yaml names)."""
    venv = PROJECT_DIR / ".venv"
    return venv.is_dir() and Path(sys.prefix).resolve() == venv.resolve()


def missing_module(exc: ModuleNotFoundError, argv: Sequence[str]) -> str:
    """Why a third-party module is missing, and the exact command that runs with it."""
    wrapper = PROJECT_DIR / "scripts" / "commstack"
    runner = "./scripts/commstack" if Path.cwd().resolve() == PROJECT_DIR else shlex.quote(str(wrapper))
    if in_project_venv():
        return (f"error: the project's virtualenv has no module {exc.name!r}; install its requirements again: "
                f"{shlex.quote(sys.executable)} -m pip install -r {shlex.quote(str(PROJECT_DIR / 'requirements.txt'))}")
    return (f"error: this Python ({sys.executable}) has no module {exc.name!r}: our CLI runs in the project's "
            f"virtualenv. Run instead: {shlex.join([runner, *argv]) if argv else runner}")


def _ours(exc: ModuleNotFoundError) -> bool:
    return (exc.name or "").split(".")[0] in OWN_PACKAGES


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        args = build_parser(selected).parse_args(argv)
        return int(_module(args.command).main(args) or 0)
    except KeyboardInterrupt:
        print("error: cancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every command handles the errors it expects
        if os.environ.get("COMMSTACK_TRACEBACK"):
            raise
        if isinstance(exc, ModuleNotFoundError) and not _ours(exc):
            print(missing_module(exc, argv), file=sys.stderr)
            return MISSING_MODULE
        # A bug, not bad input: one line instead of a traceback, unless asked for.
        print(f"error: {selected or 'commstack'} failed unexpectedly ({type(exc).__name__}); this is a bug in "
              "commstack. Run it again with COMMSTACK_TRACEBACK=1 to see where.", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
