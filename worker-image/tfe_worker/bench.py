"""make bench: private prediction through the HTTP endpoint vs plaintext Keras vs TF Encrypted's
own serving path, on the same three local players. Writes a JSON results file and prints a table.

Measured per model (digits MLP 64-128-10, Net-A 784-128-128-10 with random weights, a small
CNN on digits): batch-1 latency through the endpoint (sequential client: p50, p99), and
predictions/s with 8 concurrent clients (16 rows per request, dynamic batching).

Communication per batch-1 inference: `protocol` holds the rounds, messages and bytes of the
graph serve runs (tfe_worker.rounds, per party and per layer); with TLS on, `private_http.wire`
holds what the parties' tfe-guards counted during the batch-1 run (GET /guard/stats before and
after, divided by the number of requests): RecvTensor calls and tensor bytes each party sent
to each other party, and the coordinator's calls on each player.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from tfe_worker import cpu
from tfe_worker.demo import digits, wait_endpoint
from tfe_worker.local import Stack, free_ports, new_stack


def stats(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1000.0
    return {"n": len(ts), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean())}


def build_models(d: str) -> dict[str, Any]:
    import tensorflow as tf

    L = tf.keras.layers
    x_tr, x_te, y_tr, _ = digits()
    tf.keras.utils.set_random_seed(0)
    mlp = tf.keras.Sequential([L.Dense(128, activation="relu", input_shape=(64,)), L.Dense(10, activation="softmax")])
    mlp.compile("adam", "sparse_categorical_crossentropy")
    mlp.fit(x_tr, y_tr, epochs=20, verbose=0)
    neta = tf.keras.Sequential([L.Dense(128, activation="relu", input_shape=(784,)),
                                L.Dense(128, activation="relu"), L.Dense(10, activation="softmax")])
    cnn = tf.keras.Sequential([L.Reshape((8, 8, 1), input_shape=(64,)), L.Conv2D(8, 3, activation="relu"),
                               L.AveragePooling2D(2), L.Flatten(), L.Dense(10, activation="softmax")])
    cnn.compile("adam", "sparse_categorical_crossentropy")
    cnn.fit(x_tr, y_tr, epochs=20, verbose=0)
    rng = np.random.default_rng(0)
    out = {}
    for name, m, x in (("digits-mlp", mlp, x_te), ("net-a", neta, rng.uniform(0, 1, (256, 784)).astype(np.float32)),
                       ("digits-cnn", cnn, x_te)):
        path = os.path.join(d, f"{name}.h5")
        m.save(path)
        out[name] = {"path": path, "keras": m, "x": x}
    return out


def plaintext(m: Any, x: np.ndarray[Any, Any], n: int) -> dict[str, Any]:
    import tensorflow as tf

    fn = tf.function(lambda v: m(v, training=False))
    one = tf.constant(x[:1])
    for _ in range(10):
        fn(one).numpy()
    ts = []
    for k in range(n):
        v = tf.constant(x[k % len(x):k % len(x) + 1])
        t = time.perf_counter()
        fn(v).numpy()
        ts.append(time.perf_counter() - t)
    b = tf.constant(np.resize(x, (128, *x.shape[1:])))
    fn(b).numpy()
    t = time.perf_counter()
    reps = 50
    for _ in range(reps):
        fn(b).numpy()
    return {"batch1": stats(ts), "predictions_per_s": 128 * reps / (time.perf_counter() - t)}


def queue_baseline(stack: Stack, name: str, m: Any, n: int, tmp: str) -> dict[str, Any]:
    """TF Encrypted's QueueServer/QueueClient on the same players (two extra processes)."""
    from tfe_worker.plan import build_plan

    plan = build_plan(m, "bench")
    man = os.path.join(tmp, f"{name}-manifest.json")
    with open(man, "w") as f:
        json.dump(plan.public(), f)
    wts = os.path.join(tmp, f"{name}-weights.npz")
    np.savez(wts, **{f"w{k}": w for k, w in enumerate(plan.weights)})
    out = subprocess.run([sys.executable, "-m", "tfe_worker.bench_queue", stack.config_path(), stack.coordinator(),
                          man, wts, str(n + 5)], capture_output=True, text=True, timeout=900, check=True)  # TLS off
    lat = json.loads(out.stdout.strip().splitlines()[-1])["latencies"][5:]
    return {"batch1": stats(lat)}


GUARDED = ("server0", "server1", "server2")


