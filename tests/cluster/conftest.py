"""Cluster tests of the operator (marker ``cluster``; ``make e2e``): hooks and fixtures.

Without a cluster (.cluster/kubeconfig) the tests are skipped, except when CI=true: then the
run fails, so a CI without a cluster never passes silently. Helpers live in clusterlib.py.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterlib import (
    CRD,
    KIND,
    KUBECONFIG,
    MODEL_SCRIPT,
    NS_PREFIX,
    WORKER_IMAGE,
    WORKER_PYTHON,
    InProcessOperator,
    KubectlError,
    apiserver_cidrs,
    dump,
    kubectl,
)

# Before any test imports the kubernetes client: it reads $KUBECONFIG once, at import, as the
# default for every later load_kube_config() (kopf's login_via_client of the in-process operator
# included). A test that imports it first (test_certmanager_api, with its own API server) would
# otherwise freeze the default at ~/.kube/config for the whole session.
os.environ["KUBECONFIG"] = str(KUBECONFIG)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the local Kubernetes cluster (.cluster/kubeconfig)")
    config.addinivalue_line("markers", "worker_image: runs the worker image (make images)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = [i for i in items if i.get_closest_marker("cluster")]
    if not wanted or KUBECONFIG.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        raise pytest.UsageError(f"CI=true but no cluster is configured ({KUBECONFIG} missing): run make cluster-up")
    skip = pytest.mark.skip(reason=f"no cluster configured ({KUBECONFIG} missing; make cluster-up)")
    for item in wanted:
        item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def cluster() -> str:
    """The cluster answers, and the CRD from the chart is installed and established."""
    try:
        kubectl("get", "--raw", "/readyz", timeout=30)
    except (KubectlError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"a cluster is configured ({KUBECONFIG}) but does not answer: {e}")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/encryptedmodels.tfe.dev", "--timeout=60s")
    return str(KUBECONFIG)


@pytest.fixture(scope="session")
def operator(cluster: str) -> Iterator[InProcessOperator]:
    os.environ["KUBECONFIG"] = cluster
    # Settings are read when tfe_operator.handlers is first imported.
    os.environ.setdefault("TFE_OPERATOR_RESYNC_SECONDS", "2")
    os.environ.setdefault("TFE_OPERATOR_HTTP_MODE", "proxy")  # the operator is outside the pod network
    os.environ.setdefault("TFE_OPERATOR_WORKER_IMAGE", WORKER_IMAGE)
    os.environ.setdefault("TFE_OPERATOR_IMAGE_PULL_POLICY", "Never")  # images come from make images
    os.environ.setdefault("TFE_OPERATOR_SHARE_BACKOFF_LIMIT", "1")
    if KIND:  # NetworkPolicy enforced: admit the API server's pod proxy to the guards' health port
        os.environ.setdefault("TFE_OPERATOR_HEALTH_SOURCE_CIDRS", ",".join(apiserver_cidrs()))
    op = InProcessOperator()
    op.start()
    yield op
    op.stop()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, operator: InProcessOperator) -> Iterator[str]:
    name = f"{NS_PREFIX}{request.node.name.replace('_', '-').lower()[:30].strip('-')}-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    yield name
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(name)
    # While the operator runs: kopf's timers put a finalizer on each EncryptedModel, which
    # only a running operator removes (a namespace deleted later would hang on it).
    kubectl("delete", "encryptedmodels", "--all", "-n", name, "--timeout=90s", check=False)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not WORKER_PYTHON.exists():
        pytest.fail(f"{WORKER_PYTHON} missing: run make setup (the test models are built with TF 2.9.1)")
    out = tmp_path_factory.mktemp("models")
    subprocess.run(
        [str(WORKER_PYTHON), "-c", MODEL_SCRIPT, str(out)],
        check=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return out
