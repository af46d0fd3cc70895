#!/usr/bin/env bash
# A local Kubernetes control plane on loopback for qinfra's tests and for trying the
# kubernetes target: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok,
# with kwok GPU nodes from qinfra's catalog. kwok fakes the nodes and the pods' status: the
# API server, admission, the scheduler and the controllers are real, no container runs.
#
#   scripts/kube-local.sh start    # idempotent: a no-op when every process is alive
#   scripts/kube-local.sh status   # exit 0 when every process is alive
#   scripts/kube-local.sh stop     # signals only processes it started (checked by /proc)
#   export KUBECONFIG=$PWD/.qinfra/kube/kubeconfig; .tools/kube/bin/kubectl get nodes
#
# Binaries come from scripts/install-kube.sh (.tools/kube/bin). Knobs (environment):
#   QINFRA_KUBE_DIR     state, certificates, pids and logs (default: .qinfra/kube)
#   QINFRA_KUBE_NODES   kwok nodes as "instance-type=count ..." from qinfra/core/data/
#                       instances.toml (default below); GPU nodes get nvidia.com/gpu capacity
#                       and the nvidia.com/gpu:NoSchedule taint that GPU node pools carry
#   QINFRA_KUBE_CRDS    a directory of CRD YAMLs to apply (default: .tools/kube/crds, the
#                       Gateway API CRDs from scripts/install-kube-provider.sh, when present)
#   QINFRA_KUBE_TIMEOUT seconds `start` waits for readiness (default 120)
#   QINFRA_KUBE_BIN     the binaries (default: .tools/kube/bin)
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${QINFRA_KUBE_BIN:-$REPO_ROOT/.tools/kube/bin}"
STAGES="$REPO_ROOT/.tools/kube/stages"
KUBE_DIR="${QINFRA_KUBE_DIR:-$REPO_ROOT/.qinfra/kube}"
CRDS="${QINFRA_KUBE_CRDS:-$REPO_ROOT/.tools/kube/crds}"
# One L4 and one L40S type the planner picks for small and 8B models, two nodes each, plus
# two CPU nodes for the router (GPU nodes are tainted, as in managed GPU node pools).
NODES="${QINFRA_KUBE_NODES:-g6.xlarge=2 g6e.xlarge=2 c7i.large=2}"
TIMEOUT="${QINFRA_KUBE_TIMEOUT:-120}"
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
# Started in this order, stopped in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
START=$SECONDS

