"""The party mesh on the cluster (issue 9, "Tests"): attackers in pods, a worker's identity
used against a peer, a sniffer on the pod bridge, forged and expired certificates.

One EncryptedModel (``m``) for the whole module. Its fixture starts a packet capture on the pod
bridge *before* the model is created, so the capture covers the share Job and 20 predictions;
every attack runs afterwards on the same model. Each refusal is paired with a positive control
run by the same probe code (an open port, a key file read over TF, an admitted call, an
answered TLS client), so that a probe that cannot see anything cannot pass.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import datetime as dt
import json
import os
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from clusterlib import (
    NS_PREFIX,
    REPO,
    WORKER_IMAGE,
    InProcessOperator,
    cluster_setting,
    dump,
    em_status,
    get_json,
    kubectl,
    model_configmap,
    wait_for,
    wait_phase,
)

pytestmark = [pytest.mark.cluster, pytest.mark.worker_image]

MODEL = "m"
SERVING_TIMEOUT = 900
BRIDGE = cluster_setting("CNI_IF")  # the pods' bridge on the host cluster
# the first two octets of the pod network (POD_CIDR is a /16)
POD_NET = tuple(int(o) for o in cluster_setting("POD_CIDR").split(".")[:2])
assert cluster_setting("POD_CIDR").endswith("/16")
# make kind-e2e: several nodes (pod traffic stays inside them, no host bridge to sniff) and a
# CNI that enforces NetworkPolicy (the model's policies reject another namespace's connections).
KIND = os.environ.get("TFE_E2E_CLUSTER") == "kind"
KEY_FILE = "/var/lib/tfe/keys/x25519.key"  # api.STATE_DIR + player.load_or_create_key
GUARD_GRPC, GUARD_HTTP, GUARD_HEALTH = 5440, 5443, 5444
PREDICTIONS = 20
# Seconds for one TF client (import, connect, read) in a pod. The reachable read (positive
# control) must take under half of it for a hung attacker to count as refused; on kind, 4 nodes
# on this 2-core machine, three concurrent TF imports took 16 s for that read, so 60 there.
READ_KEY_TIMEOUT = 60.0 if KIND else 30.0
# What cleartext between parties would show (as tests/integration/test_mesh_capture.py).
MARKERS = (b"PRI * HTTP/2.0", b"/tensorflow.", b"/v1/ingress", b"/v1/egress", b"ephemeralKey", b"batchId")
MESH_ATTACK = (REPO / "tests" / "integration" / "mesh_attack.py").read_text()

# Labels the StatefulSet controller puts on each of its pods: not the workers' labels as such.
CONTROLLER_LABELS = ("controller-revision-hash", "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index")


# ------------------------------------------------------------------ the probe (python3 of the worker image, in a pod)

# Reads {"steps": [...]} on stdin, runs the steps concurrently, prints {"results": [...]}.
PROBE = r"""
import concurrent.futures as cf, hashlib, json, os, socket, ssl, subprocess, sys, tempfile, time

spec = json.load(sys.stdin)

def hostport(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)

def tcp(s):
    try:
        socket.create_connection(hostport(s["addr"]), timeout=s.get("timeout", 3.0)).close()
        return "open"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"error {e}"

H2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # preface + empty SETTINGS
GET = b"GET /v1/public-key HTTP/1.1\r\nHost: guard\r\nConnection: close\r\n\r\n"

def tls(s):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # what is tested is the server's check of the client
    ctx.set_alpn_protocols(["h2"] if s["kind"] == "grpc" else ["http/1.1"])
    if s.get("cert"):
        d = tempfile.mkdtemp()
        for n in ("cert", "key"):
            with open(os.path.join(d, n), "w") as f:
                f.write(s[n])
        ctx.load_cert_chain(os.path.join(d, "cert"), os.path.join(d, "key"))
    try:
        with socket.create_connection(hostport(s["addr"]), timeout=5.0) as raw:
            with ctx.wrap_socket(raw) as c:
                c.sendall(H2 if s["kind"] == "grpc" else GET)
                data = c.recv(4096)
    except socket.timeout:
        return "timeout"
    except (ssl.SSLError, OSError) as e:
        return f"refused {type(e).__name__}: {e}"
    return f"answered {data[:48].hex()}" if data else "closed"

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])

