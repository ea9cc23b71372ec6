#!/usr/bin/env bash
# A real single-node Kubernetes cluster as host processes (like Kubernetes' local-up-cluster):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd(+runc, CNI bridge),
# kubelet, kube-proxy, CoreDNS (as a pod). Usage: cluster.sh up|down|status
#
# Where things live, and the journal of host changes that down undoes: hack/cluster/paths.sh.
# Images: a local OCI registry (distribution, cmd/registry) on $LOCAL_REGISTRY (loopback): `make images
# push REGISTRY=$LOCAL_REGISTRY` fills it; the kubelet has containerd pull from it (plain HTTP, which
# containerd's CRI uses for loopback registries), as user tfe with the password in
# $REGISTRY_AUTH/password (an imagePullSecret: tests/cluster create one from it).
# Network: node IP $NODE_IP on interface $NODE_IF (veth, as a dummy); pods on bridge $CNI_IF ($POD_CIDR);
# Services $SVC_CIDR (routed to the dummy interface so it never leaves the host). Every server
# listens on loopback, the node IP or inside pod network namespaces.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/paths.sh"
BIN=$("$HERE/build.sh" path)
export PATH=$BIN:$PATH
export KUBECONFIG=$CL/kubeconfig

k() { kubectl --kubeconfig "$CL/kubeconfig" "$@"; }

