#!/bin/bash
# PID 1 of groupsnap's replicated-PostgreSQL guests (docs/consistency.md, part 3), after the initramfs of
# scripts/build-guest-pgrep.sh has set the link-local addresses (load mode), mounted /dev/vda (the Debian 12 root of
# scripts/build-guest-pg.sh) and switch_root'ed into it. Kernel command line: gs.role=primary|standby|client,
# gs.mode=load|check, gs.primary=<the primary's address, for the standby and the client>, gs.checkpoint=S.
#
# Disks of the primary and the standby: vda root, vdb data directory (/pg/data/main), vdc WAL (/pg/wal/pg_wal), both
# starting from the same initdb'd cluster. The client: vda root, vdb its acknowledgement log (raw, sector 0).
#
# load, primary   first boot: listen on the link, synchronous_standby_names = 'standby' (synchronous_commit = on:
#                 a commit returns once the standby has flushed it), `pgbench -i -s 1`, table gs_commits(id); then
#                 idles (with gs.checkpoint=S, CHECKPOINT every S s). Prints "GSMV-LOAD started role=primary".
# load, standby   first boot: standby.signal, primary_conninfo (application_name=standby); streams from the primary.
# load, client    one transaction after the other against the primary, each pgbench's TPC-B-like one plus
#                 `INSERT INTO gs_commits VALUES (n)`, n = 1, 2, ...; once COMMIT returned and the row reads back, it
#                 writes "GSACK n" to sector 0 of vdb with O_DIRECT and fsync, and only then starts n + 1. So the log
#                 says: commits 1..n were acknowledged. Prints "GSMV-LOAD acked n" every 20 commits. At start it
#                 reads its log's N and prints "GSMV-LOAD started role=client after=N present=P" (P: how many of
#                 the ids 1..N the primary holds; after a recovery P = N means every acknowledged commit is there),
#                 and once its first commit of this boot is acknowledged "GSMV-LOAD ready role=client after=N
#                 present=P acked=n" (the application runs again: bench/recover.ts's readiness check).
# check, primary  (a restored clone, alone: no network) crash recovery, then the checks below.
# check, standby  crash recovery as a standby, then `pg_ctl promote` (the failover drill), then the checks.
#                 Both print one line and power off:
#                   GSMV-RESULT role=<r> mount=<0|1> start=<0|1> recovered=<0|1> promoted=<0|1|-> amcheck=<0|1>
#                     invariant=<0|1> abal=<n> tbal=<n> bbal=<n> delta=<n> hist=<n> commits=<count> maxid=<max>
#                     contiguous=<0|1> ok=<0|1>
#                 (invariant: pgbench's balances each equal the sum of history deltas; contiguous: gs_commits holds
#                 exactly 1..maxid; ok: all of mount, start, promoted, amcheck, invariant, contiguous). The host
#                 compares maxid with the client's acknowledged n. Then "GSMV-LOG <line>"s when not ok, "GSMV-END".
# (check, client is answered by the initramfs.)
export PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
exec </dev/console >/dev/console 2>&1
mount -o remount,rw /

