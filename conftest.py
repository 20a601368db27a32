"""Test order for the whole monorepo: tests marked ``slow`` start first. pytest-xdist hands tests to its workers in
collection order, so a minute-long test collected last ran alone at the end while the other worker sat idle."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order