log() { printf '[kube-local %4ss] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

PKI="$KUBE_DIR/pki"
PIDS="$KUBE_DIR/pids"
LOGS="$KUBE_DIR/logs"
KUBECONFIG_FILE="$KUBE_DIR/kubeconfig"
PORTS_FILE="$KUBE_DIR/ports.env"

if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    PYTHON="$REPO_ROOT/.venv/bin/python"
else
    PYTHON="$(command -v python3 || true)"
fi

# --- processes: ours only ------------------------------------------------------------
# pid_of NAME: the recorded pid when that process is alive and still runs $BIN/NAME
# (its /proc/PID/cmdline names our binary), else nothing. A recycled pid is never ours.
pid_of() {
    local file="$PIDS/$1.pid" pid exe
    [[ -f "$file" ]] || return 0
    pid="$(tr -dc 0-9 <"$file")"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 0
    exe="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1 || true)"
    [[ "$exe" == "$BIN/$1" ]] && printf '%s\n' "$pid"
    return 0
}

alive_count() {
    local n=0 c
    for c in "${COMPONENTS[@]}"; do [[ -n "$(pid_of "$c")" ]] && n=$((n + 1)); done
    printf '%s\n' "$n"
}

stop_one() { # NAME
    local pid i
    pid="$(pid_of "$1")"
    if [[ -z "$pid" ]]; then
        rm -f "$PIDS/$1.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        [[ -n "$(pid_of "$1")" ]] || break
        sleep 0.1
    done
    if [[ -n "$(pid_of "$1")" ]]; then
        log "$1 (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do [[ -n "$(pid_of "$1")" ]] || break; sleep 0.1; done
    fi
    rm -f "$PIDS/$1.pid"
    log "stopped $1 (pid $pid)"
}

stop_all() {
    local i
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_one "${COMPONENTS[$i]}"; done
}

# launch NAME ARGS...: start $BIN/NAME detached (own session), log and pid under KUBE_DIR.
launch() {
    local name="$1"
    shift
    # (9>&-: the daemons must not hold the command lock)
    setsid "$BIN/$name" "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
    printf '%s\n' "$!" >"$PIDS/$name.pid"
    log "started $name (pid $!, log $LOGS/$name.log)"
}

# --- setup ---------------------------------------------------------------------------
check_binaries() {
    local b
    for b in "${COMPONENTS[@]}" kubectl; do
        [[ -x "$BIN/$b" ]] || die "missing $BIN/$b. To fix: run scripts/install-kube.sh (builds it from the Go module proxy)"
    done
    compgen -G "$STAGES/*.yaml" >/dev/null ||
        die "missing kwok stages in $STAGES. To fix: run scripts/install-kube.sh"
    command -v openssl >/dev/null 2>&1 || die "openssl not found (it makes the cluster's certificates)"
    [[ -n "$PYTHON" ]] || die "no python to pick free ports and read the catalog"
}

# Free loopback ports, all held at once while picked so that they differ.
pick_ports() {
    "$PYTHON" - >"$PORTS_FILE" <<'EOF'
import socket
names = ["ETCD_CLIENT", "ETCD_PEER", "APISERVER", "CONTROLLER_MANAGER", "SCHEDULER", "KWOK"]
socks = []
for name in names:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
    print(f"{name}_PORT={s.getsockname()[1]}")
for s in socks:
    s.close()
EOF
}

# A CA, the API server's serving certificate, the service-account key pair and the token.
make_pki() {
    mkdir -p "$PKI"
    [[ -f "$PKI/apiserver.crt" && -f "$PKI/sa.pub" && -f "$PKI/token" ]] && return 0
    (
        cd "$PKI"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
            -subj "/CN=qinfra-kube-local-ca" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
            -subj "/CN=kube-apiserver" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n' \
            "$SERVICE_IP" >apiserver.ext
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        openssl rand -hex 32 >token
        # token,user,uid,"groups": the one identity every component and the tests use.
        printf '%s,qinfra-admin,qinfra-admin,"system:masters"\n' "$(cat token)" >tokens.csv
        rm -f apiserver.csr apiserver.ext ca.srl
    )
    log "generated a CA, the API server certificate, a service-account key and a token in $PKI"
}

# Self-contained (CA inline): it can be copied or passed as a Pulumi provider's kubeconfig.
write_kubeconfig() {
    local tmp
    tmp="$(mktemp "$KUBECONFIG_FILE.XXXXXX")"
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: qinfra-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: qinfra-admin
  user:
    token: $(cat "$PKI/token")
contexts:
- name: qinfra-local
  context:
    cluster: qinfra-local
    user: qinfra-admin
current-context: qinfra-local
EOF
    chmod 0600 "$tmp"
    mv -f "$tmp" "$KUBECONFIG_FILE"
}

kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# wait_for WHAT CMD...: retry CMD every 0.5 s until it succeeds or TIMEOUT passes.
wait_for() {
    local what="$1" deadline=$((SECONDS + TIMEOUT))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${TIMEOUT}s waiting for $what; last log lines:"
            tail -n 20 "$LOGS"/*.log >&2 || true
            die "$what not ready (logs in $LOGS)"
        fi
        check_alive
        sleep 0.5
    done
    log "$what ready"
}

# A component that exited during start fails start at once, naming it.
check_alive() {
    local c
    for c in "${COMPONENTS[@]}"; do
        if [[ -f "$PIDS/$c.pid" && -z "$(pid_of "$c")" ]]; then
            tail -n 20 "$LOGS/$c.log" >&2 || true
            die "$c exited during start (log: $LOGS/$c.log)"
        fi
    done
}

# --- the components ------------------------------------------------------------------
start_etcd() {
    mkdir -p -m 0700 "$KUBE_DIR/etcd"
    launch etcd --name qinfra-local --data-dir "$KUBE_DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "qinfra-local=http://127.0.0.1:$ETCD_PEER_PORT" \
        --listen-metrics-urls "" --log-level warn --quota-backend-bytes 1073741824
}

start_apiserver() {
    # --endpoint-reconciler-type=none: the advertised address is loopback, which the default
    # reconciler refuses to publish for the `kubernetes` Service (nothing in kwok's pods uses it).
    launch kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
        --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
        --authorization-mode RBAC --anonymous-auth=false \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" --endpoint-reconciler-type none \
        --allow-privileged=true --profiling=false --v 1
}

start_controller_manager() {
    # Node health comes from kwok's leases; leader election is pointless for one replica.
    # --authentication-skip-lookup: the API server has no front-proxy CA for them to read.
    launch kube-controller-manager --kubeconfig "$KUBECONFIG_FILE" \
        --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
        --authentication-skip-lookup --bind-address 127.0.0.1 --secure-port "$CONTROLLER_MANAGER_PORT" \
        --cert-dir "$PKI/controller-manager" --leader-elect=false \
        --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
        --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false --v 1
}

start_scheduler() {
    launch kube-scheduler --kubeconfig "$KUBECONFIG_FILE" \
        --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
        --authentication-skip-lookup --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" \
        --cert-dir "$PKI/scheduler" --leader-elect=false --profiling=false --v 1
}

start_kwok() {
    local args=() f
    for f in "$STAGES"/*.yaml; do args+=(--config "$f"); done
    # KWOK_WORKDIR keeps kwok from reading the user's ~/.kwok/kwok.yaml.
    mkdir -p "$KUBE_DIR/kwok"
    export KWOK_WORKDIR="$KUBE_DIR/kwok"
    launch kwok --kubeconfig "$KUBECONFIG_FILE" \
        "${args[@]}" --manage-all-nodes=false \
        --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
        --server-address "127.0.0.1:$KWOK_PORT" --node-lease-duration-seconds 40 \
        --node-ip 127.0.0.1 --cidr 10.244.0.0/16
}

# The kwok nodes, as YAML, from QINFRA_KUBE_NODES and qinfra's instance catalog.
nodes_yaml() {
    "$PYTHON" - "$REPO_ROOT/qinfra/core/data/instances.toml" "$NODES" <<'EOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    catalog = tomllib.load(f)
gpu_types, cpu_types = catalog["types"], catalog["cpu_types"]
for entry in sys.argv[2].split():
    itype, _, count = entry.partition("=")
    row = gpu_types.get(itype) or cpu_types.get(itype)
    if row is None or not count.isdigit():
        known = " ".join(sorted([*gpu_types, *cpu_types]))
        sys.exit(f"QINFRA_KUBE_NODES: '{entry}' is not <instance-type>=<count> with a type of "
                 f"qinfra/core/data/instances.toml ({known})")
    gpus = row.get("gpus", 0)
    kind = row.get("gpu", "cpu")
    for i in range(int(count)):
        name = f"kwok-{kind}-{itype.replace('.', '-')}-{i}"
        # Ephemeral storage: the instance store of these types is >= 250 GB (AWS EC2 docs);
        # pods request artifact size + 1 Gi of it.
        resources = {"cpu": str(row["vcpus"]), "memory": f"{row['ram_gib']}Gi",
                     "ephemeral-storage": "200Gi", "pods": "110"}
        if gpus:
            resources["nvidia.com/gpu"] = str(gpus)
        print("---\napiVersion: v1\nkind: Node\nmetadata:")
        print(f"  name: {name}")
        print("  annotations:\n    kwok.x-k8s.io/node: fake\n    node.alpha.kubernetes.io/ttl: '0'")
        print("  labels:")
        print(f"    kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\n"
              f"    kubernetes.io/arch: amd64\n    type: kwok\n"
              f"    node.kubernetes.io/instance-type: {itype}")
        if gpus:
            print(f"    qinfra/gpu: {kind}")
            print("spec:\n  taints:\n  - key: nvidia.com/gpu\n    value: present\n"
                  "    effect: NoSchedule")
        print("status:")
        for field in ("capacity", "allocatable"):
            print(f"  {field}:")
            for key, value in resources.items():
                print(f"    {key}: '{value}'")
EOF
}

register_nodes() {
    local yaml
    yaml="$(nodes_yaml)" || die "cannot build the kwok nodes from QINFRA_KUBE_NODES='$NODES'"
    kubectl apply -f - <<<"$yaml" >/dev/null
    log "registered kwok nodes ($NODES)"
}

# Gateway API CRDs (or any CRDs) dropped into $CRDS by scripts/install-kube-provider.sh.
apply_crds() {
    compgen -G "$CRDS/*.yaml" >/dev/null || return 0
    kubectl apply --server-side --force-conflicts -f "$CRDS" >/dev/null
    kubectl wait --for condition=Established --timeout "${TIMEOUT}s" crd --all >/dev/null
    log "applied the CRDs in $CRDS"
}

nodes_ready() {
    local want have
    want="$(nodes_yaml | grep -c '^kind: Node$')"
    have="$(kubectl get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')"
    [[ "$have" -ge "$want" ]]
}

# --- commands --------------------------------------------------------------------------
cmd_start() {
    local alive
    check_binaries
    mkdir -p "$PIDS" "$LOGS"
    alive="$(alive_count)"
    if [[ "$alive" -eq ${#COMPONENTS[@]} && -f "$KUBECONFIG_FILE" ]]; then
        log "already running (kubeconfig: $KUBECONFIG_FILE)"
        return 0
    fi
    if [[ "$alive" -gt 0 ]]; then
        log "only $alive of ${#COMPONENTS[@]} components alive: restarting all"
        stop_all
    fi
    rm -f "$PIDS"/*.pid
    # A start that fails part-way stops what it started: no half cluster is left running.
    trap 'rc=$?; if [[ $rc -ne 0 ]]; then log "start failed: stopping what it started"; stop_all; fi' EXIT
    make_pki
    pick_ports
    # shellcheck source=/dev/null
    source "$PORTS_FILE"
    write_kubeconfig
    start_etcd
    wait_for etcd curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
    start_apiserver
    wait_for kube-apiserver curl -fsS --cacert "$PKI/ca.crt" \
        -H "Authorization: Bearer $(cat "$PKI/token")" "https://127.0.0.1:$APISERVER_PORT/readyz"
    start_controller_manager
    start_scheduler
    start_kwok
    apply_crds
    register_nodes
    wait_for "the default service account" kubectl get serviceaccount default -n default
    wait_for "kwok nodes" nodes_ready
    trap - EXIT
    log "cluster up in $((SECONDS - START))s; export KUBECONFIG=$KUBECONFIG_FILE"
}

cmd_status() {
    local c pid rc=0
    for c in "${COMPONENTS[@]}"; do
        pid="$(pid_of "$c")"
        if [[ -n "$pid" ]]; then
            printf '%-24s running (pid %s)\n' "$c" "$pid"
        else
            printf '%-24s stopped\n' "$c"
            rc=1
        fi
    done
    [[ -f "$PORTS_FILE" && $rc -eq 0 ]] && printf 'kubeconfig               %s\n' "$KUBECONFIG_FILE"
    return "$rc"
}

# One command at a time per cluster directory (parallel test sessions, CI).
lock() {
    mkdir -p "$KUBE_DIR"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$KUBE_DIR/.lock"
        flock 9
    fi
}

case "${1:-}" in
    start) lock; cmd_start ;;
    stop) lock; [[ -d "$PIDS" ]] && stop_all; log "stopped (state kept in $KUBE_DIR)" ;;
    status) cmd_status ;;
    *) printf 'usage: %s start|stop|status\n' "$0" >&2; exit 2 ;;
esac
