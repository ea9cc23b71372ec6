# Every path, socket, pid file, interface and address of the local cluster, in one place
# (sourced by cluster.sh, images.sh, smoke.sh and deps.sh), plus the host-change journal.
#
#   $CL/ (the repo's .cluster/)  kubeconfig, bin/ (kubectl helm crictl), pki/, config/, logs/, pids/,
#                                host-changes (the journal below)
#   $STATE (/var/lib/tfe-cluster) etcd data, kubelet root, CNI state          (removed by down)
#   $RUN   (/run/tfe-cluster)     sockets, containerd and dockerd state, pod netns (removed by down)
#   $CACHE (~/.cache/tfe-operator) built binaries, containerd image store, docker data, registry (kept)
HERE=${HERE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
REPO=${REPO:-$(cd "$HERE/../.." && pwd)}
. "$HERE/versions.sh"

CL=${CLUSTER_DIR:-$REPO/.cluster}
STATE=/var/lib/tfe-cluster
RUN=/run/tfe-cluster
JOURNAL=$CL/host-changes

# network
NODE=tfe-node
NODE_IF=tfe-node                 # a veth pair (this kernel has no dummy interfaces); peer $NODE_IF-peer
CNI_IF=tfe-cni0                  # the pods' bridge
CNI_NETWORK=tfe-pods             # the CNI network name (its conflist: $STATE/cni/net.d/10-tfe.conflist)
NODE_IP=10.217.0.1
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
SVC_CIDR=10.96.0.0/16
SVC_IP=10.96.0.1
DNS_IP=10.96.0.10
APISERVER=https://$NODE_IP:6443

# containerd (the kubelet's runtime) and dockerd (image builds only)
CTR_ROOT=$CLUSTER_CACHE/containerd-root
CTR_STATE=$RUN/containerd        # its state dir; pod network namespaces are mounted under it
CTR_SOCK=$CTR_STATE/containerd.sock
DOCKER_SOCK=$RUN/docker.sock
DOCKER_EXEC_ROOT=$RUN/docker-exec
DOCKER_DATA=$CACHE/docker
PIDS=$CL/pids                    # <daemon>.pid for every daemon cluster.sh and images.sh start
LOGS=$CL/logs

# images the cluster itself needs (built here, imported into containerd)
PAUSE_IMAGE=tfe-operator/pause:$PAUSE_TAG
COREDNS_IMAGE=tfe-operator/coredns:$COREDNS_VERSION
HOSTPATH_PV=/tmp/hostpath_pv     # fixed by the in-tree hostPath provisioner

# Directories that daemons we start create at fixed paths outside $STATE/$RUN (containerd 1.6
# shims, dockerd): down removes each one only if up found it missing (journal "dir").
FIXED_DIRS=(/run/containerd /run/containerd/s /run/containerd/runc /run/containerd/runc/k8s.io
            /run/docker /run/docker/plugins)

log() { echo ">> $*"; }
die() { echo "ERROR: $*" >&2; exit 1; }

# Daemons must not inherit descriptors beyond 0-2: a `flock /tmp/tfe-cluster.lock make cluster-up`
# passes its lock's fd down, and a daemon holding it would keep the lock until cluster-down.
close_fds() { local fd; for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; return 0; }

# The host-change journal: one line per change to the host outside $STATE/$RUN/$CL that up made,
# written before the change; cluster-down undoes exactly these lines (in reverse) and nothing else:
#   sysctl KEY ORIGINAL   restore KEY to ORIGINAL
#   link NAME             delete interface NAME (created by us)
#   file PATH             remove PATH (an apt source/preference deps.sh wrote)
#   dir PATH              rmdir PATH if empty (a fixed directory a daemon of ours created)
#   tree PATH             rm -rf PATH (a directory at a fixed path up created for the cluster's data:
#                         $HOSTPATH_PV; one that was there before up is left, with what is in it)
#   kube-proxy            `kube-proxy --cleanup`: kube-proxy removes the iptables chains it made
#   kubelet               delete the kubelet's KUBE-KUBELET-CANARY chains (by name)
# Nothing else of the host's iptables is touched: our CNI network adds no iptables rules
# (bridge without ipMasq, no portmap), so no CNI-* chain is ever ours.
journal() { mkdir -p "$CL"; grep -qxF -- "$*" "$JOURNAL" 2>/dev/null || echo "$*" >> "$JOURNAL"; }
