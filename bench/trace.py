"""``BENCH_TRACE=DIR``: a timeline of one container, for diagnostics (never part of a figure).

Each product or worker child then writes ``DIR/<pid>.json`` with, on the machine's monotonic clock (the
one the Rekognition stand-in stamps arrivals with):

* ``calls``: every AWS API call (service, operation, thread, start, end, HTTP status), from botocore's
  ``before-call`` / ``after-call`` events on the default session (every client the product builds);
* ``leases``: every lease the DetectLabels limiter made (asked, answered, first slot, count, resumed,
  from the table or the fallback);
* ``sends``: for every DetectLabels attempt, its slot and the moment the request was let go.

``python -m bench.trace DIR`` prints a summary of every file: requests per operation, the timeline's
landmarks and the limiter's gaps.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any


class Trace:
    def __init__(self, directory: str) -> None:
        self.path = Path(directory)
        self.calls: list[dict[str, Any]] = []
        self.leases: list[dict[str, Any]] = []
        self.sends: list[dict[str, Any]] = []
        self.marks: dict[str, float] = {}
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    def install_on_default_session(self) -> None:
        """Before any client is built: every client of the default session inherits these handlers."""
        import boto3

        boto3.setup_default_session()
        events = boto3.DEFAULT_SESSION.events
        events.register("before-parameter-build", self._before_build)
        events.register("before-call", self._before)
        events.register("after-call", self._after)
        events.register("after-call-error", self._after_error)

    def _before_build(self, **_: Any) -> None:
        self._local.cpu = time.thread_time()  # the call's CPU starts with its serialisation

    def _before(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        context["bench_trace_start"] = time.monotonic()
        context["bench_trace_cpu"] = getattr(self._local, "cpu", time.thread_time())

    def _record(self, model: Any, context: dict[str, Any], status: Any) -> None:
        started = context.get("bench_trace_start")
        if started is None:
            return
        call = {
            "service": model.service_model.service_name,
            "op": model.name,
            "thread": threading.current_thread().name,
            "start": started,
            "end": time.monotonic(),
            "status": status,
            "cpu": time.thread_time() - context.get("bench_trace_cpu", time.thread_time()),
        }
        with self._lock:
            self.calls.append(call)

    def _after(self, model: Any, context: dict[str, Any], http_response: Any = None, **_: Any) -> None:
        self._record(model, context, getattr(http_response, "status_code", None))

    def _after_error(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        self._record(model, context, "error")

    def watch_limiter(self, limiter: Any) -> None:
        """Record the limiter's leases and the moment each request is let go (wraps two methods)."""
        lease, wait = limiter._lease, limiter.wait

        def traced_lease(count: int) -> Any:
            asked = time.monotonic()
            fallbacks = limiter.stats.fallback_leases
            got = lease(count)
            with self._lock:
                self.leases.append(
                    {
                        "asked": asked,
                        "answered": time.monotonic(),
                        "first": got.first,
                        "count": got.count,
                        "interval": got.interval,
                        "resumed": got.resumed,
                        "fallback": limiter.stats.fallback_leases > fallbacks,
                    }
                )
            return got

        def traced_wait(slot: float, *args: Any, **kwargs: Any) -> float:
            used = wait(slot, *args, **kwargs)
            with self._lock:
                self.sends.append({"reserved": slot, "slot": used, "sent": time.monotonic()})
            return used

        limiter._lease, limiter.wait = traced_lease, traced_wait

    def watch_entries(self) -> None:
        """Record each entry's start, end and thread CPU (wraps ``pipeline._run_one``)."""
        from labeler.logic import pipeline

        run_one = pipeline._run_one

        def traced(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.monotonic(), time.thread_time()
            try:
                return run_one(*args, **kwargs)
            finally:
                with self._lock:
                    self.entries.append({"start": started, "end": time.monotonic(), "cpu": time.thread_time() - cpu})

        pipeline._run_one = traced

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    def write(self, extra: dict[str, Any] | None = None) -> None:
        import os

        self.path.mkdir(parents=True, exist_ok=True)
        document = {
            "pid": os.getpid(),
            "marks": self.marks,
            "calls": self.calls,
            "leases": self.leases,
            "sends": self.sends,
            "entries": self.entries,
            **(extra or {}),
        }
        (self.path / f"{os.getpid()}.json").write_text(json.dumps(document), encoding="utf-8")


def summarise(document: dict[str, Any]) -> dict[str, Any]:
    calls = sorted(document["calls"], key=lambda call: call["start"])
    marks = document.get("marks", {})
    t0 = marks.get("handler_start", calls[0]["start"] if calls else 0.0)
    by_op = Counter(f"{call['service']}.{call['op']}" for call in calls)
    busy = Counter()
    for call in calls:
        busy[f"{call['service']}.{call['op']}"] += call["end"] - call["start"]
    detect = [call for call in calls if call["op"] == "DetectLabels"]
    sends = sorted(document.get("sends", []), key=lambda send: send["sent"])
    late = [send["sent"] - send["slot"] for send in sends]
    leases = document.get("leases", [])
    cpu = Counter()
    for call in calls:
        cpu[f"{call['service']}.{call['op']}"] += call.get("cpu", 0.0)
    entries = document.get("entries", [])
    out: dict[str, Any] = {
        "pid": document["pid"],
        "requests": dict(sorted(by_op.items())),
        "mean_ms": {op: round(1000 * busy[op] / by_op[op], 1) for op in sorted(by_op)},
        "cpu_ms_per_call": {op: round(1000 * cpu[op] / by_op[op], 2) for op in sorted(by_op)},
        "api_cpu_s": round(sum(cpu.values()), 3),
        "entries": len(entries),
        "entry_cpu_ms_mean": round(1000 * sum(e["cpu"] for e in entries) / max(1, len(entries)), 2),
        "entry_wall_ms_mean": round(1000 * sum(e["end"] - e["start"] for e in entries) / max(1, len(entries)), 1),
        "marks_s": {name: round(value - t0, 3) for name, value in sorted(marks.items(), key=lambda kv: kv[1])},
    }
    if detect:
        out["first_detect_s"] = round(detect[0]["start"] - t0, 3)
        out["last_detect_end_s"] = round(max(call["end"] for call in detect) - t0, 3)
    if calls:
        out["last_call_end_s"] = round(max(call["end"] for call in calls) - t0, 3)
    if sends:
        out["sends"] = len(sends)
        out["late_ms_p50_p90_max"] = [round(1000 * sorted(late)[int(q * (len(late) - 1))], 1) for q in (0.5, 0.9, 1.0)]
        gaps = [b["sent"] - a["sent"] for a, b in pairwise(sends)]
        out["send_gaps_over_50ms"] = [round(gap, 3) for gap in gaps if gap > 0.05][:30]
    if leases:
        out["leases"] = len(leases)
        out["lease_counts"] = [lease["count"] for lease in leases][:60]
        out["lease_ms"] = [round(1000 * (lease["answered"] - lease["asked"]), 1) for lease in leases][:60]
        out["lead_ms"] = [round(1000 * (lease["first"] - lease["answered"]), 1) for lease in leases][:60]
        out["fallback_leases"] = sum(1 for lease in leases if lease["fallback"])
    return out


def main(argv: list[str]) -> int:
    for path in sorted(Path(argv[0]).glob("*.json")):
        print(json.dumps(summarise(json.loads(path.read_text(encoding="utf-8"))), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
