"""Shared fixtures for deploykit's own test suite (lab fixtures come from the plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB_TEST_TIMEOUT = 600
"""Seconds a lab test may take, fixtures included (its session's lab may come up in it);
every other test has pyproject's ``timeout``; ``@pytest.mark.timeout(N)`` overrides both."""


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root (where tasks.py and .venv live)."""
    return ROOT


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give lab tests (marked by the deploykit plugin) the longer lab timeout."""
    for item in items:
        if item.get_closest_marker("lab") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(LAB_TEST_TIMEOUT))
