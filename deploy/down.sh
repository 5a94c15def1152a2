#!/usr/bin/env bash
# Stop the fleet that deploy/up.sh (or compose) started:
#
#   deploy/down.sh        # stops everything; the database and every instance's login stay in their volumes
#   deploy/down.sh -v     # ... and deletes those volumes too: a clean slate
#
# The instance containers belong to the gateway, not to Compose, so `compose down` alone would leave them
# running (and fail to remove their network). In order: the gateway stops (so it restarts nothing), the
# instances stop gracefully (each saves its login state) and are removed, then `compose down`.
# The next `deploy/up.sh` starts again every instance whose target is running.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$REPO/deploy"
# shellcheck source=deploy/compose-env.sh
. "$DEPLOY/compose-env.sh"

volumes=0
case "${1:-}" in
  -v|--volumes) volumes=1 ;;
  "") ;;
  *) echo "usage: deploy/down.sh [-v]" >&2; exit 2 ;;
esac

load_env_file "$ENV_FILE"
apply_legacy_bind
# The secrets are not needed to stop anything, but Compose insists on every variable it interpolates.
export GATEWAY_ADMIN_TOKEN="${GATEWAY_ADMIN_TOKEN:-unused}" POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-unused}"
files=(-f "$DEPLOY/compose.yaml" -f "$DEPLOY/compose.simulator.yaml")
namespace="${FLEET_NAMESPACE:-aistudio-fleet-}"
labels=(--filter "label=io.aistudio-fleet.managed-by=aistudio-fleet" --filter "label=io.aistudio-fleet.namespace=$namespace")

compose "${files[@]}" stop gateway 2>/dev/null || true

mapfile -t instances < <(docker ps -aq "${labels[@]}")
if [ ${#instances[@]} -gt 0 ]; then
  echo "deploy/down.sh: stopping ${#instances[@]} instance container(s) of namespace $namespace" >&2
  docker stop -t 20 "${instances[@]}" >/dev/null
  docker rm "${instances[@]}" >/dev/null
fi

if [ "$volumes" = 1 ]; then
  compose "${files[@]}" down -v --remove-orphans
  mapfile -t data < <(docker volume ls -q "${labels[@]}")
  if [ ${#data[@]} -gt 0 ]; then
    echo "deploy/down.sh: deleting ${#data[@]} instance volume(s)" >&2
    docker volume rm "${data[@]}" >/dev/null
  fi
else
  compose "${files[@]}" down --remove-orphans
fi
