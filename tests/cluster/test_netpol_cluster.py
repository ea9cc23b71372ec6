"""On a multi-node cluster whose CNI enforces NetworkPolicy (``make kind-e2e``: kind, 1 control
plane + 3 workers, kube-router; issue 12): ``workers.spread: Required`` puts the three parties on
three nodes, and the model's NetworkPolicies, not only the guard, keep other pods off the
workers' ports.

One EncryptedModel (``np``) for the module, spread Required. The probes are TCP connects run by
the worker image's python3 inside pods (test_mesh_cluster.PROBE). Every refusal is paired with a
control: a party opens the same ports, and with the NetworkPolicies deleted the same probe from
the same pod connects (so the policies are the reason, not a dead port or a broken route).

Skipped unless TFE_E2E_CLUSTER=kind (the host cluster has one node and a CNI that ignores
NetworkPolicy: there these tests would fail for the cluster's sake, not the operator's).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from clusterlib import (
    NS_PREFIX,
    InProcessOperator,
    dump,
    get_json,
    kubectl,
    model_configmap,
    wait_for,
    wait_phase,
)
from test_mesh_cluster import CONTROLLER_LABELS, attacker_pod, pod_ready, probe

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.worker_image,
    pytest.mark.skipif(
        os.environ.get("TFE_E2E_CLUSTER") != "kind",
        reason="needs >= 3 nodes and a CNI that enforces NetworkPolicy (make kind-e2e sets TFE_E2E_CLUSTER=kind)",
    ),
]

MODEL = "np"
SERVING_TIMEOUT = 900
GUARD_PORTS = (5440, 5443, 5444)  # the guard's mTLS gRPC, mTLS HTTP, plain health (api.PORT_GUARD_*)
PEER_PORTS = (5440, 5443)  # what the worker policy admits from the other parties
# kube-router rejects what a policy does not admit ("refused"); a dropping enforcer would time out.
BLOCKED = ("refused", "timeout")
TCP_TIMEOUT = 5.0


@dataclass
class SpreadModel:
    ns: str
    other_ns: str
    status: dict[str, Any]

    def worker(self, i: int) -> dict[str, Any]:
        pod: dict[str, Any] = get_json("pod", f"{MODEL}-worker-{i}", "-n", self.ns)
        return pod

    def worker_ip(self, i: int) -> str:
        return str(self.worker(i)["status"]["podIP"])


@pytest.fixture(scope="module")
def spread_model(request: pytest.FixtureRequest, operator: InProcessOperator, models: Path) -> Iterator[SpreadModel]:
    suffix = uuid.uuid4().hex[:5]
    ns, other = f"{NS_PREFIX}np-{suffix}", f"{NS_PREFIX}np-other-{suffix}"
    failed_before = request.session.testsfailed
    kubectl("create", "namespace", ns)
    kubectl("create", "namespace", other)
    try:
        kubectl("apply", "-n", other, "-f", "-", input=attacker_pod("attacker", {"app": "attacker"}))
        model_configmap(ns, "digits-model", models / "digits.h5")
        spec = {
            "model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
            "workers": {"spread": "Required", "storage": {"medium": "Memory"}},
        }
        em = {"apiVersion": "tfe.dev/v1alpha1", "kind": "EncryptedModel", "metadata": {"name": MODEL}, "spec": spec}
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(em))
        st = wait_phase(ns, MODEL, "Serving", SERVING_TIMEOUT)
        wait_for("attacker pod in another namespace ready", lambda: pod_ready(other, "attacker"), 180)
        yield SpreadModel(ns, other, st)
    finally:
        if request.session.testsfailed > failed_before:
            dump(ns)
            dump(other)
        kubectl("delete", "encryptedmodels", "--all", "-n", ns, "--timeout=90s", check=False)
        for n in (ns, other):
            kubectl("delete", "namespace", n, "--wait=false", check=False)


@pytest.fixture(scope="module")
def labelled_attacker(spread_model: SpreadModel) -> str:
    """A pod in the model's namespace with the workers' labels (what a label-based policy admits)."""
    labels = {k: v for k, v in spread_model.worker(0)["metadata"]["labels"].items() if k not in CONTROLLER_LABELS}
    assert labels.get("app.kubernetes.io/component") == "worker", labels
    pod = json.loads(attacker_pod("attacker", labels))
    # The workers' required anti-affinity also keeps a pod with their labels off their nodes:
    # with three workers on three worker nodes, only the control plane is left for it.
    pod["spec"]["tolerations"] = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    kubectl("apply", "-n", spread_model.ns, "-f", "-", input=json.dumps(pod))
    wait_for("labelled attacker pod ready", lambda: pod_ready(spread_model.ns, "attacker"), 180)
    return "attacker"


def tcp_steps(ips: list[str], ports: tuple[int, ...]) -> list[dict[str, Any]]:
    return [{"op": "tcp", "addr": f"{ip}:{port}", "timeout": TCP_TIMEOUT} for ip in ips for port in ports]


def test_required_spread_puts_the_three_workers_on_three_nodes(spread_model: SpreadModel) -> None:
    nodes = {i: spread_model.worker(i)["spec"]["nodeName"] for i in range(3)}
    print(json.dumps(nodes))
    assert all(nodes.values()), nodes
    assert len(set(nodes.values())) == 3, f"two workers share a node: {nodes}"
    anti = spread_model.worker(0)["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in anti, anti


def test_networkpolicies_keep_other_pods_off_the_workers_ports(
    spread_model: SpreadModel, labelled_attacker: str, operator: InProcessOperator
) -> None:
    """From worker 0 (a party, on another node): workers 1 and 2's guard mTLS ports open. From a
    pod in another namespace: none of the guard ports opens (the worker NetworkPolicy rejects it;
    a dropping enforcer would time out). Then,
    with the model's NetworkPolicies deleted (operator stopped), the same probe from the same pod
    opens them all; restarted, the operator restores the policies and the drop is back.

    The pod carrying the workers' labels is admitted by the policy as a party would be (it
    selects pods by labels): it opens the guard's two mTLS ports, not its health port, and
    what keeps it out is the guard's mutual TLS (test_mesh_cluster); the raw TF/HTTP ports stay
    closed to both (the policy rejects them first; the pod's own filter drops them anyway)."""
    m = spread_model
    ips = [m.worker_ip(i) for i in range(3)]
    steps = tcp_steps(ips[1:], GUARD_PORTS)
    peer_steps = tcp_steps(ips[1:], PEER_PORTS)
    raw = [{"op": "tcp", "addr": f"{ips[1]}:{p}", "timeout": TCP_TIMEOUT} for p in (4441, 8082)]
    with cf.ThreadPoolExecutor(3) as ex:
        party_f = ex.submit(probe, m.ns, f"{MODEL}-worker-0", peer_steps, "player")
        outside_f = ex.submit(probe, m.other_ns, "attacker", steps + raw)
        labelled_f = ex.submit(probe, m.ns, labelled_attacker, steps + raw)
        party, outside, labelled = party_f.result(), outside_f.result(), labelled_f.result()
    print(json.dumps({"party": party, "another namespace": outside, "workers' labels": labelled}, indent=1))
    n = len(steps)
    assert party == ["open"] * len(peer_steps), f"a party cannot reach its peers' guards: {party}"
    assert all(x in BLOCKED for x in outside[:n]), f"another namespace reached a worker port: {outside[:n]}"
    admitted = [r for s, r in zip(steps, labelled) if int(s["addr"].rsplit(":", 1)[1]) in PEER_PORTS]
    assert admitted == ["open"] * len(peer_steps), f"the policy admits pods by labels: {labelled[:n]}"
    for who, r in (("another namespace", outside), ("workers' labels", labelled)):
        assert all(x in BLOCKED for x in r[n:]), f"{who}: a raw port answered: {r[n:]}"

    policies = json.loads(kubectl("get", "networkpolicies", "-n", m.ns, "-o", "json"))["items"]
    names = sorted(p["metadata"]["name"] for p in policies)
    assert f"{MODEL}-workers" in names, names

    def probe_outside() -> list[str]:
        return probe(m.other_ns, "attacker", steps)

    # The operator puts deleted policies back on its next resync: stop it meanwhile (stop/start
    # is an operator restart), and check that it restores them and the drop afterwards.
    operator.stop()
    try:
        kubectl("delete", "networkpolicies", "--all", "-n", m.ns)
        # The enforcer removes its rules within seconds of the deletion (kube-router watches).
        after = wait_for(
            "the same probe to connect without the NetworkPolicies",
            lambda: (r := probe_outside()) == ["open"] * n and r,
            90,
            interval=2,
        )
        print(json.dumps({"another namespace, no NetworkPolicies": after}))
    finally:
        operator.start()
    wait_for(
        "the operator to restore the NetworkPolicies",
        lambda: (
            {
                p["metadata"]["name"]
                for p in json.loads(kubectl("get", "networkpolicies", "-n", m.ns, "-o", "json"))["items"]
            }
            >= set(names)
        ),
        120,
    )
    again = wait_for(
        "the block to be back", lambda: (r := probe_outside()) and all(x in BLOCKED for x in r) and r, 90, interval=2
    )
    assert all(x in BLOCKED for x in again), again
