#!/bin/sh
# PID 1 of groupsnap's workload guest (initramfs built by scripts/build-guest.sh; busybox-static only).
#
# Kernel command line (all optional):
#   gs.role=writer|acker|solo   writer: writes step n to both disks, tells the acker "w n" on ttyS1 and waits for
#                               "a n" before step n+1; acker: on "w n", writes step n (value n) to both disks,
#                               then answers "a n"; solo: steps on its own, no relay. Default: solo.
#   gs.ring=N                   record ring size in sectors (records live at sectors 1..N). Default: 60000.
#   gs.pause=S                  sleep S seconds (busybox sleep accepts fractions) between steps. Default: 0.
#   gs.report=K                 print progress on the console every K steps. Default: 100.
#
# One step n with value v, on each disk in turn (A = /dev/vda, then B = /dev/vdb), each write durable before the
# next one is issued (O_DIRECT + fsync):
#   sector 1 + (n-1) % ring <- "GSREC <role> <disk> <n> <v>"   (the record)
#   sector 0                <- "GSHDR <role> <disk> <n> <v>"   (the header: the disk's counter)
# so any crash-consistent state of one VM has B.n <= A.n <= B.n + 1, and the disk's record n is present.
# dev/consistency-check.ts reads these sectors from snapshot images and checks the invariants.
#
# Recovery, at every boot before the workload starts (a restored clone boots on a snapshot's disks): reads each
# disk's header and the record it points at, checks them as the offline checker does, and prints one line on the
# console (ttyS0):
#   GROUPSNAP-RECOVERY role=<role> a=<A.n> b=<B.n> av=<A.v> bv=<B.v> arec=<0|1> brec=<0|1> alabel=<0|1>
#     blabel=<0|1> ok=<0|1>
# (one line; n = x for an unreadable header; rec: the header's record is there; label: the header names this disk
# and this VM's role; ok: all of that and B.n <= A.n <= B.n + 1). The cross-VM invariant needs both VMs' lines:
# the host compares the writer's b with the acker's av (dev/consistency-restore.ts). When ok=1 the workload
# resumes after step B.n (fresh disks: 0 0, a normal start); when ok=0 nothing more is written.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

# The virtio modules, in the order scripts/lib/guest-build.sh put them in.
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" || echo "gs: insmod $m failed"
done

arg() {
  for w in $(cat /proc/cmdline); do
    case "$w" in "gs.$1="*) echo "${w#*=}"; return ;; esac
  done
  echo "$2"
}
ROLE=$(arg role solo)
RING=$(arg ring 60000)
PAUSE=$(arg pause 0)
REPORT=$(arg report 100)

fail() {
  echo "gs: error: $*"
  sleep 1
  poweroff -f
}

i=0
until [ -b /dev/vda ] && [ -b /dev/vdb ]; do
  i=$((i + 1))
  [ $i -gt 200 ] && fail "no /dev/vda and /dev/vdb after 20 s"
  sleep 0.1
done

# put DEVICE SECTOR TEXT: one 512-byte sector, written with O_DIRECT and fsync'd before returning.
put() {
  printf '%-511s\n' "$3" | dd of="$1" bs=512 seek="$2" count=1 oflag=direct conv=sync,fsync 2>/dev/null ||
    fail "write to $1 sector $2 failed"
}

# step N V: record then header, on disk A, then on disk B.
step() {
  rec=$((1 + ($1 - 1) % RING))
  put /dev/vda "$rec" "GSREC $ROLE A $1 $2"
  put /dev/vda 0 "GSHDR $ROLE A $1 $2"
  put /dev/vdb "$rec" "GSREC $ROLE B $1 $2"
  put /dev/vdb 0 "GSHDR $ROLE B $1 $2"
  [ $(($1 % REPORT)) -eq 0 ] && echo "gs: $ROLE n=$1"
  [ "$PAUSE" != 0 ] && sleep "$PAUSE"
  return 0
}

