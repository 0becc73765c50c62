#!/bin/sh
# Creates the namespace and groupsnap's search attributes (what `groupsnap worker` would otherwise add itself).
set -eu
ns="${DEFAULT_NAMESPACE:-default}"
temporal operator namespace describe --namespace "$ns" >/dev/null 2>&1 ||
  temporal operator namespace create --namespace "$ns" --retention 30d
for attr in GroupsnapGroup:Keyword GroupsnapSnapshotId:Keyword GroupsnapVmCount:Int GroupsnapMaxFreezeMs:Int; do
  temporal operator search-attribute create --namespace "$ns" --name "${attr%%:*}" --type "${attr##*:}" 2>/dev/null || true
done
