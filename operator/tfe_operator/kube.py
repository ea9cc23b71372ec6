"""The operator's only I/O with the API server and the pods: one idempotent apply helper,
deletes, reads, and HTTP GETs to workers and the serve pod.

``apply`` is the one way objects are written: server-side apply (creates or converges),
except for immutable kinds (Job), which are created once; 409 on create and 404 on delete
count as success, so every call can be repeated (operator restarts duplicate nothing).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import api
from .reconcile import Ref

log = logging.getLogger(__name__)

# (apiVersion, kind) -> (path prefix, plural). Namespaced resources only.
RESOURCES: Mapping[tuple[str, str], tuple[str, str]] = {
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "Secret"): ("/api/v1", "secrets"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("v1", "PersistentVolumeClaim"): ("/api/v1", "persistentvolumeclaims"),
    ("apps/v1", "StatefulSet"): ("/apis/apps/v1", "statefulsets"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("/apis/networking.k8s.io/v1", "networkpolicies"),
    (api.API_VERSION, api.KIND): (f"/apis/{api.API_VERSION}", api.PLURAL),
    # spec.mesh.issuerRef (certmgr): the mesh identities issued by cert-manager
    ("cert-manager.io/v1", "Certificate"): ("/apis/cert-manager.io/v1", "certificates"),
    ("cert-manager.io/v1", "CertificateRequest"): (
        "/apis/cert-manager.io/v1",
        "certificaterequests",
    ),
}

# Kinds whose spec cannot change after creation: created once, never patched.
CREATE_ONCE = frozenset({("batch/v1", "Job")})

METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.body = body
        super().__init__(f"{method} {path}: HTTP {status}: {_api_message(body)}")


def _api_message(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:300]
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return body[:300]


class Transport(Protocol):
    """A raw HTTP call to the API server: returns (status, body bytes)."""

    def __call__(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> tuple[int, bytes]: ...


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    try:
        prefix, plural = RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"unsupported kind {api_version}/{kind}") from None
    return f"{prefix}/namespaces/{namespace}/{plural}"


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(api_version, kind, namespace)}/{name}"


@dataclass
class Kube:
    transport: Transport

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
        ok: Sequence[int] = (),
    ) -> tuple[int, Any]:
        status, raw = self.transport(method, path, query, body, content_type, accept)
        if 200 <= status < 300 or status in ok:
            text = raw.decode("utf-8", "replace") if raw else ""
            try:
                return status, json.loads(text) if text else None
            except ValueError:
                return status, text
        raise ApiError(status, method, path, raw.decode("utf-8", "replace"))

    # ------------------------------------------------------------ writes

    def apply(self, manifest: Mapping[str, Any]) -> str:
        """Make the object exist as described. Returns "applied", "created" or "exists"."""
        meta = manifest["metadata"]
        av, kind, ns, name = (
            manifest["apiVersion"],
            manifest["kind"],
            meta["namespace"],
            meta["name"],
        )
        if (av, kind) in CREATE_ONCE:
            status, _ = self._call(
                "POST",
                collection_path(av, kind, ns),
                query=[("fieldManager", api.FIELD_MANAGER)],
                body=manifest,
                ok=(409,),
            )
            return "exists" if status == 409 else "created"
        self._call(
            "PATCH",
            object_path(av, kind, ns, name),
            query=[("fieldManager", api.FIELD_MANAGER), ("force", "true")],
            body=manifest,
            content_type="application/apply-patch+yaml",
        )
        return "applied"

    def delete(self, namespace: str, ref: Ref) -> bool:
        """Delete (background propagation). Returns False if it was already gone."""
        status, _ = self._call(
            "DELETE",
            object_path(ref.api_version, ref.kind, namespace, ref.name),
            body={"propagationPolicy": "Background"},
            ok=(404,),
        )
        return status != 404

    # ------------------------------------------------------------ reads

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        status, doc = self._call("GET", object_path(api_version, kind, namespace, name), ok=(404,))
        return None if status == 404 else doc

    def exists(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Metadata-only GET: never transfers a Secret's or ConfigMap's contents."""
        status, _ = self._call(
            "GET",
            object_path(api_version, kind, namespace, name),
            accept=METADATA_ONLY,
            ok=(404,),
        )
        return status != 404

    def get_metadata(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        """The object's metadata only (a PartialObjectMetadata), or None: never a Secret's data."""
        status, doc = self._call(
            "GET",
            object_path(api_version, kind, namespace, name),
            accept=METADATA_ONLY,
            ok=(404,),
        )
        return None if status == 404 else doc

    def list(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        _, doc = self._call(
            "GET",
            collection_path(api_version, kind, namespace),
            query=[("labelSelector", selector)],
        )
        items = (doc or {}).get("items", []) if isinstance(doc, dict) else []
        return list(items)

    def proxy_get(self, namespace: str, kind: str, name: str, port: int, path: str) -> Any:
        """GET through the API server's proxy (kind: pods or services)."""
        _, doc = self._call(
            "GET", f"/api/v1/namespaces/{namespace}/{kind}/{name}:{port}/proxy{path}"
        )
        return doc


def http_get_json(url: str, timeout: float) -> Any:
    """A plain GET of a JSON document from a worker or the serve pod."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"not an http URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # scheme checked above
        return json.loads(resp.read().decode())


def kubernetes_transport(
    in_cluster: bool | None = None, kubeconfig: str | None = None
) -> tuple[Transport, bool]:
    """A Transport over the kubernetes client's public API (its configuration from kubeconfig,
    ``kubeconfig`` or $KUBECONFIG or ~/.kube/config, or the pod's service account; requests
    through ``kubernetes.dynamic.DynamicClient.request``). Returns (transport, in_cluster)."""
    import kubernetes.client as k8s_client
    import kubernetes.config as k8s_config
    import kubernetes.dynamic as k8s_dynamic

    # Any on purpose: the client ships no type information.
    client: Any = k8s_client
    config: Any = k8s_config
    api_exception: Any = client.exceptions.ApiException
    dynamic_client: Any = k8s_dynamic.DynamicClient

    configuration = client.Configuration()
    loaded_in_cluster = False
    if in_cluster is not False:
        try:
            config.load_incluster_config(client_configuration=configuration)
            loaded_in_cluster = True
        except config.ConfigException:
            if in_cluster:
                raise
    if not loaded_in_cluster:
        # $KUBECONFIG read now: the client's own default was read once, when it was imported
        config_file = kubeconfig or os.environ.get("KUBECONFIG") or None
        config.load_kube_config(config_file=config_file, client_configuration=configuration)
    dynamic: Any = dynamic_client(client.ApiClient(configuration))

    def transport(
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> tuple[int, bytes]:
        try:
            resp = dynamic.request(
                method,
                path,
                body=body,
                query_params=list(query),
                header_params={"Accept": accept},
                content_type=content_type,
                _request_timeout=30,
                serialize=False,  # the raw response: status and body as the server sent them
            )
        except api_exception as e:
            raw = e.body if e.body is not None else b""
            return int(e.status or 0), raw.encode() if isinstance(raw, str) else bytes(raw)
        return int(resp.status), bytes(resp.data or b"")

    return transport, loaded_in_cluster
