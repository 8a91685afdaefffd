"""Catching SIGTERM / SIGINT for the length of a ``with`` block (main thread only).

The trainer turns them into "checkpoint at the next batch, then stop"; the matrix launcher passes
them on to the running cell. Both install and restore their handlers the same way, here.
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["SignalCatcher"]


class SignalCatcher:
    """Base of a ``with`` block whose :meth:`handle` receives SIGTERM and SIGINT.

    ``signum`` is the last signal caught (None before any). Off the main thread Python cannot
    install handlers: the block then catches nothing. The previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def handle(self, signum: int) -> None:
        self.signum = signum

    def restore(self, signum: int) -> None:
        """Put back the handler ``signum`` had before the block (e.g. after a second signal)."""
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def _handler(self, signum: int, frame: Any) -> None:
        self.handle(signum)

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
