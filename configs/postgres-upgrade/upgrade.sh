#!/bin/sh
# The Postgres major upgrade, one shot (components/matrix/postgres_upgrade.py). In order:
#   1. a backup, with the backup job's own backup.sh: if it fails, nothing else happens;
#   2. writes stop: the services' roles may no longer log in to the old server, their sessions end;
#   3. every database is dumped from the old major (the new major's pg_dump, as Postgres advises);
#   4. the new major initializes a data directory in its own new volume, and the dumps are restored;
#   5. the restored tables and row counts must equal the old server's, or the new data is not used;
#   6. the new data directory is marked done; the `postgres` container switches to it on the next up.
# The old data directory is never deleted (only its roles are frozen): it stays in its volume for a
# rollback. A failure before the end lets the services log in to the old server again. Re-running
# after success does nothing; after a failure it discards only the unfinished new directory.
set -eu
here=$(dirname "$0")
. "$here/lib.sh"
. "$here/upgrade-env.sh"
done_marker="$NEW_DATA/commstack-upgraded-from-$OLD_MAJOR"
started_marker="$NEW_DATA/commstack-upgrade-started"
work="$STAGING_DIR/upgrade"
if [ -f "$done_marker" ]; then
  echo "the upgrade from Postgres $OLD_MAJOR to $NEW_MAJOR is already done ($(cat "$done_marker")); nothing to do"
  exit 0
fi

# Each table with its row count, one `schema.table count` line each, sorted: like lib.sh's row_counts,
# but with plain SQL only (no xpath), so it runs on any build of either major.
exact_counts() {
  query=$(psql -X -At -d "$1" -c "select coalesce(string_agg(format('select %L || '' '' || count(*) from %I.%I', schemaname || '.' || relname, schemaname, relname), ' union all '), 'select 1 where false') from pg_stat_user_tables where relname not like '\\_temp\\_%'") || return 1
  counted=$(psql -X -At -d "$1" -c "$query") || return 1
  [ -z "$counted" ] || printf '%s\n' "$counted" | sort
}
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u "$RUN_AS" -- "$@"; else "$@"; fi; }
on_new() ( PGHOST=$NEW_SOCKET_DIR && export PGHOST && "$@" )
frozen=""
new_running=0
finish() {
  rc=$?
  # The dumps and the roles' dump (every message, every role's password verifier) never stay behind.
  rm -rf "$work"
  [ -f "$done_marker" ] && return 0
  if [ "$new_running" = 1 ]; then as_postgres "$NEW_BIN/pg_ctl" -D "$NEW_DATA" -m fast -w stop >/dev/null 2>&1 || true; fi
  for role in $frozen; do psql -X -q -d postgres -c "alter role \"$role\" login" >/dev/null 2>&1 || true; done
  [ -z "$frozen" ] || echo "the upgrade did not finish (exit $rc): the Postgres $OLD_MAJOR data is as it was, and $frozen may log in to it again" >&2
}
trap finish EXIT
trap 'exit 1' HUP INT TERM

version=$(psql -X -At -d postgres -c "show server_version_num" 2>&1) \
  || fail "cannot reach the Postgres $OLD_MAJOR server at $PGHOST:$PGPORT ($version); nothing was changed"
[ "$((version / 10000))" = "$OLD_MAJOR" ] \
  || fail "the server at $PGHOST:$PGPORT runs Postgres $((version / 10000)), not $OLD_MAJOR (commstack:postgresUpgradeFrom); nothing was changed"
[ -x "$NEW_BIN/initdb" ] || fail "$NEW_BIN holds no Postgres $NEW_MAJOR programs; nothing was changed"
mkdir -p "$NEW_DATA"
if [ -n "$(ls -A "$NEW_DATA")" ]; then
  [ -f "$started_marker" ] || fail "$NEW_DATA is not empty and holds no unfinished upgrade of ours; it is left alone; nothing was changed"
  echo "discarding the unfinished earlier attempt in $NEW_DATA (the Postgres $OLD_MAJOR data was never changed by it)"
  find "$NEW_DATA" -mindepth 1 -delete
fi

echo "step 1/6: a backup before anything changes"
sh "$here/backup.sh" || fail "the backup before the upgrade failed, so the upgrade did not start; nothing was changed. Fix the backup (python -m commstack backup shows why), then run the upgrade again"

echo "step 2/6: stopping writes to Postgres $OLD_MAJOR (the services' roles may not log in; their sessions end)"
list=$(printf "'%s'," $DATABASES); list=${list%,}
roles=$(psql -X -At -d postgres -c "select distinct pg_get_userbyid(datdba) from pg_database where datname in ($list) and pg_get_userbyid(datdba) <> current_user order by 1")
for role in $roles; do
  psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "alter role \"$role\" nologin"
  frozen="$frozen $role"
