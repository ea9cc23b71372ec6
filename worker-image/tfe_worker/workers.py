"""Coordinator-side view of the three players' HTTP sides (readiness, keys, generations, manifests).

Every answer is parsed with the wire contract (tfe_client.wire), so a worker that answers
something else is refused here with a reason.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from tfe_client import wire
from tfe_client.errors import ProtocolError
from tfe_worker.config import Config
from tfe_worker.httpapp import split_hostport


class HTTPStatusError(OSError):
    """A worker answered, with an HTTP status other than 200."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def get_json(addr: str, path: str, timeout: float = 5.0) -> Any:
    """One GET against a host:port; OSError unless it answers 200 with JSON."""
    host, port = split_hostport(addr)
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        data = r.read(wire.MAX_INGRESS_BODY)
        if r.status != 200:
            raise HTTPStatusError(f"GET {addr}{path}: HTTP {r.status}", r.status)
        try:
            return json.loads(data)
        except ValueError as e:
            raise OSError(f"GET {addr}{path}: not JSON") from e
    finally:
        c.close()


def not_ready(config: Config) -> list[str]:
    """Names of players whose /readyz does not answer 200 now."""
    bad = []
    for p in config.players:
        try:
            wire.Ready.parse(get_json(p.http, "/readyz", timeout=2.0))
        except (OSError, ValueError, http.client.HTTPException, ProtocolError):
            bad.append(p.name)
    return bad


def _wait_until_none_lack(lacking_now: Callable[[], list[str]], timeout: float, stop: threading.Event | None,
                          poll: float, message: Callable[[str], str],
                          waiting: Callable[[list[str]], None] | None = None) -> None:
    """Poll until `lacking_now()` names no player, or raise TimeoutError naming the ones it
    still names (`message(names)`). `waiting(names)` is called once, when the first look finds some."""
    deadline = time.monotonic() + timeout
    stop = stop or threading.Event()
    first = True
    while True:
        bad = lacking_now()
        if not bad:
            return
        if first and waiting is not None:
            waiting(bad)
        first = False
        if time.monotonic() > deadline or stop.is_set():
            raise TimeoutError(message(", ".join(bad)))
        stop.wait(poll)


def wait_ready(config: Config, timeout: float, stop: threading.Event | None = None) -> None:
    """Block until all three players are ready, or raise TimeoutError naming the missing ones."""
    _wait_until_none_lack(lambda: not_ready(config), timeout, stop, 0.5,
                          lambda names: f"workers not ready after {timeout:.0f}s: {names}")


def public_keys(config: Config) -> list[bytes]:
    keys = []
    for p in config.players:
        msg = wire.PublicKeyResponse.parse(get_json(p.http, "/v1/public-key"))
        if msg.name != p.name:
            raise ValueError(f"{p.http} answers as {msg.name!r}, expected {p.name}")
        keys.append(msg.public_key)
    return keys


def latest_generation(config: Config, model: str) -> int:
    """Newest generation that all three players hold completely."""
    sets = [set(wire.GenerationsResponse.parse(get_json(p.http, f"/v1/models/{model}/generations")).generations)
            for p in config.players]
    common = set.intersection(*sets)
    if not common:
        raise LookupError(f"no complete share generation of model {model} on all three workers")
    return max(common)


def lacking(config: Config, model: str, generation: int) -> list[str]:
    """Names of players that do not hold `generation` of `model` completely now (or do not answer)."""
    bad = []
    for p in config.players:
        try:
            held = wire.GenerationsResponse.parse(get_json(p.http, f"/v1/models/{model}/generations")).generations
        except (OSError, ValueError, http.client.HTTPException, ProtocolError):
            held = ()
        if generation not in held:
            bad.append(p.name)
    return bad


def wait_generation(config: Config, model: str, generation: int, timeout: float,
                    stop: threading.Event | None = None,
                    waiting: Callable[[list[str]], None] | None = None, poll: float = 0.25) -> None:
    """Block until all three players hold `generation` completely (a share Job may still be
    writing it), or raise TimeoutError naming the ones that lack it. `waiting(names)` is called
    once, when the first look finds it missing. Polled every 0.25 s: on a model's first start the
    coordinator waits here for the share Job, and each poll period was part of apply -> Serving."""
    _wait_until_none_lack(lambda: lacking(config, model, generation), timeout, stop, poll,
                          lambda names: f"share generation {generation} of {model} not on {names} after {timeout:.0f}s",
                          waiting)


def manifest_msg(config: Config, model: str, generation: int) -> wire.Manifest:
    """The public manifest; all three players must hold the same one."""
    ms = [wire.Manifest.parse(get_json(p.http, f"/v1/models/{model}/{generation}/manifest"))
          for p in config.players]
    if len({m.model_digest for m in ms}) != 1:
        raise ValueError(f"workers disagree on the model digest of {model} generation {generation}")
    return ms[0]


def manifest(config: Config, model: str, generation: int) -> dict[str, Any]:
    """manifest_msg as the JSON dict runtime.build_model reads."""
    return manifest_msg(config, model, generation).to_json()
