#!/usr/bin/env bash
# Build the Pulumi Kubernetes resource provider (pulumi-resource-kubernetes) and fetch the
# Gateway API CRDs, both from the Go module proxy, into .tools/kube (gitignored).
#
#   scripts/install-kube-provider.sh     # idempotent; a second run takes about a second
#
# What it leaves:
#   .tools/kube/provider/pulumi-resource-kubernetes   the provider binary
#   .tools/pulumi/bin/pulumi-resource-kubernetes      the same file (a hard link): qinfra's
#       Deployer puts .tools/pulumi/bin first on PATH, and the Pulumi CLI takes a plugin it
#       finds on PATH ("ambient") before its plugin cache, whatever PULUMI_HOME is (the tests
#       give each project its own). The CLI says so once per run: "warning: using
#       pulumi-resource-kubernetes from $PATH at ...".
#   .tools/kube/crds/*.yaml       the Gateway API standard channel (CRDs + its admission policy)
#   .tools/kube/provider-installed.txt   the version stamp
#
# Why a build and not `pulumi plugin install`: the provider's releases are downloads from
# GitHub, which this project's machines cannot reach. The Go module proxy serves the module
# github.com/pulumi/pulumi-kubernetes/provider/v4 only as one pseudo-version (an untagged
# commit), so this script builds that commit and stamps it with the version the .venv's
# pulumi_kubernetes SDK asks the engine for (its pulumi-plugin.json): the engine then loads
# this binary for the SDK's resources, and the provider reports that version in its schema
# and user agent. The SDK and the provider speak the engine's gRPC protocol with resource
# type tokens and property bags, which the provider applies through the cluster's discovery
# API, so a provider a few releases apart from the SDK serves the kinds qinfra creates.
#
# The provider's main embeds schema-embed.json and terraform-mapping-embed.json, which the
# upstream build makes with `go generate` (cmd/pulumi-resource-kubernetes/generate.go: the
# schema.json beside it with the version set, re-serialized). The module cache is read-only
# and the embed files are not in it, so the module is copied into .tools/kube/build/provider,
# which becomes the main module: its replace of the SDK module by `../sdk` (a path inside
# upstream's repository) is dropped, the generator runs there, then `go build`.
# First build: 29 minutes measured on two cores shared with other Go builds (load ~15), 94 s of
# it the generator; from a warm Go build cache 15 s. The binary is 159 MiB (stripped).
#
# Knobs (environment):
#   QINFRA_KUBE_PROVIDER_MODULE   the provider module's version (default below)
#   QINFRA_KUBE_PROVIDER_VERSION  the plugin version to stamp (default: the .venv SDK's)
#   QINFRA_GATEWAY_API_VERSION    sigs.k8s.io/gateway-api version (default below)
#   QINFRA_KUBE_PROVIDER_REBUILD=1  rebuild even when the stamp matches
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KUBE="$REPO_ROOT/.tools/kube"
PROVIDER_BIN="$KUBE/provider/pulumi-resource-kubernetes"
PULUMI_BIN="$REPO_ROOT/.tools/pulumi/bin"
CRDS="$KUBE/crds"
BUILD="$KUBE/build/provider"
STAMP="$KUBE/provider-installed.txt"

PROVIDER_MODULE=github.com/pulumi/pulumi-kubernetes/provider/v4
# The only version the proxy serves: the untagged commit f47bc2d6f199 of 2026-01-15. Its go.mod
# pins pulumi pkg/v3 and sdk/v3 v3.215.0 (served) and, in place of its `../sdk`, the published
# pulumi-kubernetes/sdk/v4 v4.24.0 (used only by the yaml/v2 and helm/v4 components).
PROVIDER_MODULE_VERSION="${QINFRA_KUBE_PROVIDER_MODULE:-v4.0.0-20260115033456-f47bc2d6f199}"
GATEWAY_API_MODULE=sigs.k8s.io/gateway-api
# v1.6.3: the newest the proxy serves whose go.mod this machine's Go (1.26) accepts; v1.7.0
# wants Go 1.27. Only the YAML under config/crd/standard is used, nothing is built.
GATEWAY_API_VERSION="${QINFRA_GATEWAY_API_VERSION:-v1.6.3}"
# Bump when this script's recipe changes in a way that needs a rebuild.
RECIPE=1
START=$SECONDS

