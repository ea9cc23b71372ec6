"""Helpers for the operator's cluster tests (see conftest.py).

Cluster tests of the operator (marker ``cluster``; ``make e2e``).

They need the local cluster (.cluster/kubeconfig, see mk/cluster.mk) and, for the tests that
run workers, the images from ``make images``. Without a cluster they are skipped, except
when CI=true: then the run fails, so a CI without a cluster never passes silently.

The operator runs in-process (kopf in a thread, watching namespaces ``tfe-e2e-*``); each test
gets a fresh namespace, deleted afterwards; on failure its pods, events and logs are printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

REPO = Path(__file__).resolve().parents[2]
KUBECONFIG = Path(os.environ.get("TFE_KUBECONFIG", str(REPO / ".cluster" / "kubeconfig")))
KUBECTL = os.environ.get("TFE_KUBECTL", str(REPO / ".cluster" / "bin" / "kubectl"))
CRD = REPO / "charts" / "tfe-operator" / "crds" / "encryptedmodels.tfe.dev.yaml"
VERSION = (REPO / "VERSION").read_text().strip()
WORKER_IMAGE = os.environ.get("TFE_WORKER_IMAGE", f"tfe-operator/worker:{VERSION}")
WORKER_PYTHON = REPO / ".venv-worker" / "bin" / "python"
# make kind-e2e: multi-node kind with kube-router enforcing NetworkPolicy (hack/kind)
KIND = os.environ.get("TFE_E2E_CLUSTER") == "kind"
# Namespaces of this run only: two runs on one cluster must not reconcile each other's objects.
RUN_ID = uuid.uuid4().hex[:4]
NS_PREFIX = f"tfe-e2e-{RUN_ID}-"

T = TypeVar("T")


def cluster_setting(name: str) -> str:
    """A name from hack/cluster/paths.sh (the one file that names the local cluster's paths,
    interfaces and address ranges), read by sourcing it."""
    out = subprocess.run(
        ["bash", "-c", f'. "$1" && printf %s "${{{name}}}"', "paths", str(REPO / "hack" / "cluster" / "paths.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    if not out:
        raise KeyError(f"{name} is not set by hack/cluster/paths.sh")
    return out


# ------------------------------------------------------------------ kubectl and waiting


def kubectl(*args: str, input: str | bytes | None = None, check: bool = True, timeout: float = 120) -> str:
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run([KUBECTL, *args], input=data, capture_output=True, env=env, timeout=timeout, check=False)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    if check and proc.returncode != 0:
        raise KubectlError(args, proc.returncode, out, err)
    return out + (err if not check and proc.returncode else "")


class KubectlError(Exception):
    def __init__(self, args: tuple[str, ...], code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        super().__init__(f"kubectl {' '.join(args)} -> {code}: {err.strip() or out.strip()}")


def get_json(*args: str) -> Any:
    out = kubectl("get", *args, "-o", "json", check=False)
    try:
        return json.loads(out)
    except ValueError:
        return None


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T:
    """Poll ``probe`` (which reads the API) until it returns a truthy value or time runs out."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        tick.wait(interval)


def delete_pods(ns: str, *names: str, timeout: float = 180) -> None:
    """Delete pods and wait until each is gone or replaced (a new UID under the same name).

    Not ``kubectl delete --wait``: for pods a controller recreates under the same name it was seen
    to keep waiting after the old pods were long gone (CI: two StatefulSet pods, 120 s timeout,
    the replacements Running 2 s after the delete)."""
    def uid(name: str) -> str | None:
        return ((get_json("pod", name, "-n", ns) or {}).get("metadata") or {}).get("uid")

    old = {n: uid(n) for n in names}
    kubectl("delete", "pod", *names, "-n", ns, "--wait=false", "--ignore-not-found")

    def gone() -> bool:
        return all(was is None or uid(n) != was for n, was in old.items())

    wait_for(f"pods {', '.join(names)} deleted", gone, timeout)


def em_status(ns: str, name: str) -> dict[str, Any]:
    doc = get_json("encryptedmodel", name, "-n", ns)
    return (doc or {}).get("status", {}) or {}


