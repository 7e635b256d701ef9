#!/bin/sh
# One backup: a custom-format dump of every database, then one restic snapshot of the dumps,
# Synapse's local media and signing key and Traefik's ACME store; then, only where the repository is
# the host's own volume (HOST_PRUNES=1), the retention policy. An off-host repository is append-only
# to this host: its history is pruned from the admin's machine (python -m commstack backup-prune).
set -eu
. "$(dirname "$0")/lib.sh"
open_repository init
dumps="$STAGING_DIR/postgres"
# The dumps hold every message in plaintext: never left behind, whichever way this run ends.
trap 'rm -rf "$dumps"' EXIT
trap 'exit 1' HUP INT TERM
rm -rf "$dumps" && mkdir -p "$dumps"
for db in $DATABASES; do
  # Synapse's backup guide: one-time keys are not worth restoring (clients upload fresh ones).
  # Synapse's background updates create and drop _temp_* tables: one dropped between the dump's
  # snapshot and its table locks fails that attempt only, so a failed dump is taken again.
  attempt=1
  until dump_with_counts "$db" "$dumps/$db.dump" "$dumps/$db.counts"; do
    [ "$attempt" -lt 3 ] || fail "pg_dump of $db failed $attempt times; no snapshot was taken"
    attempt=$((attempt + 1))
    echo "pg_dump of $db failed; trying again (attempt $attempt of 3)" >&2
    sleep 2
  done
done
set -- "$dumps"
for path in "$MEDIA_DIR/local_content" "$MEDIA_DIR/local_thumbnails" "$SIGNING_KEY_FILE" ${ACME_DIR:+"$ACME_DIR"}; do
  if [ -e "$path" ]; then set -- "$@" "$path"; fi
done
restic backup --host "$BACKUP_HOST" --tag commstack "$@"
if [ "${HOST_PRUNES:-0}" = 1 ]; then
  # Grouped by host only: a snapshot's other tags (drill results of older versions) must not make it a
  # group of its own that the policy never thins out.
  restic forget --quiet --host "$BACKUP_HOST" --tag commstack --group-by host --prune \
    --keep-daily "$KEEP_DAILY" --keep-weekly "$KEEP_WEEKLY" --keep-monthly "$KEEP_MONTHLY"
fi
date -u +%s >"$STAGING_DIR/last-backup"  # for health.sh
echo "backup done"