log() { printf '[install-kube-provider %4ss] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$KUBE/provider" "$BUILD"

# One run at a time (setup and parallel test jobs); flock is util-linux, optional.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$KUBE/.provider.lock"
    flock 9
fi

# --- the plugin version the SDK asks for ---------------------------------------------------
sdk_plugin_version() {
    local python="$REPO_ROOT/.venv/bin/python"
    [[ -x "$python" ]] || python="$(command -v python3 || true)"
    [[ -n "$python" ]] || return 0
    "$python" - <<'PY' 2>/dev/null || true
import importlib.resources, json
try:
    spec = importlib.resources.files("pulumi_kubernetes") / "pulumi-plugin.json"
    print(json.loads(spec.read_text())["version"])
except Exception:
    import importlib.metadata
    print(importlib.metadata.version("pulumi_kubernetes"))
PY
}
PLUGIN_VERSION="${QINFRA_KUBE_PROVIDER_VERSION:-$(sdk_plugin_version)}"
PLUGIN_VERSION="${PLUGIN_VERSION#v}"
[[ "$PLUGIN_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] ||
    die "no pulumi_kubernetes SDK in .venv to read the plugin version from (run scripts/setup.sh first, or set QINFRA_KUBE_PROVIDER_VERSION)"

WANT_STAMP="$(printf 'module=%s@%s\nplugin=%s\ngateway_api=%s\nrecipe=%s\n' \
    "$PROVIDER_MODULE" "$PROVIDER_MODULE_VERSION" "$PLUGIN_VERSION" "$GATEWAY_API_VERSION" "$RECIPE")"

# --- Go -------------------------------------------------------------------------------------
go_env() {
    if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
        PATH="/usr/local/go/bin:$PATH"
    fi
    command -v go >/dev/null 2>&1 || die "no Go toolchain (install Go >= 1.26) to build pulumi-resource-kubernetes"
    export GOFLAGS="-mod=mod -buildvcs=false"
    export CGO_ENABLED=0
    export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
}

# mod_dir MODULE@VERSION: its folder in the module cache (downloads it), or fails.
mod_dir() {
    local json
    json="$(cd "$KUBE" && go mod download -json "$1" 2>&1)" || { log "$json"; return 1; }
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$json"
}

served() { (cd "$KUBE" && go mod download "$1" >/dev/null 2>&1); }

# version_ge A B: A >= B (semver-ish, via sort -V)
version_ge() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$2" ]]; }

# nearest_served MODULE VERSION: VERSION when the proxy serves it, else the first newer
# release it lists (upstream bumps these often; a newer patch or minor builds the same code).
nearest_served() {
    local module="$1" want="$2" v
    if served "$module@$want"; then printf '%s\n' "$want"; return 0; fi
    v="$(cd "$KUBE" && go list -m -versions "$module" 2>/dev/null | tr ' ' '\n' |
        grep -E '^v[0-9]+\.[0-9]+\.[0-9]+$' | sort -V |
        while read -r v; do if version_ge "$v" "$want"; then printf '%s\n' "$v"; break; fi; done)"
    [[ -n "$v" ]] || die "the Go module proxy serves no $module at or after $want"
    log "$module@$want is not served: using $v"
    printf '%s\n' "$v"
}

# --- the provider -------------------------------------------------------------------------
prepare_module() { # the module copied out of the cache, as its own main module
    local src cmd pinned v m
    src="$(mod_dir "$PROVIDER_MODULE@$PROVIDER_MODULE_VERSION")" || die "cannot download $PROVIDER_MODULE@$PROVIDER_MODULE_VERSION"
    rm -rf "$BUILD"
    mkdir -p "$(dirname "$BUILD")"
    cp -R "$src" "$BUILD"
    chmod -R u+w "$BUILD"
    cd "$BUILD"
    # Replaces that point into upstream's repository (`../sdk`) name folders the module lacks:
    # without them the go.mod's own requirement (a published release) is used.
    while read -r m; do
        [[ -n "$m" ]] && go mod edit -dropreplace="$m"
    done < <(awk '/^replace[[:space:]]*\($/ { b = 1; next } b && /^\)/ { b = 0; next }
        (b || /^replace[[:space:]]/) && /=>[[:space:]]*\.\.?\// { sub(/^replace[[:space:]]+/, ""); print $1 }' go.mod)
    # The pulumi modules it pins, moved to the nearest served release if the proxy lacks them.
    for m in github.com/pulumi/pulumi/pkg/v3 github.com/pulumi/pulumi/sdk/v3; do
        pinned="$(awk -v m="$m" '$1 == m { print $2; exit }' go.mod)"
        [[ -n "$pinned" ]] || continue
        v="$(nearest_served "$m" "$pinned")"
        [[ "$v" == "$pinned" ]] || go mod edit -require="$m@$v"
    done
    cmd="$BUILD/cmd/pulumi-resource-kubernetes"
    [[ -f "$cmd/generate.go" && -f "$cmd/schema.json" ]] || die "no generate.go/schema.json in $cmd: the module's layout changed"
}

build_provider() {
    local cmd="$BUILD/cmd/pulumi-resource-kubernetes" t
    go_env
    t=$SECONDS
    log "preparing $PROVIDER_MODULE@$PROVIDER_MODULE_VERSION in $BUILD"
    prepare_module
    log "generating schema-embed.json (version $PLUGIN_VERSION); the first run downloads and compiles the generator's dependencies"
    (cd "$cmd" && VERSION="$PLUGIN_VERSION" go run generate.go)
    [[ -s "$cmd/schema-embed.json" && -s "$cmd/terraform-mapping-embed.json" ]] || die "go generate wrote no embed files in $cmd"
    log "generated in $((SECONDS - t))s; building pulumi-resource-kubernetes (15-30 min the first time on 2 cores)"
    t=$SECONDS
    (cd "$cmd" && go build -trimpath \
        -ldflags "-s -w -X $PROVIDER_MODULE/pkg/version.Version=$PLUGIN_VERSION" \
        -o "$PROVIDER_BIN.tmp" .)
    mv -f "$PROVIDER_BIN.tmp" "$PROVIDER_BIN"
    log "built $PROVIDER_BIN in $((SECONDS - t))s ($(du -m "$PROVIDER_BIN" | cut -f1) MiB)"
}

# --- the Gateway API CRDs -----------------------------------------------------------------
install_crds() {
    local dir t=$SECONDS
    go_env
    dir="$(mod_dir "$GATEWAY_API_MODULE@$GATEWAY_API_VERSION")" || die "cannot download $GATEWAY_API_MODULE@$GATEWAY_API_VERSION"
    compgen -G "$dir/config/crd/standard/*.yaml" >/dev/null || die "no config/crd/standard/*.yaml in $dir"
    rm -rf "$CRDS.tmp"
    mkdir -p "$CRDS.tmp"
    cp "$dir"/config/crd/standard/*.yaml "$CRDS.tmp/"
    chmod u+w "$CRDS.tmp"/*.yaml
    printf '%s@%s\n' "$GATEWAY_API_MODULE" "$GATEWAY_API_VERSION" >"$CRDS.tmp/VERSION"
    rm -rf "$CRDS"
    mv "$CRDS.tmp" "$CRDS"
    log "Gateway API $GATEWAY_API_VERSION standard channel: $(find "$CRDS" -name '*.yaml' | wc -l) files in $CRDS ($((SECONDS - t))s)"
}

# --- where the Pulumi CLI finds it ------------------------------------------------------------
link_into_pulumi_bin() {
    local dst="$PULUMI_BIN/pulumi-resource-kubernetes"
    mkdir -p "$PULUMI_BIN"
    if [[ -f "$dst" && ! -L "$dst" && "$dst" -ef "$PROVIDER_BIN" ]]; then
        return 0
    fi
    rm -f "$dst.tmp"
    ln "$PROVIDER_BIN" "$dst.tmp" 2>/dev/null || cp "$PROVIDER_BIN" "$dst.tmp"
    mv -f "$dst.tmp" "$dst"
    log "installed $dst (on qinfra's PATH for the Pulumi CLI)"
}

up_to_date() {
    [[ -z "${QINFRA_KUBE_PROVIDER_REBUILD:-}" && -x "$PROVIDER_BIN" && -f "$STAMP" ]] || return 1
    [[ "$(cat "$STAMP")" == "$WANT_STAMP" ]] || return 1
    compgen -G "$CRDS/*.yaml" >/dev/null
}

if up_to_date; then
    log "up to date: $PROVIDER_BIN (plugin v$PLUGIN_VERSION), Gateway API $GATEWAY_API_VERSION"
else
    rm -f "$STAMP"
    install_crds
    build_provider
    printf '%s\n' "$WANT_STAMP" >"$STAMP"
fi
link_into_pulumi_bin
log "done in $((SECONDS - START))s"