def guard_stats(stack: Stack, name: str) -> dict[tuple[str, str, str], tuple[int, int, int]]:
    """{(party, caller, method): (calls, request bytes, response bytes)} from every guard with a
    gRPC inbound (the players and the model's coordinator), read as the `operator`."""
    from tfe_client import mesh

    out: dict[tuple[str, str, str], tuple[int, int, int]] = {}
    for party in (*GUARDED, f"coordinator:{name}"):
        status, body = stack.call(party, "GET", mesh.STATS_PATH)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"GET {mesh.STATS_PATH} on {party}: {status}")
        for row in body["calls"]:
            if not row["listener"].startswith("grpc"):
                continue
            k = (party.split(":")[0], row["identity"], row["method"])
            c, q, r = out.get(k, (0, 0, 0))
            out[k] = (c + row["calls"], q + row["requestBytes"], r + row["responseBytes"])
    return out


def wire_per_inference(before: dict[tuple[str, str, str], tuple[int, int, int]],
                       after: dict[tuple[str, str, str], tuple[int, int, int]], n: int) -> dict[str, Any]:
    """Counted by the guards over n batch-1 requests, per request. `sent[P]`: RecvTensor answers
    party P gave (the tensors it sent), in total and per receiver; `calls[P]`: every other method
    called on P, per caller (the coordinator's eager calls that start each graph)."""
    sent: dict[str, Any] = {}
    calls: dict[str, dict[str, float]] = {}
    for k, (c1, _q1, r1) in sorted(after.items()):
        c0, _q0, r0 = before.get(k, (0, 0, 0))
        party, caller, method = k
        if c1 == c0:
            continue
        if method.endswith("/RecvTensor"):
            row = sent.setdefault(party, {"messages": 0.0, "bytes": 0.0, "to": {}})
            row["messages"] += (c1 - c0) / n
            row["bytes"] += (r1 - r0) / n
            row["to"][caller] = {"messages": (c1 - c0) / n, "bytes": (r1 - r0) / n}
        else:
            calls.setdefault(party, {})[f"{caller} {method.rsplit('/', 1)[-1]}"] = (c1 - c0) / n
    return {"requests": n, "sent": sent, "calls": calls}


def private_http(stack: Stack, name: str, x: np.ndarray[Any, Any], n: int, seconds: float) -> dict[str, Any]:
    from tfe_client import Client

    s = stack.for_model(name)
    flags = ["--max-batch-size", "128", "--max-wait-ms", "5"]
    # Cold start as deployed (the smallest bucket warm before ready, the rest after), then a
    # fresh coordinator that warms every bucket before ready, so no warm-up runs while we measure.
    port = free_ports(1)[0]
    t0 = time.monotonic()
    serve = s.start_serve(port, flags)
    try:
        wait_endpoint(f"http://127.0.0.1:{port}", serve, 600)
        cold = time.monotonic() - t0
    finally:
        s.kill(f"serve-{name}", signal.SIGTERM)
    port = free_ports(1)[0]
    t0 = time.monotonic()
    serve = s.start_serve(port, [*flags, "--warm", "all"])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_endpoint(url, serve, 600)
        cold_all = time.monotonic() - t0
        pins = s.pins(name)  # read from the workers, not the endpoint
        c = Client(url, pins=pins)
        for k in range(10):
            c.predict(name, x[k:k + 1])
        before = guard_stats(stack, name) if stack.tls else None
        ts = []
        cpu0 = cpu.snapshot()
        for k in range(n):
            row = x[k % len(x):k % len(x) + 1]
            t = time.perf_counter()
            c.predict(name, row)
            ts.append(time.perf_counter() - t)
        cpu_ms = cpu.per_request_ms(cpu0, cpu.snapshot(), n)
        wire = wire_per_inference(before, guard_stats(stack, name), n) if before is not None else None
        per_s, elapsed = throughput(url, pins, name, x, seconds)
        out = {"batch1": stats(ts), "batch1_cpu_ms": cpu_ms, "predictions_per_s": per_s,
               "concurrency": {"clients": 8, "rows_per_request": 16, "seconds": elapsed},
               "start_to_ready_s": {"warm_first": cold, "warm_all": cold_all}}
        if wire is not None:
            out["wire"] = wire
        return out
    finally:
        s.kill(f"serve-{name}", signal.SIGTERM)  # and its coordinator


def throughput(url: str, pins: Any, name: str, x: np.ndarray[Any, Any], seconds: float) -> tuple[float, float]:
    """Predictions/s with 8 concurrent clients of 16 rows per request; and the seconds it ran."""
    from tfe_client import Client

    rows_done = [0] * 8
    stop = time.monotonic() + seconds

    def load(i: int) -> None:
        cl = Client(url, pins=pins)
        k = 16 * i
        while time.monotonic() < stop:
            cl.predict(name, np.resize(x[k % len(x):], (16, *x.shape[1:])))
            rows_done[i] += 16
            k += 16

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=seconds + 120)
    elapsed = time.perf_counter() - t0
    return sum(rows_done) / elapsed, elapsed


