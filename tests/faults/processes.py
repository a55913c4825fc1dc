"""Handler invocations in child processes (tests/faults/child.py), killed for real with SIGKILL."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("child.py")
ROOT = CHILD.parents[2]
_numbers = itertools.count()


class Child:
    """One invocation running in its own process (the environment is this process's, as set by the fixtures)."""

    def __init__(self, kind: str, event: dict[str, Any], workdir: Path, timeout_seconds: float = 900.0) -> None:
        number = next(_numbers)
        self.event_path = workdir / f"event-{number}.json"
        self.answer_path = workdir / f"answer-{number}.json"
        self.log_path = workdir / f"stderr-{number}.txt"
        self.event_path.write_text(json.dumps(event))
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(  # the test's own interpreter and environment
            [sys.executable, str(CHILD), kind, str(self.event_path), str(self.answer_path), str(timeout_seconds)],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def kill(self) -> None:
        """SIGKILL: no ``finally``, no flush, no exit handler runs (an OOM kill or a hard timeout)."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def wait(self, seconds: float = 300.0) -> int:
        code = self.process.wait(seconds)
        self._log.close()
        return code

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def answer(self) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self.answer_path.read_text())
        return answer

    def last_error(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""


def wait_until(condition: Callable[[], bool], child: Child, what: str, bound_seconds: float = 120.0) -> None:
    """Poll ``condition`` while ``child`` runs; the kill point is a state, never a sleep.

    ``bound_seconds`` only stops a hung test; nothing is asserted about how long it took.
    """
    stop = time.monotonic() + bound_seconds
    while not condition():
        assert child.running, f"the child ended before {what}: {child.last_error()}"
        assert time.monotonic() < stop, f"never reached: {what}"
        time.sleep(0.05)
