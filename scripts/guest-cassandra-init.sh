#!/bin/bash
# PID 1 of groupsnap's Cassandra feasibility guest (docs/consistency.md, part 3, "Cassandra"), run by the initramfs
# of scripts/build-guest-pg.sh (as /sbin/gs-pg-init) in the root built by scripts/build-guest-cassandra.sh.
# Disks: vda root (Debian 12, openjdk-17-jre-headless, Apache Cassandra's jars from Maven Central in
# /opt/cassandra/lib), vdb Cassandra's data (/cass/data), vdc its commit log (/cass/commitlog).
# It measures how far one node gets under TCG and prints, with the guest's uptime in seconds:
#   GSCASS-T init <s>; GSCASS-T java-version <s>; GSCASS-T started <s> (CassandraDaemon "Startup complete") or
#   GSCASS-T gave-up <s>; GSCASS-MEM <free -m line>; then powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1
mount -o remount,rw /
up() { cut -d' ' -f1 /proc/uptime; }
off() {
  sync
  echo o >/proc/sysrq-trigger
  while :; do sleep 60; done
}
LIMIT=1800
for w in $(cat /proc/cmdline); do case "$w" in gs.limit=*) LIMIT=${w#*=} ;; esac; done
echo "GSCASS-T init $(up)"
ip link set lo up
# Cassandra resolves the host's own name at start (InetAddress.getLocalHost()).
hostname gscass
printf '127.0.0.1 localhost gscass\n' >/etc/hosts
mount -t ext4 /dev/vdb /cass/data && mount -t ext4 /dev/vdc /cass/commitlog || {
  echo "GSCASS-T no-disks $(up)"
  off
}
java -version 2>&1 | head -n 1
echo "GSCASS-T java-version $(up)"
cd /opt/cassandra || off
# shellcheck disable=SC2046
java -Xms512m -Xmx512m $(grep -v '^#' conf/jvm17.options) -Dcassandra.config=file:///opt/cassandra/conf/cassandra.yaml \
  -Dcassandra-foreground=yes -Dcassandra.jmx.local.port=7199 -Dcassandra.storagedir=/cass/data -cp 'lib/*' \
  org.apache.cassandra.service.CassandraDaemon >/var/log/cassandra.log 2>&1 &
pid=$!
t=0
while [ $t -lt "$LIMIT" ]; do
  if grep -q 'Startup complete' /var/log/cassandra.log; then
    echo "GSCASS-T started $(up)"
    break
  fi
  kill -0 $pid 2>/dev/null || break
  sleep 5
  t=$((t + 5))
  [ $((t % 60)) = 0 ] && echo "GSCASS-PROGRESS $(up) $(grep -c . /var/log/cassandra.log) log lines: $(tail -n 1 /var/log/cassandra.log | cut -c1-160)"
done
grep -q 'Startup complete' /var/log/cassandra.log || {
  echo "GSCASS-T gave-up $(up)"
  tail -n 5 /var/log/cassandra.log
}
echo "GSCASS-MEM $(free -m | grep Mem:) java-rss-kb $(ps -o rss= -p $pid 2>/dev/null || echo -)"
echo "GSCASS-END"
kill $pid 2>/dev/null
off
