#!/bin/sh
# The backup container's health check: healthy while the newest good backup (or, before the first
# one, the scheduler's start) is under 36 hours old, so `docker ps` shows a job that stopped working.
. "$(dirname "$0")/lib.sh"
since=$(cat "$STAGING_DIR/last-backup" 2>/dev/null || cat "$STAGING_DIR/scheduler-started" 2>/dev/null || echo 0)
[ $(($(date -u +%s) - since)) -lt $((36 * 3600)) ]
