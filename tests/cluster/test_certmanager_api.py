"""spec.mesh.issuerRef against a real API server and cert-manager, without the host cluster.

A private etcd and kube-apiserver (the cluster build's binaries, ports of their own, no nodes:
no pod ever runs) and cert-manager's controller (``hack/cluster/build.sh cert-manager``; no
webhook, no cainjector). The operator's reconcile handler (``handlers._reconcile``, what kopf
calls) is driven directly, its status patch written back as kopf would. What this shows that
the fake API server of the unit tests cannot: the API server accepts the operator's
Certificates (cert-manager's CRD schema), cert-manager issues them with a CA issuer and the
operator judges them Ready, adopting the issued Secrets keeps their data, a renewal (as
``cmctl renew`` triggers it) changes the pods' restart trigger, and a SelfSigned issuer or a
missing one keeps the model Pending with the reason. The pods themselves (Serving, predictions,
the guards' certificates, refusals) are ``test_certmanager_cluster.py`` on the host cluster.

``make e2e`` runs it (marker ``cluster``); alone: ``.venv/bin/pytest -m cluster
tests/cluster/test_certmanager_api.py``. Skipped when the binaries are not built.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from clusterlib import stop_process
from cryptography import x509
from test_certmanager_cluster import IDENTITIES, _build_dir

# runs with the cluster suite (make e2e): it needs the cluster build's kube-apiserver and etcd,
# not the cluster itself
pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EM_CRD = REPO / "charts" / "tfe-operator" / "crds" / "encryptedmodels.tfe.dev.yaml"
NS = "cm-api"
TOKEN = "tfe-certmgr-api-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    kubectl: str
    kubeconfig: Path
    cert_manager_log: Path

    def k(self, *args: str, input: str | None = None, check: bool = True) -> str:
        p = subprocess.run(
            [self.kubectl, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and p.returncode:
            raise AssertionError(f"kubectl {' '.join(args)}: {p.stderr}")
        return p.stdout

    def get(self, *args: str) -> Any:
        out = self.k("get", *args, "-o", "json", check=False)
        return json.loads(out) if out.strip() else None

    def apply(self, doc: dict[str, Any], ns: str | None = NS) -> None:
        self.k("apply", *(["-n", ns] if ns else []), "-f", "-", input=json.dumps(doc))

    def ready(self, *args: str) -> bool:
        conds = ((self.get(*args) or {}).get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def wait(what: str, f: Callable[[], Any], timeout: float = 120) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = f()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"timed out: {what}")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    cm = _build_dir()
    bins = Path(
        subprocess.run(
            [str(REPO / "hack/cluster/build.sh"), "path"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    etcd = shutil.which("etcd")
    missing = [str(p) for p in (bins / "kube-apiserver", bins / "kubectl", cm / "controller") if not p.exists()]
    if etcd is None or missing:
        pytest.skip(f"needs etcd and {missing or 'the cluster build'} (hack/cluster/build.sh k8s cert-manager)")
    d = tmp_path_factory.mktemp("cm-api")
    procs: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(name: str, args: list[str]) -> None:
        f = open(d / f"{name}.log", "wb")  # noqa: SIM115  # closed below
        logs.append(f)
        procs.append(subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT))

    try:
        client, peer, metrics, secure = (_free_port() for _ in range(4))
        start(
            "etcd",
            [
                etcd,
                "--name=cmapi",
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=cmapi=http://127.0.0.1:{peer}",
                f"--listen-metrics-urls=http://127.0.0.1:{metrics}",
                "--unsafe-no-fsync",
            ],
        )
        subprocess.run(
            ["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"], check=True, capture_output=True, timeout=60
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")],
            check=True,
            capture_output=True,
            timeout=60,
        )
        (d / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")
        start(
            "apiserver",
            [
                str(bins / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{client}",
                "--bind-address=127.0.0.1",
                f"--secure-port={secure}",
                f"--cert-dir={d / 'certs'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=AlwaysAllow",
                "--service-cluster-ip-range=10.222.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--profiling=false",
            ],
        )
        kubeconfig = d / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "c",
                            "cluster": {"server": f"https://127.0.0.1:{secure}", "insecure-skip-tls-verify": True},
                        }
                    ],
                    "users": [{"name": "u", "user": {"token": TOKEN}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "c",
                }
            )
        )
        a = Api(str(bins / "kubectl"), kubeconfig, d / "cert-manager.log")
        wait("kube-apiserver ready", lambda: a.k("get", "--raw", "/readyz", check=False).strip() == "ok", 180)
        a.k("apply", "--server-side", "-f", str(EM_CRD))
        a.k("apply", "--server-side", "-f", str(cm / "crds.yaml"))
        for crd in ("encryptedmodels.tfe.dev", "certificates.cert-manager.io", "issuers.cert-manager.io"):
            a.k("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
        for ns in (NS, "tfe-cert-manager"):
            a.k("create", "namespace", ns)
        a.k("create", "configmap", "digits-model", "-n", NS, "--from-literal=model.h5=unused")
        start(
            "cert-manager",
            [
                str(cm / "controller"),
                f"--kubeconfig={kubeconfig}",
                "--cluster-resource-namespace=tfe-cert-manager",
            ],
        )
        yield a
    finally:
        for p in reversed(procs):
            stop_process(p, 15)
        for f in logs:
            f.close()


@pytest.fixture(scope="module")
def reconcile(api: Api) -> Iterator[Callable[[str], dict[str, Any]]]:
    """One reconcile of EncryptedModel `name` by the operator's handler; returns its status."""
    import kopf

    from tfe_operator import handlers
    from tfe_operator.kube import Kube, kubernetes_transport
    from tfe_operator.settings import Settings

    transport, _ = kubernetes_transport(in_cluster=False, kubeconfig=str(api.kubeconfig))
    settings = Settings(worker_image="tfe-operator/worker:test", http_mode="proxy")
    before = handlers.RUNTIME
    handlers.build_registry(handlers.Runtime(settings=settings, kube=Kube(transport), post_event=lambda *_: None))

    def run(name: str) -> dict[str, Any]:
        b = kopf.Body(api.get("encryptedmodel", name, "-n", NS))
        patch = kopf.Patch()
        handlers._reconcile(b, b.meta, b.spec, b.status, patch, kopf.Memo())
        if patch.get("status"):
            body = json.dumps({"status": patch["status"]})
            api.k("patch", "encryptedmodel", name, "-n", NS, "--subresource=status", "--type=merge", "-p", body)
        return dict(api.get("encryptedmodel", name, "-n", NS).get("status") or {})

    yield run
    handlers.RUNTIME = before  # an in-process operator of the same session keeps its own