def wait_phase(ns: str, name: str, phase: str, timeout: float) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        st = em_status(ns, name)
        if st.get("phase") == phase:
            return st
        if phase != "Failed" and st.get("phase") == "Failed":
            raise AssertionError(f"{name} went Failed: {st.get('message')}")
        return None

    try:
        return wait_for(f"{ns}/{name} phase {phase}", probe, timeout)
    except TimeoutError as e:
        st = em_status(ns, name)
        raise TimeoutError(f"{e}; now {st.get('phase')}: {st.get('message')}; conditions {st.get('conditions')}") from e


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in status.get("conditions", []) or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def apiserver_cidrs() -> tuple[str, ...]:
    """The control-plane nodes' InternalIPs as /32 (/128) CIDRs: where the API server's pod
    proxy connects from, so an operator outside the cluster (proxy mode) reads the guards'
    health port through it only if the model's NetworkPolicies admit these
    (TFE_OPERATOR_HEALTH_SOURCE_CIDRS, chart value healthSourceCIDRs)."""
    nodes = get_json("nodes", "-l", "node-role.kubernetes.io/control-plane")
    cidrs = tuple(
        f"{a['address']}/{128 if ':' in a['address'] else 32}"
        for n in (nodes or {}).get("items", [])
        for a in n["status"].get("addresses", [])
        if a["type"] == "InternalIP"
    )
    assert cidrs, "no control-plane node with an InternalIP"
    return cidrs


# ------------------------------------------------------------------ the operator in-process


class InProcessOperator:
    """kopf in a thread with its own event loop; stop() then start() = an operator restart."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.liveness_port = _free_port()

    def start(self) -> None:
        import kopf

        from tfe_operator import handlers
        from tfe_operator.settings import Settings

        # settings from the environment the conftest set (resync 2 s, proxy mode), passed in
        registry = handlers.build_registry(handlers.Runtime(settings=Settings.from_env()))

        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()

        def run() -> None:
            try:
                asyncio.run(
                    kopf.operator(
                        registry=registry,
                        standalone=True,
                        clusterwide=False,
                        namespaces=[f"{NS_PREFIX}*"],
                        stop_flag=self.stop_flag,
                        ready_flag=self.ready_flag,
                        liveness_endpoint=f"http://127.0.0.1:{self.liveness_port}/healthz",
                    )
                )
            except Exception as e:  # noqa: BLE001  # reported by start()
                self.error = e

        self.thread = threading.Thread(target=run, name="kopf", daemon=True)
        self.thread.start()
        if not self.ready_flag.wait(60):
            raise RuntimeError(f"operator did not start in 60s: {self.error!r}")

    def stop(self) -> None:
        if self.thread is None:
            return
        self.stop_flag.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "operator thread did not stop in 60s"
        self.thread = None


def stop_process(p: subprocess.Popen[bytes], grace: float = 20) -> None:
    """Terminate a process this test started; kill it if it outlives ``grace`` seconds."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dump(ns: str) -> None:
    print(f"\n===== diagnostics for namespace {ns} =====")
    for args in (
        ("get", "encryptedmodels,all,pvc,networkpolicies,configmaps", "-n", ns, "-o", "wide"),
        ("get", "encryptedmodels", "-n", ns, "-o", "yaml"),
        ("get", "events", "-n", ns, "--sort-by=.lastTimestamp"),
    ):
        print(f"$ kubectl {' '.join(args)}\n{kubectl(*args, check=False)}")
    pods = get_json("pods", "-n", ns) or {}
    for p in pods.get("items", []):
        pname = p["metadata"]["name"]
        logs = kubectl("logs", "-n", ns, pname, "--all-containers", "--tail=60", check=False)
        print(f"----- logs {pname} (tail) -----\n{logs}")


# ------------------------------------------------------------------ models (built with the worker venv: TF 2.9.1)

MODEL_SCRIPT = """
import sys
import tensorflow as tf
from tfe_worker.demo import train_mlp
out = sys.argv[1]
train_mlp(out + "/digits.h5")
m = tf.keras.Sequential([tf.keras.layers.LSTM(4, input_shape=(8, 4)), tf.keras.layers.Dense(2)])
m.save(out + "/lstm.h5")
"""


def model_configmap(ns: str, name: str, path: Path, key: str = "model.h5") -> None:
    kubectl("create", "configmap", name, "-n", ns, f"--from-file={key}={path}")


# ------------------------------------------------------------------ the local registry (make cluster-up)

# Where the chart's images come from in make e2e (make images push REGISTRY=127.0.0.1:5000); user
# tfe, the password that make cluster-up made (hack/cluster/versions.sh REGISTRY_AUTH).
REGISTRY = os.environ.get("TFE_REGISTRY", "127.0.0.1:5000")
_DEFAULT_PASSWORD_FILE = Path.home() / ".cache" / "tfe-operator" / "registry-auth" / "password"
REGISTRY_PASSWORD_FILE = Path(os.environ.get("TFE_REGISTRY_PASSWORD_FILE", str(_DEFAULT_PASSWORD_FILE)))
_MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)


def registry_password() -> str:
    return REGISTRY_PASSWORD_FILE.read_text().strip() if REGISTRY_PASSWORD_FILE.exists() else ""


