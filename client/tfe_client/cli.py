"""tfe-client command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from tfe_client.client import Client
from tfe_client.errors import ProtocolError, RemoteError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-client", description="Private predictions from a tfe-operator endpoint")
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("predict", help="secret-share an input .npy, get private predictions")
    pr.add_argument("--endpoint", required=True, help="http(s)://host:port of the EncryptedModel's Service")
    pr.add_argument("--model", required=True, help="EncryptedModel name")
    pr.add_argument("--input", required=True, help=".npy file, shape [B, ...] or one sample")
    pr.add_argument("--output", help="write the result here (.npy); default: print JSON")
    pr.add_argument("--proba", action="store_true", help="apply the model's final activation (e.g. softmax)")
    pr.add_argument("--token-env", default="TFE_TOKEN", help="environment variable holding the bearer token")
    info = sub.add_parser("info", help="show the model's public metadata")
    info.add_argument("--endpoint", required=True)
    info.add_argument("--model", required=True)
    info.add_argument("--token-env", default="TFE_TOKEN")
    a = p.parse_args(argv)
    client = Client(a.endpoint, token=os.environ.get(a.token_env) or None)
    try:
        if a.cmd == "info":
            m = client.model_info(a.model)
            print(json.dumps({"name": m.name, "protocol": m.protocol, "shareGeneration": m.share_generation,
                              "inputShape": list(m.input_shape), "outputShape": list(m.output_shape),
                              "postprocess": m.postprocess, "maxBatchSize": m.max_batch_size}, indent=2))
            return 0
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
