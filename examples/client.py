"""Private predictions from the example EncryptedModel.

usage: python examples/client.py [ENDPOINT]   (default: the Service, http://digits.default.svc:8000)
Needs tfe-client (pip install ./client) and scikit-learn for the test digits. The workers' keys
are pinned from the EncryptedModel's status: read through the Kubernetes API (needs the
`kubernetes` package and a kubeconfig; TFE_NAMESPACE, default "default"), or given as
TFE_EXPECTED_KEYS="k0 k1 k2", e.g.
  TFE_EXPECTED_KEYS="$(kubectl get em digits -o jsonpath='{.status.workers[*].publicKey}')"
An https:// ENDPOINT (spec.serving.tls) is verified against the system's CAs, or against the CA
file in TFE_CA (e.g. examples/digits-https.yaml's issuer); HTTPS_PROXY/NO_PROXY are honoured.
"""

import os
import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tfe_client import Client

endpoint = sys.argv[1] if len(sys.argv) > 1 else "http://digits.default.svc:8000"
keys = os.environ.get("TFE_EXPECTED_KEYS", "").split()
token = os.environ.get("TFE_TOKEN") or None
ca = os.environ.get("TFE_CA") or None
if keys:
    client = Client(endpoint, token=token, expected_keys=keys, ca=ca)
else:
    namespace = os.environ.get("TFE_NAMESPACE", "default")
    client = Client.from_kubernetes("digits", namespace, endpoint=endpoint, token=token, ca=ca)
digits = load_digits()
# the same held-out split the example model was trained without (make demo's split)
_, x, _, y = train_test_split((digits.data / 16.0).astype(np.float32), digits.target, test_size=0.25, random_state=0)
x, y = x[:100], y[:100]
probs = np.concatenate([client.predict_proba("digits", x[i:i + 10]) for i in range(0, 100, 10)])
print(f"private accuracy on 100 held-out digits: {np.mean(probs.argmax(1) == y):.2f}")
