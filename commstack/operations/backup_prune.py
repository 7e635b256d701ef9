"""`python -m commstack backup-prune`: the retention policy on an off-host backup repository, run from the
admin's machine with the admin's credentials (see commstack/operations/backup.py)."""

from commstack.operations.backup import prune_arguments as add_arguments, prune_main as main  # noqa: F401
