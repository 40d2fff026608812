#!/usr/bin/env bash
# Builds Traefik (the test bed's Gateway API implementation) from the Go module
# proxy into a versioned cache directory outside the repository, and copies the
# standard-channel Gateway API CRDs of the pinned sigs.k8s.io/gateway-api beside
# it. Idempotent: a completed build (marker file .complete) is reused. Prints the
# output directory as its last line.
#
# --crds-only copies only the CRDs, into their own directory (seconds: one small
# module), for the tests that need the Gateway API but not a gateway.
#
# Why a wrapper module: Traefik's go.mod carries replace directives, so `go install
# pkg@version` refuses it. The wrapper copies them (derived from Traefik's own
# go.mod, not hard-coded), and its excludes.
#
# Why 3.6 and not 3.7: 3.7's go.mod also replaces github.com/traefik/traefik/dynamic/ext
# with ./pkg/config/dynamic/ext, a nested module of Traefik's repository, which Go
# leaves out of the module's zip (so it is not in the module cache either) and the
# proxy does not serve on its own; and fifteen of 3.7.13's dependencies (ACME DNS
# provider SDKs pulled in by lego v5, the go-http-auth fork) are refused here by the
# module proxy (403). 3.6.12 has neither problem. It is built against Gateway API
# v1.4 types; the v1.6 standard-channel CRDs serve every version it watches (v1, and
# v1beta1 ReferenceGrants).
#
# Traefik has no build tags that leave providers out; -s -w and -trimpath keep the
# binary as small as upstream's release build.
set -euo pipefail

TRAEFIK=${TRAEFIK:-3.6.12}
GATEWAY_API=${GATEWAY_API:-1.6.3}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false"

# Traefik 3.6's go.mod asks for go 1.25.0 or newer; the other builds need 1.26.
command -v go >/dev/null || { echo "go is required (Go >= 1.26): install it first" >&2; exit 1; }
GOVER=$(go env GOVERSION)
CACHE_ROOT=${AUTOCANARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autocanary}
OUT=${OUT:-$CACHE_ROOT/traefik/$TRAEFIK-gatewayapi$GATEWAY_API-$GOVER}

log() { printf '[build-traefik %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Checks that the binary runs and is the version asked for, and that the CRDs are
# there. No pipe into head (SIGPIPE under pipefail, see controlplane/build.sh).
post_build() {
  local v
  [ -x "$OUT/traefik" ] || { echo "build finished without $OUT/traefik" >&2; exit 1; }
  v=$("$OUT/traefik" version)
  case $v in
    *"Version:"*"$TRAEFIK"*) log "built: traefik $TRAEFIK ($(du -m "$OUT/traefik" | cut -f1) MB)" ;;
    *) echo "$OUT/traefik version says '$v', expected $TRAEFIK" >&2; exit 1 ;;
  esac
  check_crds "$OUT"
}

check_crds() { # directory
  [ -s "$1/gateway-api-crds.yaml" ] || { echo "no CRDs in $1/gateway-api-crds.yaml" >&2; exit 1; }
  grep -q "bundle-version: v$GATEWAY_API" "$1/gateway-api-crds.yaml" ||
    { echo "$1/gateway-api-crds.yaml is not Gateway API v$GATEWAY_API" >&2; exit 1; }
}

if [ "${1:-}" = "--post-build-only" ]; then
  # For tests of the tail of the script: check an existing output directory
  # and mark it complete, without building.
  post_build; touch "$OUT/.complete"; echo "$OUT"; exit 0
fi

if [ "${1:-}" = "--crds-only" ]; then
  OUT=${CRDS_OUT:-$CACHE_ROOT/gateway-api/v$GATEWAY_API}
fi
if [ -f "$OUT/.complete" ]; then
  log "cached build reused: $OUT"
  echo "$OUT"; exit 0
fi
rm -rf "$OUT"; mkdir -p "$OUT"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT

# The standard channel's files (its CRDs and the ValidatingAdmissionPolicy that
# guards upgrades across bundle versions), concatenated in a fixed order.
copy_crds() {
  local dir
  cd "$W"
  dir=$(go mod download -json "sigs.k8s.io/gateway-api@v$GATEWAY_API" |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
  [ -d "$dir/config/crd/standard" ] || { echo "no config/crd/standard in $dir" >&2; exit 1; }
  for f in "$dir"/config/crd/standard/*.yaml; do
    printf -- '---\n'; cat "$f"
  done > "$OUT/gateway-api-crds.yaml"
  log "Gateway API v$GATEWAY_API standard channel: $(grep -c '^kind: CustomResourceDefinition' "$OUT/gateway-api-crds.yaml") CRDs"
}

build_traefik() {
  mkdir "$W/traefik"; cd "$W/traefik"
  printf 'module local/traefikbin\n\ngo 1.26.0\n' > go.mod
  local tmod
  tmod=$(go mod download -json "github.com/traefik/traefik/v3@v$TRAEFIK" |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
  # Each replace and exclude of Traefik's go.mod as a go mod edit flag. A replace by
  # a directory (a nested module, see above) cannot be copied: say so.
  go mod edit -json "$tmod" | python3 -c '
import json, sys
mod = json.load(sys.stdin)
for r in mod.get("Replace") or []:
    old, new = r["Old"], r["New"]
    old_ref = old["Path"] + ("@" + old["Version"] if "Version" in old else "")
    if "Version" not in new:
        sys.exit("Traefik replaces " + old_ref + " by a directory, which its module zip lacks")
    print("-replace=" + old_ref + "=" + new["Path"] + "@" + new["Version"])
for e in mod.get("Exclude") or []:
    print("-exclude=" + e["Path"] + "@" + e["Version"])
' > edits.txt
  local n=0 edit
  while read -r edit; do
    go mod edit "$edit"
    n=$((n + 1))
  done < edits.txt
  log "copied $n replace/exclude directives from Traefik's go.mod"
  go get -tool "github.com/traefik/traefik/v3/cmd/traefik@v$TRAEFIK"
  go mod tidy
  local ver=github.com/traefik/traefik/v3/pkg/version
  go build -trimpath \
    -ldflags "-s -w -X $ver.Version=$TRAEFIK -X $ver.Codename=autocanary -X $ver.BuildDate=1970-01-01T00:00:00Z" \
    -o "$OUT/traefik" github.com/traefik/traefik/v3/cmd/traefik
}

start=$SECONDS
if [ "${1:-}" = "--crds-only" ]; then
  copy_crds
  check_crds "$OUT"
  touch "$OUT/.complete"
  echo "$OUT"; exit 0
fi
log "building Traefik $TRAEFIK into $OUT (go $GOVER, GOMODCACHE=$(go env GOMODCACHE), GOCACHE=$(go env GOCACHE))"
copy_crds
build_traefik
post_build
touch "$OUT/.complete"
log "built in $((SECONDS - start))s"
echo "$OUT"
