"""Pinned worker keys (issue 10 item 2): the client never encrypts to keys only the endpoint vouches
for. A real loopback HTTP server plays the endpoint (honest, or one that swaps the worker keys for
its own) and records every request it receives."""

import json
import os
import sys
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfe_client import Client, ProtocolError, cli, pins
from tfe_client.crypto import WorkerKey, b64e
from tfe_client.pins import KeyMismatchError, PinError, Pins, PinsRequiredError

WORKERS = [WorkerKey.generate() for _ in range(3)]
ATTACKER = [WorkerKey.generate() for _ in range(3)]
KEYS = [b64e(k.public) for k in WORKERS]


def meta(keys: list[WorkerKey]) -> dict[str, Any]:
    return {"name": "digits", "protocol": "ABY3", "shareGeneration": 1, "modelDigest": "0" * 64,
            "input": {"shape": [None, 4], "dtype": "float32"},
            "output": {"shape": [None, 2], "postprocess": "softmax"},
            "fixedPoint": {"ringBits": 64, "fractionalBits": 16, "integralBits": 11}, "maxBatchSize": 4,
            "workers": [{"name": f"server{i}", "publicKey": b64e(k.public)} for i, k in enumerate(keys)]}


class Endpoint:
    """Serves GET /v1/models/digits with `self.keys`; records requests; POST gets a 500 (recorded)."""

    def __init__(self) -> None:
        self.keys = WORKERS
        self.seen: list[str] = []
        self.posted: list[bytes] = []
        ep = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                ep.seen.append(f"GET {self.path}")
                body = json.dumps(meta(ep.keys)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                ep.seen.append(f"POST {self.path}")
                ep.posted.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"


@pytest.fixture()
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint()
    t = threading.Thread(target=ep.srv.serve_forever, daemon=True)
    t.start()
    yield ep
    ep.srv.shutdown()
    ep.srv.server_close()


X = np.zeros((1, 4))


# -- pin files ---------------------------------------------------------------------------------
def test_pin_file_round_trip(tmp_path: Path) -> None:
    p = Pins.from_keys(KEYS, model="digits", source="test", namespace="ml", endpoint="http://e:8000")
    f = tmp_path / "pins.json"
    p.save(f)
    doc = json.loads(f.read_text())
    assert doc["kind"] == "tfe-client/pins" and doc["version"] == 1 and doc["model"] == "digits"
    assert doc["workers"] == [{"name": f"server{i}", "publicKey": k} for i, k in enumerate(KEYS)]
    assert Pins.load(f) == p
    assert Pins.load(f).keys == tuple(k.public for k in WORKERS)


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d["workers"].reverse(), "in order"),
    (lambda d: d["workers"].pop(), "server0, server1, server2"),
    (lambda d: d["workers"][1].update(publicKey="AAAA"), "server1 publicKey must be 32 bytes"),
    (lambda d: d["workers"][2].update(publicKey="not base64!"), "not valid base64"),
    (lambda d: d["workers"][0].update(publicKey=b64e(bytes(32))), "low-order"),
    (lambda d: d.update(version=2), "kind/version"),
    (lambda d: d.update(model=7), "'model'"),
    (lambda d: d.update(unverified=True), "claimed by an endpoint"),
])
def test_bad_pin_files_are_refused(tmp_path: Path, mutate: Any, msg: str) -> None:
    d = Pins.from_keys(KEYS, model="digits").to_json()
    mutate(d)
    f = tmp_path / "pins.json"
    f.write_text(json.dumps(d))
    with pytest.raises(PinError, match=msg):
        Pins.load(f)
    f.write_text("{not json")
    with pytest.raises(PinError, match="not JSON"):
        Pins.load(f)


# -- no pins -----------------------------------------------------------------------------------
def test_no_pins_is_refused_before_anything_is_sent(endpoint: Endpoint) -> None:
    c = Client(endpoint.url)
    with pytest.raises(PinsRequiredError) as e:
        c.predict("digits", X)
    msg = str(e.value)
    for option in ("Client.from_kubernetes('digits'", "pins=", "expected_keys=", "trust_on_first_use=",
                   "tfe-client keys pull em/digits", "--pins FILE", "--expected-keys", "--tofu FILE",
                   "kubectl get encryptedmodel digits"):
        assert option in msg
    with pytest.raises(PinsRequiredError):
        c.model_info("digits")
    assert endpoint.seen == []
    # what the endpoint claims is available, marked as such
    assert c.unverified_model_info("digits").worker_keys == tuple(k.public for k in WORKERS)


def test_one_source_of_keys_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected_keys and trust_on_first_use"):
        Client("http://127.0.0.1:1", expected_keys=KEYS, trust_on_first_use=tmp_path / "p.json")
    with pytest.raises(PinError, match="3 worker keys"):
        Client("http://127.0.0.1:1", expected_keys=KEYS[:2])