done
psql -X -q -At -d postgres -c "select pg_terminate_backend(pid) from pg_stat_activity where datname in ($list) and pid <> pg_backend_pid()" >/dev/null

echo "step 3/6: dumping every database from Postgres $OLD_MAJOR"
rm -rf "$work" && mkdir -p "$work"
"$NEW_BIN/pg_dumpall" --globals-only --file="$work/globals.sql" || fail "pg_dumpall of the roles failed"
for db in $DATABASES; do
  "$NEW_BIN/pg_dump" --format=custom --file="$work/$db.dump" "$db" || fail "pg_dump of $db failed"
  exact_counts "$db" >"$work/$db.old" || fail "cannot count the rows of $db"
done
locale=$(psql -X -At -F ' ' -d postgres -c "select datcollate, datctype from pg_database where datname = 'template1'")

echo "step 4/6: initializing Postgres $NEW_MAJOR in $NEW_DATA and restoring into it"
mkdir -p "$NEW_SOCKET_DIR"
if [ "$(id -u)" = 0 ]; then chown "$RUN_AS" "$NEW_DATA" "$NEW_SOCKET_DIR"; fi
chmod 700 "$NEW_DATA"
as_postgres "$NEW_BIN/initdb" -D "$NEW_DATA" -U "$PGUSER" --pwfile="$SUPERUSER_PASSWORD_FILE" -E UTF8 \
  --lc-collate="${locale% *}" --lc-ctype="${locale#* }" --auth-local=trust --auth-host=scram-sha-256 >"$work/initdb.log" 2>&1 \
  || fail "initdb of Postgres $NEW_MAJOR failed: $(tail -n 3 "$work/initdb.log")"
as_postgres touch "$started_marker"
# Like the postgres image's first start: other containers log in with scram passwords over the network.
echo "host all all all scram-sha-256" >>"$NEW_DATA/pg_hba.conf"
as_postgres "$NEW_BIN/pg_ctl" -D "$NEW_DATA" -w -t 300 -l "$NEW_SOCKET_DIR/server.log" \
  -o "-c listen_addresses='' -k $NEW_SOCKET_DIR -p $PGPORT" start >/dev/null \
  || fail "the Postgres $NEW_MAJOR server did not start: $(tail -n 3 "$NEW_SOCKET_DIR/server.log")"
new_running=1
# The superuser exists already (initdb); everything else as dumped: roles with their passwords.
sed "/^CREATE ROLE $PGUSER;\$/d" "$work/globals.sql" >"$work/globals-new.sql"
on_new "$NEW_BIN/psql" -X -q -v ON_ERROR_STOP=1 -d postgres -f "$work/globals-new.sql" >/dev/null \
  || fail "restoring the roles into Postgres $NEW_MAJOR failed"
for db in $DATABASES; do
  on_new "$NEW_BIN/pg_restore" --create --exit-on-error -d postgres "$work/$db.dump" \
    || fail "pg_restore of $db into Postgres $NEW_MAJOR failed"
done
for role in $frozen; do on_new "$NEW_BIN/psql" -X -q -v ON_ERROR_STOP=1 -d postgres -c "alter role \"$role\" login"; done

echo "step 5/6: checking every table and its row count against Postgres $OLD_MAJOR"
for db in $DATABASES; do
  on_new exact_counts "$db" >"$work/$db.new" || fail "cannot count the rows of $db in Postgres $NEW_MAJOR"
  if ! cmp -s "$work/$db.old" "$work/$db.new"; then
    fail "$db differs after the restore (<old >new: $(diff "$work/$db.old" "$work/$db.new" | grep '^[<>]' | head -n 5 | tr '\n' ' ')); the new data is not used"
  fi
  echo "$db: $(wc -l <"$work/$db.new") tables, $(awk '{n += $2} END {print n + 0}' "$work/$db.new") rows, as in Postgres $OLD_MAJOR"
done
as_postgres "$NEW_BIN/pg_ctl" -D "$NEW_DATA" -m fast -w stop >/dev/null
new_running=0

echo "step 6/6: marking the new data directory done"
rm -f "$started_marker"
as_postgres sh -c "date -u +%Y-%m-%dT%H:%M:%SZ >'$done_marker'"
echo "the upgrade from Postgres $OLD_MAJOR to $NEW_MAJOR is done. The old data stays untouched in its volume for a rollback."
echo "next: pulumi config set commstack:postgresMajor $NEW_MAJOR && pulumi up (the postgres container switches to Postgres $NEW_MAJOR)"
