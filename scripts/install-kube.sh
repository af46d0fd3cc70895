#!/usr/bin/env bash
# Build a local Kubernetes control plane for qinfra's tests into .tools/kube (gitignored):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kwok (fake
# nodes and pods: no container ever runs), plus kwok's stage definitions.
#
#   scripts/install-kube.sh                # idempotent; a second run takes a second
#   scripts/install-kube.sh --regenerate   # rewrite scripts/kube-build/*/go.{mod,sum} for
#                                          # the versions below (needs the Go module proxy)
#
# Everything comes from the Go module proxy, through the wrapper modules committed in
# scripts/kube-build/ (their go.sum pins every dependency):
#   etcd/        requires go.etcd.io/etcd/server/v3 and its sibling modules at one version
#                (`go install` refuses etcd's root module: its go.mod has replace directives);
#   kubernetes/  requires k8s.io/kubernetes and replaces its staging modules (k8s.io/api, ...)
#                by their published v0.x releases; `tool` lines name the binaries;
#   kwok/        requires sigs.k8s.io/kwok; its stages are copied from the module cache.
# First run on 2 cores with empty Go caches: 15-30 minutes (downloads included; measured
# 2026-11-30 on 2 cores shared with other builds: etcd 72 s, kube-apiserver 878 s,
# kube-controller-manager 194 s, kube-scheduler 11 s, kubectl 55 s, kwok 476 s). Binaries
# take ~400 MiB. A second run with the stamp matching takes well under a second.
#
# Knobs (environment):
#   QINFRA_KUBE_REBUILD=1   ignore the stamp and rebuild everything
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$REPO_ROOT/scripts/kube-build"
TOOLS="$REPO_ROOT/.tools/kube"
BIN="$TOOLS/bin"
STAGES="$TOOLS/stages"
STAMP="$TOOLS/installed.txt"
START=$SECONDS

# The versions; --regenerate rewrites the wrapper modules to them.
ETCD_VERSION=v3.6.16
KUBE_VERSION=v1.34.2
KWOK_VERSION=v0.8.0
# kwok stage directories (under kustomize/stage/ of its module) that kube-local.sh loads:
# node-initialize (nodes become Ready), node heartbeat with lease (they stay Ready; the
# plain "heartbeat" stage is marked deprecated upstream), pod-fast (pods Running at once).
KWOK_STAGES=(node/fast node/heartbeat-with-lease pod/fast)

log() { printf '[install-kube %4ss] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$BIN" "$STAGES"

# One run at a time (parallel test jobs, CI); flock is util-linux, optional.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$TOOLS/.lock"
    flock 9
fi

go_env() {
    if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
        PATH="/usr/local/go/bin:$PATH"
    fi
    command -v go >/dev/null 2>&1 || die "no Go toolchain to build the control plane (install Go >= 1.26)"
    export CGO_ENABLED=0
    export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
    export GOFLAGS="-buildvcs=false"
}

# mod_json DIR MODULE@VERSION FIELD: a field of `go mod download -json`, run in DIR.
mod_field() {
    local json
    json="$(cd "$1" && go mod download -json "$2")" || return 1
    sed -n "s/^[[:space:]]*\"$3\": \"\(.*\)\",\$/\1/p" <<<"$json"
}

# --- --regenerate: the wrapper modules from the upstream go.mod files ----------------
regenerate() {
    local kmod dir
    dir="$SRC/etcd"
    log "etcd wrapper at $ETCD_VERSION"
    (cd "$dir" && for m in api/v3 client/pkg/v3 client/v3 pkg/v3 server/v3; do
            go mod edit -require="go.etcd.io/etcd/$m@$ETCD_VERSION"
        done && go mod tidy)

    dir="$SRC/kubernetes"
    log "kubernetes wrapper at $KUBE_VERSION (staging modules at v0.${KUBE_VERSION#v1.})"
    kmod="$(mod_field "$dir" "k8s.io/kubernetes@$KUBE_VERSION" GoMod)" || die "cannot download k8s.io/kubernetes@$KUBE_VERSION"
    {
        printf '// Written by scripts/install-kube.sh --regenerate from the go.mod of k8s.io/kubernetes\n'
        printf '// %s: its staging modules are replaced by their published releases.\n' "$KUBE_VERSION"
        printf 'module qinfra.local/kube-build/kubernetes\n\n'
        awk '$1 == "go" || $1 == "godebug" { print }' "$kmod"
        printf '\nrequire k8s.io/kubernetes %s\n\n' "$KUBE_VERSION"
        for t in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
            printf 'tool k8s.io/kubernetes/cmd/%s\n' "$t"
        done
        printf '\nreplace (\n'
        awk -v v="v0.${KUBE_VERSION#v1.}" '$2 == "=>" && $3 ~ /^\.\/staging\/src\// { printf "\t%s => %s %s\n", $1, $1, v }' "$kmod"
        printf ')\n'
    } >"$dir/go.mod"
    rm -f "$dir/go.sum"
    (cd "$dir" && go mod tidy)

    dir="$SRC/kwok"
    log "kwok wrapper at $KWOK_VERSION"
    (cd "$dir" && go mod edit -require="sigs.k8s.io/kwok@$KWOK_VERSION" && go mod tidy)
}

# pinned NAME MODULE: the version of MODULE that the wrapper module NAME requires.
pinned() {
    awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) { print $NF == "indirect" ? $(NF - 2) : $NF; exit }' \
        "$SRC/$1/go.mod"
}

