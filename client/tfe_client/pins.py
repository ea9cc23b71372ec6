"""Pinned worker keys: the public keys the client encrypts to, from a source it trusts.

The endpoint's `GET /v1/models/{name}` lists the workers' public keys, but an endpoint (or a proxy
in front of it) could list keys of its own and read every input. So the client checks them against
pins that came another way: the EncryptedModel's status (the operator fetched each key from its
worker), a pin file written from there (`tfe-client keys pull`) or by `tfe-worker local`, keys
passed in, or a pin file recorded on first use (TOFU).

Pin file (JSON):

    {"kind": "tfe-client/pins", "version": 1, "model": "digits",
     "workers": [{"name": "server0", "publicKey": "<base64 raw 32 bytes>"}, ... server1, server2],
     "source": "kubernetes encryptedmodels.tfe.dev default/digits",
     "namespace": "default", "endpoint": "http://digits.default.svc:8000"}

`model` may be null (the keys are good for any model name on that endpoint); `namespace`,
`endpoint` and `source` are informational (messages, `Client.from_kubernetes`). Unknown fields are
ignored. A file with `"unverified": true` (what `tfe-client keys show` prints) is refused.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tfe_client import wire
from tfe_client.crypto import KEY_BYTES, b64d, b64e
from tfe_client.errors import ProtocolError

__all__ = ["KeyMismatchError", "PinError", "Pins", "PinsRequiredError", "fetch_encrypted_model",
           "kubectl_keys_command", "parse_em_ref", "pins_required_message"]

KIND = "tfe-client/pins"
VERSION = 1
EM_GROUP, EM_VERSION, EM_PLURAL = "tfe.dev", "v1alpha1", "encryptedmodels"


class PinError(ProtocolError):
    """Pinned worker keys are missing, malformed, or do not match what the endpoint hands out."""


class PinsRequiredError(PinError):
    """The client has no trusted source for the workers' public keys."""


class KeyMismatchError(PinError):
    """The endpoint's worker keys differ from the pinned keys: nothing was sent."""


def kubectl_keys_command(model: str | None, namespace: str | None) -> str:
    ns = f" -n {namespace}" if namespace else " -n <namespace>"
    return (f"kubectl get encryptedmodel {model or '<name>'}{ns} "
            "-o jsonpath='{.status.workers[*].publicKey}'")


def pins_required_message(model: str) -> str:
    return (
        f"no pinned worker keys for model {model!r}: the client does not encrypt your input to keys that only "
        "the endpoint vouches for (an endpoint or proxy in the middle could hand out its own keys and read "
        "every input). Give it pins, one of:\n"
        f"  Client.from_kubernetes({model!r}, namespace=NS)   # the EncryptedModel's .status.workers[*].publicKey, "
        "through the Kubernetes API\n"
        f"  Client(url, pins='pins.json')   # from `tfe-client keys pull em/{model} -n NS > pins.json`, "
        "or the pins.json that `tfe-worker local` writes in its state directory\n"
        "  Client(url, expected_keys=[k0, k1, k2])   # from "
        f"`{kubectl_keys_command(model, None)}`\n"
        "  Client(url, trust_on_first_use='pins.json')   # record the keys seen now, refuse a changed set later\n"
        "CLI: tfe-client predict --pins FILE | --expected-keys K0,K1,K2 | --tofu FILE")


def _key(v: object, what: str) -> bytes:
    raw = v if isinstance(v, bytes) else b64d(v, what)
    if len(raw) != KEY_BYTES:
        raise PinError(f"{what} must be {KEY_BYTES} bytes, got {len(raw)}")
    if wire.is_low_order(raw):
        raise PinError(f"{what} is a low-order X25519 point, not a worker key")
    return raw


