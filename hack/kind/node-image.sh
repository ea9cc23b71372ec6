#!/usr/bin/env bash
# Build the offline kind node image tfe-kind/node:$K8S_VERSION without a registry:
#   rootfs   debootstrap trixie (systemd, containerd 1.7, runc, CNI plugins, iptables, ipset),
#            cached as a tarball under $CLUSTER_CACHE/kind
#   + kind's own node files (images/base/files of the sigs.k8s.io/kind Go module: entrypoint,
#     systemd units, kubelet drop-ins), our containerd config, kubeadm/kubelet/kubectl/crictl
#     (hack/cluster/build.sh + hack/kind/build.sh, from the Kubernetes Go module)
#   + /kind/images/*.tar, imported into the node's containerd at boot (tfe-kind-images.service):
#     kube-apiserver/controller-manager/scheduler/proxy, etcd (Debian's 3.5), CoreDNS, pause,
#     kube-router (CNI + NetworkPolicy), local-path-provisioner + helper (kind's default storage)
#   + /kind/manifests/default-cni.yaml (kube-router), default-storage.yaml (kind's local-path)
# and `docker import`s it. Idempotent: rebuilt only when an input changes (label tfe.kind.stamp).
# Usage: node-image.sh [build|name]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/versions.sh"
export DOCKER_HOST=${DOCKER_HOST:-unix://$PROJECT_DOCKER_SOCK}
export DOCKER_BUILDKIT=0
NODE_IMAGE=tfe-kind/node:$K8S_VERSION
[ "${1:-build}" = name ] && { echo "$NODE_IMAGE"; exit 0; }
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
W=$CLUSTER_CACHE/kind
KBIN=$("$REPO/hack/cluster/build.sh" path)
KINDSRC=$GOMODCACHE/sigs.k8s.io/kind@$KIND_VERSION
log() { echo ">> $*"; }
die() { echo "ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
mkdir -p "$W"
"$REPO/hack/cluster/build.sh" all >&2
"$HERE/build.sh" all >&2
[ -d "$KINDSRC/images/base/files" ] || die "kind sources not found at $KINDSRC (hack/kind/build.sh kind)"

rootfs() { # name packages -> cached tarball path
  local name=$1 pkgs=$2 tar r
  tar=$W/$name-$(echo "$pkgs" | sha256sum | cut -c1-8).tar
  if [ ! -f "$tar" ]; then
    log "debootstrap trixie $name (cached at $tar)" >&2
    r=$W/$name.tmp; rm -rf "$r"
    debootstrap --variant=minbase --include="$pkgs" trixie "$r" "$DEBIAN_MIRROR" > "$W/debootstrap-$name.log" 2>&1 \
      || { tail -20 "$W/debootstrap-$name.log" >&2; die "debootstrap $name failed"; }
    chroot "$r" apt-get clean
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/log/* "$r"/tmp/* \
           "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/*
    tar -C "$r" --numeric-owner -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"; rm -rf "$r"
  fi
  echo "$tar"
}
NODE_PKGS=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,conntrack,iptables,ipset,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,jq,procps,socat,iputils-ping
NET_PKGS=iptables,ipset,conntrack,iproute2,kmod,ca-certificates
NODE_TAR=$(rootfs node "$NODE_PKGS")
NET_TAR=$(rootfs netbase "$NET_PKGS")

# --- images pre-loaded into the node (docker save format, written without a registry) ---------
PAUSE=registry.k8s.io/pause:$PAUSE_TAG
ETCD_TAG=$(etcd --version | awk '/etcd Version/{print $3}')-0   # Debian's etcd (hack/cluster/deps.sh)
ETCD=registry.k8s.io/etcd:$ETCD_TAG
COREDNS=registry.k8s.io/coredns/coredns:$COREDNS_VERSION
KUBE_ROUTER=tfe-kind/kube-router:$KUBE_ROUTER_VERSION
LP_PROV=$(sed -n 's/^const storageProvisionerImage = "\(.*\)"/\1/p' "$KINDSRC/pkg/build/nodeimage/const_storage.go")
LP_HELPER=$(sed -n 's/^const storageHelperImage = "\(.*\)"/\1/p' "$KINDSRC/pkg/build/nodeimage/const_storage.go")
IMG=$W/images-$K8S_VERSION; mkdir -p "$IMG"
stamp_inputs=()  # files only: the tools directory also holds cert-manager's build directory
for f in "$NODE_TAR" "$NET_TAR" "$HERE"/node/* "$HERE/build.sh" "$HERE/versions.sh" "$0" \
         "$KBIN"/* "$("$HERE/build.sh" path)"/* /usr/bin/etcd; do
  [ -f "$f" ] && stamp_inputs+=("$f")
done
stamp=$( (sha256sum "${stamp_inputs[@]}" | awk '{print $1}'; echo "$LP_PROV $LP_HELPER") | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "tfe.kind.stamp"}}' "$NODE_IMAGE" 2>/dev/null)" = "$stamp" ]; then
  log "$NODE_IMAGE is up to date"; exit 0
fi
MK="python3 $REPO/hack/cluster/mkimage.py"
log "control-plane images, pause, CoreDNS (static binaries, one layer each)"
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  $MK "$IMG/$c.tar" --tag "registry.k8s.io/$c:$K8S_VERSION" --entrypoint "[\"/usr/local/bin/$c\"]" \
    "$KBIN/$c:/usr/local/bin/$c"
done
$MK "$IMG/coredns.tar" --tag "$COREDNS" --entrypoint '["/coredns"]' "$KBIN/coredns:/coredns"
PAUSE_TAR=$CLUSTER_CACHE/images/pause-$PAUSE_TAG.tar   # hack/cluster/cluster.sh builds the binary
if [ ! -x "$W/pause" ]; then
  gcc -Os -static -Wall -Werror -DVERSION="v$PAUSE_TAG-tfe" -o "$W/pause" \
    "$GOMODCACHE/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
  strip "$W/pause"
fi
$MK "$IMG/pause.tar" --tag "$PAUSE" --entrypoint '["/pause"]' --user 65535:65535 "$W/pause:/pause"
log "Debian-based images: kube-proxy, etcd, kube-router, local-path (netbase: iptables, ipset, conntrack)"
docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "$NET_TAR" tfe-kind/netbase:trixie >/dev/null
CTX=$W/ctx; rm -rf "$CTX"; mkdir -p "$CTX"
cp "$KBIN/kube-proxy" /usr/bin/etcd /usr/bin/etcdctl "$("$HERE/build.sh" path)"/{kube-router,local-path-provisioner} "$CTX/" 2>/dev/null || true
for b in kube-proxy etcd kube-router local-path-provisioner; do [ -x "$CTX/$b" ] || die "missing binary $b"; done
dbuild() { # tag binary...
  local tag=$1 b; shift
  { echo "FROM tfe-kind/netbase:trixie"; for b in "$@"; do echo "COPY $b /usr/local/bin/$b"; done; } > "$CTX/Dockerfile"
  docker build -q --network none -t "$tag" "$CTX" >/dev/null
}
dbuild "registry.k8s.io/kube-proxy:$K8S_VERSION" kube-proxy
dbuild "$ETCD" etcd etcdctl
dbuild "$KUBE_ROUTER" kube-router
dbuild "$LP_PROV" local-path-provisioner
docker tag tfe-kind/netbase:trixie "$LP_HELPER"
docker save "registry.k8s.io/kube-proxy:$K8S_VERSION" "$ETCD" "$KUBE_ROUTER" "$LP_PROV" "$LP_HELPER" > "$IMG/debian-based.tar"

# --- node rootfs -----------------------------------------------------------------------------
log "assembling the node rootfs"
R=$W/node-rootfs.tmp; rm -rf "$R"; mkdir -p "$R"
tar -C "$R" -xf "$NODE_TAR"
F=$KINDSRC/images/base/files
install -m 0755 "$F/usr/local/bin/entrypoint" "$R/usr/local/bin/entrypoint"
mkdir -p "$R/kind/bin" "$R/kind/images" "$R/kind/manifests" "$R/etc/systemd/system/kubelet.service.d" "$R/opt/cni/bin"
install -m 0755 "$F"/kind/bin/* "$HERE/node/import-images.sh" "$R/kind/bin/"
install -m 0644 "$F/etc/crictl.yaml" "$R/etc/"
install -m 0644 "$F/etc/default/kubelet" "$R/etc/default/"
install -m 0644 "$F"/etc/sysctl.d/* "$R/etc/sysctl.d/"
install -m 0644 "$F"/etc/systemd/system/{kubelet.service,kubelet.slice,undo-mount-hacks.service} \
  "$HERE/node/tfe-kind-images.service" "$R/etc/systemd/system/"
install -m 0644 "$F"/etc/systemd/system/kubelet.service.d/* "$R/etc/systemd/system/kubelet.service.d/"
# containerd from Debian (/usr/bin); no OOMScoreAdjust: the node has no CAP_SYS_RESOURCE here
sed -e 's|^ExecStart=/usr/local/bin/containerd|ExecStart=/usr/bin/containerd|' -e '/^OOMScoreAdjust=/d' \
  "$F/etc/systemd/system/containerd.service" > "$R/etc/systemd/system/containerd.service"
sed "s|@PAUSE_IMAGE@|$PAUSE|" "$HERE/node/containerd-config.toml" > "$R/etc/containerd/config.toml"
chroot "$R" ctr oci spec \
  | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
  | jq 'del(.process.rlimits)' > "$R/etc/containerd/cri-base.json"
cp -a "$R"/usr/lib/cni/* "$R/opt/cni/bin/"
install -m 0755 "$KBIN/kubelet" "$KBIN/kubectl" "$("$HERE/build.sh" path)/kubeadm" "$R/usr/bin/"
install -m 0755 "$KBIN/crictl" "$R/usr/local/bin/"
echo "$K8S_VERSION" > "$R/kind/version"
cp "$IMG"/*.tar "$R/kind/images/"
sed "s|@KUBE_ROUTER_IMAGE@|$KUBE_ROUTER|" "$HERE/node/kube-router.yaml" > "$R/kind/manifests/default-cni.yaml"
python3 - "$KINDSRC/pkg/build/nodeimage/const_storage.go" "$LP_PROV" "$LP_HELPER" > "$R/kind/manifests/default-storage.yaml" <<'PY'
import re, sys
src, prov, helper = sys.argv[1:]
text = open(src).read()
body = re.search(r"const defaultStorageManifest = `(.*?)\n`\n", text, re.S).group(1)
print(body.replace("` + storageProvisionerImage + `", prov).replace("` + storageHelperImage + `", helper))
PY
# as kind's base image Dockerfile does
find "$R/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$R"/lib/systemd/system/multi-user.target.wants/* "$R"/etc/systemd/system/*.wants/* \
      "$R"/lib/systemd/system/local-fs.target.wants/* "$R"/lib/systemd/system/sockets.target.wants/*udev* \
      "$R"/lib/systemd/system/sockets.target.wants/*initctl* "$R"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> "$R/etc/systemd/journald.conf"
chroot "$R" systemctl enable kubelet.service containerd.service undo-mount-hacks.service tfe-kind-images.service >/dev/null 2>&1
chroot "$R" systemctl mask systemd-binfmt.service >/dev/null 2>&1
mkdir -p "$R/etc/kubernetes/manifests"
log "docker import $NODE_IMAGE"
tar -C "$R" --numeric-owner -cf - . | docker import - "$NODE_IMAGE-rootfs" >/dev/null
# docker 20.10's import takes no STOPSIGNAL: one classic build step adds the image config.
# systemd >= 256 refuses cgroup v1 unless told; in a container it reads these from its own argv.
mkdir -p "$W/ctx-node"
cat > "$W/ctx-node/Dockerfile" <<DF
FROM $NODE_IMAGE-rootfs
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init", "systemd.unified_cgroup_hierarchy=0", "SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"]
LABEL tfe.kind.stamp=$stamp
DF
docker build -q --network none -t "$NODE_IMAGE" "$W/ctx-node" >/dev/null
docker rmi "$NODE_IMAGE-rootfs" >/dev/null 2>&1 || true
rm -rf "$R"
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$NODE_IMAGE"