# get DEVICE SECTOR: the sector's text, NUL bytes dropped (empty for a never written sector). Read at boot only,
# before anything is written, so it comes from the disk.
get() {
  dd if="$1" bs=512 skip="$2" count=1 2>/dev/null | tr -d '\000'
}

isnum() {
  case "$1" in '' | *[!0-9]*) return 1 ;; esac
}

# check DEVICE LABEL: reads the disk's header and the record it points at. Sets N and V (the header's step and
# value; 0 0 when never written, x x when unreadable), REC (1: the record of step N is there) and LBL (1: the
# header names disk LABEL and this VM's role).
check() {
  dev=$1 want=$2
  N=0 V=0 REC=1 LBL=1
  hdr=$(get "$dev" 0)
  [ -z "$hdr" ] && return 0
  # shellcheck disable=SC2086 # split the header into its words
  set -- $hdr
  if [ $# -ne 5 ] || [ "$1" != GSHDR ] || ! isnum "$4" || ! isnum "$5" || [ "$4" -lt 1 ]; then
    N=x V=x REC=0 LBL=0
    return 0
  fi
  N=$4 V=$5
  { [ "$2" = "$ROLE" ] && [ "$3" = "$want" ]; } || LBL=0
  rec=$(get "$dev" $((1 + (N - 1) % RING)))
  # shellcheck disable=SC2086 # compared word by word (the sector is space padded)
  [ "$(echo $rec)" = "GSREC $2 $3 $4 $5" ] || REC=0
  return 0
}

recover() {
  check /dev/vda A
  A_N=$N A_V=$V A_REC=$REC A_LBL=$LBL
  check /dev/vdb B
  B_N=$N B_V=$V B_REC=$REC B_LBL=$LBL
  OK=0
  if [ "$A_N" != x ] && [ "$B_N" != x ] && [ "$A_REC$B_REC$A_LBL$B_LBL" = 1111 ] &&
    [ "$B_N" -le "$A_N" ] && [ "$A_N" -le $((B_N + 1)) ]; then
    OK=1
  fi
  echo "GROUPSNAP-RECOVERY role=$ROLE a=$A_N b=$B_N av=$A_V bv=$B_V arec=$A_REC brec=$B_REC" \
    "alabel=$A_LBL blabel=$B_LBL ok=$OK"
}

relay_open() {
  stty -F /dev/ttyS1 raw -echo 115200 || fail "stty ttyS1"
  exec 3<>/dev/ttyS1
}

recover
if [ "$OK" != 1 ]; then
  # Left as found: the disks can be inspected (the console above says what is wrong).
  echo "gs: recovery found inconsistent disks; the workload is not resumed"
  while :; do sleep 3600; done
fi
# Resume after the last step complete on both disks: the writer (or solo) redoes step B.n + 1 if it was cut short;
# the acker acknowledges B.n + 1 again when the writer asks for it.
n=$B_N
echo "gs: workload $ROLE started after step $n (ring $RING, pause $PAUSE)"
case "$ROLE" in
  writer)
    relay_open
    while :; do
      n=$((n + 1))
      step $n $n
      echo "w $n" >&3
      # Wait for the acker's durable "a n"; resend when nothing came for 2 s (e.g. the acker was not up yet).
      while :; do
        if read -t 2 -r line <&3; then
          case "$line" in "a $n"*) break ;; esac
        else
          echo "w $n" >&3
        fi
      done
    done
    ;;
  acker)
    relay_open
    while :; do
      read -r line <&3 || continue
      case "$line" in "w "*) ;; *) continue ;; esac
      w=${line#w }
      w=${w%%[!0-9]*}
      [ -n "$w" ] || continue
      if [ "$w" -eq $((n + 1)) ]; then
        n=$w
        step $n $n
      fi
      # A repeat of an acknowledged step is answered again; a step from the future (never sent) is ignored.
      [ "$w" -le "$n" ] && echo "a $w" >&3
    done
    ;;
  solo)
    while :; do
      n=$((n + 1))
      step $n $n
    done
    ;;
  *) fail "unknown gs.role=$ROLE" ;;
esac
