"""An attacker process against the three players (run by test_mesh.py, in .venv-worker).

usage: python mesh_attack.py read-key TF0 TF1 TF2 OWN_ADDR TARGET KEYFILE
         join the players' TF cluster as a new job and read TARGET's key file on its device;
         prints "READ <sha256 of what was read>" or "REFUSED <reason>"
       python mesh_attack.py recv-tensor ADDR DST_TASK
         ask the TF server at ADDR (as whoever the local guard says we are) for a tensor whose
         rendezvous key addresses /job:tfe/replica:0/task:DST_TASK;
         prints "CODE <grpc status code name>" and the details
"""

from __future__ import annotations

import hashlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def read_key(tf_addrs: list[str], own: str, target: int, keyfile: str) -> None:
    import tensorflow as tf

    cluster = tf.train.ClusterSpec({"tfe": tf_addrs, "intruder": [own]})
    try:
        tf.config.experimental_connect_to_cluster(cluster, job_name="intruder", task_index=0)
        with tf.device(f"/job:tfe/replica:0/task:{target}/device:CPU:0"):
            data = tf.io.read_file(keyfile).numpy()
    except Exception as e:  # noqa: BLE001 - any refusal is the expected outcome
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        print(f"REFUSED {type(e).__name__}: {lines[0][:300] if lines else ''}", flush=True)
        return
    print(f"READ {hashlib.sha256(data).hexdigest()}", flush=True)


def recv_tensor(addr: str, dst_task: int) -> None:
    import grpc

    src = "/job:tfe/replica:0/task:2/device:CPU:0"
    dst = f"/job:tfe/replica:0/task:{dst_task}/device:CPU:0"
    key = f"{src};0000000000000001;{dst};edge_1_x;0:0".encode()
    # tensorflow.RecvTensorRequest {step_id = 1 (field 1, varint); rendezvous_key (field 2, bytes)}
    # written out by hand: TF 2.9.1's Python package does not ship worker_pb2
    req = b"\x08\x01" + b"\x12" + _varint(len(key)) + key
    ch = grpc.insecure_channel(addr)
    call = ch.unary_unary("/tensorflow.WorkerService/RecvTensor", request_serializer=lambda b: b,
                          response_deserializer=lambda b: b)
    try:
        call(req, timeout=3.0)
        print("CODE OK", flush=True)
    except grpc.RpcError as e:
        print(f"CODE {e.code().name} {e.details()}", flush=True)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def main() -> int:
    if sys.argv[1] == "read-key":
        read_key(sys.argv[2:5], sys.argv[5], int(sys.argv[6]), sys.argv[7])
    elif sys.argv[1] == "recv-tensor":
        recv_tensor(sys.argv[2], int(sys.argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
