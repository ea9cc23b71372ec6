"""Coordinator-side view of the three players' HTTP sides."""

from __future__ import annotations

import threading
import time
from typing import Any

from tfe_worker.config import Config
from tfe_worker.httpd import get_json


def not_ready(config: Config) -> list[str]:
    """Names of players whose /readyz does not answer 200 now."""
    bad = []
    for p in config.players:
        try:
            get_json(p.http, "/readyz", timeout=2.0)
        except (OSError, ValueError):
            bad.append(p.name)
    return bad


def wait_ready(config: Config, timeout: float, stop: threading.Event | None = None) -> None:
    """Block until all three players are ready, or raise TimeoutError naming the missing ones."""
    deadline = time.monotonic() + timeout
    stop = stop or threading.Event()
    while True:
        bad = not_ready(config)
        if not bad:
            return
        if time.monotonic() > deadline or stop.is_set():
            raise TimeoutError(f"workers not ready after {timeout:.0f}s: {', '.join(bad)}")
        stop.wait(0.5)


def public_keys(config: Config) -> list[str]:
    keys = []
    for p in config.players:
        obj = get_json(p.http, "/v1/public-key")
        if obj.get("name") != p.name:
            raise ValueError(f"{p.http} answers as {obj.get('name')!r}, expected {p.name}")
        keys.append(str(obj["publicKey"]))
    return keys


def latest_generation(config: Config, model: str) -> int:
    """Newest generation that all three players hold completely."""
    sets = [set(get_json(p.http, f"/v1/models/{model}/generations")["generations"]) for p in config.players]
    common = set.intersection(*sets)
    if not common:
        raise LookupError(f"no complete share generation of model {model} on all three workers")
    return int(max(common))


def manifest(config: Config, model: str, generation: int) -> dict[str, Any]:
    """The public manifest; all three players must hold the same one."""
    ms = [get_json(p.http, f"/v1/models/{model}/{generation}/manifest") for p in config.players]
    digests = {m.get("modelDigest") for m in ms}
    if len(digests) != 1:
        raise ValueError(f"workers disagree on the model digest of {model} generation {generation}")
    return ms[0]
