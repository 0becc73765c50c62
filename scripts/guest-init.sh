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
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
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

relay_open() {
  stty -F /dev/ttyS1 raw -echo 115200 || fail "stty ttyS1"
  exec 3<>/dev/ttyS1
}

echo "gs: workload $ROLE started (ring $RING, pause $PAUSE)"
n=0
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
