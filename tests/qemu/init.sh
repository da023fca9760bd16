#!/bin/busybox sh
# PID 1 of the test guest: swap through a uzram device, prove it, power off.
#
# Settings come from /etc/uzram-test.conf (written by tests/qemu/vm.py).
#   MODE=a  swap on /dev/vda: virtio-blk backed by QEMU's NBD client, which
#           talks to uzramd on the host.
#   MODE=k  the guest kernel's own zram0 (the anchor for mode b under pressure)
#   MODE=b  the host's / is mounted read-only over virtio-9p; uzramd runs from
#           the host's venv inside the guest (chroot), the host's nbd-client
#           attaches it to /dev/nbd0 and the guest swaps on that. With
#           WRITEBACK_EVERY=SECONDS, zram0's backing device is the guest's
#           virtio disk and idle pages are written back that often.
# /bin/memhog fills more memory than it may use and holds it while the swap
# counters are read (mode a: the host reads uzram's counters and answers on
# the serial line; mode b: uzram is asked from here), then verifies it all.
# Console protocol, one line each (parsed by vm.py):
#   UZRAM-GUEST: LABEL key=value ...     guest counters (deltas since swapon)
#   UZRAM-DEV: LABEL <17 fields of /sys/block/DEV/stat>
#   UZRAM-SERVER: LABEL ATTR values...   mode b: uzram attributes (mm_stat, stat, bd_stat)
#   UZRAM-HOLD                           mode a: host, read uzram now, then send a line
#   UZRAM-TEST: PASS|FAIL details        last line before power-off

/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /run && mount -t tmpfs tmpfs /run

say() { echo "uzram-test: $*"; }
finish() {
    echo "UZRAM-TEST: $*"
    sync
    poweroff -f
    while :; do sleep 1; done
}
fail() { finish "FAIL $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
vmstat() { awk -v k="$1" '$1 == k { print $2 }' /proc/vmstat; }
devstat() { awk -v f="$2" '{ print $f }' /sys/block/$1/stat; }
meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }

MODE=a HOG_MB=192 HOG_PASSES=1 HOG_PATTERN=mixed HOG_MEMORY_HIGH="" DISCARD=pages
ACK_TIMEOUT=120 SERVER_WAIT=180 SERVER_MEMORY_MIN=64M NBD_CLIENT_OPTS="-b 4096" SYSCTLS=""
WRITEBACK_EVERY=""
. /etc/uzram-test.conf || fail "no /etc/uzram-test.conf"
say "kernel $(uname -r), mode $MODE, $(meminfo MemTotal) kB RAM, uptime $(uptime_s)s"

for m in $(cat /etc/modules.list); do
    insmod /lib/modules/$m.ko || fail "insmod $m"
done

mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup && echo +memory > /sys/fs/cgroup/cgroup.subtree_control ||
    fail "no cgroup2 memory controller"
# in_cgroup CGROUP CMD...: exec CMD in /sys/fs/cgroup/CGROUP; a script, not a
# function, so that after "in_cgroup ... &" $! is the command's own pid
cat > /bin/in_cgroup <<'SCRIPT'
#!/bin/sh
echo $$ > /sys/fs/cgroup/$1/cgroup.procs || exit 125
shift
exec "$@"
SCRIPT
chmod 755 /bin/in_cgroup

H=/host
query() { # LABEL ATTR...: mode b, print uzram attributes from the guest
    chroot $H env PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$REPO $PY $REPO/tests/qemu/guest_query.py \
        $CTL_SOCK zram0 "$@" || QUERY_FAILED=1
}

case "$MODE" in
a)
    DEV=vda
    i=0
    while [ ! -b /dev/vda ]; do
        i=$((i + 1)); [ $i -gt 100 ] && fail "/dev/vda did not appear"
        usleep 100000
    done
    ;;
