"""Communication rounds and bytes of one private inference, read from the graph the coordinator runs.

`trace()` builds the same computation as serve's per-bucket function (read the input pair on each
player, the private model, write the output pair) in a TF1-style graph, with the players' device
names but no connection, so nothing runs. `analyze()` then walks that graph as TF's partitioner
will cut it:

- a *message* is one tensor that an op on one party consumes from another party (TF sends it once
  per (tensor, destination device): one RecvTensor call); control edges between parties carry a
  dummy tensor and are counted apart;
- *rounds* is the length of the longest chain of messages, each depending on the one before (the
  latency floor in round trips: everything else in a round runs in parallel); the first is the
  coordinator handing the batch id and call counter to the players (they pull them with
  RecvTensor like any other tensor);
- bytes are the tensors' static sizes (fixed batch, so exact for every message of this graph).

Per layer: messages and bytes whose consumer lies in the layer's name scope, and the rounds the
layer adds to the critical path. `make bench` puts these beside the messages and bytes counted by
tfe-guard at run time (which include what TF's runtime adds and Grappler removes).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PARTIES = ("server0", "server1", "server2")
COORDINATOR = "coordinator"


def trace(manifest: dict[str, Any], bucket: int) -> tuple[Any, int]:
    """(graph, first op index of the per-call computation). Earlier ops are one-time setup
    (protocol keys, model variables) that serve runs once per connection, not per call."""
    import tensorflow as tf
    import tf_encrypted as tfe
    from tf_encrypted.config import RemoteConfig

    from tfe_worker import runtime

    hosts = OrderedDict((p, f"{p}.invalid:1") for p in PARTIES)  # names only: nothing connects
    g = tf.Graph()
    before = tfe.get_config(), tfe.get_protocol()
    with g.as_default():
        tfe.set_config(RemoteConfig(hosts))
        prot = runtime.FreshABY3()
        tfe.set_protocol(prot)
        try:
            model = runtime.build_model(manifest, bucket)
            start = len(g.get_operations())
            with tf.device(f"/job:{COORDINATOR}/replica:0/task:0/device:CPU:0"):  # serve's function arguments
                batch_id = tf.compat.v1.placeholder(tf.string, [], name="batch_id")
                prot._call = tf.compat.v1.placeholder(tf.int64, [], name="call")
                src = tf.strings.join(["spool/in/", batch_id, ".bin"])
                dst = tf.strings.join(["spool/out/", batch_id, ".tp"])
            x = runtime.read_raw_pair(prot, src, [bucket, *manifest["inputShape"]])
            y = model(x)
            runtime.write_pair(prot, y, dst)
        finally:  # the caller's TF Encrypted config and protocol, as they were
            prot._call = None
            tfe.set_config(before[0])
            tfe.set_protocol(before[1])
    return g, start


def _party(device: str) -> str | None:
    """'server1' for '/job:tfe/replica:0/task:1/device:CPU:0', 'coordinator' for its job, else None."""
    if device.startswith("/job:tfe/"):
        for part in device.split("/"):
            if part.startswith("task:"):
                return PARTIES[int(part[5:])]
    if device.startswith(f"/job:{COORDINATOR}/"):
        return COORDINATOR
    return None


def _nbytes(t: Any) -> int | None:
    if not t.shape.is_fully_defined():
        return None
    n = 1
    for d in t.shape.as_list():
        n *= d
    size = t.dtype.size if t.dtype.size else 0  # strings/resources: no static size
    return n * size if size else None


def _layer(name: str) -> str | None:
    """'dense_1' for 'sequential/dense_1/...': the tfe.keras layer's name scope."""
    parts = name.split("/")
    return parts[1] if len(parts) > 2 and parts[0].startswith("sequential") else None


def analyze(graph: Any, start: int) -> dict[str, Any]:
    ops = graph.get_operations()
    depth: dict[str, int] = {}
    for op in ops[:start]:
        depth[op.name] = 0
    sent: dict[str, dict[str, int]] = {p: {"messages": 0, "bytes": 0} for p in (*PARTIES, COORDINATOR)}
    control = 0
    unsized = 0
    seen: set[tuple[str, str]] = set()
    layers: OrderedDict[str, dict[str, int]] = OrderedDict()
    layer_depth: OrderedDict[str, int] = OrderedDict()
    for op in ops[start:]:
        dst = _party(op.device)
        d = 0
        lay = _layer(op.name)
        for t in op.inputs:
            src = _party(t.op.device)
            cross = src is not None and dst is not None and src != dst
            d = max(d, depth.get(t.op.name, 0) + (1 if cross else 0))
            if cross and src is not None and (t.name, op.device) not in seen:
                seen.add((t.name, op.device))
                nb = _nbytes(t)
                sent[src]["messages"] += 1
                sent[src]["bytes"] += nb or 0
                unsized += nb is None
                if lay is not None:
                    row = layers.setdefault(lay, {"messages": 0, "bytes": 0})
                    row["messages"] += 1
                    row["bytes"] += nb or 0
        for c in op.control_inputs:
            src = _party(c.device)
            cross = src is not None and dst is not None and src != dst
            d = max(d, depth.get(c.name, 0) + (1 if cross else 0))
            if cross and (c.name, op.device) not in seen:
                seen.add((c.name, op.device))
                control += 1
        depth[op.name] = d
        if lay is not None:
            layer_depth[lay] = max(layer_depth.get(lay, 0), d)
    rounds = max((depth[op.name] for op in ops[start:]), default=0)
    per_layer = []
    before = 0
    for name, top in layer_depth.items():
        row = layers.get(name, {"messages": 0, "bytes": 0})
        per_layer.append({"layer": name, "rounds": max(0, top - before), **row})
        before = max(before, top)
    return {"rounds": rounds, "sent": sent, "control_messages": control, "unsized_messages": unsized,
            "layers": per_layer}


def of_manifest(manifest: dict[str, Any], bucket: int = 1) -> dict[str, Any]:
    g, start = trace(manifest, bucket)
    out = analyze(g, start)
    out["batch"] = bucket
    return out