def em(name: str, issuer: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "tfe.dev/v1alpha1",
        "kind": "EncryptedModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
            "mesh": {"issuerRef": issuer},
        },
    }


def all_ready(api: Api, model: str) -> bool:
    return all(api.ready("certificate", f"{model}-mesh-{i}", "-n", NS) for i in IDENTITIES)


def leaf(api: Api, secret: str) -> x509.Certificate:
    data = api.get("secret", secret, "-n", NS)["data"]
    return x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))


def test_waits_for_the_issuer_then_proceeds_and_rolls_on_renewal(
    api: Api, reconcile: Callable[[str], dict[str, Any]]
) -> None:
    api.apply(em("cm", {"name": "mesh-ca"}))
    st = reconcile("cm")
    assert st["phase"] == "Pending", st
    assert st["message"].startswith("mesh certificates not ready: server0: "), st
    certs = api.get("certificates", "-n", NS)["items"]
    assert sorted(c["metadata"]["name"] for c in certs) == sorted(f"cm-mesh-{i}" for i in IDENTITIES)
    st = wait(
        "cert-manager's reason in the status",
        lambda: (s := reconcile("cm"))["mesh"]["certificates"][0].get("reason", "").startswith("cert-manager: ") and s,
    )
    print(json.dumps(st["mesh"]["certificates"][0]))
    assert api.get("statefulset", "cm-worker", "-n", NS) is None

    # self-signed ClusterIssuer -> CA Certificate -> CA Issuer mesh-ca
    api.apply(
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "ClusterIssuer",
            "metadata": {"name": "selfsigned"},
            "spec": {"selfSigned": {}},
        },
        None,
    )
    api.apply(
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": "mesh-root"},
            "spec": {
                "isCA": True,
                "commonName": "tfe mesh api test root",
                "secretName": "mesh-root",
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "issuerRef": {"name": "selfsigned", "kind": "ClusterIssuer", "group": "cert-manager.io"},
            },
        }
    )
    wait("CA certificate", lambda: api.ready("certificate", "mesh-root", "-n", NS))
    api.apply(
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": "mesh-ca"},
            "spec": {"ca": {"secretName": "mesh-root"}},
        }
    )
    wait("CA issuer", lambda: api.ready("issuer", "mesh-ca", "-n", NS))
    wait("six identities issued", lambda: all_ready(api, "cm"), 180)
    reconcile("cm")  # adopts the issued Secrets
    st = reconcile("cm")
    print(json.dumps(st["mesh"], indent=1))
    assert [(c["identity"], c["state"]) for c in st["mesh"]["certificates"]] == [(i, "Ready") for i in IDENTITIES]
    assert st["mesh"]["issuer"] == "Issuer/mesh-ca"
    assert st["phase"] == "Provisioning", st  # the workers' StatefulSet exists; no node runs it
    sts = api.get("statefulset", "cm-worker", "-n", NS)
    hash1 = sts["spec"]["template"]["metadata"]["annotations"]["tfe.dev/mesh-hash"]
    uid = api.get("encryptedmodel", "cm", "-n", NS)["metadata"]["uid"]
    assert api.get("secret", "cm-mesh-ca", "-n", NS) is None
    for i in IDENTITIES:
        sec = api.get("secret", f"cm-mesh-{i}", "-n", NS)
        assert sec["type"] == "kubernetes.io/tls"
        assert set(sec["data"]) >= {"tls.crt", "tls.key", "ca.crt"}  # adoption kept the data
        assert uid in [o["uid"] for o in sec["metadata"]["ownerReferences"]]
        cert = leaf(api, f"cm-mesh-{i}")
        assert cert.subject.rfc4514_string() == f"CN={i}"
        assert cert.issuer.rfc4514_string() == "CN=tfe mesh api test root"
    sans = leaf(api, "cm-mesh-server1").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["server1", f"cm-worker-1.cm-workers.{NS}.svc"]

    # Renewal, as `cmctl renew` asks for it: a new serial, a new pod-template hash (pods roll).
    serial = leaf(api, "cm-mesh-server1").serial_number
    cert = api.get("certificate", "cm-mesh-server1", "-n", NS)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conds = [c for c in cert["status"]["conditions"] if c["type"] != "Issuing"]
    conds.append(
        {
            "type": "Issuing",
            "status": "True",
            "reason": "ManuallyTriggered",
            "message": "test",
            "lastTransitionTime": now,
        }
    )
    api.k(
        "patch",
        "certificate",
        "cm-mesh-server1",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"conditions": conds}}),
    )
    wait("server1 renewed", lambda: leaf(api, "cm-mesh-server1").serial_number != serial)

    def renewal_judged() -> dict[str, Any] | None:
        s = reconcile("cm")
        return s if all(c["state"] == "Ready" for c in s["mesh"]["certificates"]) else None

    st = wait("renewal judged Ready", renewal_judged)
    row = next(c for c in st["mesh"]["certificates"] if c["identity"] == "server1")
    assert int(row["serial"], 16) == leaf(api, "cm-mesh-server1").serial_number != serial
    sts = api.get("statefulset", "cm-worker", "-n", NS)
    assert sts["spec"]["template"]["metadata"]["annotations"]["tfe.dev/mesh-hash"] != hash1


