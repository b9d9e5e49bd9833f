#!/bin/bash
# Installs Corral and starts a local one-node cluster on this machine: etcd (unless
# CORRAL_ETCD_ENDPOINTS names an existing cluster), a controller and a handler, then boots the
# demo VM from examples/vm.yaml and shows it Running with its guest's readiness line.
# Mutual TLS from the start: a cluster CA in $CORRAL_LOCAL_DIR/pki (corral-ca) signs the
# controller's, this node's and an admin user's certificates, and the CLI's client config
# (~/.config/corral/config, or $CORRAL_CLIENT_CONFIG) gets a context "local" for that admin.
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
pki=$run_dir/pki
corral=(.venv/bin/corral --context local)

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
    "${corral[@]}" delete vm demo --wait --timeout 60 2>/dev/null ||  # (plaintext: started before TLS)
        .venv/bin/corral --client-config /dev/null delete vm demo --wait --timeout 60 2>/dev/null || true
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

# The cluster CA and the certificates (each made once; corral-ca never overwrites one).
issue() {  # kind, name, corral-ca options...
    [[ -f $pki/$1-$2.pem ]] || .venv/bin/corral-ca issue "$1" "$2" --ca-dir "$pki" "${@:3}"
}
[[ -f $pki/ca.pem ]] || .venv/bin/corral-ca init "$pki"
server_host=${server%:*}
server_sans=(--ip 127.0.0.1 --dns localhost)
if [[ $server_host =~ ^[0-9.]+$ ]]; then
    [[ $server_host == 127.0.0.1 ]] || server_sans+=(--ip "$server_host")
elif [[ $server_host != localhost ]]; then
    server_sans+=(--dns "$server_host")
fi
issue controller local "${server_sans[@]}"
issue node "$node" --ip 127.0.0.1
issue user admin --role admin
"${corral[@]}" config set-cluster local --server "$server" --ca-file "$pki/ca.pem" >/dev/null
"${corral[@]}" config set-credentials local-admin --cert-file "$pki/user-admin.pem" \
    --key-file "$pki/user-admin-key.pem" >/dev/null
"${corral[@]}" config set-context local --cluster local --user local-admin >/dev/null
"${corral[@]}" config use-context local

start_daemon controller env CORRAL_TLS_CERT_FILE="$pki/controller-local.pem" \
    CORRAL_TLS_KEY_FILE="$pki/controller-local-key.pem" CORRAL_TLS_CLIENT_CA_FILE="$pki/ca.pem" \
    .venv/bin/corral-controller --listen "$server"
# The handler presents this node's certificate; one machine, so its node agent and migration
# proxy listen on loopback. The demo's kernel and initrd are in the guest directory, which must
# then be one of the node's image roots.
start_daemon handler env CORRAL_TLS_CA_FILE="$pki/ca.pem" CORRAL_TLS_CERT_FILE="$pki/node-$node.pem" \
    CORRAL_TLS_KEY_FILE="$pki/node-$node-key.pem" \
    .venv/bin/corral-handler --node-name "$node" --servers "$server" \
    --state-dir "$state_dir" --emulation "${CORRAL_EMULATION:-on}" --shutdown-grace-seconds 5 \
    --listen 127.0.0.1:7101 --migration-listen 127.0.0.1:7102 \
    --image-roots "$state_dir/images,$state_dir/guest"

for _ in $(seq 100); do
    "${corral[@]}" get node "$node" 2>/dev/null | grep -q " Ready" && break
    sleep 0.2
done
"${corral[@]}" get nodes

"${corral[@]}" get vm demo >/dev/null 2>&1 || "${corral[@]}" create -f examples/vm.yaml
"${corral[@]}" wait vm demo --for phase=Running --timeout 120
"${corral[@]}" get vms -o wide
serial=$("${corral[@]}" get vm demo -o json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["status"].get("serialLogPath",""))')
for _ in $(seq 120); do
    grep -q CORRAL-GUEST-READY "$serial" 2>/dev/null && break
    sleep 0.5
done
echo "guest serial console ($serial):"
grep -a CORRAL-GUEST-READY "$serial"
echo
echo "Mutual TLS: CA and certificates in $pki; the CLI's context \"local\" (admin) is in ${CORRAL_CLIENT_CONFIG:-${XDG_CONFIG_HOME:-$HOME/.config}/corral/config}"
echo "Try: .venv/bin/corral describe vm demo   |   stop everything: scripts/local-cluster.sh down"
