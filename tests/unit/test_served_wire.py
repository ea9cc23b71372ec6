"""The served-count messages (maxRequests across coordinator restarts): strict parsing."""

from typing import Any

import pytest

from tfe_client import wire
from tfe_client.errors import ProtocolError


def _report(**kw: Any) -> dict[str, Any]:
    obj = {"scope": "maxRequests=3", "reportId": "ab" * 6, "add": 1, "total": 4}
    obj.update(kw)
    return obj


def test_default_scope_is_the_limit() -> None:
    assert wire.count_scope(None) == "unlimited"
    assert wire.count_scope(3) == "maxRequests=3"
    assert wire.check_scope(wire.count_scope(10 ** 12)) == "maxRequests=1000000000000"


@pytest.mark.parametrize("bad", [
    {"scope": ""}, {"scope": "../x"}, {"scope": "a" * 129}, {"scope": 3}, {"scope": "has space"},
    {"reportId": "XYZ"}, {"reportId": "ab"}, {"add": True}, {"add": -1}, {"add": wire.MAX_BUCKET + 1},
    {"add": 1.0}, {"total": -1}, {"total": 1 << 62}, {"total": "5"},
])
def test_malformed_reports_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        wire.ServedReport.parse(_report(**bad))


def test_missing_report_fields_are_refused() -> None:
    for key in ("scope", "reportId", "add", "total"):
        obj = _report()
        del obj[key]
        with pytest.raises(ProtocolError, match=key):
            wire.ServedReport.parse(obj)


def test_counts_are_bounded_distinct_and_looked_up_by_scope() -> None:
    c = wire.ServedCounts.parse({"model": "digits", "scopes": [{"scope": "unlimited", "served": 9},
                                                                {"scope": "maxRequests=3", "served": 2}]})
    assert c.served("maxRequests=3") == 2 and c.served("unlimited") == 9 and c.served("maxRequests=4") == 0
    dup = {"model": "digits", "scopes": [{"scope": "a", "served": 1}, {"scope": "a", "served": 2}]}
    with pytest.raises(ProtocolError, match="distinct"):
        wire.ServedCounts.parse(dup)
    many = {"model": "digits", "scopes": [{"scope": f"s{i}", "served": i} for i in range(wire.MAX_SCOPES + 1)]}
    with pytest.raises(ProtocolError):
        wire.ServedCounts.parse(many)
    with pytest.raises(ProtocolError):
        wire.ServedAck.parse({"model": "digits", "scope": "unlimited", "served": -1})
