#!/usr/bin/env bash
# Run the fleet on this machine with Docker Compose, from a fresh clone:
#
#   deploy/up.sh --simulator     # try it: instances use the bundled AI Studio simulator (no Google account)
#   deploy/up.sh                 # for real: instances open aistudio.google.com; sign them in from the panel
#
# Options: --no-build (use the images as they are), --simulator; anything after `--` goes to `compose up`.
# Steps: builds the images (deploy/build-images.sh), writes deploy/.env with random secrets when it does
# not exist (see deploy/env.example), starts compose in the background, waits until the gateway answers,
# and prints where everything is. Idempotent: running it again updates what changed.
# Stop with deploy/down.sh (add -v to delete every instance's login and the database).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$REPO/deploy"
# shellcheck source=deploy/compose-env.sh
. "$DEPLOY/compose-env.sh"

simulator=0
build=1
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --simulator) simulator=1 ;;
    --no-build) build=0 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "deploy/up.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

docker info >/dev/null 2>&1 || { echo "deploy/up.sh: no Docker engine answers (start dockerd, or use the no-Docker path in README.md)" >&2; exit 1; }

if [ ! -f "$ENV_FILE" ]; then
  secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
  (umask 077; sed -e "s/^GATEWAY_ADMIN_TOKEN=$/GATEWAY_ADMIN_TOKEN=$(secret)/" \
                  -e "s/^POSTGRES_PASSWORD=$/POSTGRES_PASSWORD=$(secret)/" \
                  "$DEPLOY/env.example" >"$ENV_FILE")
  echo "deploy/up.sh: wrote ${ENV_FILE#"$REPO"/} with a new admin token and database password" >&2
fi
load_env_file "$ENV_FILE"
apply_legacy_bind

if [ "$build" = 1 ]; then
  bash "$DEPLOY/build-images.sh"
fi

files=(-f "$DEPLOY/compose.yaml")
if [ "$simulator" = 1 ]; then files+=(-f "$DEPLOY/compose.simulator.yaml"); fi
compose "${files[@]}" up -d "${extra[@]}"

# A 2xx answer (a TCP connect is not enough: Docker's proxy accepts before the gateway listens).
http_ok() {
  if command -v curl >/dev/null; then curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
  elif command -v wget >/dev/null; then wget -q -O /dev/null -T 2 "$1" 2>/dev/null
  else python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
  fi
}

admin="http://127.0.0.1:${FLEET_ADMIN_PORT:-8813}"
api="http://127.0.0.1:${FLEET_API_PORT:-8812}"
printf 'deploy/up.sh: waiting for the gateway' >&2
for _ in $(seq 1 120); do
  if http_ok "$api/health"; then
    printf ' up\n' >&2
    cat <<EOF

  generation API   $api          (POST /generate, GET /health)
  admin panel      $admin/       (sign in with GATEWAY_ADMIN_TOKEN from ${ENV_FILE#"$REPO"/})
  management API   $admin/api    (Authorization: Bearer <the same token>)
$( [ "$simulator" = 1 ] && echo "  simulator        http://127.0.0.1:${FLEET_SIMULATOR_PORT:-9000}/" )

  token=\$(grep ^GATEWAY_ADMIN_TOKEN= ${ENV_FILE#"$REPO"/} | cut -d= -f2)
  curl -s -H "Authorization: Bearer \$token" -H 'Content-Type: application/json' \\
       -d '{"name": "first"}' $admin/api/instances          # create one (stopped)
  curl -s -H "Authorization: Bearer \$token" -X POST $admin/api/instances/<instance_id>/start
  curl -s -H 'Content-Type: application/json' -d '{"prompt": "a red square"}' $api/generate

  logs: $(compose_hint "${files[@]}") logs -f gateway      stop: deploy/down.sh
EOF
    exit 0
  fi
  printf '.' >&2
  sleep 1
done
printf ' no answer in 120 s; the gateway says:\n' >&2
compose "${files[@]}" logs --tail=40 gateway >&2
exit 1
