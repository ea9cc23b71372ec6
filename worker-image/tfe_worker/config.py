"""The tfe.json configuration shared by the players, the share job and the coordinator."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

PLAYER_NAMES = ("server0", "server1", "server2")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Player:
    name: str
    index: int
    tf: str  # host:port of the TF gRPC server
    http: str  # host:port of the player's HTTP side


@dataclass(frozen=True)
class Config:
    players: list[Player]

    @property
    def hostmap(self) -> OrderedDict[str, str]:
        return OrderedDict((p.name, p.tf) for p in self.players)

    def player(self, name: str) -> Player:
        for p in self.players:
            if p.name == name:
                return p
        raise ConfigError(f"player {name!r} is not in the config (have {', '.join(PLAYER_NAMES)})")

    def to_json(self) -> str:
        return json.dumps({"players": [{"name": p.name, "tf": p.tf, "http": p.http} for p in self.players]},
                          indent=2)

    @classmethod
    def parse(cls, obj: object) -> Config:
        if not isinstance(obj, dict) or not isinstance(obj.get("players"), list):
            raise ConfigError('config must be {"players": [{"name", "tf", "http"} x3]}')
        raw = obj["players"]
        if [p.get("name") if isinstance(p, dict) else None for p in raw] != list(PLAYER_NAMES):
            raise ConfigError("config must list exactly server0, server1, server2 in this order")
        players = []
        for i, p in enumerate(raw):
            for key in ("tf", "http"):
                v = p.get(key)
                if not isinstance(v, str) or ":" not in v or not v.rsplit(":", 1)[1].isdigit():
                    raise ConfigError(f"{p['name']}.{key} must be host:port, got {v!r}")
            players.append(Player(p["name"], i, p["tf"], p["http"]))
        return cls(players)

    @classmethod
    def load(cls, path: str) -> Config:
        with open(path) as f:
            try:
                obj = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: not valid JSON: {e}") from e
        return cls.parse(obj)

    @classmethod
    def loopback(cls, tf_ports: list[int], http_ports: list[int], host: str = "127.0.0.1") -> Config:
        return cls([Player(n, i, f"{host}:{tf_ports[i]}", f"{host}:{http_ports[i]}")
                    for i, n in enumerate(PLAYER_NAMES)])
