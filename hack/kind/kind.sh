#!/usr/bin/env bash
# The kind cluster for end-to-end tests: 1 control plane + 3 workers (hack/kind/cluster.yaml).
#   up     create it (idempotent). Node image: $KIND_NODE_IMAGE if set; else the public kindest/node
#          (kind's default) when a registry answers; else tfe-kind/node built here without one
#          (hack/kind/node-image.sh: kube-router as CNI + NetworkPolicy enforcer).
#   load   kind load the worker and operator images (make images) into the nodes
#   routes host routes to the pod and Service ranges through the nodes (so tests on the host
#          reach ClusterIPs and pod IPs as they do on the host cluster)
#   down   delete the cluster and those routes
# Docker: $KIND_DOCKER_HOST, by default the project's dockerd (the one `make images` uses,
# hack/cluster/paths.sh DOCKER_SOCK), started or restarted by hack/kind/dockerd.sh with the runtime shim
# this VM needs; any other Docker (KIND_DOCKER_HOST=unix:///var/run/docker.sock) is used as it is.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/versions.sh"
NAME=${KIND_CLUSTER:-tfe}
KD=${KIND_DIR:-$REPO/.kind}
PROJECT_DOCKER=unix://$PROJECT_DOCKER_SOCK
export DOCKER_HOST=${KIND_DOCKER_HOST:-$PROJECT_DOCKER}
export KIND_EXPERIMENTAL_PROVIDER=docker
KIND=${KIND:-$("$HERE/build.sh" path)/kind}
KUBECTL=$("$REPO/hack/cluster/build.sh" path)/kubectl
VERSION=$(cat "$REPO/VERSION")
export KUBECONFIG=$KD/kubeconfig
log() { echo ">> $(date -u +%T) $*"; }
die() { echo "ERROR: $*" >&2; exit 1; }
k() { "$KUBECTL" "$@"; }
mkdir -p "$KD"

