#!/bin/sh
# The backup job's status as Prometheus metrics, in node_exporter's textfile format: the newest snapshot
# in the repository (what BackupTooOld watches), the last good backup, and the last restore drill (from
# the drill-pass/drill-fail tag drill.sh records). Written to METRICS_DIR/backup.prom atomically; does
# nothing when monitoring is off (METRICS_DIR empty).
set -eu
. "$(dirname "$0")/lib.sh"
[ -n "${METRICS_DIR:-}" ] || exit 0
epoch() { date -u -d "$1" +%s 2>/dev/null || echo 0; }
newest=0 drill_time=0 drill_result=""
if open_repository 2>/dev/null; then
  json=$(restic snapshots --host "$BACKUP_HOST" --tag commstack --json)
  # restic's times: 2026-12-07T03:30:01.123456789Z (fractions and zone are fine for date -d).
  for t in $(printf '%s' "$json" | grep -o '"time":"[^"]*"' | cut -d'"' -f4); do
    s=$(epoch "$t"); [ "$s" -le "$newest" ] || newest=$s
  done
  # drill-<pass|fail>-YYYYmmddTHHMMSSZ; the newest stamp wins.
  last=$(printf '%s' "$json" | grep -o 'drill-\(pass\|fail\)-[0-9]\{8\}T[0-9]\{6\}Z' | sort -t- -k3 | tail -n 1)
  if [ -n "$last" ]; then
    stamp=${last##*-}
    drill_time=$(epoch "$(printf '%s' "$stamp" | sed 's/^\(....\)\(..\)\(..\)T\(..\)\(..\)\(..\)Z$/\1-\2-\3 \4:\5:\6 UTC/')")
    case $last in drill-pass-*) drill_result=1 ;; *) drill_result=0 ;; esac
  fi
fi
success=$(cat "$STAGING_DIR/last-backup" 2>/dev/null || echo 0)
mkdir -p "$METRICS_DIR"
tmp="$METRICS_DIR/.backup.prom.$$"
{
  echo "# HELP commstack_backup_last_snapshot_timestamp_seconds Time of the newest snapshot in the backup repository (0: none)."
  echo "# TYPE commstack_backup_last_snapshot_timestamp_seconds gauge"
  echo "commstack_backup_last_snapshot_timestamp_seconds $newest"
  echo "# HELP commstack_backup_last_success_timestamp_seconds Time this job last finished a backup (0: not since it started)."
  echo "# TYPE commstack_backup_last_success_timestamp_seconds gauge"
  echo "commstack_backup_last_success_timestamp_seconds $success"
  if [ -n "$drill_result" ]; then
    echo "# HELP commstack_backup_last_drill_timestamp_seconds Time of the last restore drill."
    echo "# TYPE commstack_backup_last_drill_timestamp_seconds gauge"
    echo "commstack_backup_last_drill_timestamp_seconds $drill_time"
    echo "# HELP commstack_backup_last_drill_success 1 if the last restore drill passed, 0 if it failed."
    echo "# TYPE commstack_backup_last_drill_success gauge"
    echo "commstack_backup_last_drill_success $drill_result"
  fi
} >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$METRICS_DIR/backup.prom"