b)
    DEV=nbd0
    mkdir -p $H
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot $H ||
        fail "cannot mount the host's / over 9p"
    for fs in proc sysfs devtmpfs; do
        d=$fs; [ $fs = sysfs ] && d=sys; [ $fs = devtmpfs ] && d=dev
        mount -t $fs $fs $H/$d || fail "mount $H/$d"
    done
    # only /run gets a tmpfs: the checkout (and its .venv) may live under /tmp
    mount -t tmpfs tmpfs $H/run && mkdir -p $H/run/tmp || fail "tmpfs on $H/run"
    mkdir -p $H$(dirname $NBD_SOCK) $H$(dirname $CTL_SOCK)
    # the server must never wait for its own swap device: keep its memory out
    # of swap and protect it from reclaim
    mkdir /sys/fs/cgroup/server &&
        echo 0 > /sys/fs/cgroup/server/memory.swap.max &&
        echo $SERVER_MEMORY_MIN > /sys/fs/cgroup/server/memory.min || fail "server cgroup"
    if [ -n "$WRITEBACK_EVERY" ]; then   # zram0's backing_dev: the virtio disk
        i=0
        while [ ! -b /dev/vda ]; do
            i=$((i + 1)); [ $i -gt 100 ] && fail "/dev/vda (the backing disk) did not appear"
            usleep 100000
        done
    fi
    say "starting uzramd in the guest at $(uptime_s)s: $PY -m uzram.daemon $DAEMON_ARGS"
    in_cgroup server chroot $H env PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$REPO TMPDIR=/run/tmp \
        $PY -m uzram.daemon $DAEMON_ARGS </dev/null &
    SERVER_PID=$!
    i=0
    while [ ! -S $H$NBD_SOCK ] || [ ! -S $H$CTL_SOCK ]; do
        kill -0 $SERVER_PID 2>/dev/null || fail "uzramd exited before creating its sockets"
        i=$((i + 1)); [ $i -gt $((SERVER_WAIT * 10)) ] && fail "uzramd did not start in ${SERVER_WAIT}s"
        [ $((i % 100)) = 0 ] && say "waiting for uzramd ($((i / 10))s)"
        usleep 100000
    done
    say "uzramd is up at $(uptime_s)s"
    in_cgroup server chroot $H nbd-client -unix $NBD_SOCK /dev/nbd0 -N zram0 $NBD_CLIENT_OPTS ||
        fail "nbd-client failed"
    if [ -n "$WRITEBACK_EVERY" ]; then
        # writeback under pressure: idle pages go to the backing disk every
        # WRITEBACK_EVERY seconds while memhog runs (its lines are uzram-wb:)
        in_cgroup server chroot $H env PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$REPO $PY \
            $REPO/tests/qemu/guest_writeback.py $CTL_SOCK zram0 $WRITEBACK_EVERY </dev/null &
        WB_PID=$!
        say "writeback of idle pages every ${WRITEBACK_EVERY}s"
    fi
    ;;
k)  # the anchor: the guest kernel's own zram under the same load
    DEV=zram0
    echo "${ZRAM_ALGORITHM:-lz4}" > /sys/block/zram0/comp_algorithm &&
        echo "${ZRAM_DISKSIZE:-512M}" > /sys/block/zram0/disksize || fail "cannot set up zram0"
    ;;
*) fail "unknown MODE $MODE" ;;
esac

for kv in $SYSCTLS; do sysctl -w "$kv" >/dev/null || fail "sysctl $kv"; done
[ -n "$SYSCTLS" ] && say "sysctls: $SYSCTLS"

# swap treats only non-rotational devices cluster-wise, and only then are
# freed clusters discarded (TRIM): zram is non-rotational too
echo 0 > /sys/block/$DEV/queue/rotational 2>/dev/null
# as systemd/uzram-swap does: no writeback throttling on the NBD queue (zram
# has none); it holds back reclaim's swap-outs while uzramd waits for memory
[ $MODE = b ] && echo 0 > /sys/block/$DEV/queue/wbt_lat_usec
SWAPON_OPTS=""
if [ -n "$DISCARD" ] && [ "$(cat /sys/block/$DEV/queue/discard_max_bytes)" != 0 ]; then
    SWAPON_OPTS="-d$DISCARD"
else
    DISCARD=""
fi
mkswap /dev/$DEV >/dev/null || fail "mkswap /dev/$DEV"
swapon $SWAPON_OPTS /dev/$DEV || fail "swapon $SWAPON_OPTS /dev/$DEV"
say "swap on /dev/$DEV ($(($(cat /sys/block/$DEV/size) / 2048)) MB, discard=${DISCARD:-off}) at $(uptime_s)s"