@dataclass(frozen=True)
class Pins:
    """The three workers' public keys (server0, server1, server2), from a trusted source."""

    keys: tuple[bytes, ...]
    model: str | None = None
    source: str = ""
    namespace: str | None = None
    endpoint: str | None = None

    def __post_init__(self) -> None:
        if len(self.keys) != len(wire.WORKERS):
            raise PinError(f"pins need {len(wire.WORKERS)} worker keys (server0, server1, server2), "
                           f"got {len(self.keys)}")
        for w, k in zip(wire.WORKERS, self.keys):
            _key(k, f"pinned {w} publicKey")
        if self.model is not None:
            wire.check_model_name(self.model)

    @classmethod
    def from_keys(cls, keys: Sequence[str | bytes], model: str | None = None, source: str = "expected_keys",
                  namespace: str | None = None, endpoint: str | None = None) -> Pins:
        """Keys as base64 strings (or raw bytes), in worker order."""
        if isinstance(keys, (str, bytes)):
            raise PinError("expected_keys must be a list of three keys, not one string")
        return cls(tuple(_key(k, f"pinned key {i + 1}") for i, k in enumerate(keys)), model, source, namespace,
                   endpoint)

    # -- file format ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": KIND, "version": VERSION, "model": self.model,
                               "workers": [{"name": w, "publicKey": b64e(k)} for w, k in zip(wire.WORKERS, self.keys)],
                               "source": self.source}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.endpoint:
            out["endpoint"] = self.endpoint
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def parse(cls, obj: object, where: str = "pin file") -> Pins:
        if not isinstance(obj, dict):
            raise PinError(f"{where}: not a JSON object")
        if obj.get("unverified"):
            raise PinError(f"{where} holds keys as claimed by an endpoint (`tfe-client keys show`), not verified "
                           f"ones: compare them with `{kubectl_keys_command(obj.get('model'), None)}` and write "
                           "the pin file with `tfe-client keys pull em/NAME -n NS > FILE`")
        if obj.get("kind", KIND) != KIND or obj.get("version", VERSION) != VERSION:
            raise PinError(f"{where}: kind/version must be {KIND!r}/{VERSION}, got "
                           f"{str(obj.get('kind'))[:40]!r}/{str(obj.get('version'))[:10]!r}")
        workers = obj.get("workers")
        if not isinstance(workers, list) or len(workers) != len(wire.WORKERS):
            raise PinError(f"{where}: 'workers' must list server0, server1, server2")
        keys = []
        for w, entry in zip(wire.WORKERS, workers):
            if not isinstance(entry, dict) or entry.get("name") != w:
                raise PinError(f"{where}: 'workers' must list server0, server1, server2 in order")
            try:
                keys.append(_key(entry.get("publicKey"), f"{where}: {w} publicKey"))
            except ProtocolError as e:
                raise PinError(str(e)) from None
        model = obj.get("model")
        if model is not None and not isinstance(model, str):
            raise PinError(f"{where}: 'model' must be a string or null")

        def opt(k: str) -> str | None:
            v = obj.get(k)
            return v if isinstance(v, str) and v else None

        try:
            return cls(tuple(keys), model, opt("source") or where, opt("namespace"), opt("endpoint"))
        except ProtocolError as e:
            raise PinError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Pins:
        p = os.fspath(path)
        try:
            with open(p, encoding="utf-8") as f:
                obj = json.load(f)
        except json.JSONDecodeError as e:
            raise PinError(f"pin file {p}: not JSON ({e})") from None
        return cls.parse(obj, f"pin file {p}")

    def save(self, path: str | os.PathLike[str], exclusive: bool = False) -> None:
        """Write atomically (a reader never sees half a file). exclusive: fail with FileExistsError
        if the file exists (trust on first use: never overwrite a recorded pin)."""
        p = os.fspath(path)
        d = os.path.dirname(os.path.abspath(p))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pins-", dir=d)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.dumps())
            os.chmod(tmp, 0o644)
            if exclusive:
                os.link(tmp, p)  # atomic, and fails if p exists
                os.unlink(tmp)
            else:
                os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    # -- checks --------------------------------------------------------------------------------
    def check_model(self, model: str) -> None:
        if self.model is not None and self.model != model:
            raise PinError(f"the pins ({self.source}) are for model {self.model!r}, not {model!r}: "
                           f"pin {model!r}'s workers (`tfe-client keys pull em/{model} -n NS > FILE`)")

    def check(self, model: str, claimed: Sequence[bytes], endpoint: str, pin_file: str | None = None) -> None:
        """Raise KeyMismatchError unless the endpoint's keys are exactly the pinned ones."""
        self.check_model(model)
        if tuple(claimed) == self.keys:
            return
        diff = "\n".join(f"  {w}: pinned {b64e(p)}, endpoint says {b64e(c)}"
                         for w, p, c in zip(wire.WORKERS, self.keys, claimed) if p != c)
        ns = self.namespace
        repin = (f"re-pin with `tfe-client keys pull em/{model} -n {ns or 'NS'} > {pin_file}`" if pin_file
                 else f"pin the new keys (`tfe-client keys pull em/{model} -n {ns or 'NS'} > pins.json`)")
        raise KeyMismatchError(
            f"the endpoint {endpoint} hands out worker public keys for model {model!r} that differ from the "
            f"pinned keys ({self.source}); nothing was sent:\n{diff}\n"
            "An endpoint or proxy in the middle may be substituting its own keys. If the workers' keys really "
            "changed (e.g. a worker's volume was recreated), verify the new ones out of band, from the cluster:\n"
            f"  {kubectl_keys_command(model, ns)}\n"
            "and compare with what the endpoint claims "
            f"(`tfe-client keys show --endpoint {endpoint} --model {model}`); "
            f"if they agree, {repin}.")

    # -- Kubernetes ----------------------------------------------------------------------------
    @classmethod
    def from_encrypted_model(cls, obj: Mapping[str, Any]) -> Pins:
        """Pins from an EncryptedModel object (as the API returns it): `.status.workers[*].publicKey`."""
        meta = obj.get("metadata") or {}
        name, ns = meta.get("name"), meta.get("namespace")
        what = f"encryptedmodel {ns}/{name}"
        status = obj.get("status") or {}
        workers = status.get("workers") or []
        missing = [w for i, w in enumerate(wire.WORKERS)
                   if i >= len(workers) or not isinstance(workers[i], dict) or not workers[i].get("publicKey")]
        if missing:
            raise PinError(f"{what} has no public key in its status for {', '.join(missing)} yet: wait until "
                           f"its workers are ready (`kubectl get em {name} -n {ns} -w`)")
        names = [w.get("name") for w in workers[:3]]
        if names != list(wire.WORKERS):
            raise PinError(f"{what}: status.workers must be server0, server1, server2 in order, got {names}")
        endpoint = status.get("endpoint")
        try:
            return cls(tuple(_key(w["publicKey"], f"{what} status {w['name']} publicKey") for w in workers[:3]),
                       name if isinstance(name, str) else None,
                       f"kubernetes {EM_PLURAL}.{EM_GROUP} {ns}/{name}",
                       ns if isinstance(ns, str) else None,
                       endpoint if isinstance(endpoint, str) and endpoint else None)
        except ProtocolError as e:
            raise PinError(str(e)) from None

    @classmethod
    def from_kubernetes(cls, name: str, namespace: str = "default", context: str | None = None) -> Pins:
        """Read the EncryptedModel through the Kubernetes API (kubeconfig, or in-cluster credentials)."""
        return cls.from_encrypted_model(fetch_encrypted_model(name, namespace, context))


