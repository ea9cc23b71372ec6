"""Fixtures for the operator's unit tests."""

from __future__ import annotations

from typing import Any

import pytest
from operator_testlib import crd_schema, load_crd


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return load_crd()


@pytest.fixture(scope="session")
def schema() -> dict[str, Any]:
    return crd_schema()
