#!/usr/bin/env bash
# `make cluster-down-check`: cluster-down next to another cluster's host state must leave that
# state alone (issue 13). Puts foreign objects on the host that share our prefixes: a KUBE-TEST
# chain (filter) with a jump from FORWARD, a CNI-TEST chain (nat), a network namespace named
# cni-test, and (when up did not create $HOSTPATH_PV) a volume directory in $HOSTPATH_PV; runs
# cluster.sh down; then checks that all of them are still there, that ours are gone (kube-proxy's
# chains, our interfaces, $HOSTPATH_PV if up made it, the journal), and removes the foreign objects.
# The blanket cleanup this replaced (every KUBE-*/CNI-* chain, every /run/netns/cni-*) fails it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/paths.sh"
[ "$(id -u)" = 0 ] || die "needs root"
TAG=tfe-down-check
fail=0
check() { if "$@" >/dev/null 2>&1; then echo "ok: $*"; else echo "FAILED: $*" >&2; fail=1; fi; }
FOREIGN_PV=$HOSTPATH_PV/foreign-pv-$TAG
made_pv_root=
foreign_cleanup() {
  rm -rf "$FOREIGN_PV"; [ -z "$made_pv_root" ] || rmdir "$HOSTPATH_PV" 2>/dev/null || true
  iptables -D FORWARD -m comment --comment "$TAG" -j KUBE-TEST 2>/dev/null || true
  iptables -F KUBE-TEST 2>/dev/null || true; iptables -X KUBE-TEST 2>/dev/null || true
  iptables -t nat -F CNI-TEST 2>/dev/null || true; iptables -t nat -X CNI-TEST 2>/dev/null || true
  ip netns del cni-test 2>/dev/null || true
}
trap foreign_cleanup EXIT
foreign_cleanup
iptables -N KUBE-TEST
iptables -A KUBE-TEST -m comment --comment "$TAG" -j RETURN
iptables -I FORWARD -m comment --comment "$TAG" -j KUBE-TEST
iptables -t nat -N CNI-TEST
iptables -t nat -A CNI-TEST -m comment --comment "$TAG" -j RETURN
ip netns add cni-test
ours_pv=
if grep -qxF "tree $HOSTPATH_PV" "$JOURNAL" 2>/dev/null; then
  ours_pv=1  # up created it: down removes it with everything in it
else
  [ -e "$HOSTPATH_PV" ] || made_pv_root=1
  mkdir -p "$FOREIGN_PV" && echo data > "$FOREIGN_PV/file"
fi

"$HERE/cluster.sh" down

check iptables -C KUBE-TEST -m comment --comment "$TAG" -j RETURN
check iptables -C FORWARD -m comment --comment "$TAG" -j KUBE-TEST
check iptables -t nat -C CNI-TEST -m comment --comment "$TAG" -j RETURN
check test -e /run/netns/cni-test
if [ -n "$ours_pv" ]; then check bash -c "! test -e $HOSTPATH_PV"; else check test -s "$FOREIGN_PV/file"; fi
# ours are gone
check bash -c "! iptables -t nat -S KUBE-SERVICES"
check bash -c "! ip link show $NODE_IF"
check bash -c "! ip link show $CNI_IF"
check bash -c "! test -e $JOURNAL"
check bash -c "! findmnt -rn -o TARGET | grep -qE '^($STATE|$RUN)(/|\$)'"
[ $fail = 0 ] && echo ">> cluster-down left the foreign host state alone and removed its own" || exit 1
