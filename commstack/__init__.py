"""commstack's small CLI beside the Pulumi program: render, bench, doctor, create-admin.

Run `python -m commstack --help`. Each subcommand lives in its own module
and is imported only when it runs.
"""