registry_reachable() { # the Docker Hub registry answers (401 without a token)
  local code
  code=$(curl -s -o /dev/null -m 10 -w '%{http_code}' https://registry-1.docker.io/v2/ 2>/dev/null || true)
  [ "$code" = 401 ] || [ "$code" = 200 ]
}

exists() { "$KIND" get clusters 2>/dev/null | grep -qx "$NAME"; }

up() {
  if [ "$DOCKER_HOST" = "$PROJECT_DOCKER" ]; then
    [ -x "$("$HERE/build.sh" path)/kind" ] || "$HERE/build.sh" kind
    # restarting a dockerd that `make images` may be using is serialized with it; starting one
    # where none runs is not (a host cluster started under that lock keeps holding it)
    if [ "$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null)" != tfe-runc ]; then
      if docker version >/dev/null 2>&1; then
        flock -w 1800 /tmp/tfe-cluster.lock "$HERE/dockerd.sh"
      else
        "$HERE/dockerd.sh"
      fi
    fi
  fi
  command -v "$KIND" >/dev/null || [ -x "$KIND" ] || "$HERE/build.sh" kind
  [ -x "$KUBECTL" ] || "$REPO/hack/cluster/build.sh" k8s
  # the cluster tests run helm from .cluster/bin (where make cluster-up puts it)
  if [ ! -x "$REPO/.cluster/bin/helm" ]; then
    "$REPO/hack/cluster/build.sh" helm
    mkdir -p "$REPO/.cluster/bin"; ln -sf "$("$REPO/hack/cluster/build.sh" path)/helm" "$REPO/.cluster/bin/helm"
  fi
  local cfg=$KD/cluster.yaml image=${KIND_NODE_IMAGE:-}
  cp "$HERE/cluster.yaml" "$cfg"
  if [ -z "$image" ] && { [ "${KIND_OFFLINE:-auto}" = 1 ] || { [ "${KIND_OFFLINE:-auto}" = auto ] && ! registry_reachable; }; }; then
    log "no registry reachable: building the offline node image"
    "$HERE/node-image.sh" build
    image=$("$HERE/node-image.sh" name)
    sed -e "s|@ETCD_TAG@|$(etcd --version | awk '/etcd Version/{print $3}')-0|" \
        -e "s|@COREDNS_VERSION@|$COREDNS_VERSION|" "$HERE/cluster-offline.yaml" | grep -v '^#' >> "$cfg"
  fi
  if exists && [ -f "$KUBECONFIG" ]; then
    log "kind cluster $NAME exists"
    docker start $("$KIND" get nodes --name "$NAME") >/dev/null
  else
    exists && "$KIND" delete cluster --name "$NAME"
    log "kind create cluster --name $NAME ${image:+--image $image} (1 control plane + 3 workers)"
    "$KIND" create cluster --name "$NAME" ${image:+--image "$image"} --config "$cfg" \
      --kubeconfig "$KUBECONFIG" --wait 300s --retain
  fi
  k wait --for=condition=Ready nodes --all --timeout=300s >/dev/null
  if k -n kube-system get ds kube-router >/dev/null 2>&1 && [ ! -f "$KD/kube-router.restarted" ]; then
    # kube-router v2.1.0 fills its ipset of pod subnets (pod traffic to other subnets is
    # masqueraded) when it starts and did not add the nodes that joined after it here: the
    # control plane's instance then masqueraded its pods' traffic to other nodes, which the
    # NetworkPolicies there rightly refuse. Restart it once every node is in.
    log "restarting kube-router now that every node has joined"
    k -n kube-system rollout restart ds/kube-router >/dev/null
    k -n kube-system rollout status ds/kube-router --timeout=300s >/dev/null
    touch "$KD/kube-router.restarted"
  fi
  k -n kube-system rollout status ds --timeout=300s >/dev/null
  k -n kube-system rollout status deploy/coredns --timeout=300s >/dev/null
  routes
  k get nodes -o wide
}

routes() { # on a Linux Docker host, as root: pod CIDR of each node via that node, Services via the control plane
  [ "$(uname -s)" = Linux ] && [ "$(id -u)" = 0 ] || { log "not root on Linux: no host routes to pods and Services"; return 0; }
  local n ip cidr cp_ip svc
  while read -r n ip cidr; do
    ip route replace "$cidr" via "$ip"
    case $n in *control-plane) cp_ip=$ip ;; esac
  done < <(k get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.status.addresses[?(@.type=="InternalIP")].address} {.spec.podCIDR}{"\n"}{end}')
  svc=$(awk '/serviceSubnet:/{print $2}' "$HERE/cluster.yaml")
  ip route replace "$svc" via "$cp_ip"
  echo "$svc" > "$KD/routes"
  k get nodes -o jsonpath='{range .items[*]}{.spec.podCIDR}{"\n"}{end}' >> "$KD/routes"
}

unroutes() {
  [ -f "$KD/routes" ] || return 0
  local r; while read -r r; do [ -n "$r" ] && ip route del "$r" 2>/dev/null || true; done < "$KD/routes"
  rm -f "$KD/routes"
}

load() { # every node: test pods with the worker image may tolerate the control plane's taint
  # worker, operator and, where make images built it, the S3 test server (test_s3_cluster skips
  # on kind without it)
  local img imgs=("tfe-operator/worker:$VERSION" "tfe-operator/operator:$VERSION") s3="tfe-operator/gofakes3:$GOFAKES3_VERSION"
  for img in "${imgs[@]}"; do
    docker image inspect "$img" >/dev/null 2>&1 || die "$img not built (make images)"
  done
  if docker image inspect "$s3" >/dev/null 2>&1; then imgs+=("$s3"); else log "$s3 not built: test_s3_cluster will skip"; fi
  log "kind load docker-image into every node of $NAME"
  "$KIND" load docker-image --name "$NAME" "${imgs[@]}"
}

down() {
  unroutes
  if exists; then "$KIND" delete cluster --name "$NAME"; fi  # docker rm -f -v: the nodes' volumes too
  # kind keeps its `kind` network (a host bridge) for the next cluster; on the project's dockerd
  # nothing else uses it, so it goes once empty
  if [ "$DOCKER_HOST" = "$PROJECT_DOCKER" ] && docker network inspect kind >/dev/null 2>&1 &&
     [ "$(docker network inspect kind -f '{{len .Containers}}')" = 0 ]; then
    docker network rm kind >/dev/null
  fi
  rm -f "$KUBECONFIG" "$KD/kube-router.restarted"
}

case ${1:-} in
  up) up ;;
  load) load ;;
  routes) routes ;;
  down) down ;;
  *) echo "usage: $0 up|load|routes|down" >&2; exit 2 ;;
esac