def pipeline_compare(stack: Stack, name: str, x: np.ndarray[Any, Any], seconds: float, rounds: int
                     ) -> dict[str, Any]:
    """Predictions/s with 8 clients, serve --pipeline off and on alternating (off, on, off, on ...),
    each a fresh coordinator with every bucket warm, in this one run: the same machine load for both."""
    from tfe_client import Client

    s = stack.for_model(name)
    runs: dict[str, list[float]] = {"off": [], "on": []}
    load: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for mode in ("off", "on"):
            port = free_ports(1)[0]
            serve = s.start_serve(port, ["--max-batch-size", "128", "--max-wait-ms", "5", "--warm", "all",
                                         "--pipeline", mode])
            url = f"http://127.0.0.1:{port}"
            try:
                wait_endpoint(url, serve, 600)
                pins = s.pins(name)
                c = Client(url, pins=pins)
                for k in range(10):
                    c.predict(name, x[k:k + 1])
                per_s, _ = throughput(url, pins, name, x, seconds)
                runs[mode].append(per_s)
                load[mode].append(os.getloadavg()[0])
            finally:
                s.kill(f"serve-{name}", signal.SIGTERM)
    med = {m: float(np.median(v)) for m, v in runs.items()}
    return {"clients": 8, "rows_per_request": 16, "seconds": seconds, "predictions_per_s": runs,
            "median": med, "on_vs_off": med["on"] / med["off"], "load_avg_1m": load}


def protocol(m: Any) -> dict[str, Any]:
    """Rounds, messages and bytes of one batch-1 inference, from the graph (tfe_worker.rounds)."""
    from tfe_worker import rounds
    from tfe_worker.plan import build_plan

    return rounds.of_manifest(build_plan(m, "bench").public(), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-worker bench")
    p.add_argument("--out", default="bench/results.json")
    p.add_argument("--n", type=int, default=200, help="batch-1 requests per measurement")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of the concurrent-clients run")
    p.add_argument("--models", nargs="*", default=None, help="only these (digits-mlp, net-a, digits-cnn)")
    p.add_argument("--pipeline-compare", type=int, default=0, metavar="ROUNDS",
                   help="also measure pred/s with serve --pipeline off and on, alternating, ROUNDS times each")
    p.add_argument("--pipeline-only", action="store_true",
                   help="with --pipeline-compare: measure only that (no plaintext, TFE queue or latency runs)")
    a = p.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                            "platform": platform.platform()},
                               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": {}}
    with tempfile.TemporaryDirectory(prefix="tfe-bench-") as tmp:
        models = {k: v for k, v in build_models(tmp).items() if not a.models or k in a.models}
        for name, m in models.items():
            results["models"][name] = {} if a.pipeline_only else {"plaintext": plaintext(m["keras"], m["x"], a.n),
                                                                  "protocol": protocol(m["keras"])}
        # TLS off first (also TF Encrypted's own serving path, which has no TLS), then the default:
        # mutual TLS through tfe-guard, every party in a namespace of its own, endpoint split off.
        for tls in (False, True):
            stack = new_stack(os.path.join(tmp, f"state-tls-{'on' if tls else 'off'}"), "bench", tls=tls)
            try:
                stack.start_players()
                for name, m in models.items():
                    r = results["models"][name]
                    s = stack.for_model(name)
                    if s.share(m["path"]) != 0:
                        raise RuntimeError(f"share of {name} failed (TLS {'on' if tls else 'off'})")
                    key = "private_http" if tls else "private_http_insecure"
                    if not a.pipeline_only:
                        if not tls:
                            r["tfe_queue"] = queue_baseline(stack, name, m["keras"], min(a.n, 100), tmp)
                        r[key] = private_http(stack, name, m["x"], a.n, a.seconds)
                    if a.pipeline_compare:
                        pc = pipeline_compare(stack, name, m["x"], a.seconds, a.pipeline_compare)
                        r.setdefault(key, {})["pipeline_compare"] = pc
                        runs = pc["predictions_per_s"]
                        print(f"  {name} (TLS {'on' if tls else 'off'}): pred/s pipeline off {runs['off']}, "
                              f"on {runs['on']}", flush=True)
                    print(f"  {name} (TLS {'on' if tls else 'off'}): done", flush=True)
            finally:
                stack.stop()
        for r in results["models"].values():
            if a.pipeline_only:
                break
            on, off = r["private_http"]["batch1"], r["private_http_insecure"]["batch1"]
            r["ratios"] = {
                "p50_vs_plaintext": on["p50_ms"] / r["plaintext"]["batch1"]["p50_ms"],
                "p50_vs_tfe_queue": on["p50_ms"] / r["tfe_queue"]["batch1"]["p50_ms"],
                "p50_tls_on_vs_off": on["p50_ms"] / off["p50_ms"],
            }
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    if not a.pipeline_only:
        print(table(results))
    print(f"results written to {a.out}")
    return 0