def run(s):
    args = [a.replace("{FREE}", free_port()) for a in s["args"]]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "HOME": "/tmp"}
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-c", s["code"], *args], capture_output=True, text=True,
                           timeout=s.get("timeout", 60), env=env)
    except subprocess.TimeoutExpired:
        return f"TIMEOUT [{time.monotonic() - t0:.1f}s]"
    out = p.stdout.strip() or f"NO OUTPUT rc={p.returncode} {p.stderr.strip()[-600:]}"
    return f"{out} [{time.monotonic() - t0:.1f}s]"

def call(s):
    import grpc  # TF's dependency
    ch = grpc.insecure_channel(s["addr"])
    rpc = ch.unary_unary(s["method"], request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        rpc(b"", timeout=10.0)  # an empty request message: the guard decides on the method alone
        return "CODE OK"
    except grpc.RpcError as e:
        return f"CODE {e.code().name} {e.details()}"

def sha256(s):
    with open(s["path"], "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()

OPS = {"tcp": tcp, "tls": tls, "run": run, "call": call, "sha256": sha256}
with cf.ThreadPoolExecutor(len(spec["steps"]) or 1) as ex:
    futs = [ex.submit(OPS[s["op"]], s) for s in spec["steps"]]
    print(json.dumps({"results": [f.result() for f in futs]}))
"""

# Join the workers' TF cluster as a new job, read a file on one worker's device (the attack of
# mesh_attack.py read-key, with a cluster given as {task: address} so that a job of one task
# can be addressed too). argv: CLUSTER_JSON OWN_PORT TARGET_TASK PATH
READ_KEY = r"""
import hashlib, json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
tasks = {int(k): v for k, v in json.loads(sys.argv[1]).items()}
cluster = tf.train.ClusterSpec({"tfe": tasks, "intruder": ["127.0.0.1:" + sys.argv[2]]})
try:
    tf.config.experimental_connect_to_cluster(cluster, job_name="intruder", task_index=0)
    with tf.device(f"/job:tfe/replica:0/task:{sys.argv[3]}/device:CPU:0"):
        data = tf.io.read_file(sys.argv[4]).numpy()
except Exception as e:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    print(f"REFUSED {type(e).__name__}: {lines[0][:300] if lines else ''}", flush=True)
else:
    print(f"READ {hashlib.sha256(data).hexdigest()}", flush=True)
"""


def probe(
    ns: str, pod: str, steps: list[dict[str, Any]], container: str | None = None, timeout: float = 180
) -> list[str]:
    args = ["exec", "-i", "-n", ns, pod]
    if container:
        args += ["-c", container]
    out = kubectl(*args, "--", "python3", "-c", PROBE, input=json.dumps({"steps": steps}), timeout=timeout)
    return list(json.loads(out.strip().splitlines()[-1])["results"])


def seconds(result: str) -> float:
    """The duration a "run" step appends to its output: "... [12.3s]"."""
    return float(result.rsplit("[", 1)[1].rstrip("s]"))


def read_key_step(tasks: dict[int, str], target: int, timeout: float = 0) -> dict[str, Any]:
    return {
        "op": "run",
        "code": READ_KEY,
        "args": [json.dumps(tasks), "{FREE}", str(target), KEY_FILE],
        "timeout": timeout or READ_KEY_TIMEOUT,
    }


# ------------------------------------------------------------------ a sniffer on the pod bridge


@dataclass
class Flow:
    data: bytearray = field(default_factory=bytearray)
    syn: bool = False  # the connection was opened while we listened (we saw its SYN)
    packets: int = 0


class BridgeCapture:
    """Every IPv4/TCP frame that crosses the pod bridge, through an AF_PACKET socket bound to it.

    The socket asks for promiscuous mode: a Linux bridge then passes a copy of each frame it
    forwards between two ports (pod to pod) up through its own device, where we read it. Payloads
    are kept per direction (src, sport, dst, dport) in arrival order, for the pod network only."""

    ETH_P_ALL, SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC, SO_RCVBUFFORCE = 3, 263, 1, 1, 33

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(self.ETH_P_ALL))
        self.sock.bind((ifname, 0))
        mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), self.PACKET_MR_PROMISC, 0, b"")
        self.sock.setsockopt(self.SOL_PACKET, self.PACKET_ADD_MEMBERSHIP, mreq)
        self.sock.setsockopt(socket.SOL_SOCKET, self.SO_RCVBUFFORCE, 64 << 20)
        self.sock.settimeout(0.5)
        self.flows: dict[tuple[str, int, str, int], Flow] = defaultdict(Flow)
        self.frames = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bridge-capture", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(10)
        self.sock.close()

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                frame = self.sock.recv(1 << 18)
            except TimeoutError:
                continue
            except OSError:
                return
            self.frames += 1
            self._take(frame)

    def _take(self, b: bytes) -> None:
        if len(b) < 54 or b[12:14] != b"\x08\x00" or b[23] != 6:  # IPv4, TCP
            return
        if tuple(b[26:28]) != POD_NET or tuple(b[30:32]) != POD_NET:
            return
        ihl = (b[14] & 0x0F) * 4
        total = struct.unpack("!H", b[16:18])[0]
        tcp = 14 + ihl
        doff = (b[tcp + 12] >> 4) * 4
        flags = b[tcp + 13]
        src, dst = socket.inet_ntoa(b[26:30]), socket.inet_ntoa(b[30:34])
        sport, dport = struct.unpack("!HH", b[tcp : tcp + 4])
        f = self.flows[(src, sport, dst, dport)]
        f.packets += 1
        if flags & 0x02:  # SYN
            f.syn = True
        f.data += b[tcp + doff : 14 + total]


class PodIPs:
    """name -> IP of every pod of a namespace, polled while the capture runs (the share Job's
    pod does not live long)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.ips: dict[str, str] = {}
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pod-ips", daemon=True)

    def poll(self) -> None:
        for p in (get_json("pods", "-n", self.ns) or {}).get("items", []):
            ip = p.get("status", {}).get("podIP")
            if ip:
                self.ips[p["metadata"]["name"]] = ip

    def _run(self) -> None:
        while not self.stop_flag.wait(1.5):
            self.poll()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(30)
        self.poll()


# ------------------------------------------------------------------ the model (one per module)


@dataclass
class Model:
    ns: str
    other_ns: str
    status: dict[str, Any]
    capture: BridgeCapture | None  # None on kind
    party_ips: dict[str, str]  # pod name -> IP, every pod of the model seen during the capture
    client_ips: set[str]  # the endpoint Service's pod(s) as the host's client sees them
    predictions: list[Any]

    def pod_ip(self, pod: str) -> str:
        return str(get_json("pod", pod, "-n", self.ns)["status"]["podIP"])


def attacker_pod(name: str, labels: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "runAsGroup": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "attacker",
                        "image": WORKER_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                        "env": [{"name": "HOME", "value": "/tmp"}],
                        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    }
                ],
            },
        }
    )


