"""The public API: everything the README and the examples import exists, and every
name ``deploykit`` re-exports resolves (lazily) and is documented."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import deploykit

ROOT = Path(__file__).resolve().parents[2]
IMPORT = re.compile(r"^\s*from (deploykit[\w.]*) import ([\w, ()]+)$", re.MULTILINE)


def imported_names() -> list[tuple[str, str]]:
    texts = [(ROOT / "README.md").read_text()]
    texts += [p.read_text() for p in sorted((ROOT / "examples").rglob("*.py"))]
    found = set()
    for text in texts:
        for module, names in IMPORT.findall(text):
            for name in names.strip("()").split(","):
                if name.strip():
                    found.add((module, name.strip()))
    return sorted(found)


@pytest.mark.parametrize(("module", "name"), imported_names())
def test_what_the_readme_and_examples_import_exists(module: str, name: str) -> None:
    value = getattr(importlib.import_module(module), name, None)
    if value is None:  # a submodule: from deploykit.tasks import files
        value = importlib.import_module(f"{module}.{name}")
    assert value is not None
    assert (getattr(value, "__doc__", None) or "").strip(), f"{module}.{name} has no docstring"


@pytest.mark.parametrize("name", sorted(set(deploykit.__all__) - {"__version__"}))
def test_every_reexport_resolves_and_is_documented(name: str) -> None:
    value = getattr(deploykit, name)
    assert (value.__doc__ or "").strip()


def test_the_package_is_typed() -> None:
    assert (Path(deploykit.__file__).parent / "py.typed").is_file()
