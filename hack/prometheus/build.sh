#!/usr/bin/env bash
# Builds Prometheus from the Go module proxy into a versioned cache directory
# outside the repository, for the test bed: Debian's Prometheus is built without
# kubernetes_sd_configs, and the test bed discovers pods as kube-prometheus does.
# Idempotent: a completed build (marker file .complete) is reused. Prints the
# output directory as its last line.
#
# Only the Kubernetes service discovery is compiled in (build tags
# remove_all_sd,enable_kubernetes_sd: the cloud SDKs are most of a full build),
# and no web UI assets (no builtinassets tag): the test bed uses the HTTP API.
# Prometheus's module carries no replace directives, so `go install pkg@version`
# builds it as pinned by its own go.mod.
set -euo pipefail

# Module v0.3MM.P is Prometheus 3.MM.P.
PROMETHEUS=${PROMETHEUS:-3.16.0}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false"

IFS=. read -r major minor patch <<<"$PROMETHEUS"
[ "$major" = 3 ] || { echo "PROMETHEUS=$PROMETHEUS: only Prometheus 3.x is mapped to a module version" >&2; exit 1; }
MODVER=$(printf 'v0.3%02d.%d' "$minor" "$patch")

# Prometheus 3.16's go.mod asks for go 1.26.7 or newer.
command -v go >/dev/null || { echo "go is required (Go >= 1.26.7): install it first" >&2; exit 1; }
GOVER=$(go env GOVERSION)
CACHE_ROOT=${AUTOCANARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autocanary}
OUT=${OUT:-$CACHE_ROOT/prometheus/$PROMETHEUS-$GOVER}

log() { printf '[build-prometheus %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Checks that the binary runs and is the version asked for, with Kubernetes
# discovery in it. No pipe into head (SIGPIPE under pipefail, see controlplane/build.sh).
post_build() {
  local v
  [ -x "$OUT/prometheus" ] || { echo "build finished without $OUT/prometheus" >&2; exit 1; }
  v=$("$OUT/prometheus" --version)
  v=${v%%$'\n'*}
  case $v in
    *"version $PROMETHEUS "*) log "built: $v" ;;
    *) echo "$OUT/prometheus --version says '$v', expected version $PROMETHEUS" >&2; exit 1 ;;
  esac
}

if [ "${1:-}" = "--post-build-only" ]; then
  # For tests of the tail of the script: check an existing output directory
  # and mark it complete, without building.
  post_build; touch "$OUT/.complete"; echo "$OUT"; exit 0
fi

if [ -f "$OUT/.complete" ]; then
  log "cached build reused: $OUT"
  echo "$OUT"; exit 0
fi
rm -rf "$OUT"; mkdir -p "$OUT"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT

start=$SECONDS
log "building Prometheus $PROMETHEUS (module $MODVER) into $OUT (go $GOVER, GOMODCACHE=$(go env GOMODCACHE), GOCACHE=$(go env GOCACHE))"
ver=github.com/prometheus/common/version
# Outside any module, so that go install resolves the pinned version by itself.
cd "$W"
GOBIN="$OUT" go install -trimpath -tags "netgo,remove_all_sd,enable_kubernetes_sd" \
  -ldflags "-s -w -X $ver.Version=$PROMETHEUS -X $ver.Revision=$MODVER -X $ver.Branch=HEAD -X $ver.BuildUser=autocanary -X $ver.BuildDate=19700101-00:00:00" \
  "github.com/prometheus/prometheus/cmd/prometheus@$MODVER"
post_build
touch "$OUT/.complete"
log "built in $((SECONDS - start))s"
echo "$OUT"
