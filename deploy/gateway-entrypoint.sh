#!/bin/sh
# Entrypoint of the gateway image: join the group that owns the Docker socket, then run as `gateway`.
#
# The gateway drives the engine through the socket that compose (or `docker run -v`) mounts. Its group id
# is the host's `docker` group, which differs from host to host, so it cannot be baked into the image:
# started as root, this script reads the socket's group and drops to the unprivileged `gateway` user with
# that one supplementary group (setpriv, from util-linux). Started as any other user (`--user`,
# `group_add`), it changes nothing and just runs the command.
# Access to the socket is root on the host whatever the user is; dropping root keeps the gateway's own
# process (and a bug in it) from everything else in its container, e.g. writing its own code.
set -eu

# tini as PID 1 (forwards SIGTERM, reaps children), started as the user that runs the gateway: no
# process stays root.
if [ "$(id -u)" != 0 ]; then
  exec /usr/bin/tini -- "$@"
fi

# unix:///path from DOCKER_HOST when set, else the default socket
socket="${DOCKER_HOST:-unix:///var/run/docker.sock}"
case "$socket" in
  unix://*) socket="${socket#unix://}" ;;
  *) socket="" ;;
esac

groups="$(id -g gateway)"
if [ -n "$socket" ] && [ -S "$socket" ]; then
  gid="$(stat -c %g "$socket")"
  groups="$groups,$gid"
  if [ "$gid" = 0 ]; then
    # e.g. Docker Desktop: the socket belongs to root's group only
    echo "gateway-entrypoint: $socket belongs to group 0; the gateway joins group root to use it" >&2
  fi
elif [ -n "$socket" ]; then
  echo "gateway-entrypoint: no Docker socket at $socket (mount it, or set GATEWAY_RUNTIME)" >&2
fi

# A data volume first mounted by another image may belong to someone else: make it the gateway's.
if [ -d "${GATEWAY_DATA_DIR:-/data}" ] && [ "$(stat -c %u "${GATEWAY_DATA_DIR:-/data}")" != "$(id -u gateway)" ]; then
  chown gateway:gateway "${GATEWAY_DATA_DIR:-/data}"
fi

exec setpriv --reuid=gateway --regid=gateway --groups="$groups" --inh-caps=-all -- /usr/bin/tini -- "$@"
