# Sourced by deploy/up.sh and deploy/down.sh: which Compose to call, and deploy/.env's variables.

# Compose v2 (`docker compose`) when the Docker CLI has it, else v1 (`docker-compose`).
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  echo "neither \`docker compose\` nor \`docker-compose\` is installed (apt-get install docker-compose)" >&2
  exit 1
fi

# The variables' file: deploy/.env unless FLEET_ENV_FILE names another (tests use an empty one).
ENV_FILE="${FLEET_ENV_FILE:-$DEPLOY/.env}"

compose() {
  if [ -f "$ENV_FILE" ]; then "${COMPOSE[@]}" --env-file "$ENV_FILE" "$@"; else "${COMPOSE[@]}" "$@"; fi
}

# The command as a person would type it, for messages.
compose_hint() { printf '%s' "${COMPOSE[*]}"; local a; for a in "$@"; do printf ' %s' "${a#"$REPO"/}"; done; }

# FLEET_BIND_ADDRESS, the old name of FLEET_API_BIND: it published both ports, now only the API's. Compose v1
# cannot nest defaults (${A:-${B}}), so the old name is mapped here, after deploy/.env is read.
apply_legacy_bind() {
  if [ -n "${FLEET_BIND_ADDRESS:-}" ] && [ -z "${FLEET_API_BIND:-}" ]; then
    export FLEET_API_BIND="$FLEET_BIND_ADDRESS"
    echo "note: FLEET_BIND_ADDRESS is now FLEET_API_BIND and publishes the generation API only; the admin port follows FLEET_ADMIN_BIND (default 127.0.0.1)" >&2
  fi
}

# KEY=VALUE lines of an env file, exported unless the environment sets them already (as Compose does).
load_env_file() {
  local line key
  [ -f "$1" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue ;; esac
    key="${line%%=*}"
    [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    if [ -z "${!key+x}" ]; then export "$key=${line#*=}"; fi
  done <"$1"
}
