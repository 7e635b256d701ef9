#!/bin/sh
# The stack's snapshots and the drills' records as restic's JSON (for `python -m commstack backups` and
# `doctor`). Read-only: no lock is written.
set -eu
. "$(dirname "$0")/lib.sh"
open_repository
restic snapshots --no-lock --host "$BACKUP_HOST" --tag commstack --tag commstack-drill --json
