# Pinned versions for the local cluster (sourced by hack/cluster/*.sh).
K8S_VERSION=${K8S_VERSION:-v1.35.8}       # see docs/cluster.md for why 1.35
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
CRICTL_VERSION=${CRICTL_VERSION:-v1.34.0}   # cri-tools, for teardown/debugging
PAUSE_TAG=${PAUSE_TAG:-3.10.1}
REGISTRY_VERSION=${REGISTRY_VERSION:-v3.1.2}  # distribution (cmd/registry): the local OCI registry
GOFAKES3_VERSION=${GOFAKES3_VERSION:-v1.2.0}  # a small S3-compatible server for the model.s3 tests
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.19.4}  # controller for the spec.mesh.issuerRef tests (hack/cluster/cert-manager/README.md)
LOCAL_REGISTRY=${LOCAL_REGISTRY:-127.0.0.1:5000}  # where cluster-up runs it (containerd pulls over HTTP from loopback)
CACHE=${CACHE:-$HOME/.cache/tfe-operator}
CLUSTER_CACHE=$CACHE/cluster
REGISTRY_AUTH=$CACHE/registry-auth   # the local registry's user tfe: password, htpasswd (made by cluster-up)
export GOMODCACHE=${GOMODCACHE_OVERRIDE:-$CACHE/go/mod}
export GOCACHE=${GOCACHE_OVERRIDE:-$CACHE/go/build}
export GOFLAGS="${GOFLAGS_EXTRA:-} -p=${GO_PARALLEL:-2} -buildvcs=false -trimpath"
export CGO_ENABLED=0
