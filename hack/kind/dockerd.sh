#!/usr/bin/env bash
# Make sure the project's dockerd (the one `make images` starts, hack/cluster/images.sh; socket
# and data root: hack/cluster/paths.sh DOCKER_SOCK, DOCKER_DATA) runs with the
# runc-nosysresource shim as its default runtime, which kind's --privileged node containers need
# on this VM (see that file). A dockerd already running without it is restarted (its containers
# stop: kind nodes are started again by kind-up). Callers hold /tmp/tfe-cluster.lock.
# Test-environment plumbing for this VM; on a normal Docker host none of this is needed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/versions.sh"
CL=${CLUSTER_DIR:-$REPO/.cluster}
RUN=$PROJECT_RUN
export DOCKER_HOST=unix://$PROJECT_DOCKER_SOCK
SHIM=$HERE/runc-nosysresource
mkdir -p "$CL/logs" "$CL/pids" "$RUN"
running() { [ -f "$CL/pids/dockerd.pid" ] && kill -0 "$(cat "$CL/pids/dockerd.pid")" 2>/dev/null; }
if running; then
  [ "$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null)" = tfe-runc ] && exit 0
  pid=$(cat "$CL/pids/dockerd.pid")
  echo ">> restarting dockerd (pid $pid) with the runc-nosysresource shim as default runtime"
  kill "$pid"
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { echo "dockerd $pid did not stop" >&2; exit 1; }
fi
echo ">> starting dockerd (data-root $PROJECT_DOCKER_DATA, socket $PROJECT_DOCKER_SOCK, runtime tfe-runc)"
mkdir -p "$PROJECT_DOCKER_DATA" "$PROJECT_DOCKER_EXEC_ROOT"
# Start it without our open file descriptors: under `flock /tmp/tfe-cluster.lock ...` one of them
# is the lock, and a dockerd inheriting it would hold the lock for as long as it runs.
close_fds() { local fd; for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; return 0; }
( close_fds; exec setsid dockerd --data-root "$PROJECT_DOCKER_DATA" --exec-root "$PROJECT_DOCKER_EXEC_ROOT" \
  --host "$DOCKER_HOST" --pidfile "$RUN/dockerd.pid" \
  --bridge none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
  --storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs \
  --add-runtime "tfe-runc=$SHIM" --default-runtime tfe-runc \
  >> "$CL/logs/dockerd.log" 2>&1 < /dev/null ) &
echo $! > "$CL/pids/dockerd.pid"
for i in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
docker version >/dev/null 2>&1 || { tail -20 "$CL/logs/dockerd.log"; echo "dockerd did not start" >&2; exit 1; }
