#!/bin/sh
# The postgres container's entrypoint, before the image's own docker-entrypoint.sh: refuses to start
# a server on a data directory of another Postgres major (the image would fail less clearly, and a
# newer major can never open it), and, after a major upgrade, on a volume the upgrade job did not
# finish. See the README's "Postgres major upgrades".
set -eu
data=${PGDATA:-/var/lib/postgresql/data}
server=${PG_MAJOR:?the postgres image sets PG_MAJOR}
if [ -s "$data/PG_VERSION" ]; then
  found=$(cat "$data/PG_VERSION")
  if [ "$found" != "$server" ]; then
    echo "error: $data holds Postgres $found data, but this is a Postgres $server server, which cannot open it." >&2
    echo "       Nothing was changed. Upgrade it: pulumi config set commstack:postgresUpgradeFrom $found && pulumi up" >&2
    echo "       (README, Postgres major upgrades), or pin postgres back to a $found.x tag in configs/images.yaml." >&2
    exit 1
  fi
fi
upgraded_from=${COMMSTACK_POSTGRES_UPGRADED_FROM:-}
if [ -n "$upgraded_from" ] && [ ! -f "$data/commstack-upgraded-from-$upgraded_from" ]; then
  echo "error: $data should hold the data the upgrade from Postgres $upgraded_from restored, but the upgrade job" >&2
  echo "       did not finish into it. Nothing was changed; the Postgres $upgraded_from data is in its own volume." >&2
  echo "       Go back to it (pulumi config set commstack:postgresMajor $upgraded_from && pulumi up), which runs the" >&2
  echo "       job again; see \`docker logs postgres-upgrade\`." >&2
  exit 1
fi
exec docker-entrypoint.sh "$@"