def test_insecure_escape_hatch_is_loud(endpoint: Endpoint) -> None:
    with pytest.warns(UserWarning, match="INSECURE"):
        c = Client(endpoint.url, insecure_trust_endpoint_keys=True)
    assert c.model_info("digits").name == "digits"


# -- a key-swapping endpoint -------------------------------------------------------------------
@pytest.mark.parametrize("how", ["expected_keys", "pins"])
def test_swapped_keys_get_no_input(endpoint: Endpoint, tmp_path: Path, how: str) -> None:
    endpoint.keys = [WORKERS[0], ATTACKER[1], WORKERS[2]]
    f = tmp_path / "pins.json"
    Pins.from_keys(KEYS, model="digits", source="kubernetes encryptedmodels.tfe.dev ml/digits", namespace="ml").save(f)
    c = Client(endpoint.url, expected_keys=KEYS) if how == "expected_keys" else Client(endpoint.url, pins=f)
    with pytest.raises(KeyMismatchError) as e:
        c.predict("digits", X)
    msg = str(e.value)
    assert "differ from the pinned keys" in msg and "nothing was sent" in msg
    assert f"server1: pinned {KEYS[1]}, endpoint says {b64e(ATTACKER[1].public)}" in msg
    assert "server0:" not in msg and "server2:" not in msg
    assert "jsonpath='{.status.workers[*].publicKey}'" in msg
    assert f"tfe-client keys show --endpoint {endpoint.url} --model digits" in msg
    if how == "pins":
        assert "kubectl get encryptedmodel digits -n ml" in msg and f"> {f}" in msg
    assert [s for s in endpoint.seen if s.startswith("POST")] == [] and endpoint.posted == []


def test_pins_for_another_model_are_refused(endpoint: Endpoint) -> None:
    c = Client(endpoint.url, pins=Pins.from_keys(KEYS, model="cnn"))
    with pytest.raises(PinError, match="for model 'cnn', not 'digits'"):
        c.model_info("digits")
    assert endpoint.seen == []


def test_matching_pins_reach_predict(endpoint: Endpoint, tmp_path: Path) -> None:
    f = tmp_path / "pins.json"
    Pins.from_keys(KEYS, model="digits").save(f)
    with pytest.raises(Exception, match="HTTP 500"):  # the stand-in endpoint cannot compute
        Client(endpoint.url, pins=str(f)).predict("digits", X)
    assert endpoint.seen == ["GET /v1/models/digits", "POST /v1/models/digits:predict"]
    bundles = json.loads(endpoint.posted[0])["bundles"]
    assert [b["worker"] for b in bundles] == ["server0", "server1", "server2"]


# -- trust on first use ------------------------------------------------------------------------
def test_tofu_records_then_refuses_a_changed_key_set(endpoint: Endpoint, tmp_path: Path) -> None:
    f = tmp_path / "sub" / "tofu.json"
    c = Client(endpoint.url, trust_on_first_use=f)
    assert c.pins is None and not f.exists()
    assert c.model_info("digits").name == "digits"
    rec = Pins.load(f)
    assert rec.keys == tuple(k.public for k in WORKERS) and rec.model == "digits" and rec.endpoint == endpoint.url
    assert rec.source.startswith(f"trust on first use of {endpoint.url} at ")
    assert c.pins == rec
    before = f.read_text()
    # a later client, same keys: fine
    assert Client(endpoint.url, trust_on_first_use=f).model_info("digits").name == "digits"
    # the endpoint now hands out other keys: refused, the record is kept
    endpoint.keys = ATTACKER
    endpoint.seen.clear()
    with pytest.raises(KeyMismatchError) as e:
        Client(endpoint.url, trust_on_first_use=f).predict("digits", X)
    msg = str(e.value)
    assert "trust on first use" in msg and "kubectl get encryptedmodel digits -n <namespace>" in msg
    assert f"tfe-client keys pull em/digits -n NS > {f}" in msg
    assert endpoint.seen == ["GET /v1/models/digits"] and f.read_text() == before
    # the first client re-fetching also notices
    with pytest.raises(KeyMismatchError):
        c.model_info("digits", refresh=True)


def test_tofu_never_overwrites_a_record_made_meanwhile(endpoint: Endpoint, tmp_path: Path) -> None:
    f = tmp_path / "tofu.json"
    c = Client(endpoint.url, trust_on_first_use=f)  # no file yet
    Pins.from_keys([b64e(k.public) for k in ATTACKER], model="digits", source="other process").save(f)
    with pytest.raises(KeyMismatchError, match="other process"):
        c.model_info("digits")
    assert Pins.load(f).source == "other process"