def pod_ready(ns: str, name: str) -> bool:
    p = get_json("pod", name, "-n", ns) or {}
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in p.get("status", {}).get("conditions", [])
    )


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest, operator: InProcessOperator, models: Path) -> Iterator[Model]:
    import numpy as np

    from tfe_client.client import Client

    suffix = uuid.uuid4().hex[:5]
    ns, other = f"{NS_PREFIX}mesh-{suffix}", f"{NS_PREFIX}mesh-other-{suffix}"
    failed_before = request.session.testsfailed
    kubectl("create", "namespace", ns)
    kubectl("create", "namespace", other)
    capture: BridgeCapture | None = None
    try:
        # The attacker outside the model's namespace starts now (it takes no part in the capture).
        kubectl("apply", "-n", other, "-f", "-", input=attacker_pod("attacker", {"app": "attacker"}))
        model_configmap(ns, "digits-model", models / "digits.h5")
        if not KIND:
            capture = BridgeCapture(BRIDGE)
            capture.start()
        ips = PodIPs(ns)
        ips.start()
        t0 = time.monotonic()
        spec = {
            "model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
            "workers": {"storage": {"medium": "Memory"}},
        }
        em = {"apiVersion": "tfe.dev/v1alpha1", "kind": "EncryptedModel", "metadata": {"name": MODEL}, "spec": spec}
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(em))
        st = wait_phase(ns, MODEL, "Serving", SERVING_TIMEOUT)
        print(f"\ncreate -> Serving: {time.monotonic() - t0:.1f}s")
        # The client on the host, through the endpoint Service's ClusterIP, with pinned worker keys.
        url = urllib.parse.urlsplit(st["endpoint"])
        svc = get_json("service", str(url.hostname).split(".")[0], "-n", ns)
        endpoint = f"http://{svc['spec']['clusterIP']}:{url.port}"
        client = Client(endpoint, timeout=120, expected_keys=[w["publicKey"] for w in st["workers"]])
        x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
        t1 = time.monotonic()
        try:
            preds = [client.predict(MODEL, x) for _ in range(PREDICTIONS)]
        finally:
            client.close()
        print(f"{PREDICTIONS} predictions: {time.monotonic() - t1:.1f}s")
        time.sleep(1)  # the last segments
        if capture is not None:
            capture.stop()
        ips.stop()
        # The endpoint pod(s): where the Service sends the host's client.
        eps = get_json("endpoints", svc["metadata"]["name"], "-n", ns) or {}
        client_ips = {a["ip"] for s in eps.get("subsets", []) for a in s.get("addresses", [])}
        wait_for("attacker pod in another namespace ready", lambda: pod_ready(other, "attacker"), 120)
        yield Model(ns, other, st, capture, dict(ips.ips), client_ips, preds)
    finally:
        if capture is not None and not capture.stop_flag.is_set():
            capture.stop()
        if request.session.testsfailed > failed_before:
            dump(ns)
            for i in range(3):
                print(f"----- guard log {MODEL}-worker-{i} -----")
                print(kubectl("logs", "-n", ns, f"{MODEL}-worker-{i}", "-c", "guard", "--tail=40", check=False))
        kubectl("delete", "encryptedmodels", "--all", "-n", ns, "--timeout=90s", check=False)
        for n in (ns, other):
            kubectl("delete", "namespace", n, "--wait=false", check=False)