def table(results: dict[str, Any]) -> str:
    head = ("| model | plaintext b1 p50 / p99 (ms) | TFE queue b1 p50 / p99 (ms) | ours, TLS off b1 p50 / p99 (ms) "
            "| ours, mTLS b1 p50 / p99 (ms) | mTLS / off | mTLS / TFE queue | pred/s 8 clients (off / mTLS) |")
    rows = [head, "|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        pl, q = r["plaintext"], r["tfe_queue"]["batch1"]
        off, on = r["private_http_insecure"], r["private_http"]
        rows.append(f"| {name} | {pl['batch1']['p50_ms']:.2f} / {pl['batch1']['p99_ms']:.2f} "
                    f"| {q['p50_ms']:.1f} / {q['p99_ms']:.1f} "
                    f"| {off['batch1']['p50_ms']:.1f} / {off['batch1']['p99_ms']:.1f} "
                    f"| {on['batch1']['p50_ms']:.1f} / {on['batch1']['p99_ms']:.1f} "
                    f"| {r['ratios']['p50_tls_on_vs_off']:.2f}x | {r['ratios']['p50_vs_tfe_queue']:.2f}x "
                    f"| {off['predictions_per_s']:,.0f} / {on['predictions_per_s']:,.0f} |")
    rows += ["", ("Communication per batch-1 inference (graph: tfe_worker.rounds; measured: the guards' counts, "
                  "mTLS run)"), "",
             ("| model | rounds (graph) | rounds per layer (graph) | messages sent s0/s1/s2 (graph / measured) "
              "| KiB sent s0/s1/s2 (graph / measured) | coordinator calls per player (measured) "
              "| serve start -> ready, s (smallest bucket / all buckets warm; off, mTLS) |"),
             "|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        pr = r.get("protocol")
        if pr is None:
            continue
        wire = r.get("private_http", {}).get("wire", {})
        ws = wire.get("sent", {})
        g_msg = "/".join(str(pr["sent"][p]["messages"]) for p in GUARDED)
        g_kib = "/".join(f"{pr['sent'][p]['bytes'] / 1024:.1f}" for p in GUARDED)
        m_msg = "/".join(f"{ws.get(p, {}).get('messages', 0):.1f}" for p in GUARDED) if ws else "-"
        m_kib = "/".join(f"{ws.get(p, {}).get('bytes', 0) / 1024:.1f}" for p in GUARDED) if ws else "-"
        calls = wire.get("calls", {})
        c = ", ".join(f"{k} {v:.1f}" for k, v in sorted(calls.get("server0", {}).items()) if v >= 0.05) or "-"
        layers = " + ".join(f"{lay['layer']} {lay['rounds']}" for lay in pr["layers"] if lay["rounds"])
        ready = ", ".join(f"{x['start_to_ready_s']['warm_first']:.1f} / {x['start_to_ready_s']['warm_all']:.1f}"
                          for x in (r["private_http_insecure"], r["private_http"]))
        rows.append(f"| {name} | {pr['rounds']} | {layers} | {g_msg} / {m_msg} | {g_kib} / {m_kib} | {c} | {ready} |")
    roles = ("players", "coordinator", "endpoint", "guards", "client")
    cores = int(results.get("machine", {}).get("cpus") or 1)
    rows += ["", "CPU per batch-1 request by process role, ms (TLS off / mTLS; read from /proc around the b1 loop)", "",
             "| model | " + " | ".join(roles) + f" | all | all / {cores} cores vs b1 p50 (off; mTLS) |",
             "|---|" + "---|" * (len(roles) + 2)]
    for name, r in results["models"].items():
        off, on = r["private_http_insecure"], r["private_http"]
        if "batch1_cpu_ms" not in off or "batch1_cpu_ms" not in on:
            continue
        co, cn = off["batch1_cpu_ms"], on["batch1_cpu_ms"]
        cells = [f"{co.get(k, 0.0):.1f} / {cn.get(k, 0.0):.1f}" for k in roles]
        ao, an = sum(co.values()), sum(cn.values())
        bound = f"{ao / cores:.1f} vs {off['batch1']['p50_ms']:.1f}; {an / cores:.1f} vs {on['batch1']['p50_ms']:.1f}"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {ao:.1f} / {an:.1f} | {bound} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