OUT0=$(vmstat pswpout) IN0=$(vmstat pswpin)
R0=$(devstat $DEV 3) W0=$(devstat $DEV 7) D0=$(devstat $DEV 14)
guest() { # LABEL: the guest's counters since swapon
    su=$(($(meminfo SwapTotal) - $(meminfo SwapFree)))
    echo "UZRAM-GUEST: $1 pswpout=$(($(vmstat pswpout) - OUT0)) pswpin=$(($(vmstat pswpin) - IN0))" \
        "read_sectors=$(($(devstat $DEV 3) - R0)) write_sectors=$(($(devstat $DEV 7) - W0))" \
        "discard_sectors=$(($(devstat $DEV 14) - D0)) swap_used_kb=$su uptime=$(uptime_s)"
    echo "UZRAM-DEV: $1 $(cat /sys/block/$DEV/stat)"
}

HOG="/bin/memhog $HOG_MB $HOG_PASSES $HOG_PATTERN /tmp/memhog.hold"
if [ -n "$HOG_MEMORY_HIGH" ]; then
    # cgroup pressure: memory.high throttles and reclaims but never OOM-kills
    # (memory.max may, when the swap device is slow under TCG)
    mkdir /sys/fs/cgroup/hog && echo $HOG_MEMORY_HIGH > /sys/fs/cgroup/hog/memory.high || fail "hog cgroup"
    say "memhog $HOG_MB MB in a cgroup with memory.high=$HOG_MEMORY_HIGH"
    in_cgroup hog $HOG &
else
    say "memhog $HOG_MB MB under global memory pressure"
    $HOG &
fi
HOG_PID=$!
while [ ! -e /tmp/memhog.hold ] && kill -0 $HOG_PID 2>/dev/null; do usleep 200000; done
if [ -e /tmp/memhog.hold ]; then
    guest hold
    if [ $MODE = a ]; then
        echo "UZRAM-HOLD"
        read -t $ACK_TIMEOUT ack || say "no answer from the host in ${ACK_TIMEOUT}s"
    else
        query hold mm_stat stat bd_stat
    fi
    kill -USR1 $HOG_PID
fi
wait $HOG_PID
HOG_RC=$?
[ -n "$WB_PID" ] && { kill $WB_PID; wait $WB_PID; }
# swapoff also waits for the discards of the clusters memhog freed
swapoff /dev/$DEV || SWAPOFF_FAILED=1
guest end
RESULT="pswpout=$(($(vmstat pswpout) - OUT0)) pswpin=$(($(vmstat pswpin) - IN0))"

if [ $MODE = b ]; then
    query end mm_stat stat bd_stat hardening
    chroot $H nbd-client -d /dev/nbd0 >/dev/null 2>&1 || say "nbd-client -d failed"
    kill -TERM $SERVER_PID
    i=0
    while kill -0 $SERVER_PID 2>/dev/null && [ $i -lt 600 ]; do i=$((i + 1)); usleep 100000; done
    kill -0 $SERVER_PID 2>/dev/null && { say "uzramd ignored SIGTERM for 60s"; kill -KILL $SERVER_PID; }
    wait $SERVER_PID
    SERVER_RC=$?
    echo "UZRAM-GUEST: server rc=$SERVER_RC"
    [ $SERVER_RC = 0 ] || fail "uzramd exited with $SERVER_RC $RESULT"
    [ -z "$QUERY_FAILED" ] || fail "could not read uzram's attributes $RESULT"
fi

[ $HOG_RC = 0 ] || fail "memhog exited with $HOG_RC $RESULT"
[ -z "$SWAPOFF_FAILED" ] || fail "swapoff /dev/$DEV failed $RESULT"
[ $(($(vmstat pswpout) - OUT0)) -gt 0 ] || fail "nothing was swapped out $RESULT"
[ $(($(vmstat pswpin) - IN0)) -gt 0 ] || fail "nothing was swapped in $RESULT"
[ $(($(devstat $DEV 7) - W0)) -gt 0 ] && [ $(($(devstat $DEV 3) - R0)) -gt 0 ] ||
    fail "no reads or no writes on /dev/$DEV $RESULT"
finish "PASS mode=$MODE $RESULT uptime=$(uptime_s)"
