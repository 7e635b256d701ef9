"""`python -m commstack restore`: a snapshot back into the stack (see commstack/operations/backup.py)."""

from commstack.operations.backup import restore_arguments as add_arguments, restore_main as main  # noqa: F401
