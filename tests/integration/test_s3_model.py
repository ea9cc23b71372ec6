"""model.s3 against a real S3-compatible server: gofakes3 (github.com/johannesboyne/gofakes3,
cmd/gofakes3, built from its Go module by hack/cluster/build.sh gofakes3; TFE_GOFAKES3 names the
binary) on loopback with an in-memory backend. The share job's own entry point downloads the
object (SigV4-signed GET, path-style), checks its sha256 and refuses a wrong digest naming both,
and a missing key with the store's own error.

gofakes3 does not verify signatures: the signing is checked against AWS's worked examples in
tests/worker_unit/test_s3.py.
"""

import hashlib
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tfe_worker import share
from tfe_worker.local import free_ports

REPO = Path(__file__).resolve().parents[2]
BUCKET = "models"
CREDS = {"AWS_ACCESS_KEY_ID": "tfe-test", "AWS_SECRET_ACCESS_KEY": "tfe-test-secret"}


def gofakes3_binary() -> str:
    env = os.environ.get("TFE_GOFAKES3")
    if env:
        return env
    path = subprocess.run([str(REPO / "hack/cluster/build.sh"), "path"], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()
    versions = (REPO / "hack/cluster/versions.sh").read_text()
    version = versions.split("GOFAKES3_VERSION=${GOFAKES3_VERSION:-", 1)[1].split("}", 1)[0]
    return f"{path}/gofakes3-{version}"


@pytest.fixture(scope="module")
def s3_server():
    binary = gofakes3_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} missing: run hack/cluster/build.sh gofakes3 (make integration does)")
    (port,) = free_ports(1)
    proc = subprocess.Popen([binary, "-backend", "memory", "-host", f"127.0.0.1:{port}", "-initialbucket", BUCKET,
                             "-quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/{BUCKET}?list-type=2", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"gofakes3 did not start: {proc.stderr.read().decode(errors='replace')[:2000]}")
        time.sleep(0.2)
    yield endpoint
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def put(endpoint, key, data):
    req = urllib.request.Request(f"{endpoint}/{BUCKET}/{urllib.parse.quote(key)}", data=data, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def fetch(tmp_path, endpoint, key, sha256, monkeypatch):
    """share.main --fetch-to: the share job's own argument parsing, download and error path."""
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    out, term = tmp_path / "out.h5", tmp_path / "termination-log"
    rc = share.main(["--config", "/nonexistent", "--model", f"s3://{BUCKET}/{key}", "--sha256", sha256,
                     "--s3-endpoint", endpoint, "--s3-region", "us-east-1", "--name", "m",
                     "--coordinator-address", "127.0.0.1:1", "--fetch-to", str(out),
                     "--termination-log", str(term)])
    return rc, out, term.read_text() if term.exists() else ""


def test_s3_object_is_downloaded_and_verified(tmp_path, s3_server, monkeypatch):
    data = os.urandom(300_000) + b"model"  # larger than a ConfigMap could carry through kubectl apply
    put(s3_server, "team/a model.h5", data)
    rc, out, msg = fetch(tmp_path, s3_server, "team/a model.h5", hashlib.sha256(data).hexdigest(), monkeypatch)
    assert (rc, msg) == (0, "")
    assert out.read_bytes() == data


def test_wrong_digest_is_refused_naming_both(tmp_path, s3_server, monkeypatch):
    data = b"the real model bytes"
    put(s3_server, "digits.h5", data)
    actual, wrong = hashlib.sha256(data).hexdigest(), "0" * 64
    rc, out, msg = fetch(tmp_path, s3_server, "digits.h5", wrong, monkeypatch)
    assert rc == share.EXIT_INVALID
    assert msg == f"model rejected: sha256 of s3://{BUCKET}/digits.h5 is {actual}, expected {wrong}"
    assert not out.exists()


def test_missing_key_is_refused_with_the_stores_error(tmp_path, s3_server, monkeypatch):
    rc, _out, msg = fetch(tmp_path, s3_server, "nope.h5", "1" * 64, monkeypatch)
    assert rc == share.EXIT_INVALID
    assert msg.startswith(f"model rejected: the store at {s3_server}/{BUCKET}/nope.h5 refused s3://{BUCKET}/nope.h5: "
                          "HTTP 404 NoSuchKey"), msg
    assert "tfe-test-secret" not in msg


def test_unreachable_store_is_a_transient_error(tmp_path, monkeypatch):
    (port,) = free_ports(1)  # nothing listens there
    with pytest.raises(OSError, match=rf"cannot download s3://{BUCKET}/x.h5 from http://127.0.0.1:{port}/"):
        fetch(tmp_path, f"http://127.0.0.1:{port}", "x.h5", "2" * 64, monkeypatch)


def test_the_server_is_real(s3_server):
    """The fixture's server answers S3 errors itself: a request for a bucket that does not exist."""
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{s3_server}/no-such-bucket/k", timeout=10)
    assert e.value.code == 404
    assert b"NoSuchBucket" in e.value.read()
