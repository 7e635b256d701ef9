#!/bin/sh
# The restore drill: restores the newest snapshot's dumps into scratch databases, checks their tables
# against the live database and their row counts against those the backup recorded in the dump's own
# snapshot; records the result in the repository as a small snapshot of its own (tags commstack-drill,
# drill-<pass|fail>-<time>, drilled-<snapshot>): adding is all an append-only repository allows.
set -eu
. "$(dirname "$0")/lib.sh"
open_repository
stamp=$(date -u +%Y%m%dT%H%M%SZ)
snapshot=$(restic snapshots --no-lock --host "$BACKUP_HOST" --tag commstack --latest 1 --json | sed -n 's/.*"short_id":"\([0-9a-f]*\)".*/\1/p' | tail -n 1)
[ -n "$snapshot" ] || fail "there is no snapshot to drill"
work="$STAGING_DIR/drill"
# The restored dumps and the scratch databases hold every message: gone again however the drill ends.
cleanup() {
  rm -rf "$work"
  for db in $DATABASES; do psql -X -q -d postgres -c "drop database if exists drill_$db" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM
problems=""
record() {
  printf 'restore drill of snapshot %s at %s: %s\n%s\n' "$snapshot" "$stamp" "$1" "$problems" \
    | restic backup --quiet --host "$BACKUP_HOST" --tag "commstack-drill,drill-$1-$stamp,drilled-$snapshot" \
        --stdin --stdin-filename drill-report.txt >/dev/null 2>&1 \
    || echo "warning: could not record the drill's result in the repository" >&2
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
    # Row counts equal to those the backup recorded in the dump's own snapshot (the data left out on purpose aside).
    recorded="$work$STAGING_DIR/postgres/$db.counts"
    if [ -f "$recorded" ]; then
      differ=$(join -a 1 -a 2 -e missing -o 0,1.2,2.2 "$recorded" "$work/$db.restored" \
        | awk -v skip="$EXCLUDE_TABLE_DATA" '$2 != $3 && $1 !~ ("\\." skip "$") {printf "%s (%s rows backed up, %s restored) ", $1, $2, $3}')
      [ -z "$differ" ] || problems="$problems $db: row counts differ: $differ;"
    else
      problems="$problems $db: the snapshot has no recorded row counts;"
    fi
    echo "drill $db: $(wc -l <"$work/$db.restored") tables, $(awk '{n += $2} END {print n + 0}' "$work/$db.restored") rows restored as backed up (live now: $(awk '{n += $2} END {print n + 0}' "$work/$db.live"))"
  done
fi
if [ -n "$problems" ]; then
  record fail
  fail "restore drill of snapshot $snapshot failed:$problems"
fi
record pass
echo "restore drill of snapshot $snapshot passed"
