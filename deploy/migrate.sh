#!/usr/bin/env bash
# Move an old deployment in: the old multi-instance system's data/ directory (or a zip of it) becomes one
# instance per old instance, each with its saved Google login, in the fleet that deploy/up.sh runs.
#
#   deploy/migrate.sh /srv/old-system/data --dry-run     # what it would do; changes nothing
#   deploy/migrate.sh /srv/old-system/data --start       # do it, and start the new instances
#
# Options after the directory go to `aistudio-fleet migrate` (--dry-run, --start, --json). Running it again
# changes nothing; a run that was interrupted finishes the rest. It runs the CLI in a one-off container of the
# gateway image with the old data mounted read-only, talking to the running gateway over the compose network:
#   docker-compose -f deploy/compose.yaml run --rm --no-deps -v /srv/old-system/data:/old:ro \
#       -e AISTUDIO_FLEET_URL=http://gateway:8813 gateway aistudio-fleet migrate /old --start
# The files must be readable by the container's user (uid 10002): world-readable, as the old system left them.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$REPO/deploy"
# shellcheck source=deploy/compose-env.sh
. "$DEPLOY/compose-env.sh"

if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
fi
source_path="$1"; shift
if [ ! -e "$source_path" ]; then
  echo "deploy/migrate.sh: $source_path does not exist" >&2
  exit 2
fi
source_path="$(cd "$(dirname "$source_path")" && pwd)/$(basename "$source_path")"
if [ -d "$source_path" ]; then mount=(-v "$source_path:/old:ro"); target=/old
else mount=(-v "$source_path:/old.zip:ro"); target=/old.zip
fi

load_env_file "$ENV_FILE"
# The one-off container sees only compose.yaml: the simulator of an override is not an orphan to warn about.
export COMPOSE_IGNORE_ORPHANS="${COMPOSE_IGNORE_ORPHANS:-1}"
tty=()
[ -t 0 ] && [ -t 1 ] || tty=(-T)
exec_status=0
compose -f "$DEPLOY/compose.yaml" run --rm --no-deps "${tty[@]}" "${mount[@]}" \
  -e AISTUDIO_FLEET_URL=http://gateway:8813 gateway aistudio-fleet migrate "$target" "$@" || exec_status=$?
exit "$exec_status"
