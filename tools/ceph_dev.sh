#!/usr/bin/env bash
# ceph_dev.sh - throw-away single-node Ceph (16.2.x, Debian packages) + radosgw
# on 127.0.0.1, for tests and benchmarks of blip3o-storage.
#
# Usage:
#   tools/ceph_dev.sh up       install if needed, (re)create and start, write env files
#   tools/ceph_dev.sh down     stop the daemons we started (by pid file), remove data dir
#   tools/ceph_dev.sh status   exit 0 if up and RGW answers HTTP, 1 otherwise
#
# Environment:
#   CEPH_DEV_DIR          data/run dir (default /tmp/blip3o-ceph); wiped on `up`/`down`
#   CEPH_DEV_HTTP_PORT    RGW http port  (default 7480, or a free port if 7480 is taken)
#   CEPH_DEV_HTTPS_PORT   RGW https port (default 7443, or a free port if 7443 is taken)
#   CEPH_DEV_MON_PORT     mon msgr2 port (default 3300, or a free port if taken)
#   CEPH_DEV_TIMEOUT      seconds to wait for RGW to answer (default 120)
#   CEPH_DEV_MEMSTORE_BYTES  memstore capacity (default 4 GiB; RAM is used on demand)
#
# Outputs (after `up`):
#   $CEPH_DEV_DIR/env             sourceable: CEPH_S3_ENDPOINT, CEPH_S3_HTTPS_ENDPOINT,
#                                 CEPH_S3_CA_BUNDLE, CEPH_S3_ACCESS_KEY, CEPH_S3_SECRET_KEY
#   $CEPH_DEV_DIR/petreloss.conf  petreloss INI with a [ceph] cluster (default_cluster)
#   $CEPH_DEV_DIR/ceph.conf       use with `ceph -c` / `radosgw-admin -c`
#   $CEPH_DEV_DIR/log/*.log       daemon logs
#
# The cluster: 1 mon, 1 OSD, 1 radosgw, no mgr (nothing here needs one).
# Settings in ceph.conf and why each is there:
#   auth {cluster,service,client} required = none
#       no cephx keys to distribute; S3 auth is still enforced by RGW.
#   ms mon client mode = crc
#       without it radosgw loops on "auth ... -13" against the mon (with auth
#       none the default "secure crc" negotiation fails); crc works.
#   osd objectstore = memstore
#       no block device / LVM / bluestore needed; data lives in RAM, which is
#       what a throw-away test cluster wants.
#   osd pool default size = 1, min size = 1, mon allow pool size one = true,
#   osd crush chooseleaf type = 0
#       one OSD: replicate 1x (else PGs stay undersized/inactive and RGW
#       hangs creating its pools); chooseleaf type 0 makes the initial CRUSH
#       rule spread over OSDs, not hosts, so raising size on a pool can't stall.
#   osd pool default pg num = 8 (+ pgp num), pg autoscale mode = off
#       RGW creates 4 pools at start and 3-4 more on first bucket/multipart;
#       at the default 32 PGs each that reaches mon max pg per osd (250) on
#       one OSD and pool creation is refused; 8 each keeps far below it.
#   paxos propose interval = 0.05, paxos min wait = 0.01
#       default 1 s paxos batching makes every osdmap/pool change slow;
#       cuts cold start-up from ~13 s to a few seconds.
#   rgw frontends = beast endpoint=... ssl_endpoint=... tcp_nodelay=1
#       tcp_nodelay avoids ~40 ms Nagle/delayed-ACK stalls on small GETs;
#       the https listener uses a self-signed cert for 127.0.0.1/localhost
#       (SAN IP:127.0.0.1, DNS:localhost) -> $CEPH_DEV_DIR/tls/cert.pem, so
#       tests can show boto3 >= 1.36 default checksums failing over https
#       (411 MissingContentLength) and request_checksum_calculation=
#       'when_required' working.
#   mon allow pool delete = true, mon warn on pool no redundancy = false,
#   mon warn on insecure global id reclaim allowed = false
#       convenience for tests; keep `ceph -s` at HEALTH_OK.
# Daemons run with -f under setsid; their PIDs go to $CEPH_DEV_DIR/run/*.pid.
# `down` only signals PIDs from those files whose command line refers to our
# ceph.conf -- never anything matched by name.
set -euo pipefail