pid_alive() { local f=$PIDS/$1.pid; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

start() { # name cmd...
  local name=$1; shift
  if pid_alive "$name"; then return 0; fi
  log "starting $name"
  ( close_fds; exec setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null ) &
  echo $! > "$PIDS/$name.pid"
}

stop() { # name
  local f=$PIDS/$1.pid pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { kill -9 "$pid" 2>/dev/null || true; sleep 0.5; }
  fi
  rm -f "$f"
}

wait_for() { # description timeout-seconds command...
  local what=$1 t=$2 i; shift 2
  for ((i = 0; i < t * 2; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "timed out after ${t}s waiting for $what (logs: $LOGS/)"
}

kubeconfig() { # file user cert key [server]
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tfe-local
  cluster:
    certificate-authority: $CL/pki/ca.crt
    server: ${5:-$APISERVER}
users:
- name: $2
  user:
    client-certificate: $CL/pki/$3.crt
    client-key: $CL/pki/$4.key
contexts:
- name: tfe-local
  context: {cluster: tfe-local, user: $2}
current-context: tfe-local
EOF
}

set_sysctl() { # key value: journal the original value once, before the first change
  local cur; cur=$(sysctl -n "$1")
  [ "$cur" = "$2" ] && return 0
  grep -q "^sysctl $1 " "$JOURNAL" 2>/dev/null || journal "sysctl $1 $cur"
  sysctl -qw "$1=$2"
}

network_up() {
  set_sysctl net.ipv4.ip_forward 1
  set_sysctl net.bridge.bridge-nf-call-iptables 1
  set_sysctl net.bridge.bridge-nf-call-ip6tables 1
  # the node's own interface: a dummy would do, but this kernel has no CONFIG_DUMMY, so a veth
  # pair whose peer stays unused (up on both ends so the link has carrier)
  if ! ip link show "$NODE_IF" >/dev/null 2>&1; then
    journal "link $NODE_IF"
    ip link add "$NODE_IF" type veth peer name "$NODE_IF-peer"
  fi
  ip link set "$NODE_IF-peer" up
  ip addr show dev "$NODE_IF" | grep -q "inet $NODE_IP/" || ip addr add "$NODE_IP/32" dev "$NODE_IF"
  ip link set "$NODE_IF" up
  # Service IPs are DNAT'ed by kube-proxy; without a rule they go nowhere rather than to eth0.
  ip route replace "$SVC_CIDR" dev "$NODE_IF" src "$NODE_IP"
}

write_configs() {
  mkdir -p "$CL/config" "$STATE/cni/net.d" "$STATE/cni/ipam" "$RUN"
  cat > "$CL/config/containerd.toml" <<EOF
version = 2
root = "$CTR_ROOT"
state = "$CTR_STATE"
[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$CTR_STATE/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  disable_apparmor = true
  # pod network namespaces under $CTR_STATE (not /run/netns, shared with other runtimes): down
  # unmounts what lies under its own directories and nothing else
  netns_mounts_under_state_dir = true
  # this VM denies CAP_SYS_RESOURCE even to root, so negative oom_score_adj values (the kubelet
  # asks -998 for sandboxes) fail in runc: clamp them to containerd's own score instead
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
  cat > "$STATE/cni/net.d/10-tfe.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {"type": "bridge", "bridge": "$CNI_IF", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
              "ranges": [[{"subnet": "$NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}}
  ]
}
EOF
  cat > "$CL/config/crictl.yaml" <<EOF
runtime-endpoint: unix://$CTR_SOCK
image-endpoint: unix://$CTR_SOCK
timeout: 30
EOF
  : > "$CL/config/resolv.conf"   # pods get cluster DNS only; nothing is forwarded off the host
  cat > "$CL/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTR_SOCK
tlsCertFile: $CL/pki/kubelet-server.crt
tlsPrivateKeyFile: $CL/pki/kubelet-server.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CL/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: $CL/config/resolv.conf
failSwapOn: false
podCIDR: $NODE_POD_CIDR
maxPods: 110
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
localStorageCapacityIsolation: true
# Test cluster: the e2e journey pulls the worker image from the local registry with a pull
# secret, the other tests run the same image preloaded (imagePullPolicy Never). The kubelet's
# default policy (KubeletEnsureSecretPulledImages) would then refuse the preloaded name as
# "not present" for pods without that secret. Users' clusters keep their own policy.
imagePullCredentialsVerificationPolicy: NeverVerify
EOF
  cat > "$CL/config/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
clientConnection: {kubeconfig: $CL/config/kube-proxy.kubeconfig}
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  kubeconfig "$CL/config/controller-manager.kubeconfig" kcm controller-manager controller-manager
  kubeconfig "$CL/config/scheduler.kubeconfig" scheduler scheduler scheduler
  kubeconfig "$CL/config/kube-proxy.kubeconfig" kube-proxy kube-proxy kube-proxy
  kubeconfig "$CL/config/kubelet.kubeconfig" kubelet kubelet-client kubelet-client
  kubeconfig "$CL/kubeconfig.tmp" tfe-admin admin admin
  mv "$CL/kubeconfig.tmp" "$CL/kubeconfig"
}

# tiny images the cluster needs, built locally and imported into containerd (k8s.io namespace)
local_images() {
  local w=$CLUSTER_CACHE/images
  mkdir -p "$w"
  if [ ! -f "$w/pause-$PAUSE_TAG.tar" ]; then
    local src=$GOMODCACHE/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c
    [ -f "$src" ] || die "pause.c not found at $src (run hack/cluster/build.sh k8s first)"
    gcc -Os -static -Wall -Werror -DVERSION="v$PAUSE_TAG-tfe" -o "$w/pause" "$src"
    strip "$w/pause"
    python3 "$HERE/mkimage.py" "$w/pause-$PAUSE_TAG.tar.tmp" --tag "$PAUSE_IMAGE" \
      --entrypoint '["/pause"]' --user 65535:65535 "$w/pause:/pause"
    mv "$w/pause-$PAUSE_TAG.tar.tmp" "$w/pause-$PAUSE_TAG.tar"
  fi
  if [ ! -f "$w/coredns-$COREDNS_VERSION.tar" ]; then
    python3 "$HERE/mkimage.py" "$w/coredns-$COREDNS_VERSION.tar.tmp" --tag "$COREDNS_IMAGE" \
      --entrypoint '["/coredns"]' "$BIN/coredns:/coredns"
    mv "$w/coredns-$COREDNS_VERSION.tar.tmp" "$w/coredns-$COREDNS_VERSION.tar"
  fi
  local img
  for img in "pause-$PAUSE_TAG:$PAUSE_IMAGE" "coredns-$COREDNS_VERSION:$COREDNS_IMAGE"; do
    if ! ctr -a "$CTR_SOCK" -n k8s.io images ls -q | grep -qx "docker.io/${img#*:}"; then
      log "importing ${img#*:} into containerd"
      ctr -a "$CTR_SOCK" -n k8s.io images import --no-unpack "$w/${img%%:*}.tar" >/dev/null
    fi
  done
}

hostpath_sweeper() {
  # The in-tree hostPath provisioner creates /tmp/hostpath_pv/<uuid> with mode 0750 (root): make
  # each new volume directory writable for non-root pods (the worker runs as uid 10001), as the
  # directory appears (inotify; no polling).
  [ -e "$HOSTPATH_PV" ] || journal "tree $HOSTPATH_PV"
  mkdir -p "$HOSTPATH_PV"
  start hostpath-sweeper python3 "$HERE/hostpath-sweeper.py" "$HOSTPATH_PV"
}

registry_up() { # the local OCI registry, storage in the cache (pushed images survive cluster-down)
  local bin=$BIN/registry-$REGISTRY_VERSION auth=$REGISTRY_AUTH
  [ -x "$bin" ] || "$HERE/build.sh" registry
  mkdir -p "$CACHE/registry" "$CL/config" "$LOGS" "$PIDS" "$auth"
  # basic auth (user tfe, a password made once), so that pulls need the imagePullSecret
  chmod 700 "$auth"
  [ -s "$auth/password" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$auth/password")
  if [ ! -s "$auth/htpasswd" ] || [ "$auth/password" -nt "$auth/htpasswd" ]; then
    # bcrypt by golang.org/x/crypto, the implementation the registry verifies with
    "$HERE/build.sh" htpasswd
    "$BIN/htpasswd" tfe < "$auth/password" > "$auth/htpasswd.tmp"
    mv "$auth/htpasswd.tmp" "$auth/htpasswd"
  fi
  cat > "$CL/config/registry.yml" <<EOF
version: 0.1
log: {level: info, formatter: text, accesslog: {disabled: false}}
storage:
  filesystem: {rootdirectory: $CACHE/registry}
  delete: {enabled: true}
auth:
  htpasswd: {realm: tfe-local, path: $auth/htpasswd}
http:
  addr: $LOCAL_REGISTRY
  secret: $(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
EOF
  start registry env OTEL_TRACES_EXPORTER=none "$bin" serve "$CL/config/registry.yml"
  wait_for "registry on $LOCAL_REGISTRY" 30 curl -sf -u "tfe:$(cat "$auth/password")" "http://$LOCAL_REGISTRY/v2/"
}

addons() {
  k apply -f "$HERE/manifests/coredns.yaml" >/dev/null
  k apply -f "$HERE/manifests/storageclass.yaml" >/dev/null
}

up() {
  [ "$(id -u)" = 0 ] || die "cluster-up needs root (it creates interfaces, mounts, iptables rules)"
  if pid_alive kubelet && k get --raw /readyz >/dev/null 2>&1 \
     && k get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; then
    local_images   # pause and CoreDNS back in containerd if something removed them
    registry_up
    log "cluster already up (KUBECONFIG=$CL/kubeconfig, registry $LOCAL_REGISTRY)"; return 0
  fi
  "$HERE/deps.sh"
  "$HERE/build.sh" all
  mkdir -p "$CL/bin" "$LOGS" "$PIDS" "$STATE" "$RUN"
  local d; for d in "${FIXED_DIRS[@]}"; do [ -e "$d" ] || journal "dir $d"; done
  local b; for b in kubectl helm crictl; do ln -sf "$BIN/$b" "$CL/bin/$b"; done
  "$HERE/pki.sh" "$CL/pki" "$NODE" "$NODE_IP" "$SVC_IP"
  network_up
  write_configs

  start etcd etcd --name tfe --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster tfe=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    --quota-backend-bytes 2147483648 --unsafe-no-fsync
  wait_for etcd 60 curl -sf http://127.0.0.1:2379/health

  start kube-apiserver kube-apiserver \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 \
    --service-cluster-ip-range="$SVC_CIDR" --service-node-port-range=30000-32767 \
    --client-ca-file="$CL/pki/ca.crt" \
    --tls-cert-file="$CL/pki/apiserver.crt" --tls-private-key-file="$CL/pki/apiserver.key" \
    --kubelet-client-certificate="$CL/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$CL/pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$CL/pki/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$CL/pki/sa.pub" --service-account-signing-key-file="$CL/pki/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false --v=1
  wait_for kube-apiserver 120 kubectl --kubeconfig "$CL/kubeconfig" get --raw /readyz

  start kube-controller-manager kube-controller-manager \
    --kubeconfig="$CL/config/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CL/config/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CL/config/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --service-cluster-ip-range="$SVC_CIDR" --cluster-cidr="$POD_CIDR" \
    --allocate-node-cidrs=false \
    --root-ca-file="$CL/pki/ca.crt" --service-account-private-key-file="$CL/pki/sa.key" \
    --cluster-signing-cert-file="$CL/pki/ca.crt" --cluster-signing-key-file="$CL/pki/ca.key" \
    --use-service-account-credentials=true --enable-hostpath-provisioner=true \
    --node-monitor-grace-period=40s --v=1
  start kube-scheduler kube-scheduler \
    --kubeconfig="$CL/config/scheduler.kubeconfig" \
    --authentication-kubeconfig="$CL/config/scheduler.kubeconfig" \
    --authorization-kubeconfig="$CL/config/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --v=1

  start containerd containerd --config "$CL/config/containerd.toml"
  wait_for containerd 60 ctr -a "$CTR_SOCK" version
  local_images

  mkdir -p "$STATE/kubelet"
  journal kubelet
  start kubelet kubelet --config="$CL/config/kubelet.yaml" \
    --kubeconfig="$CL/config/kubelet.kubeconfig" --root-dir="$STATE/kubelet" \
    --hostname-override="$NODE" --node-ip="$NODE_IP" --v=1
  journal kube-proxy
  start kube-proxy kube-proxy --config="$CL/config/kube-proxy.yaml" --v=1
  hostpath_sweeper

  wait_for "node $NODE Ready" 120 bash -c \
    "kubectl --kubeconfig '$CL/kubeconfig' get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  addons
  wait_for "CoreDNS ready" 120 bash -c \
    "kubectl --kubeconfig '$CL/kubeconfig' -n kube-system get deploy coredns -o jsonpath='{.status.readyReplicas}' | grep -qx 1"
  wait_for "default service account" 60 kubectl --kubeconfig "$CL/kubeconfig" -n default get sa default
  registry_up
  log "cluster up: export KUBECONFIG=$CL/kubeconfig PATH=$CL/bin:\$PATH; registry $LOCAL_REGISTRY"
}

undo_journal() { # undo the journal's lines, last first; each line once
  if [ -f "$CL/sysctl.orig" ]; then  # a cluster started before the journal existed
    local kv; for kv in $(cat "$CL/sysctl.orig"); do journal "sysctl ${kv%%=*} ${kv#*=}"; done
    journal "link $NODE_IF"; journal kubelet; journal kube-proxy; rm -f "$CL/sysctl.orig"
  fi
  [ -f "$JOURNAL" ] || return 0
  local kind arg rest
  tac "$JOURNAL" | while read -r kind arg rest; do
    case $kind in
      sysctl) log "restoring $arg=$rest"; sysctl -qw "$arg=$rest" || true ;;
      link) if ip link show "$arg" >/dev/null 2>&1; then log "deleting interface $arg"; ip link del "$arg" || true; fi ;;
      # (if/fi, not `[ ] && ...`: a line already undone must not end the loop with status 1, which
      # set -e/pipefail turn into a cluster-down that fails on every rerun)
      file) if [ -e "$arg" ]; then log "removing $arg"; rm -f "$arg"; fi ;;
      tree) if [ -e "$arg" ]; then log "removing $arg"; rm -rf "$arg"; fi ;;
      dir) rmdir "$arg" 2>/dev/null || true ;;
      kube-proxy) if [ -x "$BIN/kube-proxy" ]; then log "kube-proxy --cleanup (its own iptables chains)"
                    "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi ;;
      kubelet) local ipt t  # the kubelet's canary chains (their names, not a prefix)
               for ipt in iptables ip6tables; do for t in mangle nat filter; do
                 "$ipt" -t "$t" -X KUBE-KUBELET-CANARY 2>/dev/null || true; done; done ;;
      *) echo "WARNING: unknown journal line: $kind $arg $rest" >&2 ;;
    esac
  done
  rm -f "$JOURNAL"
}