# -- Kubernetes --------------------------------------------------------------------------------
def em(keys: list[str | None], endpoint: str | None = "http://digits.ml.svc:8000") -> dict[str, Any]:
    workers = [{"name": f"server{i}", "ready": True, **({"publicKey": k} if k else {})} for i, k in enumerate(keys)]
    return {"apiVersion": "tfe.dev/v1alpha1", "kind": "EncryptedModel",
            "metadata": {"name": "digits", "namespace": "ml"},
            "status": {"phase": "Serving", "workers": workers, **({"endpoint": endpoint} if endpoint else {})}}


def test_pins_from_the_encrypted_model_status() -> None:
    p = Pins.from_encrypted_model(em(list(KEYS)))
    assert p.keys == tuple(k.public for k in WORKERS)
    assert (p.model, p.namespace, p.endpoint) == ("digits", "ml", "http://digits.ml.svc:8000")
    assert p.source == "kubernetes encryptedmodels.tfe.dev ml/digits"
    with pytest.raises(PinError, match="no public key in its status for server1 yet"):
        Pins.from_encrypted_model(em([KEYS[0], None, KEYS[2]]))
    swapped = em(list(KEYS))
    swapped["status"]["workers"].reverse()
    with pytest.raises(PinError, match="server0, server1, server2 in order"):
        Pins.from_encrypted_model(swapped)


def fake_kubernetes(monkeypatch: pytest.MonkeyPatch, obj: Any, calls: list[Any]) -> None:
    """A stand-in for the `kubernetes` package (only the calls fetch_encrypted_model makes)."""
    class ConfigException(Exception):
        pass

    class ApiException(Exception):
        def __init__(self, status: int, reason: str) -> None:
            self.status, self.reason = status, reason

    class Api:
        def __init__(self, api_client: Any) -> None:
            pass

        def get_namespaced_custom_object(self, *args: str) -> Any:
            calls.append(args)
            if obj is None:
                raise ApiException(404, "Not Found")
            return obj

    client = types.ModuleType("kubernetes.client")
    client.Configuration = lambda: object()  # type: ignore[attr-defined]
    client.ApiClient = lambda c: c  # type: ignore[attr-defined]
    client.CustomObjectsApi = Api  # type: ignore[attr-defined]
    client.ApiException = ApiException  # type: ignore[attr-defined]
    config = types.ModuleType("kubernetes.config")
    config.ConfigException = ConfigException  # type: ignore[attr-defined]
    config.load_kube_config = lambda context=None, client_configuration=None: calls.append(("kubeconfig", context))  # type: ignore[attr-defined]
    config.load_incluster_config = lambda client_configuration=None: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kubernetes", types.ModuleType("kubernetes"))
    monkeypatch.setitem(sys.modules, "kubernetes.client", client)
    monkeypatch.setitem(sys.modules, "kubernetes.config", config)


def test_client_from_kubernetes(monkeypatch: pytest.MonkeyPatch, endpoint: Endpoint) -> None:
    calls: list[Any] = []
    fake_kubernetes(monkeypatch, em(list(KEYS), endpoint=endpoint.url), calls)
    c = Client.from_kubernetes("digits", "ml", context="kind-tfe")
    assert calls == [("kubeconfig", "kind-tfe"), ("tfe.dev", "v1alpha1", "ml", "encryptedmodels", "digits")]
    assert c.pins is not None and c.pins.keys == tuple(k.public for k in WORKERS)
    assert c.model_info("digits").name == "digits"
    endpoint.keys = ATTACKER  # a proxy in front of the Service swaps the keys
    with pytest.raises(KeyMismatchError, match="kubectl get encryptedmodel digits -n ml"):
        Client.from_kubernetes("digits", "ml", endpoint=endpoint.url).predict("digits", X)
    assert endpoint.posted == []


