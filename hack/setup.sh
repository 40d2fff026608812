#!/usr/bin/env bash
# Prepares a machine to run every test tier, from a clean clone: Debian packages
# (Prometheus, Alertmanager, wrk, openssl, curl), the control-plane binaries, a
# Prometheus with Kubernetes service discovery, the Gateway API CRDs, Traefik (the
# bed's gateway), Argo Rollouts (for the comparison with it) and helm
# (hack/controlplane/build.sh, hack/prometheus/build.sh, hack/traefik/build.sh,
# hack/argo-rollouts/build.sh, cached outside the repository) and .venv with the
# project installed with its test extras, beside the test bed (testbed/).
#
# Cold, Traefik and Argo Rollouts are the longest builds (about 40 and 28 minutes
# on 2 cores); with Go's module and build caches warm, as CI keeps them, about a
# minute together. --rehearsal prepares only what `make rehearsal` needs (apt
# packages, the control plane, Prometheus, .venv), so a first rehearsal on a new
# machine does not wait for them.
# Idempotent: each phase skips work that is already done, and the time spent
# per phase is printed.
#
# Needs: Debian (apt), Go >= 1.26 on PATH (or /usr/local/go/bin), python3 >= 3.11.
set -euo pipefail

cd "$(dirname "$0")/.."
APT_PACKAGES=(prometheus prometheus-alertmanager wrk openssl curl)
STAMP=.venv/.autocanary-install.sha256

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
phase() { # name function
  local name=$1 start=$SECONDS
  log "$name: start"
  "$2"
  log "$name: done in $((SECONDS - start))s"
}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  # CI sets AUTOCANARY_APT_ALWAYS so that the install path runs on every run.
  if [ -n "${AUTOCANARY_APT_ALWAYS:-}" ]; then missing=("${APT_PACKAGES[@]}"); fi
  if [ ${#missing[@]} -eq 0 ]; then
    log "apt packages already installed: ${APT_PACKAGES[*]}"
    return
  fi
  command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${missing[*]}"
  log "installing: ${missing[*]}"
  # Package scripts must not start services: a packaged Prometheus would hold
  # port 9090 and scrape in the background. policy-rc.d 101 forbids starting them.
  local policy=/usr/sbin/policy-rc.d own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    own_policy=1
  fi
  local rc=0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
  if [ "$rc" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" || rc=$?
  fi
  if [ -n "$own_policy" ]; then as_root rm -f "$policy"; fi
  [ "$rc" -eq 0 ] || die "apt-get failed (status $rc)"
  # Under systemd the units are enabled anyway; keep them from starting at boot.
  if [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus.service prometheus-alertmanager.service \
      2>/dev/null || true
  fi
}

find_go() {
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null || die "go not found: install Go >= 1.26 (needed to build the control plane and Prometheus)"
}

build_controlplane() {
  find_go
  hack/controlplane/build.sh >/dev/null
  log "control-plane binaries in ${AUTOCANARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autocanary}/testbin"
}

# The test bed's Prometheus discovers pods with kubernetes_sd_configs, which
# Debian's Prometheus is built without; Debian's serves static scrapes, promtool
# and Alertmanager.
build_prometheus() {
  local out
  find_go
  out=$(hack/prometheus/build.sh)
  log "Prometheus with Kubernetes discovery in $out"
}

# The standard channel's CRDs of the pinned sigs.k8s.io/gateway-api, for the
# gateway strategy's tests against a real API server.
copy_gateway_api_crds() {
  local out
  find_go
  out=$(hack/traefik/build.sh --crds-only)
  log "Gateway API CRDs in $out"
}

# Traefik, the test bed's Gateway API implementation.
build_traefik() {
  local out
  find_go
  out=$(hack/traefik/build.sh)
  log "Traefik and the Gateway API CRDs in $out"
}

# Argo Rollouts' controller and CRDs, for bench/versus_argo.py and the integration
# test that runs one release through it (tests/integration/test_argo_rollouts.py).
build_argo_rollouts() {
  local out
  find_go
  out=$(hack/argo-rollouts/build.sh)
  log "Argo Rollouts in $out"
}

# helm, for the chart's tests (deploy/helm/): built from the Go module proxy like
# the control plane (no release binaries can be downloaded here), cached by version.
HELM_VERSION=v3.19.0
build_helm() {
  local dir
  dir=${AUTOCANARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autocanary}/helm/$HELM_VERSION
  if [ -x "$dir/helm" ]; then
    log "helm $HELM_VERSION already built: $dir/helm"
    return
  fi
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  mkdir -p "$dir"
  GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false" GOBIN="$dir" \
    go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || die "building helm failed"
  log "helm built: $dir/helm"
}

make_venv() {
  command -v python3 >/dev/null || die "python3 not found: install Python >= 3.11"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "python3 is $(python3 -V 2>&1); autocanary needs Python >= 3.11"
  if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    log ".venv has $(.venv/bin/python -V 2>&1); recreating it"
    rm -rf .venv
  fi
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || die "python3 -m venv failed (on Debian's own python: apt-get install python3-venv)"
  fi
  # Reinstall only when the dependency declaration changed.
  local want
  want=$( { .venv/bin/python -V 2>&1; cat pyproject.toml testbed/pyproject.toml; } | sha256sum | cut -d' ' -f1)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    log ".venv up to date"
    return
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' -e ./testbed
  echo "$want" > "$STAMP"
}

# The image's pinned dependencies (and the build backend) as local wheels, so the
# test that replays the Dockerfile's install needs no network: tests only ever
# talk to 127.0.0.1. Keyed by the pins and the Python version.
fill_wheelhouse() {
  local key dir
  key=$( { .venv/bin/python -c 'import sys; print(sys.version_info[:2])'; cat deploy/constraints.txt; } |
    sha256sum | cut -c1-12)
  dir=${AUTOCANARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autocanary}/wheelhouse/$key
  if [ -f "$dir/.complete" ]; then
    log "wheelhouse up to date: $dir"
    return
  fi
  rm -rf "$dir"; mkdir -p "$dir"
  .venv/bin/python -m pip download -q --disable-pip-version-check --dest "$dir" \
    --requirement deploy/constraints.txt "hatchling>=1.25"
  touch "$dir/.complete"
  log "wheelhouse filled: $dir"
}

everything=1
case "${1:-}" in
  "") ;;
  --rehearsal) everything=0 ;;
  *) die "unexpected argument '$1' (usage: hack/setup.sh [--rehearsal])" ;;
esac

total=$SECONDS
phase "apt packages" install_packages
phase "control-plane binaries" build_controlplane
phase "prometheus" build_prometheus
if [ "$everything" = 1 ]; then
  phase "gateway api crds" copy_gateway_api_crds
  phase "traefik" build_traefik
  phase "argo rollouts" build_argo_rollouts
  phase "helm" build_helm
fi
phase "python venv" make_venv
if [ "$everything" = 1 ]; then phase "wheelhouse" fill_wheelhouse; fi
log "setup complete in $((SECONDS - total))s"
