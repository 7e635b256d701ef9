#!/bin/sh
# The restore drill: restores the newest snapshot's dumps into scratch databases and compares their
# tables and row counts with the live ones; records the result as a tag on the snapshot.
set -eu
. "$(dirname "$0")/lib.sh"
open_repository
stamp=$(date -u +%Y%m%dT%H%M%SZ)
snapshot=$(restic snapshots --host "$BACKUP_HOST" --tag commstack --latest 1 --json | sed -n 's/.*"short_id":"\([0-9a-f]*\)".*/\1/p' | tail -n 1)
[ -n "$snapshot" ] || fail "there is no snapshot to drill"
work="$STAGING_DIR/drill"
problems=""
record() {
  result=$1
  restic tag --quiet --host "$BACKUP_HOST" --add "drill-$result-$stamp" "$snapshot" >/dev/null 2>&1 || true
  rm -rf "$work"
  for db in $DATABASES; do psql -X -q -d postgres -c "drop database if exists drill_$db" >/dev/null 2>&1 || true; done
}
rm -rf "$work" && mkdir -p "$work"
if ! restic check --quiet >"$work/check.log" 2>&1; then
  problems="restic check failed: $(tail -n 3 "$work/check.log")"
elif ! restic restore "$snapshot" --target "$work" --include "$STAGING_DIR/postgres" >"$work/restore.log" 2>&1; then
  problems="snapshot $snapshot could not be read back (damaged): $(tail -n 3 "$work/restore.log")"
else
  for db in $DATABASES; do
    psql -X -q -d postgres -c "drop database if exists drill_$db" -c "create database drill_$db template template0" >/dev/null
    if ! pg_restore --no-owner --no-privileges --exit-on-error -d "drill_$db" "$work$STAGING_DIR/postgres/$db.dump" 2>"$work/$db.err"; then
      problems="$problems pg_restore of $db failed: $(tail -n 2 "$work/$db.err");"
      continue
    fi
    row_counts "$db" >"$work/$db.live"
    row_counts "drill_$db" >"$work/$db.restored"
    if [ "$(cut -d' ' -f1 "$work/$db.live")" != "$(cut -d' ' -f1 "$work/$db.restored")" ]; then
      problems="$problems $db: tables differ from the live database (<live >restored: $(cut -d' ' -f1 "$work/$db.live" >"$work/$db.lt"; cut -d' ' -f1 "$work/$db.restored" | comm -3 "$work/$db.lt" - | head -n 5 | tr '\n\t' ' >'));"
    fi
    # A table with live rows that came back empty (other than the data left out on purpose).
    empty=$(join "$work/$db.live" "$work/$db.restored" | awk -v skip="$EXCLUDE_TABLE_DATA" '$2 > 0 && $3 == 0 && $1 !~ ("\\." skip "$") {print $1}')
    [ -z "$empty" ] || problems="$problems $db: empty after restore: $empty;"
    echo "drill $db: $(wc -l <"$work/$db.restored") tables, $(awk '{n += $2} END {print n + 0}' "$work/$db.restored") rows restored (live: $(awk '{n += $2} END {print n + 0}' "$work/$db.live"))"
  done
fi
if [ -n "$problems" ]; then
  record fail
  fail "restore drill of snapshot $snapshot failed:$problems"
fi
record pass
echo "restore drill of snapshot $snapshot passed"