ROLE=primary MODE=load PRIMARY=169.254.1.1 CKPT=0
for w in $(cat /proc/cmdline); do
  case "$w" in
    gs.role=*) ROLE=${w#*=} ;;
    gs.mode=*) MODE=${w#*=} ;;
    gs.primary=*) PRIMARY=${w#*=} ;;
    gs.checkpoint=*) CKPT=${w#*=} ;;
  esac
done

off() {
  sync
  echo o >/proc/sysrq-trigger
  while :; do sleep 60; done
}
as_pg() { runuser -u postgres -- "$@"; }

if [ "$ROLE" = client ]; then
  sql() { psql -h "$PRIMARY" -U postgres -d postgres -qAtX "$@"; }
  until [ "$(sql -c "select to_regclass('gs_commits') is not null" 2>/dev/null)" = t ]; do sleep 2; done
  N=$(dd if=/dev/vdb bs=512 count=1 2>/dev/null | tr -d '\000' | sed -n 's/^GSACK \([0-9][0-9]*\)$/\1/p')
  N=${N:-0}
  # How many of the acknowledged commits 1..N the primary holds (a recovered application must hold all of them).
  P=$(sql -c "select count(*) from gs_commits where id between 1 and $N" 2>/dev/null)
  P=${P:-x} FROM=$N READY=0
  echo "GSMV-LOAD started role=client after=$N present=$P"
  while :; do
    coproc PSQL { sql -v ON_ERROR_STOP=0 2>&1; }
    while :; do
      n=$((N + 1)) aid=$((RANDOM % 100000 + 1)) tid=$((RANDOM % 10 + 1)) delta=$((RANDOM % 10001 - 5000))
      printf '%s\n' "BEGIN;" \
        "UPDATE pgbench_accounts SET abalance = abalance + $delta WHERE aid = $aid;" \
        "UPDATE pgbench_tellers SET tbalance = tbalance + $delta WHERE tid = $tid;" \
        "UPDATE pgbench_branches SET bbalance = bbalance + $delta WHERE bid = 1;" \
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($tid, 1, $aid, $delta, now());" \
        "INSERT INTO gs_commits (id) VALUES ($n);" \
        "COMMIT;" \
        "SELECT 'ack', id FROM gs_commits WHERE id = $n;" \
        "SELECT 'end', $n;" >&"${PSQL[1]}" 2>/dev/null || break
      acked=0 ended=0
      while IFS= read -r -t 600 line <&"${PSQL[0]}"; do
        case "$line" in
          "ack|$n") acked=1 ;;
          "end|$n")
            ended=1
            break
            ;;
          *) echo "GSMV-CLIENT $line" ;;
        esac
      done
      [ $ended = 1 ] || break
      [ $acked = 1 ] || continue
      printf 'GSACK %d\n' "$n" | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync oflag=direct status=none || {
        echo "GSMV-CLIENT cannot log $n"
        off
      }
      N=$n
      if [ $READY = 0 ]; then
        READY=1
        echo "GSMV-LOAD ready role=client after=$FROM present=$P acked=$N"
      fi
      [ $((N % 20)) = 0 ] && echo "GSMV-LOAD acked $N"
    done
    echo "GSMV-CLIENT psql ended; reconnecting"
    kill "$PSQL_PID" 2>/dev/null
    wait 2>/dev/null
    sleep 1
  done
fi

MOUNT=1
mount -t ext4 /dev/vdb /pg/data || MOUNT=0
mount -t ext4 /dev/vdc /pg/wal || MOUNT=0
mkdir -p /run/postgresql && chown postgres:postgres /run/postgresql
D=/pg/data/main
LOG=/var/log/gs-pg.log
: >"$LOG" && chown postgres:postgres "$LOG"

if [ $MOUNT = 1 ] && [ ! -f "$D/gs-pgrep-role" ]; then
  # First boot of the load VMs (the clones inherit it): both get the same settings, the standby its signal.
  cat >>"$D/postgresql.conf" <<CONF
