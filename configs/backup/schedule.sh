#!/bin/sh
# The backup container's main process: a backup every day at SCHEDULE_AT (UTC), and the restore
# drill after the backup on DRILL_WEEKDAY (1 = Monday ... 7 = Sunday). A failure is logged and retried
# the next day; `doctor` reports the age of the newest snapshot and the last drill.
set -u
. "$(dirname "$0")/lib.sh"
here=$(dirname "$0")
mkdir -p "$STAGING_DIR" && date -u +%s >"$STAGING_DIR/scheduler-started"
echo "backups daily at $SCHEDULE_AT UTC into $RESTIC_REPOSITORY; restore drill on weekday $DRILL_WEEKDAY"
# The status for Prometheus (configs/backup/metrics.sh), at start and after every backup and drill.
"$here/metrics.sh" || echo "cannot write the backup metrics" >&2
while :; do
  sleep "$(seconds_until "$SCHEDULE_AT")"
  if "$here/backup.sh"; then
    if [ "$(date -u +%u)" = "$DRILL_WEEKDAY" ]; then "$here/drill.sh" || echo "restore drill failed" >&2; fi
  else
    echo "backup failed; see above" >&2
  fi
  "$here/metrics.sh" || echo "cannot write the backup metrics" >&2
done
