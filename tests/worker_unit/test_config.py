import json

import pytest

from tfe_worker.config import Config, ConfigError


def test_loopback_roundtrip():
    c = Config.loopback([1, 2, 3], [4, 5, 6])
    assert json.loads(c.to_json()) == {"players": [
        {"name": "server0", "tf": "127.0.0.1:1", "http": "127.0.0.1:4"},
        {"name": "server1", "tf": "127.0.0.1:2", "http": "127.0.0.1:5"},
        {"name": "server2", "tf": "127.0.0.1:3", "http": "127.0.0.1:6"}]}
    assert Config.parse(json.loads(c.to_json())) == c
    assert list(c.hostmap.items()) == [("server0", "127.0.0.1:1"), ("server1", "127.0.0.1:2"),
                                       ("server2", "127.0.0.1:3")]


@pytest.mark.parametrize("obj,msg", [
    ({}, "must be"),
    ({"players": [{"name": "server0", "tf": "a:1", "http": "a:2"}]}, "exactly server0, server1, server2"),
    ({"players": [{"name": f"server{i}", "tf": "a", "http": "a:2"} for i in range(3)]}, "server0.tf must be host:port"),
])
def test_invalid_configs(obj, msg):
    with pytest.raises(ConfigError, match=msg):
        Config.parse(obj)
