"""What every benchmark group shares: logging, child processes, the metric record.

A *headline* figure is measured with the function as ``sam deploy`` configures it (the template's
environment at its defaults, plus only what a harness must change): :func:`metric` refuses an
``environment`` that carries any other override. An override is a *diagnostic*, recorded beside the
figure with :func:`diagnostic`, never as the figure.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.standins import ROOT

BENCH_DIR = ROOT / "bench"
OUT_DIR = BENCH_DIR / "out"

Metrics = dict[str, dict[str, Any]]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Child:
    """``python -m bench.child TASK`` running in the background; :meth:`wait` returns its result document."""

    def __init__(self, task: str, spec: dict[str, Any], env: dict[str, str], *, name: str = "") -> None:
        (OUT_DIR / "logs").mkdir(parents=True, exist_ok=True)
        self.task = task
        self._scratch = tempfile.TemporaryDirectory(dir=OUT_DIR)
        self.spec_path = Path(self._scratch.name, "spec.json")
        self.result_path = Path(self._scratch.name, "result.json")
        self.spec_path.write_text(json.dumps(spec), encoding="utf-8")
        self.log_path = OUT_DIR / "logs" / f"{name or task}.log"
        self._log = self.log_path.open("w", encoding="utf-8")
        self.started = time.time()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.child", task, str(self.spec_path), str(self.result_path)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float = 300) -> dict[str, Any]:
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            returncode = -9
        finally:
            self._log.close()
        try:
            if returncode != 0 or not self.result_path.is_file():
                tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"child task {self.task!r} failed (exit {returncode}); log tail:\n{tail}")
            result: dict[str, Any] = json.loads(self.result_path.read_text(encoding="utf-8"))
            return result
        finally:
            self._scratch.cleanup()

    def stop(self) -> None:
        """Kill it if still running (an error elsewhere); the result is not read."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
        self._scratch.cleanup()


def run_child(task: str, spec: dict[str, Any], env: dict[str, str], timeout: float = 300) -> dict[str, Any]:
    """Run ``python -m bench.child TASK`` with ``spec`` to the end; its output goes to ``bench/out/logs``."""
    return Child(task, spec, env).wait(timeout)


def metric(
    value: float | int,
    *,
    target: float,
    comparison: str,
    unit: str,
    baseline: float | int | None,
    baseline_is: str,
    raw: dict[str, Any],
    environment: dict[str, Any] | None = None,
    diagnostics: list[dict[str, Any]] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One figure of results.json. ``environment``: the measured run's ``FunctionEnvironment.describe()``."""
    if environment is not None and not environment.get("as_deployed"):
        raise ValueError(
            f"a headline figure must be measured as deployed, not with {environment['diagnostic_overrides']}"
        )
    meets = {">=": value >= target, "<=": value <= target, "==": value == target}[comparison]
    out: dict[str, Any] = {
        "value": round(value, 4) if isinstance(value, float) else value,
        "unit": unit,
        "target": target,
        "comparison": comparison,
        "meets_target": bool(meets),
        "baseline": round(baseline, 4) if isinstance(baseline, float) else baseline,
        "baseline_is": baseline_is,
    }
    if environment is not None:
        out["environment"] = environment
    if diagnostics:
        out["diagnostics"] = diagnostics
    if note:
        out["note"] = note
    out["raw"] = raw
    return out


def diagnostic(name: str, value: float | int, unit: str, environment: dict[str, Any], **details: Any) -> dict[str, Any]:
    """A figure measured with overrides: printed beside the headline, never as it."""
    overrides = {key: item["set"] for key, item in environment.get("diagnostic_overrides", {}).items()}
    return {
        "name": name,
        "value": round(value, 4) if isinstance(value, float) else value,
        "unit": unit,
        "overrides": overrides,
        **details,
    }


def error_metric(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {exc}", "meets_target": False}


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_ms_per_image(
    before: dict[str, float], after: dict[str, float], images: int, **functions: float
) -> dict[str, Any]:
    """Where the CPU of a run went, in ms per image: the function's containers (``functions``: seconds each)
    and each stand-in (``StandIns.cpu_seconds()`` before and after). On this machine they share its cores."""
    spent = {name: seconds for name, seconds in functions.items()}
    spent.update({name: after[name] - before.get(name, 0.0) for name in after})
    out: dict[str, Any] = {name: round(1000 * seconds / max(1, images), 2) for name, seconds in spent.items()}
    out["total"] = round(1000 * sum(spent.values()) / max(1, images), 2)
    return out


def limiter_totals(containers: list[dict[str, Any]], calls: int) -> dict[str, Any]:
    """The DetectLabels limiters of ``containers`` (their ``limiter`` stats) added up, with the cost bound's
    figure: the state-table requests per successful DetectLabels call (the bound is 1/5 at full load)."""
    totals: dict[str, Any] = {}
    for container in containers:
        for name, value in container.get("limiter", {}).items():
            totals[name] = totals.get(name, 0) + value
    totals["table_requests_per_call"] = round(totals.get("table_requests", 0) / max(1, calls), 4)
    return totals


def short_report(report: dict[str, Any]) -> dict[str, Any]:
    names = ("status", "total", "succeeded", "failed", "errors_by_code", "labels_from_cache", "not_modified", "mode")
    return {name: report.get(name) for name in names if name in report}


def utilisation(arrivals: list[float], quota: float) -> dict[str, Any]:
    """Successful DetectLabels calls per second over the quota, from the first call to the last.

    ``N`` calls paced exactly at the quota arrive ``1/quota`` apart and span ``(N-1)/quota`` seconds, so
    the rate is ``N / (span + 1/quota)``: exactly the quota for perfect use, less for every gap. (A
    sliding one-second window lets a burst at the very start count a little above 1.)
    """
    moments = sorted(arrivals)
    if len(moments) < 2:
        raise RuntimeError(f"{len(moments)} successful DetectLabels call(s): nothing to measure a rate on")
    span = moments[-1] - moments[0]
    rate = len(moments) / (span + 1 / quota)
    per_second: dict[int, int] = {}
    for moment in moments:
        second = int(moment - moments[0])
        per_second[second] = per_second.get(second, 0) + 1
    return {
        "calls": len(moments),
        "window_s": round(span, 3),
        "calls_per_s": round(rate, 3),
        "fraction_of_quota": rate / quota,
        "calls_per_wall_second": [per_second.get(second, 0) for second in range(max(per_second) + 1)],
    }