@pytest.fixture(scope="module")
def labelled_attacker(model: Model) -> str:
    """A pod in the model's namespace that carries the workers' labels (what a NetworkPolicy
    selecting the workers would admit), the worker image, no mesh certificate."""
    worker = get_json("pod", f"{MODEL}-worker-0", "-n", model.ns)
    labels = {k: v for k, v in worker["metadata"]["labels"].items() if k not in CONTROLLER_LABELS}
    assert labels.get("app.kubernetes.io/component"), labels
    kubectl("apply", "-n", model.ns, "-f", "-", input=attacker_pod("attacker", labels))
    wait_for("labelled attacker pod ready", lambda: pod_ready(model.ns, "attacker"), 120)
    return "attacker"


def guard_log(ns: str, pod: str) -> str:
    return kubectl("logs", "-n", ns, pod, "-c", "guard", check=False)


# ------------------------------------------------------------------ 1. pods that are no party


def test_pods_that_are_no_party_reach_no_raw_port_no_guard_and_no_key(model: Model, labelled_attacker: str) -> None:
    """From another namespace and from a pod with the workers' labels: worker 1's raw TF/HTTP
    ports do not answer (mesh-init's filter in the pod's network namespace: this cluster's CNI
    enforces no NetworkPolicy), its guard ports refuse a TLS client without a certificate, and
    joining the workers' TF cluster at their raw ports reads no key. Positive controls with the
    same probe: the guard port is open to the attackers, a valid mesh certificate is answered
    (so the TLS probe sees an answer when there is one), and inside worker 1 its own TF port
    answers on loopback and on the pod IP (TF binds 0.0.0.0: only the filter keeps it from the
    attackers) and the same TF attack reads worker 1's key file."""
    ns = model.ns
    ip = [model.pod_ip(f"{MODEL}-worker-{i}") for i in range(3)]
    raw_tasks = {i: f"{ip[i]}:{4440 + i}" for i in range(3)}
    coordinator = get_json("secret", f"{MODEL}-mesh-coordinator", "-n", ns)["data"]
    cert, key = (base64.b64decode(coordinator[k]).decode() for k in ("tls.crt", "tls.key"))
    attacker_steps = [
        {"op": "tcp", "addr": f"{ip[1]}:4441"},  # worker 1's TF server (binds 0.0.0.0)
        {"op": "tcp", "addr": f"{ip[1]}:8082"},  # worker 1's HTTP side
        {"op": "tcp", "addr": f"{ip[1]}:4440"},
        {"op": "tcp", "addr": f"{ip[1]}:8081"},
        {"op": "tcp", "addr": f"{ip[1]}:{GUARD_GRPC}"},  # control: the path to the pod is open
        {"op": "tls", "addr": f"{ip[1]}:{GUARD_GRPC}", "kind": "grpc"},
        {"op": "tls", "addr": f"{ip[1]}:{GUARD_HTTP}", "kind": "http"},
        read_key_step(raw_tasks, 2),
    ]
    control_steps = [
        {"op": "tcp", "addr": "127.0.0.1:4441"},
        {"op": "tcp", "addr": f"{ip[1]}:4441"},
        {"op": "tls", "addr": f"{ip[1]}:{GUARD_GRPC}", "kind": "grpc", "cert": cert, "key": key},
        {"op": "tls", "addr": f"{ip[1]}:{GUARD_HTTP}", "kind": "http", "cert": cert, "key": key},
        read_key_step({1: "127.0.0.1:4441"}, 1),
        {"op": "sha256", "path": KEY_FILE},
    ]
    with cf.ThreadPoolExecutor(3) as ex:
        outside = ex.submit(probe, model.other_ns, "attacker", attacker_steps)
        labelled = ex.submit(probe, ns, labelled_attacker, attacker_steps)
        inside = ex.submit(probe, ns, f"{MODEL}-worker-1", control_steps, "player")
        results = {"another namespace": outside.result(), "workers' labels": labelled.result()}
        control = inside.result()
    print(json.dumps({**results, "inside worker 1": control}, indent=1))

    # Positive controls: the probe sees open ports, answers and keys where they are.
    assert control[0] == "open" and control[1] == "open", control
    assert control[2].startswith("answered 0000"), control[2]  # an HTTP/2 SETTINGS frame
    assert control[3].startswith("answered " + b"HTTP/1.1".hex()), control[3]
    assert control[4].startswith(f"READ {control[5]} ["), control[4:]
    # A hung TF client counts as refused below (dropped SYNs): only sound if a reachable read
    # takes well under the attackers' limit on this machine, now.
    assert seconds(control[4]) < READ_KEY_TIMEOUT / 2, control[4]

    for who, r in results.items():
        tcp4441, tcp8082, tcp4440, tcp8081, guard_open, tls_grpc, tls_http, read = r
        for port, res in ((4441, tcp4441), (8082, tcp8082), (4440, tcp4440), (8081, tcp8081)):
            assert res in ("timeout", "refused"), f"{who}: worker 1's raw port {port}: {res}"
        # The TF port that answers on the pod IP inside the pod is silently dropped outside it
        # (on kind the worker NetworkPolicy rejects it first: "refused").
        assert tcp4441 == "timeout" or KIND, f"{who}: {tcp4441}"
        if KIND and who == "another namespace":
            # The worker NetworkPolicy rejects it before the guard sees it (test_netpol_cluster.py).
            for res in (guard_open, tls_grpc, tls_http):
                assert res.startswith(("timeout", "refused ConnectionRefusedError")) or res == "refused", f"{who}: {r}"
            continue
        assert guard_open == "open", f"{who}: the guard port is not even reachable: {guard_open}"
        for kind, res in (("grpc", tls_grpc), ("http", tls_http)):
            assert res.startswith(("refused", "closed")), f"{who}: guard {kind} without a certificate: {res}"
        assert not read.startswith("READ"), f"{who}: read worker 2's key: {read}"
        assert read.startswith(("REFUSED", "TIMEOUT")), f"{who}: {read}"


