"""`python -m commstack COMMAND …`: dispatches to one subcommand module.

Every subcommand module exposes `add_arguments(parser)` and
`main(args: argparse.Namespace) -> int`. Only the module of the command
being run is imported, so `doctor` never pays for the Pulumi SDKs and
`render` never for `requests`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(selected).parse_args(argv)
    try:
        return int(_module(args.command).main(args) or 0)
    except KeyboardInterrupt:
        print("error: cancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every command handles the errors it expects
        # A bug, not bad input: one line instead of a traceback, unless asked for.
        if os.environ.get("COMMSTACK_TRACEBACK"):
            raise
        print(f"error: {args.command} failed unexpectedly ({type(exc).__name__}); this is a bug in commstack. "
              "Run it again with COMMSTACK_TRACEBACK=1 to see where.", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
