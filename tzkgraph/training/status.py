"""How a run ended, left in its run directory, and the signals that stop it cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from tzkgraph.core.errors import TzkError
from tzkgraph.core.files import atomic_write

__all__ = ["RunStatus", "StopSignals", "STATUS_FILE", "read_status"]

STATUS_FILE = "status.json"
_STOPPING = ("SIGTERM", "SIGINT", "SIGHUP")


class RunStatus:
    """``status.json`` in the run directory: what the run is doing, or how it ended.

    ``state`` is ``running`` (with the last step logged, so a run killed without a chance
    to say so — ``SIGKILL``, the machine gone — still shows how far it got), ``finished``,
    ``stopped`` (``--stop-after`` or a signal; a checkpoint was written), or ``failed``
    (with the reason). Written atomically (a temporary file renamed over the old one).

    Arguments:
        run_dir: the run directory.
        enabled: write at all (rank 0 of a multi-process run).
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / STATUS_FILE
        self.enabled = enabled
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def write(self, state: str, step: int, phase: str | None = None, reason: str | None = None) -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"state": state, "step": step, "phase": phase, "reason": reason,
                                  "pid": os.getpid(), "started": self.started,
                                  "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with contextlib.suppress(TzkError):  # the status is a courtesy: never the reason a run fails
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run directory's status record, or ``None``."""
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


class StopSignals:
    """While active, ``SIGTERM``, ``SIGINT`` and ``SIGHUP`` ask the run to stop instead of killing it.

    The training loop reads :attr:`received` after each step, writes a checkpoint and
    returns. A second signal of the same kind acts as usual (a second Ctrl-C interrupts at
    once). A signal that was ignored when the run started (``SIGHUP`` under ``nohup``)
    stays ignored. Outside the main thread nothing is installed.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received == name:  # asked twice: do what the signal does by default
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = name

    @contextlib.contextmanager
    def active(self) -> Iterator["StopSignals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for name in _STOPPING:
            signum = getattr(signal, name, None)
            if signum is None or signal.getsignal(signum) == signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            self._previous.clear()
