#!/bin/bash
# PID 1 of groupsnap's PostgreSQL guest (docs/consistency.md, part 2), after the initramfs of
# scripts/build-guest-pg.sh has mounted /dev/vda (the Debian 12 root built by that script) and switch_root'ed into it.
#
# Disks: vda root, vdb PostgreSQL's data directory (/pg/data/main), vdc its WAL (/pg/wal/pg_wal, the data
# directory's pg_wal is a symlink to it). Kernel command line: gs.mode=load|check, gs.checkpoint=S (load mode:
# also run CHECKPOINT every S seconds, a stress setting; default 0, only PostgreSQL's own checkpoints).
#
#   load   start PostgreSQL; on the first boot `pgbench -i`; then `pgbench -c 2` in a loop until powered off.
#          Prints "GSPG-LOAD started" on the console (ttyS0) when the load runs.
#   check  a restored clone: start PostgreSQL (crash recovery), run pg_amcheck on every database and the pgbench
#          invariant queries, print one line, power off:
#            GSPG-RESULT mount=<0|1> start=<0|1> recovered=<0|1> amcheck=<0|1> invariant=<0|1> abal=<n> tbal=<n>
#              bbal=<n> delta=<n> hist=<n> ok=<0|1>
#          (recovered: the server log says it ran crash recovery; ok: mount, start, amcheck and invariant)
#          followed by "GSPG-LOG <line>" for the tail of PostgreSQL's log and pg_amcheck's output when not ok.
export PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
exec </dev/console >/dev/console 2>&1
mount -o remount,rw /

MODE=load
CKPT=0
for w in $(cat /proc/cmdline); do
  case "$w" in
    gs.mode=*) MODE=${w#*=} ;;
    gs.checkpoint=*) CKPT=${w#*=} ;;
  esac
done

off() {
  sync
  echo o >/proc/sysrq-trigger
  sleep 60
}
as_pg() { runuser -u postgres -- "$@"; }

MOUNT=1
mount -t ext4 /dev/vdb /pg/data || MOUNT=0
mount -t ext4 /dev/vdc /pg/wal || MOUNT=0
mkdir -p /run/postgresql && chown postgres:postgres /run/postgresql
LOG=/var/log/gs-pg.log
: >"$LOG" && chown postgres:postgres "$LOG"
START=0
if [ $MOUNT = 1 ] && as_pg pg_ctl -D /pg/data/main -l "$LOG" -w -t 900 start >/dev/null; then START=1; fi

if [ "$MODE" = check ]; then
  RECOVERED=0
  grep -q 'database system was interrupted\|was not properly shut down' "$LOG" && RECOVERED=1
  AM=0 INV=0 A=x T=x B=x D=x H=x
  if [ $START = 1 ]; then
    if as_pg pg_amcheck --all --install-missing --heapallindexed >/run/amcheck.out 2>&1; then AM=1; fi
    # shellcheck disable=SC2046
    set -- $(as_pg psql -qAt -F ' ' -d postgres -c "select coalesce((select sum(abalance) from pgbench_accounts),0),
      coalesce((select sum(tbalance) from pgbench_tellers),0), coalesce((select sum(bbalance) from pgbench_branches),0),
      coalesce((select sum(delta) from pgbench_history),0), (select count(*) from pgbench_history)" 2>>/run/amcheck.out)
    if [ $# = 5 ]; then
      A=$1 T=$2 B=$3 D=$4 H=$5
      [ "$A" = "$D" ] && [ "$T" = "$D" ] && [ "$B" = "$D" ] && INV=1
    fi
  fi
  OK=0
  [ "$MOUNT$START$AM$INV" = 1111 ] && OK=1
  echo "GSPG-RESULT mount=$MOUNT start=$START recovered=$RECOVERED amcheck=$AM invariant=$INV abal=$A tbal=$T" \
    "bbal=$B delta=$D hist=$H ok=$OK"
  if [ $OK = 0 ]; then
    tail -n 25 "$LOG" | sed 's/^/GSPG-LOG /'
    [ -f /run/amcheck.out ] && tail -n 25 /run/amcheck.out | sed 's/^/GSPG-LOG amcheck: /'
  fi
  echo "GSPG-END"
  [ $START = 1 ] && as_pg pg_ctl -D /pg/data/main -m immediate stop >/dev/null 2>&1
  off
fi

if [ $START != 1 ]; then
  echo "GSPG-LOAD failed: mount=$MOUNT start=$START"
  tail -n 25 "$LOG"
  off
fi
if [ "$(as_pg psql -qAt -d postgres -c "select to_regclass('pgbench_history') is not null")" != t ]; then
  as_pg pgbench -i -s 1 -q postgres 2>&1 | tail -n 2
fi
echo "GSPG-LOAD started (checkpoint every ${CKPT}s)"
if [ "$CKPT" != 0 ]; then
  while sleep "$CKPT"; do as_pg psql -qAt -d postgres -c checkpoint >/dev/null 2>&1; done &
fi
i=0
while :; do
  i=$((i + 1))
  as_pg pgbench -n -c 2 -j 1 -T 120 postgres 2>&1 | grep -E '^(number of transactions actually|tps)' |
    sed "s/^/GSPG-LOAD round $i: /"
done
