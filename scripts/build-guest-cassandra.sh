#!/usr/bin/env bash
# Builds groupsnap's Cassandra feasibility guest (docs/consistency.md, part 3, "Cassandra"): one node of Apache
# Cassandra under TCG, to measure how far it gets on this kind of machine. From Debian's and Maven Central's packages
# only:
#
#   root.qcow2   Debian 12 (debootstrap --variant=minbase) with openjdk-17-jre-headless, iproute2, procps, and
#                /opt/cassandra: org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION and its runtime dependencies
#                (mvn dependency:copy-dependencies from Maven Central), a single-node cassandra.yaml on 127.0.0.1 and
#                the JVM options of Cassandra's conf/jvm17-server.options; /sbin/gs-pg-init is
#                scripts/guest-cassandra-init.sh
#   data.qcow2, commitlog.qcow2   empty ext4 (1 GiB each) for /cass/data and /cass/commitlog
#   vmlinuz, initrd.img   scripts/build-guest-pg.sh's (mount /dev/vda, switch_root into /sbin/gs-pg-init)
#
# Needs root, mvn and network access to Debian's mirror and Maven Central. Idempotent and cached under
# $GROUPSNAP_STATE_DIR/guest-cassandra/<key>/ (downloaded .debs and jars kept beside it); prints that directory.
# Not run by scripts/setup.sh (a benchmark-only measurement).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${GROUPSNAP_STATE_DIR:-/var/lib/groupsnap}"
C_DIR="$STATE_DIR/guest-cassandra"
INIT="$ROOT/scripts/guest-cassandra-init.sh"
MIRROR="${GROUPSNAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CASSANDRA_VERSION="${GROUPSNAP_CASSANDRA_VERSION:-5.0.4}"
GUEST_BUILDER=build-guest-cassandra
# shellcheck source=lib/guest-build.sh
source "$ROOT/scripts/lib/guest-build.sh"

PG="$(bash "$ROOT/scripts/build-guest-pg.sh")"
guest_lock "$C_DIR"
hash="$(guest_key_hash "$INIT" "${BASH_SOURCE[0]}")"
OUT="$C_DIR/cassandra-${CASSANDRA_VERSION}_$hash"
guest_cached "$OUT" root.qcow2
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
command -v mvn >/dev/null || die "needs mvn (apt-get install maven)"

JARS="$C_DIR/jars-$CASSANDRA_VERSION"
if [ ! -f "$JARS/.complete" ]; then
  log "mvn: cassandra-all $CASSANDRA_VERSION and its runtime dependencies from Maven Central"
  pomdir="$(mktemp -d)"
  cat >"$pomdir/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>groupsnap</groupId><artifactId>cassandra-guest</artifactId><version>1</version>
<dependencies><dependency><groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId>
<version>$CASSANDRA_VERSION</version></dependency></dependencies></project>
POM
  rm -rf "$JARS"
  (cd "$pomdir" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$JARS") >&2
  rm -rf "$pomdir"
  touch "$JARS/.complete"
fi

work="$(mktemp -d "$C_DIR/.build.XXXXXX")"
cleanup() {
  for m in dev/shm dev proc; do umount "$work/root/$m" 2>/dev/null || true; done
  if grep -q " $work/" /proc/mounts; then log "left $work in place: something is still mounted under it"; else rm -rf "$work"; fi
}
trap cleanup EXIT
root="$work/root"
log "debootstrap bookworm (minbase + openjdk-17-jre-headless) from $MIRROR"
mkdir -p "$C_DIR/debs"
debootstrap --cache-dir="$C_DIR/debs" --variant=minbase --include=openjdk-17-jre-headless,iproute2,procps bookworm \
  "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
mkdir -p "$root/opt/cassandra/conf" "$root/cass/data" "$root/cass/commitlog"
cp "$JARS"/*.jar "$root/opt/cassandra/lib/" 2>/dev/null || { mkdir -p "$root/opt/cassandra/lib" && cp "$JARS"/*.jar "$root/opt/cassandra/lib/"; }
cat >"$root/opt/cassandra/conf/cassandra.yaml" <<'YAML'
cluster_name: groupsnap
num_tokens: 4
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
data_file_directories: [/cass/data/data]
commitlog_directory: /cass/commitlog
saved_caches_directory: /cass/data/saved_caches
hints_directory: /cass/data/hints
commitlog_sync: batch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:7000"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
start_native_transport: true
endpoint_snitch: SimpleSnitch
YAML
# Cassandra's conf/jvm17-server.options (JPMS exports and opens, G1, Netty), one option a line.
cat >"$root/opt/cassandra/conf/jvm17.options" <<'OPTS'
-XX:+UseG1GC
-XX:+ParallelRefProcEnabled
-XX:MaxTenuringThreshold=1
-XX:G1HeapRegionSize=16m
-Djdk.attach.allowAttachSelf=true
--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED
--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED
--add-exports=java.sql/java.sql=ALL-UNNAMED
--add-exports=java.base/java.lang.ref=ALL-UNNAMED
--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED
--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED
--add-opens=java.base/java.lang.module=ALL-UNNAMED
--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED
--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED
--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED
--add-opens=java.base/jdk.internal.math=ALL-UNNAMED
--add-opens=java.base/jdk.internal.module=ALL-UNNAMED
--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED
--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED
--add-opens=java.base/sun.nio.ch=ALL-UNNAMED
--add-opens=java.base/java.io=ALL-UNNAMED
--add-opens=java.base/java.lang.reflect=ALL-UNNAMED
--add-opens=java.base/java.lang=ALL-UNNAMED
--add-opens=java.base/java.util=ALL-UNNAMED
--add-opens=java.base/java.nio=ALL-UNNAMED
-Dio.netty.tryReflectionSetAccessible=true
OPTS
install -m 0755 "$INIT" "$root/sbin/gs-pg-init"
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
mkdir -p "$work/out" "$work/empty"
mkimg() { # dir size name
  truncate -s "$2" "$work/$3.raw"
  mkfs.ext4 -q -F -L "$3" -d "$1" "$work/$3.raw"
  qemu-img convert -q -f raw -O qcow2 "$work/$3.raw" "$work/out/$3.qcow2"
  rm -f "$work/$3.raw"
}
mkimg "$work/empty" 1G data
mkimg "$work/empty" 1G commitlog
mkimg "$root" 3G root
cp "$PG/vmlinuz" "$PG/initrd.img" "$work/out/"
{
  head -n 2 "$PG/VERSIONS"
  chroot "$root" dpkg-query -W openjdk-17-jre-headless
  printf 'cassandra-all %s (%s jars from Maven Central)\n' "$CASSANDRA_VERSION" "$(find "$JARS" -name '*.jar' | wc -l)"
  printf 'guest-cassandra init+builder sha256 %s\n' "$hash"
} >"$work/out/VERSIONS"
guest_publish "$work/out" "$OUT"
log "built $OUT ($(du -sh "$OUT" | cut -f1))"
printf '%s\n' "$OUT"