def registry_digest(repo: str, tag: str) -> str:
    """The manifest digest the registry serves for repo:tag (what a pull resolves to)."""
    import base64
    import urllib.request

    host, _, name = repo.partition("/")
    headers = {"Accept": _MANIFEST_TYPES}
    if registry_password():
        headers["Authorization"] = "Basic " + base64.b64encode(f"tfe:{registry_password()}".encode()).decode()
    req = urllib.request.Request(f"http://{host}/v2/{name}/manifests/{tag}", method="HEAD", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(r.headers["Docker-Content-Digest"])
    except OSError as e:
        raise AssertionError(f"{repo}:{tag} is not in the registry ({e}): run make images push REGISTRY={host}") from e


def create_pull_secret(ns: str, name: str = "regcred") -> None:
    """A docker-registry Secret for the local registry (its real credentials: pulls need them)."""
    kubectl("create", "secret", "docker-registry", name, "-n", ns, f"--docker-server={REGISTRY}",
            "--docker-username=tfe", f"--docker-password={registry_password() or 'none'}")  # fmt: skip


# ------------------------------------------------------------------ a key-swapping proxy (issue 10 item 2)


class KeySwappingProxy:
    """A reverse proxy on loopback in front of a model's endpoint, as an Ingress, a load balancer
    or anyone on the path could be: plain HTTP to the client, HTTP(S) to `upstream` (verified
    against `ca`). Honest while `swap` is None; with `swap = "serverI"` it replaces that worker's
    publicKey in GET /v1/models/<name> with its own, and keeps the predict requests for itself
    (not forwarded): for each, the share pair meant for that worker, opened with its own key.
    Every request line is recorded in `seen`."""

    def __init__(self, upstream: str, ca: Path | None = None) -> None:
        import http.client
        import ssl
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from tfe_client.crypto import WorkerKey

        self.attacker = WorkerKey.generate()
        self.swap: str | None = None
        self.seen: list[str] = []
        self.stolen: list[Any] = []  # share pairs opened with the attacker's key
        u = urllib.parse.urlsplit(upstream)
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None) if u.scheme == "https" else None
        proxy = self

        def connect() -> http.client.HTTPConnection:
            if ctx is not None:
                return http.client.HTTPSConnection(u.hostname or "", u.port, timeout=300, context=ctx)
            return http.client.HTTPConnection(u.hostname or "", u.port, timeout=300)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def forward(self, body: bytes | None) -> tuple[int, bytes, dict[str, str]]:
                conn = connect()
                try:
                    fwd = {k: v for k, v in self.headers.items()
                           if k.lower() in ("accept", "content-type", "authorization")}
                    conn.request(self.command, self.path, body=body, headers=fwd)
                    r = conn.getresponse()
                    keep = {k: v for k, v in r.getheaders() if k.lower() in ("content-type", "retry-after")}
                    return r.status, r.read(), keep
                finally:
                    conn.close()

            def do_GET(self) -> None:
                proxy.seen.append(f"GET {self.path}")
                status, body, headers = self.forward(None)
                if proxy.swap and status == 200 and self.path.startswith("/v1/models/"):
                    body = proxy._swapped(body)
                self.reply(status, body, headers)

            def do_POST(self) -> None:
                proxy.seen.append(f"POST {self.path}")
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if proxy.swap and self.path.endswith(":predict"):
                    proxy._steal(self.path, body)
                    err = {"error": {"code": "unavailable", "message": "upstream unavailable"}}
                    self.reply(502, json.dumps(err).encode(), {"Content-Type": "application/json"})
                    return
                self.reply(*self.forward(body))

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}"
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)

    def _swapped(self, body: bytes) -> bytes:
        from tfe_client.crypto import b64e

        doc = json.loads(body)
        for w in doc["workers"]:
            if w["name"] == self.swap:
                w["publicKey"] = b64e(self.attacker.public)
        return json.dumps(doc).encode()

    def _steal(self, path: str, body: bytes) -> None:
        import base64

        from tfe_client import wire
        from tfe_client.crypto import Sealed

        model = path.rsplit("/", 1)[1].removesuffix(":predict")
        req = json.loads(body)
        shape = tuple(req["shape"])
        (b,) = [b for b in req["bundles"] if b["worker"] == self.swap]
        sealed = Sealed(base64.b64decode(b["nonce"]), base64.b64decode(b["ciphertext"]))
        raw = self.attacker.open_request(base64.b64decode(req["ephemeralKey"]), sealed,
                                         wire.aad("req", model, req["requestId"], str(self.swap), shape), "proxy")
        self.stolen.append(wire.pair_from_bytes(raw, shape, "proxy"))

    def posts(self) -> list[str]:
        return [s for s in self.seen if s.startswith("POST")]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(10)