def test_from_kubernetes_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kubernetes(monkeypatch, None, [])
    with pytest.raises(PinError, match="encryptedmodel ml/nope not found"):
        Client.from_kubernetes("nope", "ml")
    fake_kubernetes(monkeypatch, em(list(KEYS), endpoint=None), [])
    with pytest.raises(PinError, match=r"no status\.endpoint yet"):
        Client.from_kubernetes("digits", "ml")
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    monkeypatch.setitem(sys.modules, "kubernetes.client", None)
    with pytest.raises(PinError, match="pip install kubernetes"):
        Client.from_kubernetes("digits", "ml")


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_keys_pull_writes_a_pin_file(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    calls: list[Any] = []
    fake_kubernetes(monkeypatch, em(list(KEYS)), calls)
    assert cli.main(["keys", "pull", "em/digits", "-n", "ml"]) == 0
    f = tmp_path / "pins.json"
    f.write_text(capsys.readouterr().out)
    assert Pins.load(f) == Pins.from_encrypted_model(em(list(KEYS)))
    assert calls[-1] == ("tfe.dev", "v1alpha1", "ml", "encryptedmodels", "digits")
    assert cli.main(["keys", "pull", "deployment/digits"]) == 2
    assert "em/NAME" in capsys.readouterr().err


def test_cli_keys_show_is_marked_unverified(endpoint: Endpoint, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    endpoint.keys = ATTACKER
    assert cli.main(["keys", "show", "--endpoint", endpoint.url, "--model", "digits"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["unverified"] is True and doc["claimedBy"] == endpoint.url
    assert [w["publicKey"] for w in doc["workers"]] == [b64e(k.public) for k in ATTACKER]
    assert "UNVERIFIED" in err and "kubectl get encryptedmodel digits" in err
    f = tmp_path / "claimed.json"
    f.write_text(out)
    with pytest.raises(PinError, match="claimed by an endpoint"):  # cannot be used as pins as is
        Pins.load(f)


def test_cli_predict_needs_pins(endpoint: Endpoint, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    x = tmp_path / "x.npy"
    np.save(x, X)
    base = ["predict", "--endpoint", endpoint.url, "--model", "digits", "--input", str(x)]
    assert cli.main(base) == 2
    err = capsys.readouterr().err
    assert "no pinned worker keys" in err and "--pins FILE | --expected-keys K0,K1,K2 | --tofu FILE" in err
    assert endpoint.seen == []
    wrong = ",".join(b64e(k.public) for k in ATTACKER)
    assert cli.main([*base, "--expected-keys", wrong]) == 2
    assert "differ from the pinned keys" in capsys.readouterr().err
    assert endpoint.posted == []
    # kubectl's jsonpath output (space-separated) works as is; the stand-in endpoint then fails the POST
    assert cli.main([*base, "--expected-keys", " ".join(KEYS)]) == 2
    assert "HTTP 500" in capsys.readouterr().err and len(endpoint.posted) == 1
    pinfile = tmp_path / "pins.json"
    Pins.from_keys(KEYS).save(pinfile)
    assert cli.main([*base, "--pins", str(pinfile)]) == 2
    assert "HTTP 500" in capsys.readouterr().err and len(endpoint.posted) == 2
    tofu = tmp_path / "tofu.json"
    assert cli.main([*base, "--tofu", str(tofu)]) == 2 and os.path.exists(tofu)
    capsys.readouterr()
    assert cli.main([*base, "--insecure-trust-endpoint-keys"]) == 2
    assert "WARNING: --insecure-trust-endpoint-keys" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*base, "--pins", str(pinfile), "--tofu", str(tofu)])


def test_pin_errors_are_protocol_errors() -> None:
    assert issubclass(KeyMismatchError, ProtocolError) and issubclass(PinsRequiredError, PinError)
    assert pins.parse_em_ref("encryptedmodels.tfe.dev/digits") == "digits" == pins.parse_em_ref("digits")


# -- the cluster test's proxy ------------------------------------------------------------------
def test_the_cluster_tests_key_swapping_proxy(endpoint: Endpoint, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/cluster's KeySwappingProxy (test_endpoint_cluster puts it in front of a real endpoint),
    here in front of the stand-in: honest, it relays both ways; swapping server1, pinned clients
    refuse and it gets nothing, an unpinned first use sends and it opens the pair meant for server1."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "cluster"))
    from clusterlib import KeySwappingProxy

    from tfe_client.errors import RemoteError

    x = np.full((2, 4), 0.25)
    with KeySwappingProxy(endpoint.url) as proxy:
        with pytest.raises(RemoteError, match="HTTP 500"):  # relayed: the stand-in cannot compute
            Client(proxy.url, expected_keys=KEYS).predict("digits", x)
        assert proxy.seen == endpoint.seen == ["GET /v1/models/digits", "POST /v1/models/digits:predict"]
        proxy.swap = "server1"
        with pytest.raises(KeyMismatchError) as e:
            Client(proxy.url, expected_keys=KEYS).predict("digits", x)
        assert f"server1: pinned {KEYS[1]}, endpoint says {b64e(proxy.attacker.public)}" in str(e.value)
        assert proxy.posts() == ["POST /v1/models/digits:predict"] and proxy.stolen == []
        with pytest.raises(RemoteError, match="HTTP 502"):  # kept by the proxy, not relayed
            Client(proxy.url, trust_on_first_use=tmp_path / "tofu.json").predict("digits", x)
        assert len(endpoint.posted) == 1 and len(proxy.posts()) == 2
        (pair,) = proxy.stolen
        assert pair.shape == (2, *x.shape)