def parse_em_ref(ref: str) -> str:
    """`em/NAME`, `encryptedmodel/NAME`, `encryptedmodels.tfe.dev/NAME` or `NAME` -> NAME."""
    if "/" in ref:
        kind, name = ref.split("/", 1)
        if kind.lower() not in ("em", "encryptedmodel", "encryptedmodels", f"{EM_PLURAL}.{EM_GROUP}",
                                f"encryptedmodel.{EM_GROUP}"):
            raise ValueError(f"expected em/NAME (an EncryptedModel), got {ref!r}")
        ref = name
    wire.check_model_name(ref)
    return ref


def fetch_encrypted_model(name: str, namespace: str = "default", context: str | None = None) -> dict[str, Any]:
    """GET the EncryptedModel with the `kubernetes` package (imported here, only when used)."""
    try:
        k8s_client: Any = importlib.import_module("kubernetes.client")
        k8s_config: Any = importlib.import_module("kubernetes.config")
    except ImportError:
        raise PinError("reading pins from the Kubernetes API needs the `kubernetes` package "
                       "(pip install kubernetes); or write a pin file elsewhere with `tfe-client keys pull`, "
                       f"or pass the keys from `{kubectl_keys_command(name, namespace)}`") from None
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(context=context, client_configuration=configuration)
    except (k8s_config.ConfigException, OSError) as e:
        if context is not None:
            raise PinError(f"kubeconfig context {context!r}: {e}") from None
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            raise PinError(f"no Kubernetes credentials: no usable kubeconfig ({e}) and not in a pod") from None
    api = k8s_client.CustomObjectsApi(k8s_client.ApiClient(configuration))
    try:
        obj = api.get_namespaced_custom_object(EM_GROUP, EM_VERSION, namespace, EM_PLURAL, name)
    except k8s_client.ApiException as e:
        if e.status == 404:
            raise PinError(f"encryptedmodel {namespace}/{name} not found (`kubectl get em -n {namespace}`)") from None
        raise PinError(f"reading encryptedmodel {namespace}/{name}: HTTP {e.status} {e.reason}") from None
    except Exception as e:  # noqa: BLE001 - transport errors of urllib3, named in the message
        raise PinError(f"reading encryptedmodel {namespace}/{name} from the Kubernetes API: {e}") from None
    if not isinstance(obj, dict):
        raise PinError(f"encryptedmodel {namespace}/{name}: unexpected API answer")
    return obj


def tofu_source(endpoint: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"trust on first use of {endpoint} at {now}"
