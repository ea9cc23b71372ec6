"""The share job: the only process that ever holds the plaintext weights.

Loads the Keras model, refuses what cannot be served privately (exit 2, reason on stderr and
in the termination log), secret-shares the weights, and has each player persist ITS OWN pairs
and the public manifest under models/NAME/GENERATION/ on its own disk. Nothing is written
to this process's disk but a downloaded model file in a private temp dir, removed on exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request

from tfe_client.fixedpoint import DEFAULT as FIXED_POINT
from tfe_worker import s3
from tfe_worker.config import Config
from tfe_worker.plan import ModelError, build_plan, file_digest, load_keras
from tfe_worker.workers import wait_ready

log = logging.getLogger("tfe_worker.share")
EXIT_INVALID = 2
MAX_DOWNLOAD = 2 << 30


def _download(req: urllib.request.Request, label: str, sha256: str, path: str) -> None:
    """Stream req to path, checking the size cap and the sha256 (both digests in the error)."""
    h = hashlib.sha256()
    n = 0
    with urllib.request.urlopen(req, timeout=60) as r, open(path, "wb") as f:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            n += len(chunk)
            if n > MAX_DOWNLOAD:
                raise ModelError(f"model download exceeds {MAX_DOWNLOAD} bytes")
            h.update(chunk)
            f.write(chunk)
    if h.hexdigest() != sha256.lower():
        raise ModelError(f"sha256 of {label} is {h.hexdigest()}, expected {sha256.lower()}")


def fetch_s3(src: str, sha256: str | None, tmp: str, endpoint: str | None, region: str) -> str:
    """Download s3://bucket/key (SigV4 with the AWS_* environment, or unsigned without it).
    A refusal by the store (4xx: no such bucket/key, access denied, bad signature) is an
    invalid model source (exit 2); a 5xx or a network error may pass (exit 1: the Job retries)."""
    if not sha256:
        raise ModelError("an S3 model needs --sha256 (spec.model.s3.sha256) so that its content is pinned")
    try:
        ref = s3.ObjectRef.parse(src)
        creds = s3.Credentials.from_env()
    except ValueError as e:
        raise ModelError(str(e)) from None
    url = s3.object_url(ref, endpoint, region)
    req = urllib.request.Request(url, headers=s3.get_headers(url, creds, region))
    path = os.path.join(tmp, os.path.basename(ref.key) or "model.h5")
    try:
        _download(req, src, sha256, path)
    except urllib.error.HTTPError as e:
        detail = s3.error_summary(e.read()) or e.reason
        if 400 <= e.code < 500:
            raise ModelError(f"the store at {url.split('?')[0]} refused {src}: HTTP {e.code} {detail}") from None
        raise OSError(f"cannot download {src} from {url}: HTTP {e.code} {detail}") from None
    except OSError as e:
        raise OSError(f"cannot download {src} from {url}: {e}") from None
    return path


def fetch_model(src: str, sha256: str | None, tmp: str, s3_endpoint: str | None = None,
                s3_region: str = s3.DEFAULT_REGION) -> str:
    """Return a local path for src (a file, a SavedModel dir, an http(s) URL or s3://bucket/key)."""
    if src.startswith("s3://"):
        return fetch_s3(src, sha256, tmp, s3_endpoint, s3_region)
    if src.startswith(("http://", "https://")):
        if not sha256:
            raise ModelError("a model URL needs --sha256 (spec.model.url.sha256) so that its content is pinned")
        name = os.path.basename(src.split("?", 1)[0]) or "model.h5"
        path = os.path.join(tmp, name)
        try:
            _download(urllib.request.Request(src), "the downloaded model", sha256, path)
        except OSError as e:
            raise OSError(f"cannot download the model from {src}: {e}") from None
        return path
    if not os.path.exists(src):
        raise ModelError(f"model file {src} does not exist")
    if sha256 and file_digest(src) != sha256.lower():
        raise ModelError(f"sha256 of {os.path.basename(src)} is {file_digest(src)}, expected {sha256.lower()}")
    if os.path.isfile(src) and not src.endswith((".h5", ".keras", ".hdf5")):
        # ConfigMap/Secret keys carry no extension: Keras picks the loader by suffix.
        link = os.path.join(tmp, "model.h5")
        os.symlink(os.path.abspath(src), link)
        return link
    return src


def run(config: Config, model_src: str, sha256: str | None, name: str, generation: int, coordinator: str,
        protocol: str, ready_timeout: float, s3_endpoint: str | None = None,
        s3_region: str = s3.DEFAULT_REGION) -> None:
    tmp = tempfile.mkdtemp(prefix="tfe-share-")
    try:
        path = fetch_model(model_src, sha256, tmp, s3_endpoint, s3_region)
        digest = file_digest(path)
        plan = build_plan(load_keras(path), digest)
        log.info("model %s: %d private layers, input %s, output %s, postprocess %s", name, len(plan.layers),
                 list(plan.input_shape), list(plan.output_shape), plan.postprocess)
        wait_ready(config, ready_timeout)
        from tfe_worker import runtime

        t0 = time.monotonic()
        prot = runtime.connect(config, coordinator, protocol, job="share")
        prefix = f"models/{name}/{generation}"
        runtime.share_weights(prot, plan.weights, prefix)
        manifest = dict(plan.public(), name=name, generation=generation, protocol=protocol,
                        fixedPoint=FIXED_POINT.to_dict(), createdAt=int(time.time()))
        runtime.write_public(prot, json.dumps(manifest), f"{prefix}/manifest.json")  # last: marks completion
        log.info("model %s generation %d shared across 3 workers in %.1fs (%d weight tensors)", name, generation,
                 time.monotonic() - t0, len(plan.weights))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _termination(path: str, msg: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(msg[:4000])
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-worker share")
    p.add_argument("--config", required=True)
    p.add_argument("--model", required=True,
                   help="path to .h5/.keras/SavedModel, http(s) URL or s3://bucket/key (both need --sha256)")
    p.add_argument("--sha256")
    p.add_argument("--s3-endpoint", default=None,
                   help="S3-compatible endpoint URL (path-style); default AWS (virtual-hosted style)")
    p.add_argument("--s3-region", default=s3.DEFAULT_REGION)
    p.add_argument("--name", required=True)
    p.add_argument("--generation", type=int, default=1)
    p.add_argument("--coordinator-address", required=True, help="host:port the workers can reach this job at")
    p.add_argument("--protocol", default="ABY3")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--termination-log", default="/dev/termination-log")
    p.add_argument("--fetch-to", default=None, metavar="PATH",
                   help="only fetch --model (checking --sha256) to PATH and exit: for a share job whose own "
                        "network reaches only the parties (tfe-worker local)")
    a = p.parse_args(argv)
    try:
        if a.fetch_to:
            tmp = tempfile.mkdtemp(prefix="tfe-fetch-")
            try:
                shutil.copyfile(fetch_model(a.model, a.sha256, tmp, a.s3_endpoint, a.s3_region), a.fetch_to)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return 0
        run(Config.load(a.config), a.model, a.sha256, a.name, a.generation, a.coordinator_address, a.protocol,
            a.ready_timeout, a.s3_endpoint, a.s3_region)
    except ModelError as e:
        msg = f"model rejected: {e}"
        print(msg, file=sys.stderr)
        _termination(a.termination_log, msg)
        return EXIT_INVALID
    except (ValueError, TimeoutError) as e:
        msg = f"share failed: {e}"
        print(msg, file=sys.stderr)
        _termination(a.termination_log, msg)
        return EXIT_INVALID if isinstance(e, ValueError) else 1
    return 0
