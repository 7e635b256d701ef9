"""`python -m commstack restore`: a snapshot back into the stack (see commstack/backup.py)."""

from commstack.backup import restore_arguments as add_arguments, restore_main as main  # noqa: F401