# ------------------------------------------------------------------ 2. one compromised worker


def test_worker_identity_cannot_take_another_partys_tensor_nor_run_ops_on_a_peer(model: Model) -> None:
    """Inside worker 1's player container, where its guard forwards 127.0.0.1:4440/4442 to
    workers 0/2 with worker 1's certificate (mesh_attack.py, as in tests/integration/test_mesh.py):
    - a RecvTensor whose rendezvous key addresses worker 0, asked of worker 2: PERMISSION_DENIED
      naming server1. Control: the same request addressed to worker 1 itself passes the guard and
      TF answers it (its objection is the device incarnation: it looked for the tensor);
    - CreateContext on worker 2 (what running ops there starts with): PERMISSION_DENIED;
    - joining the workers' TF cluster as a new job and reading worker 2's key file: no key (TF's
      first call, GetStatus, is refused; TF 2.9 then raises or aborts), and the guards log it."""
    ns = model.ns
    loop = [f"127.0.0.1:{4440 + i}" for i in range(3)]
    steps = [
        {"op": "run", "code": MESH_ATTACK, "args": ["recv-tensor", loop[2], "0"], "timeout": 60},
        {"op": "run", "code": MESH_ATTACK, "args": ["recv-tensor", loop[2], "1"], "timeout": 60},
        {"op": "call", "addr": loop[2], "method": "/tensorflow.eager.EagerService/CreateContext"},
        {
            "op": "run",
            "code": MESH_ATTACK,
            "args": ["read-key", *loop, "127.0.0.1:{FREE}", "2", KEY_FILE],
            "timeout": 60,
        },
    ]
    other, own, create, join = probe(ns, f"{MODEL}-worker-1", steps, "player")
    print(json.dumps({"recv worker 0's tensor": other, "recv own tensor": own, "CreateContext": create,
                      "join": join}, indent=1))  # fmt: skip

    assert own.startswith("CODE "), own
    assert own.split()[1] not in ("PERMISSION_DENIED", "UNAVAILABLE"), f"control refused: {own}"
    assert "incarnation" in own, own  # TF's own answer: the call reached worker 2's TF server
    assert other.startswith("CODE PERMISSION_DENIED"), other
    assert "server1" in other and "task:0" in other, other
    assert create.startswith("CODE PERMISSION_DENIED"), create
    assert "server1" in create and "CreateContext" in create, create
    assert "READ" not in join, join
    assert join.startswith("REFUSED") or "rc=-6" in join, join
    log2 = guard_log(ns, f"{MODEL}-worker-2")
    refused = [ln for ln in log2.splitlines() if "refused call" in ln and "identity=server1" in ln]
    assert any("RecvTensor" in ln and "task:0" in ln for ln in refused), log2[-3000:]
    assert any("CreateContext" in ln for ln in refused), log2[-3000:]
    assert any("GetStatus" in ln for ln in refused), log2[-3000:]