# --- builds -------------------------------------------------------------------------
# Every input of one component, hashed: its wrapper module and the build recipe below.
component_hash() { # NAME
    {
        declare -f "build_$1"
        (cd "$SRC/$1" && find . -type f | LC_ALL=C sort | while IFS= read -r f; do
            printf '== %s\n' "$f"; cat "$f"; done)
    } | sha256sum | cut -c1-16
}

stamp_get() { [[ -f "$STAMP" ]] && sed -n "s/^$1=//p" "$STAMP" | head -n1; return 0; }

stamp_set() { # NAME VALUE
    local tmp
    tmp="$(mktemp "$STAMP.XXXXXX")"
    { [[ -f "$STAMP" ]] && grep -v "^$1=" "$STAMP" || true; printf '%s=%s\n' "$1" "$2"; } | LC_ALL=C sort >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$STAMP"
}

# go_build DIR OUT PACKAGE LDFLAGS: one binary, written atomically.
go_build() {
    local t0=$SECONDS
    (cd "$1" && go build -mod=readonly -trimpath -ldflags "$4" -o "$BIN/$2.tmp" "$3")
    mv -f "$BIN/$2.tmp" "$BIN/$2"
    log "built $2 in $((SECONDS - t0))s ($(du -m "$BIN/$2" | cut -f1) MiB)"
}

build_etcd() {
    go_build "$SRC/etcd" etcd . "-s -w"
}

build_kubernetes() {
    local ld="-s -w" p v minor t
    v="$(pinned kubernetes k8s.io/kubernetes)"
    minor="${v#v1.}"; minor="${minor%%.*}"
    # What Kubernetes' own build stamps (hack/lib/version.sh), so clients see the real version.
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    for t in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
        go_build "$SRC/kubernetes" "$t" "k8s.io/kubernetes/cmd/$t" "$ld"
    done
}

build_kwok() {
    local dir f n s v
    go_build "$SRC/kwok" kwok sigs.k8s.io/kwok/cmd/kwok "-s -w"
    v="$(pinned kwok sigs.k8s.io/kwok)"
    dir="$(mod_field "$SRC/kwok" "sigs.k8s.io/kwok@$v" Dir)" || die "cannot find sigs.k8s.io/kwok@$v in the module cache"
    rm -rf "$STAGES.tmp"
    mkdir -p "$STAGES.tmp"
    n=0
    for s in "${KWOK_STAGES[@]}"; do
        for f in "$dir/kustomize/stage/$s"/*.yaml; do
            [[ "$(basename "$f")" == kustomization.yaml ]] && continue
            cp "$f" "$STAGES.tmp/$(basename "$f")"
            chmod 0644 "$STAGES.tmp/$(basename "$f")"
            n=$((n + 1))
        done
    done
    [[ $n -gt 0 ]] || die "no stage YAMLs under $dir/kustomize/stage/{${KWOK_STAGES[*]}}"
    rm -rf "$STAGES"
    mv "$STAGES.tmp" "$STAGES"
    log "copied $n kwok stage definitions to $STAGES"
}

# binaries NAME: what one component must leave in $BIN.
binaries() {
    case "$1" in
        etcd) echo etcd ;;
        kubernetes) echo kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
        kwok) echo kwok ;;
    esac
}

# stamp_value NAME HASH: "<version> <hash of the wrapper module and recipe>".
stamp_value() {
    local m
    case "$1" in
        etcd) m=go.etcd.io/etcd/server/v3 ;;
        kubernetes) m=k8s.io/kubernetes ;;
        kwok) m=sigs.k8s.io/kwok ;;
    esac
    printf '%s %s\n' "$(pinned "$1" "$m")" "$2"
}

up_to_date() { # NAME HASH
    local b
    [[ -z "${QINFRA_KUBE_REBUILD:-}" && "$(stamp_get "$1")" == "$(stamp_value "$1" "$2")" ]] || return 1
    for b in $(binaries "$1"); do [[ -x "$BIN/$b" ]] || return 1; done
    [[ "$1" != kwok ]] || compgen -G "$STAGES/*.yaml" >/dev/null
}

main() {
    local name hash built=0
    if [[ "${1:-}" == --regenerate ]]; then
        go_env
        regenerate
    elif [[ $# -gt 0 ]]; then
        die "unknown argument '$1' (usage: $0 [--regenerate])"
    fi
    for name in etcd kubernetes kwok; do
        hash="$(component_hash "$name")"
        if up_to_date "$name" "$hash"; then
            continue
        fi
        go_env
        log "building $name (cold Go caches, 2 cores: etcd 1-2 min, kubernetes 9-20 min, kwok 4-8 min)"
        "build_$name"
        stamp_set "$name" "$(stamp_value "$name" "$hash")"
        built=1
    done
    if [[ $built -eq 0 ]]; then
        log "up to date: $BIN (etcd $(pinned etcd go.etcd.io/etcd/server/v3), kubernetes $(pinned kubernetes k8s.io/kubernetes), kwok $(pinned kwok sigs.k8s.io/kwok))"
    else
        log "done in $((SECONDS - START))s"
    fi
    cat <<EOF
# The local control plane binaries are in $BIN; run them with:
#   scripts/kube-local.sh start   (then: export KUBECONFIG=\$PWD/.qinfra/kube/kubeconfig)
EOF
}

main "$@"
