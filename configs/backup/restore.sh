#!/bin/sh
# Restores one snapshot (default: the newest) into the stack: databases, media, signing key, ACME store.
# Reads the whole snapshot back first, so a damaged snapshot or a wrong password changes nothing.
# Refuses while Synapse or a bridge is connected, and over existing data unless RESTORE_OVERWRITE=1.
set -eu
. "$(dirname "$0")/lib.sh"
snapshot=${1:-latest}
open_repository
connected=$(live_connections) || fail "cannot reach Postgres at $PGHOST:$PGPORT; is the postgres container running?"
[ "$connected" = 0 ] || fail "the stack is running ($connected connections to its databases): stop Synapse and the bridges first (python -m commstack restore --stop-services); nothing was changed"
if [ "${RESTORE_OVERWRITE:-0}" != 1 ]; then
  for db in $DATABASES; do
    tables=$(psql -X -At -d "$db" -c "select count(*) from pg_stat_user_tables" 2>/dev/null || echo 0)
    [ "$tables" = 0 ] || fail "database $db holds live data ($tables tables); restoring replaces it: run again with --overwrite if that is what you want; nothing was changed"
  done
  for dir in "$MEDIA_DIR/local_content" "$MEDIA_DIR/local_thumbnails"; do
    [ -z "$(ls -A "$dir" 2>/dev/null)" ] || fail "$dir holds live media; restoring replaces it: run again with --overwrite; nothing was changed"
  done
fi
work="$STAGING_DIR/restore"
# What is read back (every message, the signing key) is gone again however the restore ends.
trap 'rm -rf "$work"' EXIT
trap 'exit 1' HUP INT TERM
rm -rf "$work" && mkdir -p "$work"
restic restore "$snapshot" --host "$BACKUP_HOST" --tag commstack --target "$work" \
  || fail "snapshot $snapshot could not be read back (damaged repository?); nothing was changed"
for db in $DATABASES; do
  [ -f "$work$STAGING_DIR/postgres/$db.dump" ] || fail "snapshot $snapshot has no dump of $db; nothing was changed"
done
for db in $DATABASES; do
  # --create recreates the database as dumped (owner, C locale for Synapse, privileges).
  pg_restore --clean --if-exists --create --exit-on-error -d postgres "$work$STAGING_DIR/postgres/$db.dump" \
    || fail "pg_restore of $db failed; see above"
  echo "restored database $db"
done
for dir in local_content local_thumbnails; do
  rm -rf "${MEDIA_DIR:?}/$dir"
  if [ -d "$work$MEDIA_DIR/$dir" ]; then mkdir -p "$MEDIA_DIR" && cp -a "$work$MEDIA_DIR/$dir" "$MEDIA_DIR/"; fi
done
echo "restored media into $MEDIA_DIR"
if [ -f "$work$SIGNING_KEY_FILE" ]; then
  if [ ! -s "$SIGNING_KEY_FILE" ]; then
    mkdir -p "$(dirname "$SIGNING_KEY_FILE")" && cp -p "$work$SIGNING_KEY_FILE" "$SIGNING_KEY_FILE"
    echo "restored the signing key"
  elif ! cmp -s "$work$SIGNING_KEY_FILE" "$SIGNING_KEY_FILE"; then
    cp -p "$work$SIGNING_KEY_FILE" "$SIGNING_KEY_FILE.from-backup"
    echo "warning: the deployed signing key differs from the backup's; kept both ($SIGNING_KEY_FILE.from-backup); see the README's restore chapter" >&2
  fi
fi
if [ -n "${ACME_DIR:-}" ] && [ -d "$work$ACME_DIR" ]; then
  cp -a "$work$ACME_DIR/." "$ACME_DIR/" && echo "restored the ACME store"
fi
echo "restore of snapshot $snapshot done; start Synapse and the bridges again"
