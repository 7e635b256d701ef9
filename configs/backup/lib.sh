# Sourced by every backup script: the rendered settings, then shared helpers.
. "$(dirname "$0")/env.sh"
export LC_ALL=C  # one sort order for join, awk and the comparisons
export PGOPTIONS="--client-min-messages=warning"  # no NOTICEs about what did not exist
# The off-host repository's credentials (rest-server's or the S3 key), from a secret file, never the command line.
if [ -n "${CREDENTIALS_FILE:-}" ]; then . "$CREDENTIALS_FILE"; fi

fail() { echo "error: $*" >&2; exit 1; }

# Opens the repository; with `init`, creates it when it does not exist yet (restic exit codes 10/12, restic >= 0.17).
open_repository() {
  rc=0; out=$(restic cat config 2>&1 >/dev/null) || rc=$?
  case $rc in
    0) ;;
    10) [ "${1:-}" = init ] || fail "there is no backup repository at $RESTIC_REPOSITORY yet; take a backup first (python -m commstack backup)"
        restic init >/dev/null || fail "cannot create the backup repository at $RESTIC_REPOSITORY"
        echo "created the backup repository at $RESTIC_REPOSITORY" ;;
    12) fail "wrong password for the backup repository at $RESTIC_REPOSITORY: $RESTIC_PASSWORD_FILE must hold the stack's backupRepositoryPassword output; nothing was changed" ;;
    *) fail "cannot open the backup repository at $RESTIC_REPOSITORY (restic exit $rc; damaged or unreachable): $(echo "$out" | tail -n 3); nothing was changed" ;;
  esac
}

# Seconds from now until the next HH:MM (UTC).
seconds_until() {
  now=$(date -u +%s); next=$(date -u -d "$1" +%s)
  [ "$next" -gt "$now" ] || next=$((next + 86400))
  echo $((next - now))
}

# Connections to the stack's databases other than our own: Synapse or a bridge is running.
live_connections() {
  list=$(printf "'%s'," $DATABASES); list=${list%,}
  psql -X -At -d postgres -c "select count(*) from pg_stat_activity where datname in ($list) and pid <> pg_backend_pid()"
}

# Tables of one database with their row counts, one `schema.table count` line each, sorted. Synapse's
# background updates come and go with scratch tables named _temp_*; they are not data.
ROW_COUNTS_SQL="select schemaname || '.' || relname, (xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I.%I', schemaname, relname), false, true, '')))[1]::text from pg_stat_user_tables where relname not like '\\_temp\\_%' order by schemaname || '.' || relname collate \"C\""
row_counts() { psql -X -At -F ' ' -d "$1" -c "$ROW_COUNTS_SQL"; }

# pg_dump of one database, and its row counts as of the very snapshot the dump reads (one
# repeatable-read transaction exports it to pg_dump), so the drill can compare them exactly.
dump_with_counts() {
  db=$1 dump=$2 counts=$3 fifo="$STAGING_DIR/session.fifo" session="$STAGING_DIR/session.out"
  rm -f "$fifo" "$session" && mkfifo "$fifo"
  psql -X -q -At -F ' ' -v ON_ERROR_STOP=1 -d "$db" <"$fifo" >"$session" 2>&1 &
  exec 3>"$fifo"
  echo "begin isolation level repeatable read read only; select pg_export_snapshot();" >&3
  tries=0 snapshot=""
  while [ -z "$snapshot" ] && [ $tries -lt 300 ]; do
    snapshot=$(grep -m 1 -E '^[0-9A-F]+-[0-9A-F]+-[0-9]+$' "$session" || true); tries=$((tries + 1)); sleep 0.1
  done
  rc=0
  if [ -n "$snapshot" ]; then
    pg_dump --snapshot="$snapshot" --format=custom --exclude-table-data="$EXCLUDE_TABLE_DATA" --file="$dump" "$db" || rc=$?
    printf '%s\n' "\\o $counts" "$ROW_COUNTS_SQL;" "commit;" >&3
  else
    rc=1; echo "no snapshot from Postgres: $(tail -n 2 "$session")" >&2
  fi
  exec 3>&-
  wait || rc=$?
  rm -f "$fifo" "$session"
  return $rc
}
