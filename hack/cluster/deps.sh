#!/usr/bin/env bash
# Install the host packages the local cluster needs (Debian bookworm host).
#  - bookworm: containerd 1.6 + runc + CNI plugins + docker.io 20.10 (docker.io depends on this
#    containerd, so ONE containerd package serves both docker and the kubelet; k8s 1.35 is the
#    last release that supports containerd 1.x), debootstrap, conntrack, iptables.
#  - trixie (pinned at priority 100, only these packages): etcd 3.5 (k8s >= 1.31 needs >= 3.5.11;
#    bookworm has 3.4). etcd is a static Go binary, so it pulls nothing else from trixie.
# Idempotent: does nothing when everything is present.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/paths.sh"
need=()
for c in containerd runc docker debootstrap conntrack iptables openssl socat ethtool; do
  command -v $c >/dev/null || need+=($c)
done
[ -x /usr/lib/cni/bridge ] || need+=(cni)
etcd_ok() { command -v etcd >/dev/null && etcd --version | awk '/etcd Version/{split($3,v,".");exit !(v[1]>3||(v[1]==3&&v[2]>=5))}'; }
etcd_ok || need+=(etcd)
[ ${#need[@]} = 0 ] && exit 0
echo ">> installing host packages (missing: ${need[*]})"
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache policy etcd-server 2>/dev/null | grep -q ' 3\.5\.'; then
  # recorded: cluster-down removes these two files again (hack/cluster/paths.sh, journal)
  journal "file /etc/apt/sources.list.d/tfe-trixie.sources"
  journal "file /etc/apt/preferences.d/tfe-trixie"
  cat > /etc/apt/sources.list.d/tfe-trixie.sources <<'EOS'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
  cat > /etc/apt/preferences.d/tfe-trixie <<'EOS'
# Only packages asked for explicitly (pkg/trixie) come from trixie; the rest stays bookworm.
Package: *
Pin: release n=trixie
Pin-Priority: 100
EOS
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends \
  containerd runc containernetworking-plugins docker.io debootstrap conntrack iptables \
  openssl socat ethtool iproute2 kmod procps util-linux curl ca-certificates \
  etcd-server/trixie etcd-client/trixie >/dev/null
etcd_ok || { echo "etcd >= 3.5 not installed" >&2; exit 1; }
