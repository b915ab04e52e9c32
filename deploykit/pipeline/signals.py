"""Ctrl-C and SIGTERM during a run: stop at the next phase boundary, then clean up."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger("deploykit.pipeline.signals")

EXIT_ABORTED = 130
# == interrupts ===============================================================================


class Interrupted(KeyboardInterrupt):
    """The run was interrupted by SIGINT or SIGTERM (see :class:`StopSignals`)."""


class StopSignals:
    """While active, SIGINT/SIGTERM ask the run to stop instead of killing it.

    The first signal sets :attr:`requested`: :meth:`checkpoint` (called between
    phases) then raises :class:`Interrupted`. A second signal raises at once in
    the main thread, and :meth:`checkpoint` with ``hard_only`` (called before
    every step) raises too. While :attr:`cleaning`, signals only print a note.
    Installed only in the main thread (signal handlers live there).
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.hard = False
        self.cleaning = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.cleaning:
            sys.stderr.write(f"\n{name}: cleaning up (traffic, lock, journal); please wait\n")
            return
        if self.requested is None:
            self.requested = name
            sys.stderr.write(f"\n{name}: stopping after the running phase; traffic will stay "
                             f"on the last good colour. {name} again stops at the next step.\n")
            return
        self.hard = True
        raise Interrupted(name)

    def checkpoint(self, *, hard_only: bool = False) -> None:
        """Raise :class:`Interrupted` when a stop was asked for (and not cleaning up)."""
        if self.cleaning:
            return
        if self.hard or (self.requested and not hard_only):
            raise Interrupted(self.requested or "interrupt")


