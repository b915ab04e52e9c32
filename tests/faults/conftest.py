"""Fixtures of the fault-injection suite (the helpers live in faultkit.py)."""

from __future__ import annotations

from faultkit import fleet

__all__ = ["fleet"]
