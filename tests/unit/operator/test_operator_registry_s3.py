"""Whole manifests for issue 10's image pulls (imagePullSecrets from the operator's settings or
the EncryptedModel) and model.s3 (the share Job's arguments and its credentials from a Secret).
The expected manifests are test_operator_builders' own, changed only where these features say."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from operator_testlib import make_ctx
from test_operator_builders import expected_deployment, expected_endpoint, expected_job, expected_statefulset

from tfe_operator import builders
from tfe_operator.settings import Settings
from tfe_operator.spec import S3Credentials, S3Source, SpecError, parse_spec

SHA = "cd" * 32
CM_MODEL = {"configMap": {"name": "digits-model", "key": "model.h5"}}
S3_MODEL = {
    "s3": {
        "bucket": "models",
        "key": "team/digits.h5",
        "sha256": SHA,
        "endpoint": "http://minio.storage:9000/",
        "region": "eu-west-1",
        "credentialsSecretRef": {"name": "s3-creds"},
    }
}
SETTINGS = Settings(worker_image="tfe-operator/worker:0.1.0")


def _pods(manifest: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return pod


def _with_pull_secrets(manifest: dict[str, Any], names: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    _pods(out)["imagePullSecrets"] = [{"name": n} for n in names]
    return out


# ------------------------------------------------------------------ imagePullSecrets


def test_every_pod_gets_the_operators_pull_secrets() -> None:
    settings = Settings(worker_image="tfe-operator/worker:0.1.0", image_pull_secrets=("regcred", "mirror"))
    ctx = make_ctx({"model": CM_MODEL}, settings=settings)
    names = ["regcred", "mirror"]
    assert builders.worker_statefulset(ctx) == _with_pull_secrets(expected_statefulset(), names)
    job = expected_job(7)
    job["metadata"]["annotations"]["tfe.dev/model-hash"] = ctx.spec.model_hash
    assert builders.share_job(ctx, 7) == _with_pull_secrets(job, names)
    dep = builders.serve_deployment(ctx, 3, 0)
    want = _with_pull_secrets(expected_deployment(3, 0), names)
    want["spec"]["template"]["metadata"]["annotations"]["tfe.dev/serve-hash"] = dep["spec"]["template"]["metadata"][
        "annotations"
    ]["tfe.dev/serve-hash"]
    assert dep == want
    ectx = make_ctx({"model": CM_MODEL}, settings=settings, mesh_hash="meshhash")
    assert builders.endpoint_deployment(ectx) == _with_pull_secrets(expected_endpoint(ectx), names)


def test_the_models_pull_secrets_replace_the_operators() -> None:
    settings = Settings(worker_image="w:1", image_pull_secrets=("regcred",))
    ctx = make_ctx({"model": CM_MODEL, "workers": {"imagePullSecrets": [{"name": "team-pull"}]}}, settings=settings)
    for m in (builders.worker_statefulset(ctx), builders.share_job(ctx, 1), builders.serve_deployment(ctx, 1)):
        assert _pods(m)["imagePullSecrets"] == [{"name": "team-pull"}]
    # an explicit empty list: no pull secrets even though the operator has a default
    ctx = make_ctx({"model": CM_MODEL, "workers": {"imagePullSecrets": []}}, settings=settings)
    assert "imagePullSecrets" not in _pods(builders.worker_statefulset(ctx))


def test_no_pull_secrets_no_key() -> None:
    ctx = make_ctx({"model": CM_MODEL})
    for m in (builders.worker_statefulset(ctx), builders.share_job(ctx, 1), builders.endpoint_deployment(ctx)):
        assert "imagePullSecrets" not in _pods(m)


def test_pull_secrets_setting_from_env() -> None:
    assert Settings.from_env({"TFE_OPERATOR_IMAGE_PULL_SECRETS": "a, b,"}).image_pull_secrets == ("a", "b")
    assert Settings.from_env({"TFE_OPERATOR_IMAGE_PULL_SECRETS": ""}).image_pull_secrets == ()
    assert Settings.from_env({}).image_pull_secrets == ()


# ------------------------------------------------------------------ model.s3


def _s3_job(generation: int, ctx: Any, args: list[str], env: list[dict[str, Any]]) -> dict[str, Any]:
    """expected_job with the model volume and mount gone, the s3 arguments and env."""
    e = expected_job(generation)
    e["metadata"]["annotations"]["tfe.dev/model-hash"] = ctx.spec.model_hash
    pod = _pods(e)
    assert pod["volumes"][2]["name"] == "model"
    del pod["volumes"][2]
    c = pod["containers"][0]
    assert c["volumeMounts"][2]["name"] == "model"
    del c["volumeMounts"][2]
    i = c["command"].index("--model")
    c["command"][i : i + 2] = args
    c["env"] = [*c["env"], *env]
    return e


def _secret_env(env: str, key: str) -> dict[str, Any]:
    return {"name": env, "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": key}}}


def test_share_job_s3_with_endpoint_and_credentials() -> None:
    ctx = make_ctx({"model": S3_MODEL})
    args = ["--model", "s3://models/team/digits.h5", "--sha256", SHA, "--s3-region", "eu-west-1",
            "--s3-endpoint", "http://minio.storage:9000"]  # fmt: skip
    env = [_secret_env("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
           _secret_env("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")]  # fmt: skip
    assert builders.share_job(ctx, 7) == _s3_job(7, ctx, args, env)


def test_share_job_s3_aws_public_object() -> None:
    spec = {"model": {"s3": {"bucket": "models", "key": "digits.h5", "sha256": SHA}}}
    ctx = make_ctx(spec)
    args = ["--model", "s3://models/digits.h5", "--sha256", SHA, "--s3-region", "us-east-1"]
    assert builders.share_job(ctx, 2) == _s3_job(2, ctx, args, [])


def test_share_job_s3_custom_keys_and_session_token() -> None:
    model = copy.deepcopy(S3_MODEL)
    model["s3"]["credentialsSecretRef"] = {
        "name": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret", "sessionTokenKey": "token",
    }  # fmt: skip
    ctx = make_ctx({"model": model})
    env = builders.share_job(ctx, 1)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[-3:] == [
        _secret_env("AWS_ACCESS_KEY_ID", "id"),
        _secret_env("AWS_SECRET_ACCESS_KEY", "secret"),
        _secret_env("AWS_SESSION_TOKEN", "token"),
    ]
    # the credentials reach the share container only: no other pod names the Secret
    for m in (builders.worker_statefulset(ctx), builders.serve_deployment(ctx, 1), builders.endpoint_deployment(ctx)):
        assert "s3-creds" not in str(m)


def test_parse_s3() -> None:
    assert parse_spec({"model": S3_MODEL}).model.s3 == S3Source(
        bucket="models",
        key="team/digits.h5",
        sha256=SHA,
        endpoint="http://minio.storage:9000",
        region="eu-west-1",
        credentials=S3Credentials(secret_name="s3-creds"),
    )
    # a changed object (or store) is a new model: shared again
    moved = copy.deepcopy(S3_MODEL)
    moved["s3"]["key"] = "team/digits-v2.h5"
    assert parse_spec({"model": moved}).model_hash != parse_spec({"model": S3_MODEL}).model_hash


@pytest.mark.parametrize(
    ("s3", "message"),
    [
        ({"bucket": "b", "key": "k", "sha256": "xyz"}, "64 hex digits"),
        ({"bucket": "b", "key": "k", "sha256": SHA, "endpoint": "minio:9000"}, "http:// or https://"),
        ({"bucket": "", "key": "k", "sha256": SHA}, "model.s3.bucket"),
        ({"bucket": "b", "key": "k", "sha256": SHA, "credentialsSecretRef": {"key": "x"}}, "credentialsSecretRef.name"),
    ],
)
def test_parse_s3_refuses(s3: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec({"model": {"s3": s3}})


# ------------------------------------------------------------------ the chart: images from a registry


def test_chart_images_from_a_registry_with_pull_secrets() -> None:
    from test_operator_chart import HELM, by_kind, render

    if HELM is None:
        pytest.skip("no helm binary (make helm-bin)")
    docs = render(
        "image.repository=ghcr.io/acme/tfe-operator/operator",
        "image.tag=1.2.3",
        "image.pullPolicy=Always",
        "image.pullSecrets[0].name=ghcr",
        "workerImage.repository=ghcr.io/acme/tfe-operator/worker",
        "workerImage.tag=1.2.3",
        "workerImage.pullPolicy=Always",
        "workerImage.pullSecrets[0].name=ghcr",
        "workerImage.pullSecrets[1].name=mirror",
    )
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "ghcr"}]
    (c,) = pod["containers"]
    assert (c["image"], c["imagePullPolicy"]) == ("ghcr.io/acme/tfe-operator/operator:1.2.3", "Always")
    settings = Settings.from_env({e["name"]: e["value"] for e in c["env"]})
    assert settings.worker_image == "ghcr.io/acme/tfe-operator/worker:1.2.3"
    assert settings.image_pull_policy == "Always"
    assert settings.image_pull_secrets == ("ghcr", "mirror")
    # defaults: no imagePullSecrets on the operator pod, none for the models
    (dep,) = by_kind(render(), "Deployment")
    assert "imagePullSecrets" not in dep["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert Settings.from_env(env).image_pull_secrets == ()


def test_a_missing_s3_credentials_secret_keeps_the_model_pending() -> None:
    from tfe_operator.handlers import _source_missing

    class Kube:
        def __init__(self, present: set[str]) -> None:
            self.present = present
            self.asked: list[tuple[str, str, str]] = []

        def exists(self, api_version: str, kind: str, ns: str, name: str) -> bool:
            self.asked.append((kind, ns, name))
            return name in self.present

    ctx = make_ctx({"model": S3_MODEL})
    kube = Kube(set())
    assert _source_missing(kube, ctx) == "waiting for Secret 's3-creds' (S3 credentials of the model source)"  # type: ignore[arg-type]
    assert kube.asked == [("Secret", "ml", "s3-creds")]
    assert _source_missing(Kube({"s3-creds"}), ctx) is None  # type: ignore[arg-type]
    public = make_ctx({"model": {"s3": {"bucket": "b", "key": "k", "sha256": SHA}}})
    assert _source_missing(Kube(set()), public) is None  # type: ignore[arg-type]


def test_release_workflow_points_the_published_chart_at_the_published_images(tmp_path: Any) -> None:
    """The workflow's sed really rewrites values.yaml (run here on a copy of the chart): the chart it
    pushes installs the images it pushes."""
    import re
    import shutil
    import subprocess

    import yaml
    from operator_testlib import REPO
    from test_operator_chart import HELM

    if HELM is None:
        pytest.skip("no helm binary (make helm-bin)")
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "release.yaml").read_text())
    steps = wf["jobs"]["publish"]["steps"]
    (chart_step,) = [s for s in steps if s.get("name", "").startswith("Chart")]
    sed = next(line for line in chart_step["run"].splitlines() if line.strip().startswith("sed -i"))
    exprs = re.findall(r'-e "([^"]+)"', chart_step["run"])
    assert len(exprs) == 2 and sed
    chart = tmp_path / "tfe-operator"
    shutil.copytree(REPO / "charts" / "tfe-operator", chart)
    images = "ghcr.io/acme/tfe-operator"
    for e in exprs:
        subprocess.run(["sed", "-i", "-e", e.replace("${IMAGES}", images), str(chart / "values.yaml")],
                       check=True, timeout=30)  # fmt: skip
    out = subprocess.run([HELM, "template", "rel", str(chart)], capture_output=True, text=True, timeout=60, check=True)
    (dep,) = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    version = (REPO / "VERSION").read_text().strip()
    assert c["image"] == f"{images}/operator:{version}"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["TFE_OPERATOR_WORKER_IMAGE"] == f"{images}/worker:{version}"
    # and the images it builds are the ones make images builds
    builds = {s["with"]["file"]: s["with"]["tags"] for s in steps if "build-push-action" in s.get("uses", "")}
    assert set(builds) == {"worker-image/Dockerfile", "operator/Dockerfile"}
