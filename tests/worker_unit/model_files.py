"""Model files as users hand them in, and the share job's entry point that meets them (imported by
name by the model-inspection and Keras 3 tests: tests/worker_unit is on sys.path)."""

import json
import zipfile

from tfe_worker import share
from tfe_worker.config import Config


def share_main(tmp_path, model):
    """Run `tfe-worker share` on `model` as the share Job does; returns (exit code, termination log)."""
    cfg = tmp_path / "tfe.json"
    cfg.write_text(Config.loopback([1, 2, 3], [4, 5, 6]).to_json())
    term = tmp_path / "termination-log"
    rc = share.main(["--config", str(cfg), "--model", str(model), "--name", "m", "--coordinator-address",
                     "127.0.0.1:1", "--ready-timeout", "0.1", "--termination-log", str(term)])
    return rc, term.read_text() if term.exists() else ""


def write_keras_archive(path, config_json, metadata=None, weights=False):
    """A .keras (Keras v3) zip archive: config.json, metadata.json when given, an empty
    model.weights.h5 when asked (what Keras 3's model.save("model.keras") writes, weights aside)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", config_json)
        if metadata is not None:
            z.writestr("metadata.json", json.dumps(metadata))
        if weights:
            z.writestr("model.weights.h5", b"")
