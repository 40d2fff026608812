#!/usr/bin/env bash
# Builds the real Kubernetes control-plane binaries (kube-apiserver,
# kube-controller-manager, kube-scheduler), etcd and kwok from the Go module
# proxy into a versioned cache directory outside the repository. Idempotent:
# a completed build (marker file .complete) is reused. Prints the output
# directory as its last line.
#
# Why a wrapper module: k8s.io/kubernetes and etcd's server module carry
# replace directives, so `go install pkg@version` refuses them.
set -euo pipefail

K8S=${K8S:-1.36.3}
ETCD=${ETCD:-3.6.16}
KWOK=${KWOK:-0.8.0}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false"

command -v go >/dev/null || { echo "go is required (Go >= 1.26): install it first" >&2; exit 1; }
GOVER=$(go env GOVERSION)
CACHE_ROOT=${AUTOCANARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autocanary}
OUT=${OUT:-$CACHE_ROOT/testbin/k8s$K8S-etcd$ETCD-kwok$KWOK-$GOVER}

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
timed() { # label cmd...
  local label=$1 start=$SECONDS; shift
  log "$label: start"
  "$@"
  log "$label: done in $((SECONDS - start))s"
}

# Checks that every binary runs. No pipe into head: a reader that exits early
# kills the writer with SIGPIPE, which set -o pipefail turns into a failed build.
post_build() {
  local v
  for b in kube-apiserver kube-controller-manager kube-scheduler etcd kwok; do
    [ -x "$OUT/$b" ] || { echo "build finished without $OUT/$b" >&2; exit 1; }
  done
  v=$("$OUT/kube-apiserver" --version); log "built: $v"
  v=$("$OUT/etcd" --version); log "built: etcd ${v%%$'\n'*}"
  v=$("$OUT/kwok" --version); log "built: kwok ${v%%$'\n'*}"
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
rm -rf "$OUT"; mkdir -p "$OUT/stages"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT

build_k8s() {
  mkdir "$W/k8s"; cd "$W/k8s"
  printf 'module local/k8sbin\n\ngo 1.26.0\n' > go.mod
  local kmod
  kmod=$(go mod download -json "k8s.io/kubernetes@v$K8S" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
  local n=0
  for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$kmod"); do
    go mod edit "-replace=$m=$m@v0.${K8S#1.}"; n=$((n + 1))
  done
  [ "$n" -gt 0 ] || { echo "no staging replaces found in $kmod" >&2; exit 1; }
  log "replaced $n staging modules with v0.${K8S#1.}"
  # Keep Kubernetes' own GODEBUG defaults (single-line and block forms).
  python3 - "$kmod" <<'PY' > godebug.txt
import re, sys
text = open(sys.argv[1]).read()
pairs = re.findall(r'^godebug\s+([\w.]+=\S+)\s*$', text, re.M)
for block in re.findall(r'^godebug\s*\((.*?)^\)', text, re.M | re.S):
    pairs += re.findall(r'^\s*([\w.]+=\S+)\s*$', block, re.M)
print("\n".join(pairs))
PY
  while read -r kv; do [ -n "$kv" ] && go mod edit "-godebug=$kv"; done < godebug.txt
  local pkgs="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler"
  go get -tool $(for p in $pkgs; do printf '%s@v%s ' "$p" "$K8S"; done)
  go mod tidy
  local minor ldf="-s -w"
  minor=$(echo "$K8S" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=v$K8S -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ldf="$ldf -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  # One go build for all three so the shared packages compile once.
  go build -trimpath -ldflags "$ldf" -o "$OUT/" $pkgs
}

build_etcd() {
  mkdir "$W/etcd"; cd "$W/etcd"
  printf 'module local/etcdbin\n\ngo 1.26.0\n' > go.mod
  go get -tool "go.etcd.io/etcd/server/v3@v$ETCD"
  go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
}

build_kwok() {
  cd "$W"
  GOBIN="$OUT" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK"
  local st
  st=$(go env GOMODCACHE)/sigs.k8s.io/kwok@v$KWOK/kustomize/stage
  cp "$st/node/fast/node-initialize.yaml" "$st/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
     "$st/pod/fast/pod-ready.yaml" "$st/pod/fast/pod-complete.yaml" "$st/pod/fast/pod-delete.yaml" "$OUT/stages/"
  chmod -R u+w "$OUT/stages"
}

total=$SECONDS
log "building into $OUT (go $GOVER, GOMODCACHE=$(go env GOMODCACHE), GOCACHE=$(go env GOCACHE))"
timed "etcd v$ETCD" build_etcd
timed "kwok v$KWOK" build_kwok
timed "kubernetes v$K8S (apiserver, controller-manager, scheduler)" build_k8s
post_build
touch "$OUT/.complete"
log "all built in $((SECONDS - total))s"
echo "$OUT"
