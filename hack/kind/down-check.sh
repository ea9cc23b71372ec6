#!/usr/bin/env bash
# `make kind-down-check`: kind-down (hack/kind/kind.sh down), then check that it left nothing of
# the kind cluster behind: no node container, none of their volumes (containerd's images, etcd,
# the local-path PVs live in them), no host route it added (.kind/routes), on the project's dockerd
# no empty `kind` Docker network (its host bridge), no kube-router iptables chain or ipset on the host (kube-router runs
# in the nodes' network namespaces; this checks that nothing leaked into the host's), no
# kubeconfig. Records what to look for before deleting, so it checks this cluster's objects only.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/versions.sh"
NAME=${KIND_CLUSTER:-tfe}
KD=${KIND_DIR:-$REPO/.kind}
export DOCKER_HOST=${KIND_DOCKER_HOST:-unix://$PROJECT_DOCKER_SOCK}
fail=0
check() { if "$@" >/dev/null 2>&1; then echo "ok: $*"; else echo "FAILED: $*" >&2; fail=1; fi; }
docker version >/dev/null 2>&1 || { echo "ERROR: no Docker at $DOCKER_HOST" >&2; exit 1; }

nodes=$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$NAME")
vols=$(for n in $nodes; do docker inspect -f '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}' "$n"; done)
routes=$(cat "$KD/routes" 2>/dev/null || true)
echo ">> $(echo $nodes | wc -w) node containers, $(echo $vols | wc -w) volumes, $(echo $routes | wc -w) host routes before kind-down"

"$HERE/kind.sh" down

check bash -c "[ -z \"\$(docker ps -aq --filter label=io.x-k8s.kind.cluster=$NAME)\" ]"
for v in $vols; do check bash -c "! docker volume inspect $v"; done
for r in $routes; do check bash -c "[ -z \"\$(ip route show exact $r)\" ]"; done
# kind-down removes the emptied `kind` network on the project's dockerd only (elsewhere kind keeps it)
[ "$DOCKER_HOST" = "unix://$PROJECT_DOCKER_SOCK" ] && check bash -c "! docker network inspect kind"
for ipt in iptables iptables-legacy; do
  command -v $ipt >/dev/null || continue
  for t in filter nat mangle; do
    check bash -c "! $ipt -t $t -S 2>/dev/null | grep -qE 'KUBE-ROUTER|KUBE-POD-FW-|KUBE-NWPLCY-|KUBE-SRC-|KUBE-DST-'"
  done
done
command -v ipset >/dev/null && check bash -c "! ipset list -n 2>/dev/null | grep -qiE '^(kube-router|KUBE-SRC-|KUBE-DST-)'"
check bash -c "! test -e $KD/kubeconfig"
[ $fail = 0 ] && echo ">> kind-down left no container, volume, route, network, chain or ipset of the cluster" || exit 1
