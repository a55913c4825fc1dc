"""How late threads wake for their DetectLabels slots in a busy interpreter, at two GIL switch intervals.

26 threads share one interpreter as an invocation's threads do at the quota: 6 alternate ~2 ms of Python
work with 4 ms of waiting, 20 take slots of a ``SlotLimiter`` at 49/s between bits of work. Each slot's
lateness (woken − slot) is recorded; ``SlotLimiter.max_late`` (10 ms) is where a slot is given up.

    .venv/bin/python scripts/measure_slot_wakeups.py     # ~30 s; prints one line per run
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from labeler.adapters.ratelimit import LocalSlots, SlotLimiter


def python_work(ms: float) -> None:
    """About ``ms`` of this thread's CPU in pure Python (what botocore's serialising and parsing is)."""
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        json.dumps({"a": [1, 2, 3], "b": "x" * 50})


def run(interval: float, seconds: float = 6.0) -> dict[str, float]:
    sys.setswitchinterval(interval)
    limiter = SlotLimiter(LocalSlots(49))
    lates: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    cpu = time.process_time()

    def busy() -> None:
        while time.monotonic() < stop:
            python_work(2)
            time.sleep(0.004)

    def caller() -> None:
        while time.monotonic() < stop:
            python_work(2)
            slot = limiter.reserve()
            if slot > time.monotonic():
                time.sleep(slot - time.monotonic())
            with lock:
                lates.append(time.monotonic() - slot)
            python_work(1)
            time.sleep(0.15)

    threads = [threading.Thread(target=busy) for _ in range(6)] + [threading.Thread(target=caller) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lates.sort()

    def quantile(q: float) -> float:
        return round(1000 * lates[int(q * (len(lates) - 1))], 1)

    return {
        "switch_interval_ms": interval * 1000,
        "wake_ups": len(lates),
        "late_ms_p50": quantile(0.5),
        "late_ms_p90": quantile(0.9),
        "late_ms_p99": quantile(0.99),
        "share_later_than_10ms": round(sum(late > 0.010 for late in lates) / len(lates), 3),
        "cpu_s": round(time.process_time() - cpu, 2),
    }


if __name__ == "__main__":
    for value in (0.005, 0.001, 0.005, 0.001):  # interleaved: the machine's load moves
        print(json.dumps(run(value)), flush=True)
