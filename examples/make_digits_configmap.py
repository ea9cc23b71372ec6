"""Regenerate digits-model.yaml: train the digits MLP with plain Keras and wrap the .h5 in a ConfigMap.

usage: .venv-worker/bin/python examples/make_digits_configmap.py   (from the repository root)
"""

import base64
import os
import tempfile

from tfe_worker.demo import train_mlp

HERE = os.path.dirname(os.path.abspath(__file__))

with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "model.h5")
    train_mlp(path)
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
lines = [
    "# The digits MLP (64-128-10, trained on scikit-learn's digits) as a ConfigMap.",
    "# Regenerate with: .venv-worker/bin/python examples/make_digits_configmap.py",
    "apiVersion: v1", "kind: ConfigMap", "metadata:", "  name: digits-model", "binaryData:", "  model.h5: |-",
]
lines += ["    " + data[i:i + 76] for i in range(0, len(data), 76)]
with open(os.path.join(HERE, "digits-model.yaml"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("wrote examples/digits-model.yaml")
