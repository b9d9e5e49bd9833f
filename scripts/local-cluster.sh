#!/bin/bash
# Installs Corral and starts a local one-node cluster on this machine: etcd (unless
# CORRAL_ETCD_ENDPOINTS names an existing cluster), a controller and a handler, then boots the
# demo VM from examples/vm.yaml and shows it Running with its guest's readiness line.
#   scripts/local-cluster.sh        start (idempotent)
#   scripts/local-cluster.sh down   stop the daemons and the demo guest
# Guests run under TCG emulation unless CORRAL_EMULATION=auto or off (KVM) is set.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
run_dir=${CORRAL_LOCAL_DIR:-/var/lib/corral-local}
state_dir=${CORRAL_STATE_DIR:-/var/lib/corral}
server=${CORRAL_SERVER:-127.0.0.1:7100}
node=${CORRAL_NODE_NAME:-$(hostname -s | tr '[:upper:]_' '[:lower:]-')}
export CORRAL_ETCD_PREFIX=${CORRAL_ETCD_PREFIX:-/corral/}
export CORRAL_SERVER=$server

stop_pidfile() {
    local pidfile=$run_dir/$1.pid
    if [[ -f $pidfile ]]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
}

running() { [[ -f $run_dir/$1.pid ]] && kill -0 "$(cat "$run_dir/$1.pid")" 2>/dev/null; }

start_daemon() {  # name, command...
    local name=$1; shift
    if running "$name"; then echo "$name: already running (pid $(cat "$run_dir/$name.pid"))"; return; fi
    setsid "$@" >>"$run_dir/$name.log" 2>&1 < /dev/null &
    echo $! >"$run_dir/$name.pid"
    echo "$name: started (pid $!, log $run_dir/$name.log)"
}

if [[ ${1:-up} == down ]]; then
    .venv/bin/corral delete vm demo --wait --timeout 60 2>/dev/null || true
    for name in handler controller etcd; do stop_pidfile "$name"; done
    echo "local cluster stopped"
    exit 0
fi

scripts/install.sh
mkdir -p "$run_dir" "$state_dir"
chmod 755 "$state_dir"
scripts/build-guest.sh "$state_dir/guest"

if [[ -z ${CORRAL_ETCD_ENDPOINTS:-} ]]; then
    export CORRAL_ETCD_ENDPOINTS=http://127.0.0.1:2379
    start_daemon etcd etcd --data-dir "$run_dir/etcd" --listen-client-urls "$CORRAL_ETCD_ENDPOINTS" \
        --advertise-client-urls "$CORRAL_ETCD_ENDPOINTS" --listen-peer-urls http://127.0.0.1:2380
    for _ in $(seq 50); do etcdctl --endpoints "$CORRAL_ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
else
    echo "etcd: using $CORRAL_ETCD_ENDPOINTS"
fi
export CORRAL_ETCD_ENDPOINTS

start_daemon controller .venv/bin/corral-controller --listen "$server"
# One machine: the handler's node agent and migration proxy listen on loopback only (without
# TLS the daemons refuse to serve anything else unless told --insecure).
start_daemon handler .venv/bin/corral-handler --node-name "$node" --servers "$server" \
    --state-dir "$state_dir" --emulation "${CORRAL_EMULATION:-on}" --shutdown-grace-seconds 5 \
    --listen 127.0.0.1:7101 --migration-listen 127.0.0.1:7102

for _ in $(seq 100); do
    .venv/bin/corral get node "$node" 2>/dev/null | grep -q " Ready" && break
    sleep 0.2
done
.venv/bin/corral get nodes

.venv/bin/corral get vm demo >/dev/null 2>&1 || .venv/bin/corral create -f examples/vm.yaml
.venv/bin/corral wait vm demo --for phase=Running --timeout 120
.venv/bin/corral get vms -o wide
serial=$(.venv/bin/corral get vm demo -o json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["status"].get("serialLogPath",""))')
for _ in $(seq 120); do
    grep -q CORRAL-GUEST-READY "$serial" 2>/dev/null && break
    sleep 0.5
done
echo "guest serial console ($serial):"
grep -a CORRAL-GUEST-READY "$serial"
echo
echo "Try: .venv/bin/corral describe vm demo   |   stop everything: scripts/local-cluster.sh down"
