"""tfe-client command line."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings

import numpy as np

from tfe_client import wire
from tfe_client.client import Client
from tfe_client.crypto import b64e
from tfe_client.errors import ProtocolError, RemoteError
from tfe_client.pins import Pins, kubectl_keys_command, parse_em_ref


def _add_pin_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pins", metavar="FILE", help="pin file of the workers' public keys (tfe-client keys pull, "
                   "or <state>/pins.json of tfe-worker local)")
    g.add_argument("--expected-keys", metavar="K0,K1,K2",
                   help="the three workers' base64 public keys, comma- or space-separated, e.g. "
                   "\"$(kubectl get em NAME -o jsonpath='{.status.workers[*].publicKey}')\"")
    g.add_argument("--tofu", metavar="FILE", help="trust on first use: record the keys in FILE the first time, "
                   "refuse a changed key set afterwards")
    g.add_argument("--insecure-trust-endpoint-keys", action="store_true",
                   help="INSECURE: encrypt to whatever keys the endpoint hands out (an endpoint or proxy in the "
                   "middle can read every input)")


def _add_transport_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca", metavar="PEM", help="verify an https:// endpoint against this CA file "
                   "(default: the system's CAs); HTTP(S)_PROXY and NO_PROXY are honoured")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for connecting and for each read")
    p.add_argument("--retry-for", type=float, default=30.0, metavar="SECONDS",
                   help="retry 503 not_ready (model still loading) with backoff for up to this long; 0: never")


def _client(a: argparse.Namespace) -> Client:
    token = os.environ.get(a.token_env) or None
    if a.insecure_trust_endpoint_keys:
        print("tfe-client: WARNING: --insecure-trust-endpoint-keys: the worker keys are whatever the endpoint says; "
              "an endpoint or proxy in the middle can read every input", file=sys.stderr)
    keys = [k for k in re.split(r"[,\s]+", a.expected_keys) if k] if a.expected_keys is not None else None
    with warnings.catch_warnings():  # the CLI says it above, in its own words
        warnings.simplefilter("ignore")
        return Client(a.endpoint, token=token, expected_keys=keys, pins=a.pins, trust_on_first_use=a.tofu,
                      insecure_trust_endpoint_keys=a.insecure_trust_endpoint_keys, ca=a.ca, timeout=a.timeout,
                      retry_for=a.retry_for)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-client", description="Private predictions from a tfe-operator endpoint")
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("predict", help="secret-share an input .npy, get private predictions")
    pr.add_argument("--endpoint", required=True, help="http(s)://host:port of the EncryptedModel's Service "
                    "(or its Ingress/route)")
    pr.add_argument("--model", required=True, help="EncryptedModel name")
    pr.add_argument("--input", required=True, help=".npy file, shape [B, ...] or one sample")
    pr.add_argument("--output", help="write the result here (.npy); default: print JSON")
    pr.add_argument("--proba", action="store_true", help="apply the model's final activation (e.g. softmax)")
    pr.add_argument("--token-env", default="TFE_TOKEN", help="environment variable holding the bearer token")
    _add_pin_options(pr)
    _add_transport_options(pr)
    info = sub.add_parser("info", help="show the model's public metadata (as the endpoint claims it)")
    info.add_argument("--endpoint", required=True)
    info.add_argument("--model", required=True)
    info.add_argument("--token-env", default="TFE_TOKEN")
    _add_transport_options(info)
    keys = sub.add_parser("keys", help="pin the workers' public keys")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    pull = ksub.add_parser("pull", help="print a pin file from the EncryptedModel's status (Kubernetes API)")
    pull.add_argument("ref", metavar="em/NAME", help="the EncryptedModel")
    pull.add_argument("-n", "--namespace", default="default")
    pull.add_argument("--context", help="kubeconfig context")
    show = ksub.add_parser("show", help="print the keys an endpoint hands out, UNVERIFIED")
    show.add_argument("--endpoint", required=True)
    show.add_argument("--model", required=True)
    show.add_argument("--token-env", default="TFE_TOKEN")
    _add_transport_options(show)
    a = p.parse_args(argv)
    try:
        if a.cmd == "keys" and a.keys_cmd == "pull":
            sys.stdout.write(Pins.from_kubernetes(parse_em_ref(a.ref), a.namespace, a.context).dumps())
            return 0
        if a.cmd in ("info", "keys"):
            m = Client(a.endpoint, token=os.environ.get(a.token_env) or None, ca=a.ca, timeout=a.timeout,
                       retry_for=a.retry_for).unverified_model_info(a.model)
            if a.cmd == "info":
                print(json.dumps({"name": m.name, "protocol": m.protocol, "shareGeneration": m.share_generation,
                                  "inputShape": list(m.input_shape), "outputShape": list(m.output_shape),
                                  "postprocess": m.postprocess, "maxBatchSize": m.max_batch_size}, indent=2))
                return 0
            print(json.dumps({"unverified": True, "claimedBy": a.endpoint, "model": m.name,
                              "workers": [{"name": w, "publicKey": b64e(k)} for w, k in
                                          zip(wire.WORKERS, m.worker_keys)]}, indent=2))
            print(f"tfe-client: UNVERIFIED: these are the keys {a.endpoint} claims; compare them with "
                  f"`{kubectl_keys_command(m.name, None)}` before trusting them "
                  f"(a pin file: tfe-client keys pull em/{m.name} -n NS > pins.json)", file=sys.stderr)
            return 0
        client = _client(a)
        x = np.load(a.input, allow_pickle=False)
        y = client.predict_proba(a.model, x) if a.proba else client.predict(a.model, x)
    except (ValueError, ProtocolError, RemoteError, OSError) as e:
        print(f"tfe-client: {e}", file=sys.stderr)
        return 2
    if a.output:
        np.save(a.output, y)
    else:
        print(json.dumps(y.tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