DIR="${CEPH_DEV_DIR:-/tmp/blip3o-ceph}"
DIR="${DIR%/}"
CONF="$DIR/ceph.conf"
RUN="$DIR/run"
LOG="$DIR/log"
MARKER="$DIR/.blip3o-ceph-dev"
TIMEOUT="${CEPH_DEV_TIMEOUT:-120}"
RGW_NAME="client.rgw.dev"
DAEMONS=(rgw osd mon)

die() {
    echo "ceph_dev.sh: ERROR: $*" >&2
    exit 1
}
log() { echo "ceph_dev.sh: $*" >&2; }

log_tails() {
    local f
    for f in "$LOG"/*.log "$LOG"/*.out; do
        [[ -s "$f" ]] || continue
        [[ "$f" == */openssl.out ]] && continue
        echo "----- tail -n 30 $f -----" >&2
        tail -n 30 "$f" >&2 || true
    done
}

fail() {
    echo "ceph_dev.sh: ERROR: $*" >&2
    log_tails
    exit 1
}

# While `up` is starting things, any failing exit stops what was started
# (logs stay in $LOG for inspection; `down` or the next `up` removes them).
STARTING=0
on_exit() {
    local rc=$?
    if ((STARTING)) && ((rc != 0)); then
        stop_all || true
        echo "ceph_dev.sh: 'up' failed (rc=$rc); stopped the daemons it started; logs kept in $LOG" >&2
    fi
}
trap on_exit EXIT

