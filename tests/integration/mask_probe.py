"""Probe for the mask-reuse bug.

usage: python mask_probe.py CONFIG COORD MODEL GEN stock|fresh SPOOL0 SPOOL1 SPOOL2

Builds the private model from the players' shares with either stock ABY3 or FreshABY3, runs
one compiled graph twice on identical input shares, and prints whether the graph's
zero-sharing masks and the output shares were identical across the two calls.
Prints JSON only; its input is a constant it shares itself."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_encrypted as tfe
from tf_encrypted.config import RemoteConfig

from tfe_client import sharing
from tfe_client.fixedpoint import DEFAULT
from tfe_worker import runtime, workers
from tfe_worker.config import Config
from tfe_worker.player import read_tensorproto_int64

cfg_path, coord, model, gen, kind, *spools = sys.argv[1:]
cfg = Config.load(cfg_path)
if kind == "fresh":
    prot = runtime.connect(cfg, coord)
else:
    rc = RemoteConfig(cfg.hostmap)
    tfe.set_config(rc)
    tf.config.experimental_connect_to_cluster(
        tf.train.ClusterSpec({"tfe": rc.hosts, "coordinator": [coord]}), job_name="coordinator", task_index=0)
    prot = tfe.protocol.ABY3()
    tfe.set_protocol(prot)
manifest = workers.manifest(cfg, model, int(gen))
m = runtime.build_model(manifest, 1)
runtime.load_weights(prot, m, manifest, f"models/{model}/{gen}")
feat = list(manifest["inputShape"])


@tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)])
def run(name, call):
    if kind == "fresh":
        prot._call = call
    try:
        x = runtime.read_raw_pair(prot, tf.strings.join(["spool/in/", name, ".bin"]), [1, *feat])
        runtime.write_pair(prot, m(x), tf.strings.join(["spool/out/", name, ".tp"]))
        # one of the graph's zero-sharing masks, as player 0 holds it (test-only output: it is
        # what a player would add to its share when resharing; it must never repeat)
        return prot._gen_zero_sharing([16])[0].value
    finally:
        prot._call = None


pairs = sharing.share(DEFAULT.encode(np.full([1, *feat], 0.25)))
outs, masks = [], []
for k in (1, 2):
    name = f"{'ab' * 8}{k:02d}"
    for i, sp in enumerate(spools):
        with open(os.path.join(sp, "in", f"{name}.bin"), "wb") as f:
            f.write(pairs[i].astype("<i8").tobytes())
    masks.append(run(tf.constant(name), tf.constant(k, tf.int64)).numpy())
    outs.append([read_tensorproto_int64(os.path.join(sp, "out", f"{name}.tp")) for sp in spools])
same = all(np.array_equal(a, b) for a, b in zip(outs[0], outs[1]))
diff = int(np.abs(sharing.reconstruct(outs[0]) - sharing.reconstruct(outs[1])).max())
print(json.dumps({"sameMasks": bool(np.array_equal(masks[0], masks[1])), "sameShares": same, "maxDiff": diff}))
