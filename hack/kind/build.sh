#!/usr/bin/env bash
# Build the Go binaries the offline kind cluster needs, from their Go modules, into the cluster cache
# (next to the host cluster's binaries, which hack/cluster/build.sh builds and this script reuses):
#   kind (sigs.k8s.io/kind), kubeadm (k8s.io/kubernetes, same module/work dir as the other k8s
#   binaries, so the Go build cache is shared), kube-router (NetworkPolicy enforcer + pod routes).
#   local-path-provisioner (kind's default StorageClass).
# Idempotent. Usage: build.sh [kind|kubeadm|kube-router|local-path-provisioner|all|path]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.sh"
what=${1:-all}
WORK=$CLUSTER_CACHE/gobuild
mkdir -p "$KIND_BIN" "$WORK"
TIME=(); [ -x /usr/bin/time ] && TIME=(/usr/bin/time -v -o "$WORK/time-kind-$what.txt")

build_mod() { # name module version main-package ldflags
  local name=$1 mod=$2 ver=$3 pkg=$4 d
  [ -x "$KIND_BIN/$name" ] && return 0
  d=$WORK/$name-$ver; mkdir -p "$d"
  [ -f "$d/go.mod" ] || (cd "$d" && go mod init "tfe-operator/hack/kind/$name" >/dev/null 2>&1)
  echo ">> building $name $ver into $KIND_BIN"
  (cd "$d" && go get "$mod@$ver" && "${TIME[@]}" go build -mod=mod -ldflags "-s -w $5" -o "$KIND_BIN/$name" "$pkg")
}

build_kubeadm() {
  [ -x "$KIND_BIN/kubeadm" ] && return 0
  "$HERE/../cluster/build.sh" k8s     # the module work dir and the rest of the binaries
  local d=$WORK/k8s-$K8S_VERSION v=${K8S_VERSION#v} major minor ld="-s -w" p
  major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.gitTreeState=clean"
    ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo ">> building kubeadm $K8S_VERSION into $KIND_BIN"
  (cd "$d" && "${TIME[@]}" go build -mod=mod -ldflags "$ld" -o "$KIND_BIN/kubeadm" k8s.io/kubernetes/cmd/kubeadm)
}

case $what in
  kind) build_mod kind sigs.k8s.io/kind "$KIND_VERSION" sigs.k8s.io/kind "" ;;
  kubeadm) build_kubeadm ;;
  kube-router) build_mod kube-router github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION" \
                 github.com/cloudnativelabs/kube-router/v2/cmd/kube-router \
                 "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" ;;
  local-path-provisioner) build_mod local-path-provisioner github.com/rancher/local-path-provisioner \
                 "$LOCAL_PATH_VERSION" github.com/rancher/local-path-provisioner "" ;;
  all) "$0" kind; "$0" kubeadm; "$0" kube-router; "$0" local-path-provisioner ;;
  path) echo "$KIND_BIN" ;;
  *) echo "usage: $0 [kind|kubeadm|kube-router|local-path-provisioner|all|path]" >&2; exit 2 ;;
esac