[[ -n "$DIR" && "$DIR" != "/" ]] || die "refusing CEPH_DEV_DIR='$DIR'"
case "$DIR" in /*) ;; *) die "CEPH_DEV_DIR must be an absolute path (got '$DIR')";; esac

now() { date +%s.%N; }

# ---------------------------------------------------------------- pid helpers
# Prints the pid in run/$1.pid if that process is alive and is ours.
our_pid() {
    local f="$RUN/$1.pid" pid
    [[ -f "$f" ]] || return 1
    pid="$(cat "$f" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    # must be a ceph daemon started with our config file
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF" || return 1
    echo "$pid"
}

# TERM the named daemons together, wait up to 10 s, then KILL.
stop_group() {
    local d pid i alive
    local -a pids=()
    for d in "$@"; do
        if pid="$(our_pid "$d")"; then
            pids+=("$pid")
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for ((i = 0; i < 100 && ${#pids[@]} > 0; i++)); do
        alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        pids=("${alive[@]+"${alive[@]}"}")
        ((${#pids[@]} > 0)) && sleep 0.1
    done
    for pid in "${pids[@]+"${pids[@]}"}"; do
        log "pid $pid ignored TERM for 10 s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 50 && ${#pids[@]} > 0; i++)); do
        alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        pids=("${alive[@]+"${alive[@]}"}")
        ((${#pids[@]} > 0)) && sleep 0.1
    done
    for d in "$@"; do rm -f "$RUN/$d.pid"; done
}

# One at a time, rgw -> osd -> mon (~1.5-2 s each). In parallel is slower:
# radosgw whose OSD vanished hangs in shutdown until its 120 s alarm, and an
# OSD whose mon vanished waits osd_mon_shutdown_timeout.
stop_all() {
    stop_group rgw
    stop_group osd
    stop_group mon
}

wipe_dir() {
    [[ -e "$DIR" ]] || return 0
    if [[ -f "$MARKER" ]] || [[ -z "$(ls -A "$DIR" 2>/dev/null)" ]]; then
        rm -rf -- "$DIR"
    else
        die "$DIR exists but was not created by ceph_dev.sh (no $MARKER); refusing to delete it"
    fi
}

# ---------------------------------------------------------------- status
http_port_from_env() {
    [[ -f "$DIR/env" ]] || return 1
    sed -n 's#^CEPH_S3_ENDPOINT=http://127.0.0.1:\([0-9]*\)$#\1#p' "$DIR/env"
}

rgw_answers() {   # $1 = port
    # any HTTP status (RGW answers 200 ListAllMyBuckets for anonymous) counts
    local code
    code="$(curl -s -o /dev/null -m 3 -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null || true)"
    [[ -n "$code" && "$code" != "000" ]]
}

is_up() {
    local d port
    for d in "${DAEMONS[@]}"; do our_pid "$d" >/dev/null || return 1; done
    port="$(http_port_from_env)" || return 1
    [[ -n "$port" ]] || return 1
    rgw_answers "$port"
}

# ---------------------------------------------------------------- install
ensure_installed() {
    local need=0 b
    for b in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool; do
        command -v "$b" >/dev/null 2>&1 || need=1
    done
    if ((need)); then
        command -v apt-get >/dev/null 2>&1 || die "ceph binaries missing and apt-get not available"
        [[ "$(id -u)" == 0 ]] || die "ceph binaries missing; run as root (or: apt-get install ceph-mon ceph-osd radosgw ceph-common)"
        log "installing ceph-mon ceph-osd radosgw ceph-common via apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends ceph-mon ceph-osd radosgw ceph-common >&2 \
            || die "apt-get install of ceph packages failed"
        # Debian's postinst may start/enable system units; we don't use them.
    fi
    for b in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool openssl curl python3; do
        command -v "$b" >/dev/null 2>&1 || die "required command '$b' not found"
    done
}

# ---------------------------------------------------------------- ports
port_free() {   # bind test on 127.0.0.1 (and 0.0.0.0 wildcard conflicts)
    python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

ephemeral_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# $1 = env value (may be empty), $2 = default, $3 = label, $4.. = ports already taken
pick_port() {
    local want="$1" def="$2" label="$3" p; shift 3
    if [[ -n "$want" ]]; then
        [[ "$want" =~ ^[0-9]+$ ]] || die "$label port '$want' is not a number"
        port_free "$want" || die "$label port $want (from environment) is already in use"
        echo "$want"; return
    fi
    p="$def"
    local tries=0
    while ! port_free "$p" || [[ " $* " == *" $p "* ]]; do
        p="$(ephemeral_port)"
        ((++tries < 20)) || die "could not find a free port for $label"
    done
    echo "$p"
}

# ---------------------------------------------------------------- up
ceph_cli() { timeout 30 ceph -c "$CONF" --connect-timeout 10 "$@"; }

start_daemon() {   # $1 = short name, rest = command
    local name="$1"; shift
    setsid "$@" -f </dev/null >>"$LOG/$name.out" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

wait_for() {   # $1 = deadline (epoch), $2 = description, rest = command
    local deadline="$1" what="$2"; shift 2
    until "$@" >/dev/null 2>&1; do
        local d
        for d in "${DAEMONS[@]}"; do
            if [[ -f "$RUN/$d.pid" ]] && ! our_pid "$d" >/dev/null; then
                fail "$d daemon exited while waiting for $what"
            fi
        done
        if (($(date +%s) >= deadline)); then
            fail "timed out after ${TIMEOUT}s waiting for $what"
        fi
        sleep 0.2
    done
}

osd_is_up() { ceph_cli osd dump 2>/dev/null | grep -q '^osd\.0 up'; }

do_up() {
    local t0 deadline
    t0="$(now)"
    if is_up; then
        echo "ceph_dev: already up ($DIR); endpoints in $DIR/env"
        exit 0
    fi
    ensure_installed

    # stale dir from an earlier run: stop its daemons first, then wipe
    if [[ -e "$DIR" ]]; then
        [[ -f "$MARKER" ]] && stop_all
        wipe_dir
    fi

    local http_port https_port mon_port fsid osd_uuid ak sk
    http_port="$(pick_port "${CEPH_DEV_HTTP_PORT:-}" 7480 http)"
    https_port="$(pick_port "${CEPH_DEV_HTTPS_PORT:-}" 7443 https "$http_port")"
    mon_port="$(pick_port "${CEPH_DEV_MON_PORT:-}" 3300 mon "$http_port" "$https_port")"
    fsid="$(python3 -c 'import uuid; print(uuid.uuid4())')"
    osd_uuid="$(python3 -c 'import uuid; print(uuid.uuid4())')"

    STARTING=1
    mkdir -p "$DIR" "$RUN" "$LOG" "$DIR/mon" "$DIR/osd/0" "$DIR/tls" "$DIR/rgw"
    touch "$MARKER"

    # --- TLS (self-signed, for 127.0.0.1 and localhost)
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
        -keyout "$DIR/tls/key.pem" -out "$DIR/tls/cert.pem" \
        -subj "/CN=127.0.0.1" \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -addext "basicConstraints=critical,CA:TRUE" >"$LOG/openssl.out" 2>&1 \
        || fail "openssl could not create the TLS certificate"

    # --- config
    cat >"$CONF" <<EOF
# generated by tools/ceph_dev.sh -- throw-away dev cluster
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port]
mon initial members = a
public network = 127.0.0.0/8
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
keyring = $DIR/keyring
run dir = $RUN
admin socket = $RUN/\$name.asok
log file = $LOG/\$name.log
log to stderr = false
err to stderr = true
crash dir = $DIR/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
osd crush chooseleaf type = 0
paxos propose interval = 0.05
paxos min wait = 0.01

[mon]
mon data = $DIR/mon/\$cluster-\$id

[osd]
osd data = $DIR/osd/\$id
osd objectstore = memstore
memstore device bytes = ${CEPH_DEV_MEMSTORE_BYTES:-4294967296}

[$RGW_NAME]
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$http_port ssl_endpoint=127.0.0.1:$https_port ssl_certificate=$DIR/tls/cert.pem ssl_private_key=$DIR/tls/key.pem tcp_nodelay=1
EOF

    # keyring is unused with auth=none but keeps tools from complaining
    ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >"$LOG/authtool.out" 2>&1 \
        || fail "ceph-authtool failed"
    ceph-authtool "$DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
        --cap mgr 'allow *' >>"$LOG/authtool.out" 2>&1 || fail "ceph-authtool failed"

    # --- mon
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" \
        >"$LOG/monmaptool.out" 2>&1 || fail "monmaptool failed"
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring" \
        >"$LOG/mon-mkfs.out" 2>&1 || fail "ceph-mon --mkfs failed"
    start_daemon mon ceph-mon -c "$CONF" -i a
    deadline=$(($(date +%s) + TIMEOUT))
    wait_for "$deadline" "the monitor" ceph_cli mon stat

    # --- osd
    local id
    id="$(ceph_cli osd new "$osd_uuid" 2>>"$LOG/osd-new.out")" || fail "ceph osd new failed"
    [[ "$id" == 0 ]] || fail "unexpected osd id '$id'"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$LOG/osd-mkfs.out" 2>&1 \
        || fail "ceph-osd --mkfs failed"
    start_daemon osd ceph-osd -c "$CONF" -i 0
    wait_for "$deadline" "osd.0 to come up" osd_is_up

    # --- radosgw (creates its pools on first start)
    start_daemon rgw radosgw -c "$CONF" -n "$RGW_NAME"
    wait_for "$deadline" "radosgw to answer on http://127.0.0.1:$http_port" rgw_answers "$http_port"

    # --- S3 user
    ak="$(openssl rand -hex 10 | tr 'a-f' 'A-F')"
    sk="$(openssl rand -hex 20)"
    # --max-buckets=0: no per-user bucket limit (RGW's default is 1000; every test makes its own
    # bucket, so repeated suites against one long-lived dev cluster hit TooManyBuckets).
    timeout 60 radosgw-admin -c "$CONF" user create --uid=blip3o --display-name=blip3o \
        --access-key="$ak" --secret="$sk" --max-buckets=0 >"$LOG/user-create.out" 2>&1 \
        || fail "radosgw-admin user create failed (see $LOG/user-create.out)"

    cat >"$DIR/env" <<EOF
CEPH_S3_ENDPOINT=http://127.0.0.1:$http_port
CEPH_S3_HTTPS_ENDPOINT=https://127.0.0.1:$https_port
CEPH_S3_CA_BUNDLE=$DIR/tls/cert.pem
CEPH_S3_ACCESS_KEY=$ak
CEPH_S3_SECRET_KEY=$sk
EOF
    cat >"$DIR/petreloss.conf" <<EOF
[DEFAULT]
default_cluster = ceph

[ceph]
access_key = $ak
secret_key = $sk
host_base = http://127.0.0.1:$http_port
EOF

    STARTING=0
    local t1
    t1="$(now)"
    echo "ceph_dev: up in $(python3 -c "print(f'{$t1 - $t0:.1f}')")s"
    echo "ceph_dev: http  http://127.0.0.1:$http_port  https https://127.0.0.1:$https_port"
    echo "ceph_dev: env file $DIR/env ; petreloss config $DIR/petreloss.conf"
}

do_down() {
    if [[ ! -e "$DIR" ]]; then
        echo "ceph_dev: nothing to do ($DIR does not exist)"
        return 0
    fi
    [[ -f "$MARKER" ]] || die "$DIR was not created by ceph_dev.sh (no $MARKER); not touching it"
    stop_all
    wipe_dir
    echo "ceph_dev: down ($DIR removed)"
}

do_status() {
    if is_up; then
        echo "ceph_dev: up ($(grep '^CEPH_S3_ENDPOINT=' "$DIR/env" | cut -d= -f2-))"
        exit 0
    fi
    echo "ceph_dev: not up" >&2
    exit 1
}

case "${1:-}" in
    up) do_up ;;
    down) do_down ;;
    status) do_status ;;
    *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac
