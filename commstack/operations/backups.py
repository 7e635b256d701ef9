"""`python -m commstack backups`: the stack's snapshots with age and size (see commstack/operations/backup.py)."""

from commstack.operations.backup import backups_arguments as add_arguments, snapshots_main as main  # noqa: F401