# ------------------------------------------------------------------ 3. a sniffer on the pod network


def test_no_cleartext_between_parties_on_the_pod_network(model: Model) -> None:
    """Every TCP segment between two pods of the model (workers, share Job, serve pod) during
    the share and 20 predictions, read off the pod bridge: none carries the HTTP/2 preface, a TF
    service name or the ingress/egress JSON, every such connection starts with a TLS handshake
    and runs between guard ports, and the capture did see that traffic (bytes, TLS application
    records). Control that the sniffer sees cleartext where there is some: the host client's
    plain HTTP to the endpoint (excluded from the party check) shows its JSON fields.

    The TLS-off control (the same markers found in cleartext between parties) is the local
    integration test tests/integration/test_mesh_capture.py: the cluster has no TLS-off switch."""
    if model.capture is None:
        pytest.skip(
            "kind: pods of one node talk across no host bridge; the sniffer runs on the host cluster (make e2e)"
        )
    cap, parties = model.capture, set(model.party_ips.values())
    names = {ip: n for n, ip in model.party_ips.items()}
    assert len(model.predictions) == PREDICTIONS
    assert any("-share-" in n for n in model.party_ips), f"the share Job's pod was not seen: {model.party_ips}"

    party = {k: f for k, f in cap.flows.items() if k[0] in parties and k[2] in parties and k[0] != k[2]}
    client = {
        k: f
        for k, f in cap.flows.items()
        if (k[0] in model.client_ips) != (k[2] in model.client_ips) and not (k[0] in parties and k[2] in parties)
    }
    party_bytes = sum(len(f.data) for f in party.values())
    tls_records = sum(f.data.count(b"\x17\x03\x03") for f in party.values())
    pairs = sorted({tuple(sorted((names[k[0]], names[k[2]]))) for k, f in party.items() if f.data})
    print(
        f"\nframes {cap.frames}, party flows {len(party)}, party bytes {party_bytes}, "
        f"TLS application records {tls_records}, pairs {pairs}"
    )

    # The capture saw the parties talk: share Job and serve pod with the workers, workers together.
    assert party_bytes > 200_000, party_bytes
    assert tls_records > 500, tls_records
    talkers = {n.rsplit("-", 1)[0] if "-worker-" not in n else n for pair in pairs for n in pair}
    assert {f"{MODEL}-worker-{i}" for i in range(3)} <= talkers, pairs
    assert any("-share-" in n for pair in pairs for n in pair), pairs

    # Positive control: the sniffer reads cleartext where it travels (the client's HTTP).
    client_bytes = b"".join(bytes(f.data) for f in client.values())
    assert b"ephemeralKey" in client_bytes and b"/v1/models/" in client_bytes, len(client_bytes)

    leaks = {}
    for k, f in party.items():
        found = [m.decode() for m in MARKERS if m in f.data]
        if found:
            leaks[f"{names[k[0]]}:{k[1]} -> {names[k[2]]}:{k[3]}"] = found
    assert not leaks, f"cleartext between parties: {leaks}"

    # Every connection between parties that opened during the capture: TLS from its first byte,
    # to a guard port (never a raw TF/HTTP port).
    # (A direction saw SYN or SYN-ACK: both directions of a connection opened while we listened.)
    opened = [(k, f) for k, f in party.items() if f.syn and f.data]
    assert opened
    for k, f in opened:
        assert f.data[:2] == b"\x16\x03", f"{names[k[0]]}:{k[1]} -> {names[k[2]]}:{k[3]} starts {bytes(f.data[:16])!r}"
    server_ports = {min(k[1], k[3]) for k, _ in opened}  # the other end is an ephemeral port
    assert server_ports <= {GUARD_GRPC, GUARD_HTTP}, server_ports


