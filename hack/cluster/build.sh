#!/usr/bin/env bash
# Build the cluster's Go binaries from their Go modules into a cache outside the checkout:
#   $CLUSTER_CACHE/bin-<k8s>/ : kube-apiserver kube-controller-manager kube-scheduler kubelet
#                               kube-proxy kubectl coredns helm crictl
#                               registry-<v> (distribution) gofakes3-<v> (S3 test server)
#                               cert-manager-<v>/ (controller + CRDs, for the issuerRef tests)
#                               htpasswd (hack/cluster/htpasswd: the registry's bcrypt password file)
# Idempotent: binaries already present are not rebuilt (htpasswd: unless its source is newer).
# Usage: build.sh [k8s|coredns|helm|crictl|registry|gofakes3|htpasswd|all|path]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.sh"
BIN=$CLUSTER_CACHE/bin-k8s$K8S_VERSION-coredns$COREDNS_VERSION-helm$HELM_VERSION-crictl$CRICTL_VERSION
WORK=$CLUSTER_CACHE/gobuild
mkdir -p "$BIN" "$WORK" "$GOMODCACHE" "$GOCACHE"
what=${1:-all}
TIME=(); [ -x /usr/bin/time ] && TIME=(/usr/bin/time -v -o "$WORK/time-$what.txt")

K8S_CMDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"

build_k8s() {
  local missing=0 c
  for c in $K8S_CMDS; do [ -x "$BIN/$c" ] || missing=1; done
  [ $missing = 0 ] && return 0
  local d=$WORK/k8s-$K8S_VERSION
  mkdir -p "$d"; cp "$HERE/k8s/go.mod" "$d/go.mod"; [ -f "$HERE/k8s/go.sum" ] && cp "$HERE/k8s/go.sum" "$d/go.sum"
  local v=${K8S_VERSION#v} major minor
  major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.gitTreeState=clean"
    ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo ">> building Kubernetes $K8S_VERSION ($K8S_CMDS) into $BIN (GOFLAGS=$GOFLAGS)"
  local pkgs=(); for c in $K8S_CMDS; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$d" && "${TIME[@]}" go build -mod=mod -ldflags "$ld" -o "$BIN/" "${pkgs[@]}")
}

build_mod() { # name module-path version main-package
  local name=$1 mod=$2 ver=$3 pkg=$4
  [ -x "$BIN/$name" ] && return 0
  local d=$WORK/$name-$ver
  mkdir -p "$d"
  [ -f "$d/go.mod" ] || (cd "$d" && go mod init "tfe-operator/hack/cluster/$name" >/dev/null 2>&1)
  echo ">> building $name $ver into $BIN"
  (cd "$d" && go get "$mod@$ver" && "${TIME[@]}" go build -mod=mod -ldflags "-s -w $5" -o "$BIN/$name" "$pkg")
}

build_local() { # name: a tool whose source is in hack/cluster/<name> (its own go.mod and go.sum)
  local name=$1 src=$HERE/$1
  if [ -x "$BIN/$name" ] && [ -z "$(find "$src" -newer "$BIN/$name" -print -quit)" ]; then return 0; fi
  echo ">> building $name into $BIN"
  (cd "$src" && go build -mod=readonly -ldflags "-s -w" -o "$BIN/$name" .)
}

# cert-manager's controller: our own main (hack/cluster/cert-manager) on the published module's
# controllers; the CRDs come from the same module. Rebuilt when its sources change (sha256).
build_cert_manager() {
  local v=$CERT_MANAGER_VERSION out=$BIN/cert-manager-$CERT_MANAGER_VERSION src=$HERE/cert-manager
  local sum; sum=$(cd "$src" && cat go.mod go.sum ./*.go | sha256sum | cut -d' ' -f1)
  if [ -x "$out/controller" ] && [ -f "$out/crds.yaml" ] \
     && [ "$(cat "$out/source.sha256" 2>/dev/null)" = "$sum" ]; then return 0; fi
  grep -q "github.com/cert-manager/cert-manager $v\$" "$src/go.mod" \
    || { echo "hack/cluster/cert-manager/go.mod is not at $v" >&2; return 1; }
  mkdir -p "$out"
  echo ">> building cert-manager controller ($v) into $out"
  (cd "$src" && "${TIME[@]}" go build -mod=readonly -ldflags "-s -w \
      -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$v" -o "$out/controller" .)
  local mod; mod=$(cd "$src" && go list -mod=readonly -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
  cat "$mod"/deploy/crds/*.yaml > "$out/crds.yaml.tmp" && mv "$out/crds.yaml.tmp" "$out/crds.yaml"
  echo "$sum" > "$out/source.sha256"
}

case $what in
  k8s) build_k8s ;;
  coredns) build_mod coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns "" ;;
  helm) build_mod helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
          "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
  crictl) build_mod crictl sigs.k8s.io/cri-tools "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl \
          "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" ;;
  # versioned names: these two are not part of the directory's name
  registry) build_mod "registry-$REGISTRY_VERSION" github.com/distribution/distribution/v3 "$REGISTRY_VERSION" \
              github.com/distribution/distribution/v3/cmd/registry \
              "-X github.com/distribution/distribution/v3/version.version=$REGISTRY_VERSION" ;;
  gofakes3) build_mod "gofakes3-$GOFAKES3_VERSION" github.com/johannesboyne/gofakes3 "$GOFAKES3_VERSION" \
              github.com/johannesboyne/gofakes3/cmd/gofakes3 "" ;;
  htpasswd) build_local htpasswd ;;
  cert-manager) build_cert_manager ;;
  all) "$0" k8s; "$0" coredns; "$0" helm; "$0" crictl; "$0" registry; "$0" htpasswd ;;
  path) echo "$BIN" ;;
  *) echo "usage: $0 [k8s|coredns|helm|crictl|registry|gofakes3|htpasswd|all|path]" >&2; exit 2 ;;
esac
