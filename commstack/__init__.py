"""commstack's small CLI beside the Pulumi program: render, bench, doctor, create-admin.

Run `./scripts/commstack --help` (the project's virtualenv). Each subcommand lives in its own module
and is imported only when it runs.
"""
