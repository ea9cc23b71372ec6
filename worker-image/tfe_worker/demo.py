"""make demo: train a digits MLP, serve it privately on three local workers, query it."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

from tfe_worker.local import free_ports, worker_cmd


def digits() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """scikit-learn's digits (ships with the package, no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.25, random_state=0)
    return x_tr, x_te, y_tr, y_te


def train_mlp(path: str, seed: int = 0) -> None:
    import tensorflow as tf

    x_tr, _, y_tr, _ = digits()
    tf.keras.utils.set_random_seed(seed)
    m = tf.keras.Sequential([tf.keras.layers.Dense(128, activation="relu", input_shape=(64,)),
                             tf.keras.layers.Dense(10, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x_tr, y_tr, epochs=30, batch_size=32, verbose=0)
    m.save(path, include_optimizer=False)


def wait_endpoint(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the local deployment exited with code {proc.returncode}")
        try:
            c = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"endpoint {url} not ready after {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-worker demo")
    p.add_argument("--workdir", default=".demo")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)
    model_path = os.path.join(a.workdir, "digits.h5")
    print("training a digits MLP (64-128-10) with plain Keras ...", flush=True)
    train_mlp(model_path)
    import tensorflow as tf

    _, x_te, _, y_te = digits()
    x_te, y_te = x_te[: a.samples], y_te[: a.samples]
    plain = tf.keras.models.load_model(model_path).predict(x_te, verbose=0)
    port = a.port or free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    print(f"starting three TFE workers, the share job and the coordinator (state in {a.workdir}/state) ...",
          flush=True)
    proc = subprocess.Popen(worker_cmd("local", "--model", model_path, "--name", "digits", "--port", str(port),
                                       "--state", os.path.join(a.workdir, "state")))
    try:
        wait_endpoint(url, proc, timeout=600)
        from tfe_client import Client

        # the keys tfe-worker local read from the workers themselves, not what the endpoint says
        client = Client(url, pins=os.path.join(a.workdir, "state", "pins.json"))
        probs, lat = [], []
        for row in x_te:
            t0 = time.perf_counter()
            probs.append(client.predict_proba("digits", row[None, :])[0])
            lat.append(time.perf_counter() - t0)
        probs_a = np.asarray(probs)
        priv, ref = probs_a.argmax(1), plain.argmax(1)
        print(f"private accuracy {np.mean(priv == y_te):.4f} (plaintext {np.mean(ref == y_te):.4f}) on "
              f"{len(y_te)} samples, agreement {100 * np.mean(priv == ref):.1f}%, "
              f"p50 {1000 * float(np.median(lat)):.1f} ms", flush=True)
        return 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