down() {
  [ "$(id -u)" = 0 ] || die "cluster-down needs root"
  stop hostpath-sweeper
  stop kube-proxy
  stop kubelet
  if pid_alive containerd && [ -x "$BIN/crictl" ]; then
    log "removing all pods (CNI teardown)"
    timeout 120 crictl --config "$CL/config/crictl.yaml" rmp -af >/dev/null 2>&1 || true
  fi
  stop containerd
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  stop dockerd
  stop registry
  # leftover container processes (shims and what they run), found by their containerd socket/root
  local p
  for p in $(pgrep -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $CTR_SOCK" || true); do
    log "killing leftover shim $p"; kill -9 "$p" 2>/dev/null || true
  done
  # mounts under our own directories only (pod netns live under $CTR_STATE)
  local m
  for m in $(findmnt -rn -o TARGET | grep -E "^($STATE|$RUN|$CTR_ROOT)(/|$)" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  # the pods' bridge, made by our CNI network (the CNI bridge plugin creates it; no one else names it so)
  if ip link show "$CNI_IF" >/dev/null 2>&1; then ip link del "$CNI_IF"; fi
  undo_journal
  rm -rf "$STATE" "$RUN"
  # containerd's metadata DB references the removed state; keep only its image content/snapshots
  rm -rf "$PIDS" "$CL/config" "$CL/pki" "$CL/kubeconfig"
  log "cluster down"
}

status() {
  local n
  for n in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy hostpath-sweeper dockerd registry; do
    if pid_alive "$n"; then echo "$n: running (pid $(cat "$PIDS/$n.pid"))"; else echo "$n: stopped"; fi
  done
  k get nodes -o wide 2>/dev/null || true
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
