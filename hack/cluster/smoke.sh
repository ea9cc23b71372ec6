#!/usr/bin/env bash
# Smoke test of the local cluster, reading everything from the API; each check has a timeout
# and a failure prints what the cluster says and exits non-zero.
#  1. a pod from the locally built worker image runs (non-root, package importable)
#  2. a pod resolves another pod through a headless Service DNS name (and reaches it)
#  3. a ClusterIP Service is reachable from a pod and from the host
#  4. a killed container is restarted by the kubelet; a deleted pod is recreated and resolvable
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/paths.sh"
export KUBECONFIG=$CL/kubeconfig PATH=$CL/bin:$PATH
IMAGE=${SMOKE_IMAGE:-tfe-operator/worker:$(cat "$REPO/VERSION")}
NS=tfe-smoke
# on kind the node is a container: SMOKE_NODE_EXEC="docker exec tfe-control-plane" (make kind-up)
read -r -a NODE_EXEC <<< "${SMOKE_NODE_EXEC:-}"
if [ ${#NODE_EXEC[@]} = 0 ]; then
  CRICTL=(crictl --config "$CL/config/crictl.yaml")
else
  CRICTL=("${NODE_EXEC[@]}" crictl)
fi

pass() { echo "PASS: $*"; }
fail() {
  echo "FAIL: $*" >&2
  kubectl -n $NS get pods,svc,endpointslices -o wide >&2 || true
  kubectl -n $NS get events --sort-by=.lastTimestamp >&2 | tail -20 || true
  exit 1
}
# wait_until SECONDS DESCRIPTION COMMAND...: poll the command until it succeeds
wait_until() {
  local t=$1 what=$2 i; shift 2
  for ((i = 0; i < t; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  fail "$what (not true after ${t}s)"
}
jp() { kubectl -n $NS get "$1" -o jsonpath="$2"; }
# run_pod NAME PYTHON-CODE: run a one-shot pod with the image, wait for it, print its log
run_pod() {
  local name=$1 code=$2
  kubectl -n $NS delete pod "$name" --ignore-not-found --wait=true >/dev/null
  kubectl -n $NS run "$name" --image="$IMAGE" --image-pull-policy=Never --restart=Never \
    --command -- python3 -c "$code" >/dev/null
  wait_until 90 "pod $name completes" bash -c \
    "kubectl -n $NS get pod $name -o jsonpath='{.status.phase}' | grep -qE 'Succeeded|Failed'"
  local phase; phase=$(jp "pod/$name" '{.status.phase}')
  kubectl -n $NS logs "$name"
  [ "$phase" = Succeeded ] || { kubectl -n $NS logs "$name" >&2; fail "pod $name ended $phase"; }
}

kubectl get --raw /readyz >/dev/null 2>&1 || fail "API server not reachable (make cluster-up)"
kubectl delete namespace $NS --ignore-not-found --wait=true --timeout=120s >/dev/null
sed "s|__IMAGE__|$IMAGE|g" "$HERE/smoke/smoke.yaml" | kubectl apply -f - >/dev/null

# 1. local image
wait_until 120 "pod smoke-image (image $IMAGE) completes" bash -c \
  "kubectl -n $NS get pod smoke-image -o jsonpath='{.status.phase}' | grep -qE 'Succeeded|Failed'"
out=$(kubectl -n $NS logs smoke-image)
[ "$(jp pod/smoke-image '{.status.phase}')" = Succeeded ] && [[ $out == image-ok\ 10001\ 3.10.* ]] \
  || fail "pod from local image $IMAGE: phase $(jp pod/smoke-image '{.status.phase}'), log: $out"
pass "pod from local image $IMAGE runs: $out"

# 2. headless Service DNS
wait_until 120 "smoke-srv-0 ready" bash -c \
  "kubectl -n $NS get pod smoke-srv-0 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
srv_ip=$(jp pod/smoke-srv-0 '{.status.podIP}')
fqdn=smoke-srv-0.smoke-headless.$NS.svc.cluster.local
out=$(run_pod smoke-dns "import socket, urllib.request as u
ip = socket.gethostbyname('$fqdn')
print(ip, u.urlopen('http://$fqdn:8080/', timeout=10).read().decode())")
[ "$out" = "$srv_ip smoke-srv-0" ] || fail "headless DNS: expected '$srv_ip smoke-srv-0', got '$out'"
pass "pod resolves $fqdn -> $srv_ip and reaches it"

# 3. ClusterIP Service from a pod and from the host
svc_ip=$(jp svc/smoke-svc '{.spec.clusterIP}')
out=$(run_pod smoke-svc-client "import urllib.request as u
print(u.urlopen('http://smoke-svc.$NS.svc.cluster.local/', timeout=10).read().decode())")
[ "$out" = smoke-srv-0 ] || fail "ClusterIP from pod: got '$out'"
pass "ClusterIP Service smoke-svc ($svc_ip) reachable from a pod"
out=$(${NODE_EXEC[@]+"${NODE_EXEC[@]}"} curl -sS --max-time 10 "http://$svc_ip/") || fail "ClusterIP $svc_ip not reachable from the host"
[ "$out" = smoke-srv-0 ] || fail "ClusterIP from host: got '$out'"
pass "ClusterIP Service smoke-svc ($svc_ip) reachable from the host"

# 4. killed container is restarted; deleted pod is recreated
restarts=$(jp pod/smoke-srv-0 '{.status.containerStatuses[0].restartCount}')
cid=$(jp pod/smoke-srv-0 '{.status.containerStatuses[0].containerID}'); cid=${cid#containerd://}
pid=$("${CRICTL[@]}" inspect -o go-template --template '{{.info.pid}}' "$cid")
[ -n "$pid" ] && [ "$pid" -gt 1 ] || fail "could not find the host PID of container $cid"
${NODE_EXEC[@]+"${NODE_EXEC[@]}"} kill -9 "$pid"
wait_until 90 "smoke-srv-0 restarted after kill -9 (restartCount > $restarts) and ready" bash -c \
  "[ \$(kubectl -n $NS get pod smoke-srv-0 -o jsonpath='{.status.containerStatuses[0].restartCount}') -gt $restarts ] && \
   kubectl -n $NS get pod smoke-srv-0 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
pass "killed container (pid $pid) restarted by the kubelet"
uid=$(jp pod/smoke-srv-0 '{.metadata.uid}')
kubectl -n $NS delete pod smoke-srv-0 --wait=false >/dev/null
wait_until 90 "smoke-srv-0 recreated and ready" bash -c \
  "[ \"\$(kubectl -n $NS get pod smoke-srv-0 -o jsonpath='{.metadata.uid}')\" != $uid ] && \
   kubectl -n $NS get pod smoke-srv-0 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
wait_until 30 "Service smoke-svc serves the recreated pod from the host" bash -c "${SMOKE_NODE_EXEC:-} curl -sf --max-time 3 http://$svc_ip/ | grep -qx smoke-srv-0"
pass "deleted pod recreated by its StatefulSet and served again"

kubectl delete namespace $NS --wait=false >/dev/null
echo "cluster smoke: all checks passed"
