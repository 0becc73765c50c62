#!/bin/sh
# Creates the namespace and groupsnap's search attributes (what `groupsnap worker` would otherwise add itself).
# Idempotent; fails (exit 1) if the attributes are still missing after a minute.
set -eu
ns="${DEFAULT_NAMESPACE:-default}"
temporal operator namespace describe --namespace "$ns" >/dev/null 2>&1 ||
  temporal operator namespace create --namespace "$ns" --retention 30d
want="GroupsnapGroup:Keyword GroupsnapSnapshotId:Keyword GroupsnapVmCount:Int GroupsnapMaxFreezeMs:Int"
# With several frontends, a new namespace is not visible to every one of them at once, and additions made in quick
# succession through different frontends can overwrite each other: create what is missing, check, and repeat.
tries=0
while :; do
  have=$(temporal operator search-attribute list --namespace "$ns" 2>/dev/null || true)
  missing=""
  for attr in $want; do
    printf '%s\n' "$have" | grep -qw "${attr%%:*}" || missing="$missing $attr"
  done
  [ -z "$missing" ] && exit 0
  tries=$((tries + 1))
  if [ "$tries" -gt 30 ]; then
    echo "create-namespace: search attributes still missing in $ns:$missing" >&2
    exit 1
  fi
  for attr in $missing; do
    temporal operator search-attribute create --namespace "$ns" --name "${attr%%:*}" --type "${attr##*:}" >/dev/null ||
      echo "create-namespace: will retry ${attr%%:*}" >&2
  done
  sleep 2
done
