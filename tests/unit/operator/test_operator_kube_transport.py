"""kube.kubernetes_transport, the operator's one use of the kubernetes client (its public
``kubernetes.dynamic`` API, issue 13), against a local HTTP server standing in for the API server:
the requests it sends (method, path, query, headers, body) and the raw answers it returns,
errors included. The version pyproject's floor names is the one this runs against."""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from operator_testlib import make_ctx

from tfe_operator import builders
from tfe_operator.kube import METADATA_ONLY, Kube, Transport, kubernetes_transport
from tfe_operator.reconcile import Ref

TOKEN = "t0ken-for-the-test"
GIT_VERSION = "v1.35.0-tfe-operator-unit-test"  # names the discovery cache files this test leaves


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class FakeApiServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[Seen] = []
        # (method, path) -> (status, body); the rest: 404 with a Status message
        self.answers: dict[tuple[str, str], tuple[int, Any]] = {
            # what DynamicClient's discovery reads when it is made
            ("GET", "/version"): (200, {"major": "1", "minor": "35", "gitVersion": GIT_VERSION}),
            ("GET", "/apis"): (200, {"kind": "APIGroupList", "groups": []}),
            ("GET", "/api"): (200, {"kind": "APIVersions", "versions": ["v1"]}),
        }


class _Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.seen.append(Seen(self.command, self.path, headers, body))
        path = self.path.split("?", 1)[0]
        status, doc = self.server.answers.get(
            (self.command, path), (404, {"kind": "Status", "message": f"{path} not found"})
        )
        out = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_PATCH = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    srv = FakeApiServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


@pytest.fixture
def transport(server: FakeApiServer, tmp_path: Path) -> Iterator[Transport]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                "users": [{"name": "u", "user": {"token": TOKEN}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    before = set(Path(tempfile.gettempdir()).glob("osrcp-*.json"))
    t, in_cluster = kubernetes_transport(in_cluster=False, kubeconfig=str(kubeconfig))
    assert in_cluster is False
    server.seen.clear()  # discovery
    yield t
    # the discovery cache DynamicClient wrote in the temporary directory
    for cache in set(Path(tempfile.gettempdir()).glob("osrcp-*.json")) - before:
        if GIT_VERSION in cache.read_text(errors="replace"):
            cache.unlink()


def test_get_sends_path_query_accept_and_token_and_returns_the_raw_answer(
    server: FakeApiServer, transport: Transport
) -> None:
    server.answers[("GET", "/api/v1/namespaces/ml/pods")] = (200, {"kind": "PodList", "items": []})
    status, body = transport(
        "GET", "/api/v1/namespaces/ml/pods", [("labelSelector", "a=b,c=d")], accept=METADATA_ONLY
    )
    assert (status, json.loads(body)) == (200, {"kind": "PodList", "items": []})
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("GET", "/api/v1/namespaces/ml/pods?labelSelector=a%3Db%2Cc%3Dd")
    assert seen.headers["accept"] == METADATA_ONLY
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"


def test_errors_come_back_as_status_and_body(server: FakeApiServer, transport: Transport) -> None:
    status, body = transport("DELETE", "/api/v1/namespaces/ml/services/gone")
    assert status == 404 and json.loads(body)["message"] == "/api/v1/namespaces/ml/services/gone not found"
    server.answers[("POST", "/apis/batch/v1/namespaces/ml/jobs")] = (409, {"message": "exists"})
    status, body = transport("POST", "/apis/batch/v1/namespaces/ml/jobs", body={"kind": "Job"})
    assert (status, json.loads(body)) == (409, {"message": "exists"})


def test_kube_over_the_client_applies_server_side_creates_once_and_deletes(
    server: FakeApiServer, transport: Transport
) -> None:
    kube = Kube(transport)
    cm = builders.config_map(make_ctx())
    path = "/api/v1/namespaces/ml/configmaps/digits-tfe-config"
    server.answers[("PATCH", path)] = (200, cm)
    assert kube.apply(cm) == "applied"
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("PATCH", f"{path}?fieldManager=tfe-operator&force=true")
    assert seen.headers["content-type"] == "application/apply-patch+yaml"
    assert json.loads(seen.body) == cm  # JSON is YAML: the manifest as built
    job = builders.share_job(make_ctx(), 1)
    server.answers[("POST", "/apis/batch/v1/namespaces/ml/jobs")] = (409, {"message": "exists"})
    assert kube.apply(job) == "exists"
    assert server.seen[-1].headers["content-type"] == "application/json"
    kube.delete("ml", Ref("v1", "Service", "gone"))  # 404: already gone is success
    assert server.seen[-1].method == "DELETE"
    assert kube.get("v1", "ConfigMap", "ml", "missing") is None
