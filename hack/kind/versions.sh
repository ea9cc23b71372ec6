# Pinned versions for the offline kind cluster (sourced by hack/kind/*.sh); the Kubernetes,
# CoreDNS and pause versions are the host cluster's (hack/cluster/versions.sh).
. "$(dirname "${BASH_SOURCE[0]}")/../cluster/versions.sh"
KIND_VERSION=${KIND_VERSION:-v0.33.0}
KUBE_ROUTER_VERSION=${KUBE_ROUTER_VERSION:-v2.1.0}
KIND_BIN=$CLUSTER_CACHE/kind-bin-$KIND_VERSION-k8s$K8S_VERSION-kuberouter$KUBE_ROUTER_VERSION
LOCAL_PATH_VERSION=${LOCAL_PATH_VERSION:-v0.0.30}
