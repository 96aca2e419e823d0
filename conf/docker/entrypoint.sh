#!/bin/sh
# Container entrypoint. Started as root (docker compose), it prepares what the node needs and
# drops to the unprivileged user `meshrag`; started as that user (Kubernetes runAsUser 10001),
# it only runs the command.
#  - The cluster secret: the node refuses a secret file that is not private to its user (mode
#    0600/0400, owned by it). A secret mounted by compose keeps the host file's owner and mode,
#    so as root it is copied to /run/meshrag/cluster.secret (0400, owned by meshrag) and
#    MESHRAG_NODE_SECRET_FILE points there.
#  - The data directory: a bind mount owned by root is handed to meshrag.
set -eu
if [ "$(id -u)" = 0 ]; then
  if [ -n "${MESHRAG_NODE_SECRET_FILE:-}" ] && [ "${MESHRAG_NODE_SECRET_FILE}" != /run/meshrag/cluster.secret ]; then
    install -d -o meshrag -g meshrag -m 0700 /run/meshrag
    install -o meshrag -g meshrag -m 0400 "${MESHRAG_NODE_SECRET_FILE}" /run/meshrag/cluster.secret
    export MESHRAG_NODE_SECRET_FILE=/run/meshrag/cluster.secret
  fi
  data="${MESHRAG_NODE_DATA_DIR:-/var/lib/meshrag}"
  mkdir -p "$data"
  [ "$(stat -c %u "$data")" = 10001 ] || chown meshrag:meshrag "$data"
  exec setpriv --reuid=meshrag --regid=meshrag --init-groups --no-new-privs -- "$@"
fi
exec "$@"
