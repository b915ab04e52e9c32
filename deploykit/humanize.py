"""Sizes, ages and durations as people read them, and the one duration grammar.

Every message and table shows sizes with :func:`size` and ages or durations with
:func:`age` (:func:`duration` is the same scale: one way to read a time span),
and every option that takes a duration (``--lock-wait``, ``--since``, config
values) reads it with :func:`parse_duration`.
"""

from __future__ import annotations

import re

from deploykit.errors import ConfigError

__all__ = ["DURATION_UNITS", "age", "duration", "parse_duration", "size"]


def size(n: float) -> str:
    """``512 B``, ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def age(seconds: float) -> str:
    """``42 s``, ``12 min``, ``5.2 h``, ``3.0 days``."""
    if seconds < 120:
        return f"{max(0.0, seconds):.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def duration(seconds: float) -> str:
    """How long something took or may take, on :func:`age`'s scale (``90 s``, ``5 min``)."""
    return age(seconds)


#: The units :func:`parse_duration` reads, in seconds (no unit: seconds).
DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
                  "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*\Z")


def parse_duration(text: str | float | int | None, what: str = "duration") -> float:
    """Seconds from ``90``, ``90s``, ``500ms``, ``5m`` (or ``5min``), ``1.5h``, ``1d``
    (None or empty: 0); a ConfigError naming ``what`` (the option) otherwise."""
    if text is None or text == "":
        return 0.0
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ConfigError(f"{what}: {text!r} is not a duration (e.g. 90s, 5m, 1h, 1d)")
        seconds = float(match.group(1)) * DURATION_UNITS[match.group(2) or ""]
    if seconds < 0:
        raise ConfigError(f"{what}: {text!r} must not be negative")
    return seconds
