#!/usr/bin/env bash
# Build the project's images from nothing on this machine (idempotent; works from any cwd):
#   aistudio-fleet-instance:latest   Dockerfile.instance
#   aistudio-fleet-simulator:latest  deploy/simulator.Dockerfile (needs tests/simulator/)
#   aistudio-fleet-gateway:latest    Dockerfile.gateway (only if that file exists)
#   aistudio-fleet-postgres:15       deploy/postgres.Dockerfile (Debian's PostgreSQL 15, for deploy/compose.yaml)
#
# Environment:
#   BASE_IMAGE   base for the Debian images (default debian:bookworm-slim). If it is neither local nor
#                pullable, deploy/base-image.sh makes aistudio-fleet-base:bookworm with debootstrap.
#   IMAGE_TAG    tag for the built images (default latest)
#   ONLY         space-separated subset of: instance simulator gateway postgres
#   NO_CACHE=1   build without Docker's layer cache
#   AISTUDIO_BUILD_NETWORK  network for RUN steps (e.g. host, when dockerd runs with --iptables=false)
# Build-time extras go to deploy/.build/ (git-ignored by its own .gitignore, never in an image's final
# layers): the host's CA bundle for pip (PIP_CERT) and the host's apt settings. Proxy variables from the
# environment (http_proxy, https_proxy, no_proxy and upper-case forms) are passed as build args.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
TAG="${IMAGE_TAG:-latest}"
ONLY="${ONLY:-instance simulator gateway postgres}"
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"   # Debian's engine + a client without buildx: legacy builder

log() { printf '[build-images] %s\n' "$*" >&2; }
T0=$SECONDS
declare -a TIMINGS=()
step_start() { STEP_NAME="$1"; STEP_T=$SECONDS; log "== $1"; }
step_end() { local d=$((SECONDS - STEP_T)); TIMINGS+=("$(printf '%-28s %4d s' "$STEP_NAME" "$d")"); log "== $STEP_NAME: ${d} s"; }
want() { [[ " $ONLY " == *" $1 "* ]]; }

docker info >/dev/null 2>&1 || { log "no Docker engine answers (start dockerd first; see .ci/run)"; exit 1; }

# --- base image
step_start "base image"
BASE_IMAGE="$(bash "$REPO/deploy/base-image.sh" | tail -n 1)"
export BASE_IMAGE
log "BASE_IMAGE=$BASE_IMAGE"
step_end

# --- build-time extras in the context
BUILD_DIR="$REPO/deploy/.build"
mkdir -p "$BUILD_DIR"
printf '*\n' >"$BUILD_DIR/.gitignore"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
if [ -f "$CA_BUNDLE" ]; then
  cmp -s "$CA_BUNDLE" "$BUILD_DIR/ca-certificates.crt" || cp "$CA_BUNDLE" "$BUILD_DIR/ca-certificates.crt"
else
  rm -f "$BUILD_DIR/ca-certificates.crt"
fi
APT_CONF_NEW="$(apt-config dump 2>/dev/null | grep -i -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy|ftp::Proxy)' || true)"
if [ -n "$APT_CONF_NEW" ]; then
  [ "$(cat "$BUILD_DIR/apt.conf" 2>/dev/null)" = "$APT_CONF_NEW" ] || printf '%s\n' "$APT_CONF_NEW" >"$BUILD_DIR/apt.conf"
else
  rm -f "$BUILD_DIR/apt.conf"
fi

BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --label aistudio-fleet.build=1 --force-rm)
for v in http_proxy https_proxy no_proxy ftp_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY FTP_PROXY; do
  if [ -n "${!v:-}" ]; then BUILD_ARGS+=(--build-arg "$v"); fi
done
if [ "${NO_CACHE:-0}" = 1 ]; then BUILD_ARGS+=(--no-cache); fi
# dockerd started with --iptables=false (see .ci/run) gives containers no way out: build on the host network
if [ -n "${AISTUDIO_BUILD_NETWORK:-}" ]; then BUILD_ARGS+=(--network "$AISTUDIO_BUILD_NETWORK"); fi

build() {  # name dockerfile [extra docker build args...]
  local name="$1" dockerfile="$2"; shift 2
  step_start "$name"
  local out; out="$(mktemp)"
  if ! docker build "${BUILD_ARGS[@]}" "$@" -f "$dockerfile" -t "$name" . >"$out" 2>&1; then
    tail -n 60 "$out" >&2; rm -f "$out"
    log "FAILED: $name"; exit 1
  fi
  # one line per Dockerfile step, marked when it came from the layer cache
  awk '/^Step [0-9]+\/[0-9]+ :/ { if (s != "") print s; s = substr($0, 1, 110); next }
       /---> Using cache/ { s = s "  [cached]" }
       END { if (s != "") print s }' "$out" | sed 's/^/    /' >&2 || true
  rm -f "$out"
  step_end
}

if want instance; then
  build "aistudio-fleet-instance:$TAG" Dockerfile.instance
fi
if want simulator; then
  if [ -f tests/simulator/__main__.py ]; then
    build "aistudio-fleet-simulator:$TAG" deploy/simulator.Dockerfile \
      --build-arg "INSTANCE_IMAGE=aistudio-fleet-instance:$TAG"
  else
    log "skipping aistudio-fleet-simulator: tests/simulator/__main__.py does not exist"
  fi
fi
if want gateway; then
  if [ -f Dockerfile.gateway ]; then
    build "aistudio-fleet-gateway:$TAG" Dockerfile.gateway
  else
    log "skipping aistudio-fleet-gateway: Dockerfile.gateway does not exist"
  fi
fi
if want postgres; then
  build "aistudio-fleet-postgres:15" deploy/postgres.Dockerfile
fi

# dangling images left by our own rebuilds (only ours: they carry the label)
docker image prune -f --filter label=aistudio-fleet.build=1 >/dev/null 2>&1 || true

log "timings:"
for t in "${TIMINGS[@]}"; do log "  $t"; done
log "  $(printf '%-28s %4d s' total $((SECONDS - T0)))"
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep '^aistudio-fleet-' | sed 's/^/[build-images]   /' >&2 || true