def test_selfsigned_and_missing_issuers_keep_the_model_pending_with_the_reason(
    api: Api, reconcile: Callable[[str], dict[str, Any]]
) -> None:
    api.apply(
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "ClusterIssuer",
            "metadata": {"name": "selfsigned"},
            "spec": {"selfSigned": {}},
        },
        None,
    )
    api.apply(em("ss", {"name": "selfsigned", "kind": "ClusterIssuer"}))
    api.apply(em("none", {"name": "no-such-issuer"}))
    reconcile("ss")
    reconcile("none")
    wait("SelfSigned identities issued", lambda: all_ready(api, "ss"), 180)
    st = reconcile("ss")
    assert st["phase"] == "Pending" and "server0: ca.crt is not a CA certificate" in st["message"], st
    assert {c["state"] for c in st["mesh"]["certificates"]} == {"Failed"}

    # the reason is the CertificateRequest's: the issuer does not exist
    def issuer_named() -> dict[str, Any] | None:
        s = reconcile("none")
        # every identity's reason is its CertificateRequest's once cert-manager made them all
        return s if "server0: cert-manager: CertificateRequest " in s.get("message", "") else None

    st = wait("the missing issuer named", issuer_named)
    assert st["phase"] == "Pending" and "server0: cert-manager: CertificateRequest " in st["message"], st
    assert "no-such-issuer" in st["message"], st
    print(st["message"][:400])
    for m in ("ss", "none"):
        assert api.get("statefulset", f"{m}-worker", "-n", NS) is None
