# Pinned versions for the offline kind cluster (sourced by hack/kind/*.sh); the Kubernetes,
# CoreDNS and pause versions are the host cluster's (hack/cluster/versions.sh).
. "$(dirname "${BASH_SOURCE[0]}")/../cluster/versions.sh"
KIND_VERSION=${KIND_VERSION:-v0.33.0}
KUBE_ROUTER_VERSION=${KUBE_ROUTER_VERSION:-v2.1.0}
KIND_BIN=$CLUSTER_CACHE/kind-bin-$KIND_VERSION-k8s$K8S_VERSION-kuberouter$KUBE_ROUTER_VERSION
LOCAL_PATH_VERSION=${LOCAL_PATH_VERSION:-v0.0.30}
# The project's dockerd (the one `make images` starts): its run dir, socket, exec root and data
# root are named once, in hack/cluster/paths.sh (read in a subshell: it defines more than we need).
{ read -r PROJECT_RUN; read -r PROJECT_DOCKER_SOCK; read -r PROJECT_DOCKER_EXEC_ROOT; read -r PROJECT_DOCKER_DATA; } < <(
  HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/../cluster" && pwd)"
  . "$HERE/paths.sh"
  printf '%s\n' "$RUN" "$DOCKER_SOCK" "$DOCKER_EXEC_ROOT" "$DOCKER_DATA")
[ -n "$PROJECT_DOCKER_DATA" ] || { echo "hack/cluster/paths.sh did not name the project's dockerd" >&2; exit 1; }
