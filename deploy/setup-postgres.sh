#!/bin/sh
# Creates (or upgrades) Temporal's databases and schemas in PostgreSQL. Runs in temporalio/admin-tools (and, with
# TEMPORAL_SCHEMA_DIR pointing at the server module's schema/ folder, for dev/temporal-cluster.ts).
set -eu
tool() { temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$DB_PORT" -u "$POSTGRES_USER" -pw "$POSTGRES_PWD" "$@"; }
schema=${TEMPORAL_SCHEMA_DIR:-/etc/temporal/schema}/postgresql/v12
for db in temporal temporal_visibility; do
  dir=$schema/temporal/versioned
  [ "$db" = temporal_visibility ] && dir=$schema/visibility/versioned
  tool --db "$db" create-database || true   # already there on a restart
  tool --db "$db" setup-schema -v 0.0 || true
  tool --db "$db" update-schema -d "$dir"
done
