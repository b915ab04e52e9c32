"""Shared fixtures for deploykit's own test suite (lab fixtures come from the plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root (where tasks.py and .venv live)."""
    return ROOT
