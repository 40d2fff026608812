#!/usr/bin/env bash
# Builds Argo Rollouts' controller from the Go module proxy into a versioned
# cache directory outside the repository, with its CRDs beside it, for
# bench/versus_argo.py and the integration test that runs one release through it.
# Idempotent: a completed build (marker file .complete) is reused. Prints the
# output directory as its last line.
#
# Why a wrapper module: Argo Rollouts' go.mod pins the Kubernetes modules (and a
# fork of one bot API) with replace directives, so `go install pkg@version`
# refuses it. The wrapper copies every replace directive of the pinned go.mod.
# v1.10.2 asks for go >= 1.26.10; v1.10.1 builds with go 1.26.1 or newer.
set -euo pipefail

ARGO_ROLLOUTS=${ARGO_ROLLOUTS:-1.10.1}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false"

command -v go >/dev/null || { echo "go is required (Go >= 1.26.1): install it first" >&2; exit 1; }
GOVER=$(go env GOVERSION)
CACHE_ROOT=${AUTOCANARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autocanary}
OUT=${OUT:-$CACHE_ROOT/argo-rollouts/$ARGO_ROLLOUTS-$GOVER}
MOD=github.com/argoproj/argo-rollouts

log() { printf '[build-argo-rollouts %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Checks that the controller runs and is the version asked for, and that the
# CRDs are there. No pipe into head (SIGPIPE under pipefail, see controlplane/build.sh).
post_build() {
  local v c
  [ -x "$OUT/rollouts-controller" ] || { echo "build finished without $OUT/rollouts-controller" >&2; exit 1; }
  for c in rollout analysis-template analysis-run experiment cluster-analysis-template; do
    [ -f "$OUT/crds/$c-crd.yaml" ] || { echo "build finished without $OUT/crds/$c-crd.yaml" >&2; exit 1; }
  done
  v=$("$OUT/rollouts-controller" --version)
  v=${v%%$'\n'*}
  case $v in
    "v$ARGO_ROLLOUTS+unknown") log "built: rollouts-controller $v" ;;
    *) echo "$OUT/rollouts-controller version says '$v', expected v$ARGO_ROLLOUTS" >&2; exit 1 ;;
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
rm -rf "$OUT"; mkdir -p "$OUT/crds"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT

start=$SECONDS
log "building Argo Rollouts v$ARGO_ROLLOUTS into $OUT (go $GOVER, GOMODCACHE=$(go env GOMODCACHE), GOCACHE=$(go env GOCACHE))"
cd "$W"
printf 'module local/argorolloutsbin\n\ngo 1.26.1\n' > go.mod
dl=$(go mod download -json "$MOD@v$ARGO_ROLLOUTS")
amod=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])' <<<"$dl")
adir=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])' <<<"$dl")
n=0
while read -r rep; do
  go mod edit "-replace=$rep"; n=$((n + 1))
done < <(go mod edit -json "$amod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    old = r["Old"]["Path"] + ("@" + r["Old"]["Version"] if r["Old"].get("Version") else "")
    new = r["New"]["Path"] + ("@" + r["New"]["Version"] if r["New"].get("Version") else "")
    print(f"{old}={new}")
')
[ "$n" -gt 0 ] || { echo "no replace directives found in $amod" >&2; exit 1; }
log "copied $n replace directives from $MOD@v$ARGO_ROLLOUTS"
go get -tool "$MOD/cmd/rollouts-controller@v$ARGO_ROLLOUTS"
# Built from the module, not a git checkout: it reports v$ARGO_ROLLOUTS+unknown.
ver=$MOD/utils/version
go build -trimpath -o "$OUT/rollouts-controller" \
  -ldflags "-s -w -X $ver.version=$ARGO_ROLLOUTS" \
  "$MOD/cmd/rollouts-controller"
cp "$adir"/manifests/crds/*-crd.yaml "$OUT/crds/"
chmod -R u+w "$OUT/crds"
post_build
touch "$OUT/.complete"
log "built in $((SECONDS - start))s"
echo "$OUT"
