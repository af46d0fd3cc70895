#!/usr/bin/env bash
# Make a working Pulumi CLI available to qinfra, with the Python language host
# and the dynamic-provider launcher next to it, in .tools/pulumi/bin (gitignored).
#
#   scripts/install-pulumi.sh            # idempotent; a second run takes seconds
#   export PATH="$PWD/.tools/pulumi/bin:$PATH"
#
# Where the CLI comes from, first match wins:
#   1. .tools/pulumi/bin from an earlier run, when its version still matches;
#   2. a `pulumi` already on PATH or in $PULUMI_HOME/bin (~/.pulumi/bin), when it is
#      at least as new as the Python SDK (linked into .tools/pulumi/bin);
#   3. Pulumi's official installer, only when get.pulumi.com answers within 5 s;
#   4. a build from the Go module proxy: github.com/pulumi/pulumi/pkg/v3/cmd/pulumi at
#      the SDK's release, or the closest newer release the proxy serves (a newer CLI
#      runs older SDKs). Takes 5-10 minutes on 2 cores the first time (empty Go caches).
# In case 4 the upstream Python language host module is not on the proxy, so this
# script builds a small one of its own (scripts/pulumi-language-python, a Go module) that
# runs the program with the SDK's own pulumi-language-python-exec shim, taken from the
# github.com/pulumi/pulumi/sdk/v3 module at the SDK's version. The dynamic-provider
# launcher is scripts/pulumi-resource-pulumi-python, copied next to the CLI.
#
# Knobs (environment):
#   QINFRA_PULUMI_VERSION   CLI version to install (default: the .venv's pulumi SDK version)
#   QINFRA_PULUMI_REBUILD=1 ignore existing binaries (on PATH and in .tools) and rebuild
#   QINFRA_PULUMI_OFFLINE=1 skip the get.pulumi.com probe
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS="$REPO_ROOT/scripts"
LANGHOST_SRC="$SCRIPTS/pulumi-language-python"
TOOLS="$REPO_ROOT/.tools/pulumi"
BIN="$TOOLS/bin"
BUILD="$TOOLS/build"
STAMP="$TOOLS/installed.txt"
START=$SECONDS

log() { printf '[install-pulumi] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$BIN" "$BUILD"

# One run at a time (parallel test jobs, CI); flock is util-linux, optional.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$TOOLS/.lock"
    flock 9
fi

# --- the project's Python and its pulumi SDK version --------------------------------
if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    PYTHON="$REPO_ROOT/.venv/bin/python"
else
    PYTHON="$(command -v python3 || true)"
fi
SDK_VERSION=""
if [[ -n "$PYTHON" ]]; then
    SDK_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("pulumi"))' 2>/dev/null || true)"
fi
if [[ -z "$SDK_VERSION" ]]; then
    SDK_VERSION="3.272.0"
    log "pulumi Python SDK not found (${PYTHON:-no python}); assuming $SDK_VERSION"
fi
SDK_VERSION="${SDK_VERSION#v}"
WANT="${QINFRA_PULUMI_VERSION:-$SDK_VERSION}"
WANT="${WANT#v}"

