"""tfe_operator.main's logging: kopf's routine success lines are dropped, nothing else is."""

from __future__ import annotations

import logging

from tfe_operator.main import RoutineSuccessFilter


def record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_routine_successes_are_dropped_everything_else_kept() -> None:
    f = RoutineSuccessFilter()
    assert not f.filter(record("kopf.objects", logging.INFO, "Timer 'resync' succeeded."))
    assert not f.filter(record("kopf.objects", logging.INFO, "Handler 'forget_deleted' succeeded."))
    kept = [
        record("kopf.objects", logging.INFO, "Handler 'changed' succeeded."),
        record("kopf.objects", logging.INFO, "Creation is processed: 1 succeeded; 0 failed."),
        record("kopf.objects", logging.ERROR, "Timer 'resync' failed with an exception. Will retry."),
        record("kopf.objects", logging.WARNING, "Timer 'resync' succeeded."),
        record("tfe_operator.handlers", logging.INFO, "Timer 'resync' succeeded."),
    ]
    assert all(f.filter(r) for r in kept)
