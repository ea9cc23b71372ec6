"""The one apply helper over a fake transport: idempotency rules and request shapes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from operator_testlib import make_ctx

from tfe_operator import builders
from tfe_operator.kube import ApiError, Kube, collection_path, object_path
from tfe_operator.reconcile import Ref


class FakeTransport:
    def __init__(self, responses: list[tuple[int, Any]]) -> None:
        self.responses = list(responses)
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> tuple[int, bytes]:
        self.calls.append(
            {
                "method": method,
                "path": path,
                "query": list(query),
                "body": body,
                "content_type": content_type,
                "accept": accept,
            }
        )
        status, doc = self.responses.pop(0)
        return status, json.dumps(doc).encode() if doc is not None else b""


def test_apply_is_server_side_apply() -> None:
    t = FakeTransport([(200, {})])
    cm = builders.config_map(make_ctx())
    assert Kube(t).apply(cm) == "applied"
    assert t.calls == [
        {
            "method": "PATCH",
            "path": "/api/v1/namespaces/ml/configmaps/digits-tfe-config",
            "query": [("fieldManager", "tfe-operator"), ("force", "true")],
            "body": cm,
            "content_type": "application/apply-patch+yaml",
            "accept": "application/json",
        }
    ]


@pytest.mark.parametrize(("status", "result"), [(201, "created"), (409, "exists")])
def test_jobs_are_created_once_and_409_is_success(status: int, result: str) -> None:
    t = FakeTransport([(status, {"kind": "Status"})])
    job = builders.share_job(make_ctx(), 1)
    assert Kube(t).apply(job) == result
    assert t.calls[0]["method"] == "POST"
    assert t.calls[0]["path"] == "/apis/batch/v1/namespaces/ml/jobs"


def test_delete_404_is_success() -> None:
    t = FakeTransport([(200, {}), (404, {"kind": "Status", "reason": "NotFound"})])
    kube = Kube(t)
    ref = Ref("apps/v1", "StatefulSet", "digits-worker")
    assert kube.delete("ml", ref) is True
    assert kube.delete("ml", ref) is False
    assert t.calls[0]["method"] == "DELETE"
    assert t.calls[0]["path"] == "/apis/apps/v1/namespaces/ml/statefulsets/digits-worker"
    assert t.calls[0]["body"] == {"propagationPolicy": "Background"}


def test_errors_raise_with_the_api_message() -> None:
    t = FakeTransport([(422, {"kind": "Status", "message": "spec: Forbidden: updates to statefulset spec"})])
    with pytest.raises(ApiError) as e:
        Kube(t).apply(builders.worker_statefulset(make_ctx()))
    assert e.value.status == 422
    assert "Forbidden: updates to statefulset spec" in str(e.value)


def test_reads() -> None:
    t = FakeTransport(
        [
            (404, None),
            (200, {"metadata": {"name": "x"}}),
            (200, {"items": [{"metadata": {"name": "a"}}]}),
            (200, {"ready": True}),
        ]
    )
    kube = Kube(t)
    assert kube.get("apps/v1", "Deployment", "ml", "digits-serve") is None
    assert kube.exists("v1", "Secret", "ml", "weights") is True
    assert t.calls[1]["accept"].startswith("application/json;as=PartialObjectMetadata")
    assert kube.list("v1", "Pod", "ml", {"b": "2", "a": "1"}) == [{"metadata": {"name": "a"}}]
    assert t.calls[2]["query"] == [("labelSelector", "a=1,b=2")]
    assert kube.proxy_get("ml", "services", "digits", 8000, "/v1/status") == {"ready": True}
    assert t.calls[3]["path"] == "/api/v1/namespaces/ml/services/digits:8000/proxy/v1/status"


def test_paths() -> None:
    assert collection_path("networking.k8s.io/v1", "NetworkPolicy", "a") == (
        "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies"
    )
    assert object_path("v1", "PersistentVolumeClaim", "a", "b") == ("/api/v1/namespaces/a/persistentvolumeclaims/b")
    with pytest.raises(ValueError):
        collection_path("v1", "Node", "a")


def test_every_builder_kind_is_routable() -> None:
    ctx = make_ctx()
    for m in [*builders.base_objects(ctx), *builders.serving_objects(ctx, 1), builders.share_job(ctx, 1)]:
        collection_path(m["apiVersion"], m["kind"], "ns")
