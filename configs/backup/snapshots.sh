#!/bin/sh
# The stack's snapshots as restic's JSON (for `python -m commstack backups` and `doctor`).
set -eu
. "$(dirname "$0")/lib.sh"
open_repository
restic snapshots --host "$BACKUP_HOST" --tag commstack --json