# "3.274.1" from `pulumi version` output ("v3.274.1"); empty when it does not run.
cli_version() {
    local out
    out="$(PULUMI_SKIP_UPDATE_CHECK=true "$1" version 2>/dev/null | head -n1 || true)"
    out="${out#v}"
    [[ "$out" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] && printf '%s\n' "$out"
    return 0
}

# version_ge A B: A >= B (semver-ish, via sort -V)
version_ge() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$2" ]]; }

write_if_changed() { # path mode < content
    local path="$1" mode="$2" tmp
    tmp="$(mktemp "$path.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f "$path" ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$path"
    fi
}

# --- the dynamic-provider launcher (pulumi-resource-pulumi-python) -----------------
# The engine runs it for `pulumi.dynamic.Resource`s; its source says how it picks Python.
write_dynamic_launcher() {
    write_if_changed "$BIN/pulumi-resource-pulumi-python" 0755 <"$SCRIPTS/pulumi-resource-pulumi-python"
}

# --- our Python language host (the Go module in scripts/pulumi-language-python) -----------
# Every file of the module, named; its hash goes into the build tag, so a change rebuilds.
langhost_source() {
    local f
    while IFS= read -r f; do
        printf '== %s\n' "$f"
        cat "$LANGHOST_SRC/$f"
    done < <(cd "$LANGHOST_SRC" && find . -type f | LC_ALL=C sort)
}

# --- Go builds --------------------------------------------------------------------
go_env() {
    # A Go installed the usual way but not on this shell's PATH (CI environments trim it).
    if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
        PATH="/usr/local/go/bin:$PATH"
    fi
    command -v go >/dev/null 2>&1 || die "no pulumi found and no Go toolchain to build one (install Go >= 1.26)"
    export GOFLAGS="-mod=mod -buildvcs=false"
    export CGO_ENABLED=0
    export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
    cd "$BUILD" # outside any Go module or workspace
}

# needs_go MODFILE: switch GOTOOLCHAIN to auto when the module wants a newer Go than ours.
needs_go() {
    local want have
    want="$(awk '$1 == "go" { print $2; exit }' "$1")"
    have="$(go env GOVERSION)"; have="${have#go}"
    if [[ -n "$want" ]] && ! version_ge "$have" "$want" && [[ "$GOTOOLCHAIN" == local ]]; then
        log "module needs go $want (have $have): letting the go command fetch that toolchain"
        export GOTOOLCHAIN=auto
    fi
}

# mod_file MODULE@VERSION: path of its go.mod in the module cache (downloads it), or fails.
mod_file() {
    local json
    json="$(go mod download -json "$1" 2>/dev/null)" || return 1
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' <<<"$json"
}

mod_dir() {
    local json
    json="$(go mod download -json "$1" 2>/dev/null)" || return 1
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$json"
}

# pick_cli_version WANT: WANT when the proxy serves pkg/v3 at it, else the newest patch of
# the first newer minor release it lists (a newer CLI runs older SDKs), else the newest.
pick_cli_version() {
    local want="$1" listed v
    if mod_file "github.com/pulumi/pulumi/pkg/v3@v$want" >/dev/null; then
        printf '%s\n' "$want"
        return 0
    fi
    listed="$(go list -m -versions github.com/pulumi/pulumi/pkg/v3 2>/dev/null | tr ' ' '\n' | grep -E '^v3\.[0-9]+\.[0-9]+$' | sed 's/^v//' | sort -V || true)"
    [[ -n "$listed" ]] || die "the Go module proxy lists no github.com/pulumi/pulumi/pkg/v3 release"
    # The first newer minor release, at its newest patch.
    v="$(while read -r v; do if version_ge "$v" "$want"; then printf '%s\n' "$v"; break; fi; done <<<"$listed")"
    if [[ -n "$v" ]]; then
        v="$(awk -F. -v mm="${v%.*}" '$1 "." $2 == mm' <<<"$listed" | tail -n1)"
        mod_file "github.com/pulumi/pulumi/pkg/v3@v$v" >/dev/null || die "cannot download pkg/v3@v$v"
        log "pkg/v3@v$want is not served by the Go module proxy; building v$v instead (a newer CLI runs older SDKs)"
        printf '%s\n' "$v"
        return 0
    fi
    v="$(tail -n1 <<<"$listed")"
    log "no pkg/v3 release >= v$want is served; building v$v"
    printf '%s\n' "$v"
}

build_cli() { # VERSION
    local version="$1" dir="$BUILD/cli" pkgmod
    pkgmod="$(mod_file "github.com/pulumi/pulumi/pkg/v3@v$version")" || die "cannot download pkg/v3@v$version"
    needs_go "$pkgmod"
    rm -rf "$dir"
    mkdir -p "$dir"
    {
        printf 'module qinfra.local/pulumi-cli\n\n'
        awk '$1 == "go" { print; exit }' "$pkgmod"
        printf '\nrequire (\n\tgithub.com/pulumi/pulumi/pkg/v3 v%s\n\tgithub.com/pulumi/pulumi/sdk/v3 v%s\n)\n\n' "$version" "$version"
        # pkg/v3's own replace directives, less the ones pointing into its repository.
        awk '
            /^replace[[:space:]]*\($/ { block = 1; next }
            block && /^\)/ { block = 0; next }
            block { line = $0 }
            !block && /^replace[[:space:]]/ { line = $0; sub(/^replace[[:space:]]+/, "", line) }
            line != "" && line !~ /^[[:space:]]*\/\// {
                split(line, parts, "=>"); target = parts[2]; gsub(/^[[:space:]]+/, "", target)
                if (target !~ /^\.\.?\//) print "replace " line
                line = ""
            }
        ' "$pkgmod"
    } >"$dir/go.mod"
    # No `go mod tidy`: it also resolves test-only dependencies, some of which the proxy
    # does not serve; with -mod=mod, go build adds just what the binary needs.
    log "building pulumi v$version from the Go module proxy in $dir (5-10 min on 2 cores the first time)"
    (cd "$dir" && go build -trimpath \
        -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$version" \
        -o "$BIN/pulumi.tmp" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
    mv -f "$BIN/pulumi.tmp" "$BIN/pulumi"
}

# The SDK's exec shim, from the sdk/v3 module at the SDK's version (else the CLI's).
install_exec_shim() { # SDK_VERSION CLI_VERSION
    local dir=""
    dir="$(mod_dir "github.com/pulumi/pulumi/sdk/v3@v$1")" || dir="$(mod_dir "github.com/pulumi/pulumi/sdk/v3@v$2")" ||
        die "cannot download github.com/pulumi/pulumi/sdk/v3 (v$1 or v$2) for pulumi-language-python-exec"
    [[ -f "$dir/python/cmd/pulumi-language-python-exec" ]] || die "no python/cmd/pulumi-language-python-exec in $dir"
    write_if_changed "$BIN/pulumi-language-python-exec" 0755 <"$dir/python/cmd/pulumi-language-python-exec"
}

build_langhost() { # SDK_VERSION CLI_VERSION TAG
    local dir="$BUILD/langhost" sdk="$1" sdkmod sdkgo ourgo
    sdkmod="$(mod_file "github.com/pulumi/pulumi/sdk/v3@v$sdk")" || { sdk="$2"; sdkmod="$(mod_file "github.com/pulumi/pulumi/sdk/v3@v$sdk")"; } ||
        die "cannot download github.com/pulumi/pulumi/sdk/v3"
    needs_go "$sdkmod"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -R "$LANGHOST_SRC/." "$dir/"
    # The committed go.mod pins one sdk/v3 release; build against the project's own (with
    # -mod=mod the go command adds what that release needs to go.mod and go.sum).
    sdkgo="$(awk '$1 == "go" { print $2; exit }' "$sdkmod")"
    ourgo="$(awk '$1 == "go" { print $2; exit }' "$dir/go.mod")"
    (cd "$dir" && go mod edit -require="github.com/pulumi/pulumi/sdk/v3@v$sdk")
    if [[ -n "$sdkgo" ]] && ! version_ge "$ourgo" "$sdkgo"; then
        (cd "$dir" && go mod edit -go="$sdkgo")
    fi
    log "building pulumi-language-python (against sdk/v3@v$sdk)"
    (cd "$dir" && go build -trimpath -ldflags "-s -w -X main.version=$3" -o "$BIN/pulumi-language-python.tmp" .)
    mv -f "$BIN/pulumi-language-python.tmp" "$BIN/pulumi-language-python"
}

# --- 1. what an earlier run installed --------------------------------------------------
LANGHOST_TAG="$WANT-qinfra.$(langhost_source | sha256sum | cut -c1-12)"
stamp_get() { [[ -f "$STAMP" ]] && sed -n "s/^$1=//p" "$STAMP" | head -n1; return 0; }

reuse_tools() {
    local source cli have
    [[ -z "${QINFRA_PULUMI_REBUILD:-}" && -x "$BIN/pulumi" ]] || return 1
    [[ "$(stamp_get want)" == "$WANT" ]] || return 1
    source="$(stamp_get source)"; cli="$(stamp_get cli)"
    have="$(cli_version "$BIN/pulumi")"
    [[ -n "$have" && "$have" == "$cli" ]] || return 1
    [[ -f "$BIN/pulumi-language-python-exec" || "$source" != built ]] || return 1
    if [[ "$source" == built ]]; then
        [[ "$("$BIN/pulumi-language-python" --version 2>/dev/null || true)" == "$LANGHOST_TAG" ]] || return 1
    else
        [[ -x "$BIN/pulumi-language-python" ]] || return 1
    fi
    CLI_VERSION="$have"; SOURCE="$source"
}

write_stamp() {
    printf 'want=%s\ncli=%s\nsource=%s\n' "$WANT" "$CLI_VERSION" "$SOURCE" >"$STAMP"
}

# --- 2. a pulumi already installed elsewhere ---------------------------------------------
reuse_external() {
    local cand="" p dir have f
    [[ -z "${QINFRA_PULUMI_REBUILD:-}" ]] || return 1
    for p in "$(command -v pulumi 2>/dev/null || true)" "${PULUMI_HOME:-$HOME/.pulumi}/bin/pulumi"; do
        [[ -n "$p" && -x "$p" ]] || continue
        p="$(readlink -f "$p")"
        [[ "$(dirname "$p")" != "$(readlink -f "$BIN")" ]] || continue
        have="$(cli_version "$p")"
        if [[ -z "$have" ]]; then continue; fi
        if ! version_ge "$have" "$SDK_VERSION"; then
            log "ignoring $p: v$have is older than the Python SDK v$SDK_VERSION"
            continue
        fi
        if [[ ! -x "$(dirname "$p")/pulumi-language-python" ]]; then
            log "ignoring $p: no pulumi-language-python next to it"
            continue
        fi
        cand="$p"; break
    done
    [[ -n "$cand" ]] || return 1
    dir="$(dirname "$cand")"
    log "reusing $cand (v$have)"
    # Link the CLI and its plugins so that .tools/pulumi is the one root to point at.
    rm -f "$BIN/pulumi" "$BIN/pulumi-language-python" "$BIN/pulumi-language-python-exec"
    for f in "$dir"/pulumi "$dir"/pulumi-language-* "$dir"/pulumi-resource-* "$dir"/pulumi-analyzer-*; do
        [[ -e "$f" ]] && ln -sfn "$f" "$BIN/$(basename "$f")"
    done
    CLI_VERSION="$have"; SOURCE=external
}

# --- 3. the official installer, when the internet is reachable ---------------------------
official_installer() {
    [[ -z "${QINFRA_PULUMI_OFFLINE:-}" ]] || return 1
    command -v curl >/dev/null 2>&1 || return 1
    curl -fsS --max-time 5 -o /dev/null https://get.pulumi.com 2>/dev/null || {
        log "get.pulumi.com is not reachable; skipping the official installer"
        return 1
    }
    log "installing pulumi v$WANT with the official installer"
    local staging="$BUILD/official" have
    rm -rf "$staging"
    curl -fsSL --max-time 60 https://get.pulumi.com | sh -s -- --version "$WANT" --install-root "$staging" --no-edit-path || return 1
    have="$(cli_version "$staging/bin/pulumi")"
    [[ -n "$have" ]] || return 1
    rm -f "$BIN"/pulumi "$BIN"/pulumi-language-* "$BIN"/pulumi-resource-* "$BIN"/pulumi-analyzer-*
    cp -a "$staging/bin/." "$BIN/"
    CLI_VERSION="$have"; SOURCE=installer
}

# --- 4. build from the Go module proxy ----------------------------------------------------
build_from_proxy() {
    local version have
    go_env
    # Links left by an earlier reuse of an external install.
    find "$BIN" -maxdepth 1 -type l -delete
    version="$(pick_cli_version "$WANT")"
    have=""
    [[ -x "$BIN/pulumi" && ! -L "$BIN/pulumi" ]] && have="$(cli_version "$BIN/pulumi")"
    if [[ -z "${QINFRA_PULUMI_REBUILD:-}" && "$have" == "$version" ]]; then
        log "reusing $BIN/pulumi (v$have)"
    else
        [[ -L "$BIN/pulumi" ]] && rm -f "$BIN/pulumi"
        build_cli "$version"
    fi
    CLI_VERSION="$(cli_version "$BIN/pulumi")"
    [[ "$CLI_VERSION" == "$version" ]] || die "$BIN/pulumi reports '${CLI_VERSION:-nothing}', expected $version"
    [[ -L "$BIN/pulumi-language-python" ]] && rm -f "$BIN/pulumi-language-python"
    install_exec_shim "$SDK_VERSION" "$CLI_VERSION"
    if [[ -n "${QINFRA_PULUMI_REBUILD:-}" || "$("$BIN/pulumi-language-python" --version 2>/dev/null || true)" != "$LANGHOST_TAG" ]]; then
        build_langhost "$SDK_VERSION" "$CLI_VERSION" "$LANGHOST_TAG"
    fi
    SOURCE=built
}

CLI_VERSION=""; SOURCE=""
if reuse_tools; then
    log "up to date: $BIN/pulumi (v$CLI_VERSION, $SOURCE)"
else
    # (build_from_proxy is not called in a condition, so that `set -e` holds inside it)
    if ! reuse_external && ! official_installer; then
        build_from_proxy
    fi
    write_stamp
fi
# Ours unless the reused install brought its own.
if [[ ! -e "$BIN/pulumi-resource-pulumi-python" || ! -L "$BIN/pulumi-resource-pulumi-python" ]]; then
    write_dynamic_launcher
fi

log "pulumi CLI: $BIN/pulumi (v$CLI_VERSION, from: $SOURCE; Python SDK v$SDK_VERSION) in $((SECONDS - START))s"
cat <<EOF
# Pulumi for qinfra is in $BIN. Use it with:
export PATH="$BIN:\$PATH"
# Offline (no update check, local state, no plugin downloads), also:
#   export PULUMI_SKIP_UPDATE_CHECK=true PULUMI_BACKEND_URL="file://\$HOME/.pulumi-local" PULUMI_CONFIG_PASSPHRASE=...
# Automation API: PulumiCommand(root="$TOOLS") (it runs <root>/bin/pulumi).
EOF