# groupsnap replicated PostgreSQL guest (scripts/guest-pgrep-init.sh)
listen_addresses = '*'
# A standby needs at least the primary's max_connections (and max_wal_senders, ...), as its WAL records them: initdb's.
max_connections = 100
wal_level = replica
wal_keep_size = 512MB
hot_standby = on
synchronous_commit = on
synchronous_standby_names = 'standby'
primary_conninfo = 'host=$PRIMARY port=5432 user=postgres application_name=standby'
CONF
  printf 'host all all 169.254.0.0/16 trust\nhost replication all 169.254.0.0/16 trust\n' >>"$D/pg_hba.conf"
  [ "$ROLE" = standby ] && touch "$D/standby.signal"
  echo "$ROLE" >"$D/gs-pgrep-role"
  chown postgres:postgres "$D"/*
  sync
fi
# A restored clone is checked alone: nothing to wait for (after the failover, the promoted standby has no standby).
[ "$MODE" = check ] && [ $MOUNT = 1 ] && echo "synchronous_standby_names = ''" >>"$D/postgresql.conf"

START=0
if [ $MOUNT = 1 ] && as_pg pg_ctl -D "$D" -l "$LOG" -w -t 1200 start >/dev/null; then START=1; fi

if [ "$MODE" = check ]; then
  RECOVERED=0
  grep -q 'database system was interrupted\|was not properly shut down' "$LOG" && RECOVERED=1
  PROMOTED=-
  if [ "$ROLE" = standby ] && [ $START = 1 ]; then
    PROMOTED=0
    as_pg pg_ctl -D "$D" -w -t 1200 promote >/dev/null 2>>/run/check.out &&
      [ "$(as_pg psql -qAtX -d postgres -c 'select pg_is_in_recovery()')" = f ] && PROMOTED=1
  fi
  AM=0 INV=0 CONTIG=0 A=x T=x B=x DL=x H=x C=x M=x
  if [ $START = 1 ] && [ "$PROMOTED" != 0 ]; then
    if as_pg pg_amcheck --all --install-missing --heapallindexed >>/run/check.out 2>&1; then AM=1; fi
    # shellcheck disable=SC2046
    set -- $(as_pg psql -qAtX -F ' ' -d postgres -c "select coalesce((select sum(abalance) from pgbench_accounts),0),
      coalesce((select sum(tbalance) from pgbench_tellers),0), coalesce((select sum(bbalance) from pgbench_branches),0),
      coalesce((select sum(delta) from pgbench_history),0), (select count(*) from pgbench_history),
      (select count(*) from gs_commits), (select coalesce(max(id),0) from gs_commits)" 2>>/run/check.out)
    if [ $# = 7 ]; then
      A=$1 T=$2 B=$3 DL=$4 H=$5 C=$6 M=$7
      [ "$A" = "$DL" ] && [ "$T" = "$DL" ] && [ "$B" = "$DL" ] && INV=1
      [ "$C" = "$M" ] && CONTIG=1
    fi
  fi
  OK=0
  [ "$MOUNT$START$AM$INV$CONTIG" = 11111 ] && [ "$PROMOTED" != 0 ] && OK=1
  echo "GSMV-RESULT role=$ROLE mount=$MOUNT start=$START recovered=$RECOVERED promoted=$PROMOTED amcheck=$AM" \
    "invariant=$INV abal=$A tbal=$T bbal=$B delta=$DL hist=$H commits=$C maxid=$M contiguous=$CONTIG ok=$OK"
  if [ $OK = 0 ]; then
    tail -n 25 "$LOG" | sed 's/^/GSMV-LOG /'
    [ -f /run/check.out ] && tail -n 25 /run/check.out | sed 's/^/GSMV-LOG check: /'
  fi
  echo "GSMV-END"
  [ $START = 1 ] && as_pg pg_ctl -D "$D" -m immediate stop >/dev/null 2>&1
  off
fi

if [ $START != 1 ]; then
  echo "GSMV-LOAD failed: role=$ROLE mount=$MOUNT start=$START"
  tail -n 25 "$LOG"
  off
fi
if [ "$ROLE" = primary ]; then
  if [ "$(as_pg psql -qAtX -d postgres -c "select to_regclass('gs_commits') is not null")" != t ]; then
    as_pg pgbench -i -s 1 -q postgres 2>&1 | tail -n 2
    as_pg psql -qAtX -d postgres -c 'create table gs_commits (id bigint primary key)'
  fi
  if [ "$CKPT" != 0 ]; then
    while sleep "$CKPT"; do as_pg psql -qAtX -d postgres -c checkpoint >/dev/null 2>&1; done &
  fi
fi
echo "GSMV-LOAD started role=$ROLE"
while :; do
  sleep 30
  if [ "$ROLE" = standby ]; then
    echo "GSMV-LOAD standby replay $(as_pg psql -qAtX -d postgres -c 'select pg_last_wal_replay_lsn()' 2>&1)"
  fi
done