# ------------------------------------------------------------------ 4. forged and expired certificates


def test_certificate_from_another_ca_and_expired_certificate_are_refused(model: Model, labelled_attacker: str) -> None:
    """A `coordinator` certificate from another CA, and one from the model's own CA that has
    expired, presented to worker 1's guard (grpc and http listeners) from the pod in another
    namespace (on kind, whose CNI rejects that pod, from the pod with the workers' labels):
    both refused, and the guard logs why. Control: the model's valid coordinator certificate, by
    the same probe, is answered on both listeners."""
    from tfe_client import mesh

    ns = model.ns
    ip1 = model.pod_ip(f"{MODEL}-worker-1")
    sec = get_json("secret", f"{MODEL}-mesh-ca", "-n", ns)["data"]
    ca = mesh.KeyPair(base64.b64decode(sec["ca.crt"]), base64.b64decode(sec["ca.key"]))
    valid_doc = get_json("secret", f"{MODEL}-mesh-coordinator", "-n", ns)["data"]
    valid = mesh.KeyPair(base64.b64decode(valid_doc["tls.crt"]), base64.b64decode(valid_doc["tls.key"]))
    foreign = mesh.issue(mesh.make_ca("intruder"), "coordinator", days=30)
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    expired = mesh.issue(ca, "coordinator", days=1, now=long_ago)
    assert expired.not_after < dt.datetime.now(dt.timezone.utc)

    certs = {"valid": valid, "foreign CA": foreign, "expired": expired}
    steps, labels = [], []
    for what, kp in certs.items():
        for kind, port in (("grpc", GUARD_GRPC), ("http", GUARD_HTTP)):
            steps.append(
                {"op": "tls", "addr": f"{ip1}:{port}", "kind": kind, "cert": kp.cert.decode(), "key": kp.key.decode()}
            )
            labels.append((what, kind))
    where = (ns, labelled_attacker) if KIND else (model.other_ns, "attacker")
    results = dict(zip(labels, probe(*where, steps)))
    print(json.dumps({f"{w} {k}": r for (w, k), r in results.items()}, indent=1))

    assert results[("valid", "grpc")].startswith("answered 0000"), results
    assert results[("valid", "http")].startswith("answered " + b"HTTP/1.1".hex()), results
    for what in ("foreign CA", "expired"):
        for kind in ("grpc", "http"):
            assert results[(what, kind)].startswith(("refused", "closed")), (what, kind, results[(what, kind)])
    log = guard_log(ns, f"{MODEL}-worker-1")
    handshakes = [ln for ln in log.splitlines() if "refused handshake" in ln]
    assert any("unknown authority" in ln for ln in handshakes), log[-3000:]
    assert any("expired" in ln for ln in handshakes), log[-3000:]

    # The status says which identity failed and why (the operator reads each guard's refusals),
    # and each new refusal is a Warning Event.
    def refused() -> list[dict[str, Any]] | None:
        rows = (em_status(ns, MODEL).get("mesh") or {}).get("refused") or []
        mine = [r for r in rows if r.get("party") == "server1" and r.get("identity") == "coordinator"]
        reasons = " | ".join(str(r.get("reason")) for r in mine)
        return mine if "certificate has expired" in reasons and "unknown authority" in reasons else None

    rows = wait_for("status.mesh.refused names coordinator's expired and foreign certificates", refused, 60)
    print(json.dumps(rows, indent=1))
    events = kubectl("get", "events", "-n", ns, "--field-selector", "reason=MeshRefused", "-o", "json")
    messages = [e["message"] for e in json.loads(events)["items"]]
    assert any(m.startswith("server1 refused coordinator") and "expired" in m for m in messages), messages
