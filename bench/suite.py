"""The benchmark suite behind ``make bench``: measure, compare with a baseline measured alongside, write JSON.

Every figure is measured in this run, each next to its baseline, against loopback stand-ins
(see ``bench/standins.py``); the code under test runs in child processes (``bench/child.py``).
Missed targets are reported, not failed: the exit status is non-zero only when a measurement
itself could not be made.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.standins import ROOT, StandIns, child_base_env

BENCH_DIR = ROOT / "bench"
OUT_DIR = BENCH_DIR / "out"
DEFAULT_RESULTS = BENCH_DIR / "results.json"
HANDLER_MODULE = "labeler.handlers.manifest_created"

Metrics = dict[str, dict[str, Any]]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- children -----------------------------------------------------------------------------------------
def run_child(task: str, spec: dict[str, Any], env: dict[str, str], timeout: float = 240) -> dict[str, Any]:
    """Run ``python -m bench.child TASK`` with ``spec``; its output goes to ``bench/out/logs``."""
    (OUT_DIR / "logs").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT_DIR) as scratch:
        spec_path, result_path = Path(scratch, "spec.json"), Path(scratch, "result.json")
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        log_path = OUT_DIR / "logs" / f"{task}.log"
        with log_path.open("w", encoding="utf-8") as log_file:
            completed = subprocess.run(
                [sys.executable, "-m", "bench.child", task, str(spec_path), str(result_path)],
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if completed.returncode != 0 or not result_path.is_file():
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"child task {task!r} failed (exit {completed.returncode}); log tail:\n{tail}")
        result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
        return result


def product_env(
    si: StandIns,
    output_bucket: str,
    *,
    workers: int,
    inline: int,
    cache: bool = True,
    max_tps: float = 1000.0,
    backend: str = "rekognition",
) -> dict[str, str]:
    """The function's environment as the template sets it, pointed at the stand-ins."""
    env = child_base_env()
    env.update(si.aws_env())
    env.update(template_runtime_env())
    env.update(
        {
            "OUTPUT_BUCKET": output_bucket,
            "MAX_WORKERS": str(workers),
            "ALLOW_PRIVATE_NETWORKS": "true",  # the image host is on loopback
            "LABEL_BACKEND": backend,
            "LABEL_CACHE": "true" if cache else "false",
            "INLINE_MAX_IMAGES": str(inline),
            "REKOGNITION_MAX_TPS": f"{max_tps:g}",
            "POWERTOOLS_SERVICE_NAME": "s3-image-labeler",
            "POWERTOOLS_METRICS_NAMESPACE": "S3ImageLabelerBench",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }
    )
    return env


def template_runtime_env() -> dict[str, str]:
    """Process-level variables template.yaml gives both functions (GLIBC_TUNABLES), read from the template."""
    import re

    text = (ROOT / "template.yaml").read_text(encoding="utf-8")
    found = re.search(r"^\s+GLIBC_TUNABLES:\s*(\S+)\s*$", text, re.MULTILINE)
    return {"GLIBC_TUNABLES": found.group(1)} if found else {}


def metric(
    value: float | int,
    *,
    target: float,
    comparison: str,
    unit: str,
    baseline: float | int | None,
    baseline_is: str,
    raw: dict[str, Any],
    note: str = "",
) -> dict[str, Any]:
    meets = {">=": value >= target, "<=": value <= target, "==": value == target}[comparison]
    out: dict[str, Any] = {
        "value": round(value, 4) if isinstance(value, float) else value,
        "unit": unit,
        "target": target,
        "comparison": comparison,
        "meets_target": bool(meets),
        "baseline": round(baseline, 4) if isinstance(baseline, float) else baseline,
        "baseline_is": baseline_is,
        "raw": raw,
    }
    if note:
        out["note"] = note
    return out


def _run_product(
    si: StandIns,
    entries: list[dict[str, str]],
    *,
    key: str,
    env_options: dict[str, Any],
    input_bucket: str = "",
    output_bucket: str = "",
) -> dict[str, Any]:
    """Upload ``entries`` as a manifest and run the handler on its event in a fresh child process."""
    input_bucket = input_bucket or si.new_bucket("in")
    output_bucket = output_bucket or si.new_bucket("out")
    event = si.upload_manifest(input_bucket, key, entries)
    calls_before = si.rekognition.successful_calls
    moto_cpu, own_cpu = si.moto.cpu_seconds(), _own_cpu_seconds()
    result = run_child("product", {"event": event}, product_env(si, output_bucket, **env_options))
    result["standins_cpu_s"] = {
        "s3_moto_process": round(si.moto.cpu_seconds() - moto_cpu, 3),
        "orchestrator (image host + Rekognition stand-in)": round(_own_cpu_seconds() - own_cpu, 3),
    }
    result["rekognition_calls"] = si.rekognition.successful_calls - calls_before
    result["report"] = si.reports(output_bucket)[key]
    result["output_bucket"] = output_bucket
    result["input_bucket"] = input_bucket
    summary = result["report"]
    if summary.get("status") != "complete" or summary.get("failed"):
        raise RuntimeError(f"the product run of {key} did not label everything: {_short_report(summary)}")
    return result


def _own_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _short_report(report: dict[str, Any]) -> dict[str, Any]:
    names = ("status", "total", "succeeded", "failed", "errors_by_code", "labels_from_cache", "not_modified")
    return {name: report.get(name) for name in names}


# --- 1. throughput: speedup over the one-by-one loop, distance to the concurrency limit, quota use ------------
def bench_throughput(si: StandIns, *, n: int, workers: int, download_s: float, label_s: float, repeats: int) -> Metrics:
    from bench.images import distinct_jpegs
    from labeler.local.http_server import StaticRoute

    quota_n, quota_workers = max(n, 300), 2 * workers
    images = distinct_jpegs(quota_n)
    for index, image in enumerate(images):
        si.site.add(f"/speed/{index}.jpg", StaticRoute(image, "image/jpeg"))
    all_entries = [
        {"id": f"img-{index:04d}", "url": si.site.url(f"/speed/{index}.jpg?n={index}")} for index in range(quota_n)
    ]
    entries = all_entries[:n]
    si.site.delay_seconds = download_s
    try:
        log(f"baseline: the article's one-by-one loop over {n} images ({download_s}s download + {label_s}s label)")
        si.rekognition.reset(latency_seconds=label_s)
        baseline_bucket = si.new_bucket("baseline")
        baseline_env = child_base_env() | si.aws_env()
        baseline = run_child("baseline", {"entries": entries, "output_bucket": baseline_bucket}, baseline_env)
        if si.rekognition.successful_calls != n or si.count_objects(baseline_bucket, "results/") != n:
            raise RuntimeError("the baseline loop did not label every image")

        product_runs = []
        for run in range(repeats):
            log(f"product: handler, MAX_WORKERS={workers}, run {run + 1}/{repeats}")
            si.rekognition.reset(latency_seconds=label_s)
            result = _run_product(
                si, entries, key="manifests/speed.json", env_options={"workers": workers, "inline": n, "cache": True}
            )
            if result["rekognition_calls"] != n:
                raise RuntimeError(f"expected {n} DetectLabels calls, saw {result['rekognition_calls']}")
            product_runs.append(result)

        log(f"product at the default 50 TPS quota (REKOGNITION_MAX_TPS=50), {quota_n} images: quota utilisation")
        si.rekognition.reset(latency_seconds=label_s)
        quota = 50.0
        limited = _run_product(
            si,
            all_entries,
            key="manifests/quota.json",
            # cache off: fewer S3 round trips per image, so that demand clearly exceeds the quota
            env_options={"workers": quota_workers, "inline": quota_n, "cache": False, "max_tps": quota},
        )
        arrivals = sorted(si.rekognition.arrivals)

        log("product with LABEL_CACHE=false (diagnostic: the cache's S3 round trips left out)")
        si.rekognition.reset(latency_seconds=label_s)
        no_cache = _run_product(
            si,
            entries,
            key="manifests/speed-nocache.json",
            env_options={"workers": workers, "inline": n, "cache": False},
        )
    finally:
        si.site.delay_seconds = 0.0

    breakdown = _entry_breakdown(si, product_runs[-1]["output_bucket"])
    baseline_wall = baseline["wall_s"]
    walls = [run["handler_s"] for run in product_runs]
    product_wall = statistics.median(walls)
    ideal = n * (download_s + label_s) / workers
    speedup = baseline_wall / product_wall
    timings = baseline["timings"]
    shared_raw = {
        "images": n,
        "max_workers": workers,
        "download_delay_s": download_s,
        "label_latency_s": label_s,
        "label_cache": "on (LABEL_CACHE=true, the default); every image has distinct bytes, so nothing is reused",
        "rekognition_max_tps": "1000 (the stand-in has no quota; the 50-TPS run is measured separately)",
        "product_handler_s": [round(wall, 4) for wall in walls],
        "product_init_s": [round(run["init_s"], 4) for run in product_runs],
        "product_handler_cpu_s": [round(run["handler_cpu_s"], 3) for run in product_runs],
        "standins_cpu_s_per_product_run": [run["standins_cpu_s"] for run in product_runs],
        "cpu_capacity_note": f"{os.cpu_count()} vCPUs: a run of W seconds has {os.cpu_count()}·W CPU-seconds for "
        "the handler, moto, the stand-ins and anything else running on the machine",
        "product_report_timings_ms": [run["report"].get("timings_ms") for run in product_runs],
        "product_s3_calls_per_image": {
            name: round(count / n, 2) for name, count in sorted(product_runs[-1]["s3_calls"].items())
        },
        "product_mean_entry_ms": breakdown,
        "baseline_wall_s": round(baseline_wall, 4),
        "baseline_mean_step_s": {
            "download": round(statistics.fmean(timings["download_s"]), 4),
            "label": round(statistics.fmean(timings["label_s"]), 4),
            "store": round(statistics.fmean(timings["store_s"]), 4),
        },
    }
    metrics: Metrics = {
        "speedup_vs_sequential": metric(
            speedup,
            target=12,
            comparison=">=",
            unit="x",
            baseline=round(baseline_wall, 4),
            baseline_is="seconds: the article's one-by-one loop on the same 200 entries and endpoints",
            raw={**shared_raw, "product_median_s": round(product_wall, 4)},
        ),
        "ratio_to_limit": metric(
            product_wall / ideal,
            target=1.3,
            comparison="<=",
            unit="x",
            baseline=round(ideal, 4),
            baseline_is="seconds: the ideal N·(download + label)/MAX_WORKERS",
            raw={**shared_raw, "product_median_s": round(product_wall, 4)},
        ),
    }
    for item in ("speedup_vs_sequential", "ratio_to_limit"):
        metrics[item]["raw"]["diagnostic_label_cache_off"] = {
            "handler_s": round(no_cache["handler_s"], 4),
            "ratio_to_limit": round(no_cache["handler_s"] / ideal, 3),
            "speedup": round(baseline_wall / no_cache["handler_s"], 2),
            "s3_calls_per_image": {name: round(c / n, 2) for name, c in sorted(no_cache["s3_calls"].items())},
        }
    try:
        metrics["rekognition_quota_utilisation"] = _quota_metric(
            arrivals, quota, limited, quota_n, quota_workers, label_s, download_s
        )
    except RuntimeError as exc:  # this measure only; the others stand
        log(f"ERROR in rekognition_quota_utilisation: {exc}")
        metrics["rekognition_quota_utilisation"] = {
            "error": str(exc),
            "meets_target": False,
            "raw": {"arrivals_s": [round(moment - arrivals[0], 4) for moment in arrivals] if arrivals else []},
        }
    return metrics


def _entry_breakdown(si: StandIns, bucket: str) -> dict[str, float]:
    """Mean per-entry ``timings_ms`` of the result records of one run: where an entry's time goes."""
    sums: dict[str, float] = {}
    count = size = 0
    paginator = si.s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix="results/"):
        for item in page.get("Contents", []):
            size += item["Size"]
            record = json.loads(si.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            for name, value in record.get("timings_ms", {}).items():
                sums[name] = sums.get(name, 0.0) + float(value)
            count += 1
    means = {name: round(total / max(1, count), 1) for name, total in sums.items()}
    if "total" in means:
        steps = sum(means.get(name, 0.0) for name in ("download", "prepare", "label"))
        means["other_in_total (cache reads/writes, hashing)"] = round(means["total"] - steps, 1)
    means["result_object_bytes"] = round(size / max(1, count))
    means["note"] = "total excludes the result write and the already-done check (both S3 calls)"  # type: ignore[assignment]
    return means


def _quota_metric(
    arrivals: list[float], quota: float, run: dict[str, Any], n: int, workers: int, label_s: float, download_s: float
) -> dict[str, Any]:
    """DetectLabels rate achieved once the token bucket's initial burst is spent, over the quota.

    The bucket starts full (one second of tokens) and only limits once it is empty: the first call
    ``i`` with ``i + 1 >= burst + quota * (t_i - t_0)``. The rate is measured from there to the end.
    """
    burst = quota  # TokenBucket's default burst = one second of tokens
    start = arrivals[0]
    empty_at = next(
        (index for index, moment in enumerate(arrivals) if index + 1 >= burst + quota * (moment - start)), None
    )
    if empty_at is None or len(arrivals) - empty_at < 20:
        raise RuntimeError("the token bucket never ran empty: demand did not exceed the quota long enough")
    steady = arrivals[empty_at:]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    per_second: dict[int, int] = {}
    for moment in arrivals:
        second = int(moment - arrivals[0])
        per_second[second] = per_second.get(second, 0) + 1
    return metric(
        rate / quota,
        target=0.95,
        comparison=">=",
        unit="fraction of quota",
        baseline=quota,
        baseline_is="calls/s: the quota (REKOGNITION_MAX_TPS=50, REKOGNITION_TPS_SHARE=1)",
        raw={
            "steady_calls_per_s": round(rate, 3),
            "calls": len(arrivals),
            "timing": "arrival of each successful call at the stand-in",
            "calls_before_the_bucket_ran_empty": empty_at,
            "steady_window_s": round(steady[-1] - steady[0], 3),
            "max_workers": workers,
            "calls_per_wall_second": [per_second.get(second, 0) for second in range(max(per_second) + 1)],
            "handler_s": round(run["handler_s"], 4),
            "demand_calls_per_s_at_most": round(workers / (download_s + label_s), 2),
            "label_cache": "off (fewer S3 round trips per image: demand well above the quota)",
            "images": n,
        },
        note="informative (docs/scale.md's ≥ 95 % of quota): the limiter must use the quota, not exceed it",
    )


# --- 2. import time --------------------------------------------------------------------------------------------
def parse_importtime(stderr: str) -> list[dict[str, Any]]:
    """``-X importtime`` output → a forest of ``{"name", "self_us", "cum_us", "children"}`` (import order)."""
    pending: dict[int, list[dict[str, Any]]] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|", 2)
        level = (len(name) - len(name.lstrip(" ")) - 1) // 2  # "| " then two spaces per nesting level
        node = {
            "name": name.strip(),
            "self_us": int(self_us),
            "cum_us": int(cum_us),
            "children": pending.pop(level + 1, []),
        }
        pending.setdefault(level, []).append(node)
    return pending.get(0, [])


def eager_imports(forest: list[dict[str, Any]], known: set[str]) -> list[dict[str, Any]]:
    """Packages outside ``known`` (what ``import boto3`` loads anyway), each with its import cost and the
    chain of modules that pulled it in (the nearest ``labeler`` module first)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any], chain: list[str]) -> None:
        name = node["name"]
        top = name.split(".")[0]
        if top not in known and top != "labeler" and not top.startswith("_") and top not in found:
            via = [module for module in chain if module.startswith("labeler")]
            found[top] = {
                "package": top,
                "first_module": name,
                "cumulative_ms": round(node["cum_us"] / 1000, 1),
                "imported_by": via[-1] if via else (chain[-1] if chain else "(top level)"),
                "chain": chain[-4:],
            }
        for child in node["children"]:
            walk(child, [*chain, name])

    for root in forest:
        walk(root, [])
    return sorted(found.values(), key=lambda item: -item["cumulative_ms"])


def _modules(forest: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    stack = list(forest)
    while stack:
        node = stack.pop()
        names.add(node["name"].split(".")[0])
        stack.extend(node["children"])
    return names


LAMBDA_VENV = OUT_DIR / "lambda-venv"


def lambda_package_python() -> tuple[str, str]:
    """A venv holding what the function's package holds: requirements.txt (what ``sam build`` packages)
    plus the runtime's boto3 (pinned as in requirements-dev.txt), and nothing else. Built once into
    ``bench/out/lambda-venv``; the project's code comes from ``src/`` on ``PYTHONPATH``.

    The development venv also holds moto, requests, mysql-connector, ...; X-Ray's ``patch_all``
    (Powertools' Tracer) imports and patches whatever of those it finds, which a Lambda would not have.
    Returns (python, note); falls back to the development venv when the venv cannot be built.
    """
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    pins = [line.strip() for line in (ROOT / "requirements-dev.txt").read_text().splitlines()]
    boto3_pin = next((line for line in pins if line.startswith("boto3==")), "boto3")
    stamp_text = requirements + boto3_pin + sys.version
    python = LAMBDA_VENV / "bin" / "python"
    stamp = LAMBDA_VENV / ".bench-stamp"
    if python.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == stamp_text:
        return str(python), f"bench/out/lambda-venv: requirements.txt + {boto3_pin}"
    log("import: building bench/out/lambda-venv (requirements.txt + boto3, once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LAMBDA_VENV)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt"), boto3_pin],
            check=True,
            timeout=300,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        log(f"import: cannot build the Lambda-package venv ({exc}); measuring in the development venv")
        return sys.executable, "development venv (.venv): the Lambda-package venv could not be built"
    stamp.write_text(stamp_text, encoding="utf-8")
    return str(python), f"bench/out/lambda-venv: requirements.txt + {boto3_pin}"


def import_env(lambda_like: bool) -> dict[str, str]:
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    env.update(
        {
            "PYTHONPATH": str(ROOT / "src"),  # the package's code, as in the function's /var/task
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            # The function's environment as template.yaml sets it (the values do not matter at import).
            "OUTPUT_BUCKET": "bench-import",
            "POWERTOOLS_SERVICE_NAME": "s3-image-labeler",
            "POWERTOOLS_METRICS_NAMESPACE": "S3ImageLabeler",
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
    )
    if lambda_like:
        # What the Lambda runtime sets: Powertools' Tracer is active there (Tracing: Active), off elsewhere.
        env.update(
            {
                "LAMBDA_TASK_ROOT": str(ROOT / "src"),
                "AWS_LAMBDA_FUNCTION_NAME": "s3-image-labeler-ManifestFunction",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1769",
                "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
            }
        )
    return env


def _import_seconds(python: str, module: str, env: dict[str, str]) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([python, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"`import {module}` failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _importtime(python: str, module: str, env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {module}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return parse_importtime(out.stderr)


def bench_import(runs: int) -> Metrics:
    package_python, package_note = lambda_package_python()
    variants: dict[str, dict[str, Any]] = {}
    setups = {
        "lambda_package": (package_python, True),
        "dev_venv_lambda_env": (sys.executable, True),
        "dev_venv_tracing_off": (sys.executable, False),
    }
    for name, (python, lambda_like) in setups.items():
        env = import_env(lambda_like)
        for module in ("boto3", HANDLER_MODULE):  # compile/warm the bytecode caches once, untimed
            _import_seconds(python, module, env)
        boto3_s, handler_s = [], []
        for _ in range(runs):  # interleaved, so that drift and load hit both alike
            boto3_s.append(_import_seconds(python, "boto3", env))
            handler_s.append(_import_seconds(python, HANDLER_MODULE, env))
        variants[name] = {
            "python": python,
            "lambda_env": lambda_like,
            "boto3_ms": [round(value * 1000, 1) for value in boto3_s],
            "handler_ms": [round(value * 1000, 1) for value in handler_s],
            "boto3_median_ms": round(statistics.median(boto3_s) * 1000, 1),
            "handler_median_ms": round(statistics.median(handler_s) * 1000, 1),
            "ratio": round(statistics.median(handler_s) / statistics.median(boto3_s), 3),
        }
        log(
            f"import ({name}): handler {variants[name]['handler_median_ms']} ms, "
            f"boto3 {variants[name]['boto3_median_ms']} ms"
        )
    built = _built_package_import(runs)
    if built is not None:
        variants["built_package"] = built
        log(f"import (built_package): handler {built['handler_median_ms']} ms, boto3 {built['boto3_median_ms']} ms")
    env = import_env(True)
    boto3_forest = _importtime(package_python, "boto3", env)
    handler_forest = _importtime(package_python, HANDLER_MODULE, env)
    eager = eager_imports(handler_forest, _modules(boto3_forest))
    main = variants.get("built_package") or variants["lambda_package"]
    where = (
        "the function package `make build` makes (.aws-sam/build/ManifestFunction: bytecode as shipped), "
        "Python 3.12 as in Lambda, `python -I -S -B`, the Lambda runtime's variables"
        if "built_package" in variants
        else package_note
    )
    return {
        "import_ratio": metric(
            main["ratio"],
            target=1.3,
            comparison="<=",
            unit="x",
            baseline=main["boto3_median_ms"],
            baseline_is="ms: median cold `import boto3` in a fresh interpreter (same package, same environment)",
            raw={
                "runs": runs,
                "handler_median_ms": main["handler_median_ms"],
                "measured_in": where,
                "venv": package_note,
                "method": "perf_counter around the import in `python -c`, a fresh interpreter each, "
                "interleaved, medians; one untimed warm-up each",
                "variants": variants,
                "handler_imports_not_in_boto3": eager[:12],
                "slowest_labeler_imports": _slowest_labeler_modules(handler_forest)[:12],
            },
            note="value: the Lambda package's modules with the Lambda runtime's environment (Tracer active)",
        )
    }


def _lambda_python() -> str | None:
    """Python 3.12 (the Lambda runtime's version): $LAMBDA_PYTHON, python3.12 on PATH, or pyenv's newest 3.12."""
    import glob
    import shutil

    candidates = [os.environ.get("LAMBDA_PYTHON"), shutil.which("python3.12")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12.*/bin/python3.12")), reverse=True)
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


def _built_package_import(runs: int) -> dict[str, Any] | None:
    """The cold import measured in the real function package (scripts/measure_cold_import.py), if it is built."""
    build_dir = ROOT / ".aws-sam" / "build" / "ManifestFunction"
    python = _lambda_python()
    if not (build_dir / "labeler").is_dir() or python is None:
        log("import: no .aws-sam/build/ManifestFunction or no python3.12 (run `make build`); skipping that variant")
        return None
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "measure_cold_import.py"), str(build_dir), python, "--runs", str(runs)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(out.stdout)
    return {
        "python": python,
        "lambda_env": True,
        "build_dir": str(build_dir.relative_to(ROOT)),
        "boto3_ms": found.get("baseline_ms"),
        "handler_ms": found.get("handler_ms"),
        "boto3_median_ms": found["baseline_median_ms"],
        "handler_median_ms": found["handler_median_ms"],
        "ratio": found["ratio"],
        "modules_compiled_from_source": found.get("handler_bytecode", {}).get("modules_compiled_from_source"),
    }


def _slowest_labeler_modules(forest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every non-labeler import made directly by a labeler module, by cumulative time."""
    found: list[dict[str, Any]] = []
    stack = list(forest)
    while stack:
        node = stack.pop()
        for child in node["children"]:
            if node["name"].startswith("labeler") and not child["name"].startswith("labeler"):
                found.append(
                    {
                        "importer": node["name"],
                        "module": child["name"],
                        "cumulative_ms": round(child["cum_us"] / 1000, 1),
                    }
                )
            stack.append(child)
    return sorted(found, key=lambda item: -item["cumulative_ms"])


# --- 3. memory ---------------------------------------------------------------------------------------------------
def _parent_rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def bench_memory(si: StandIns, *, n: int, workers: int, variant_images: int = 0) -> Metrics:
    from PIL import Image

    from bench.images import large_noisy_jpegs
    from labeler.local.http_server import StaticRoute

    log("memory: building ~4 MB test JPEGs (cached in bench/out)")
    images = large_noisy_jpegs(4)
    for index, image in enumerate(images):
        si.site.add(f"/large/{index}.jpg", StaticRoute(image, "image/jpeg"))
    entries = [
        {"id": f"large-{index:04d}", "url": si.site.url(f"/large/{index % len(images)}.jpg?n={index}")}
        for index in range(n)
    ]
    si.rekognition.reset(latency_seconds=0.0)
    log(f"memory: handler labeling {n} images of ~4 MB, MAX_WORKERS={workers}, LABEL_CACHE=false")
    run = _run_product(
        si, entries, key="manifests/large.json", env_options={"workers": workers, "inline": n, "cache": False}
    )
    idle_bucket = si.new_bucket("idle")
    idle = run_child("idle", {}, product_env(si, idle_bucket, workers=workers, inline=n))
    sizes = [Image.open(io.BytesIO(image)).size for image in images]
    variants = _memory_variants(si, images, variant_images, workers) if variant_images else {}
    return {
        "peak_rss_mb": metric(
            run["peak_rss_mb"],
            target=200,
            comparison="<=",
            unit="MiB",
            baseline=round(idle["peak_rss_mb"], 1),
            baseline_is="MiB: an idle interpreter that imported the handler",
            raw={
                "images": n,
                "max_workers": workers,
                "distinct_images": len(images),
                "image_bytes": [len(image) for image in images],
                "image_pixels": [f"{width}x{height}" for width, height in sizes],
                "label_backend": "rekognition (wire stand-in, 0 ms latency, in another process)",
                "label_cache": "off (LABEL_CACHE=false): every image is downloaded, checked and sent to DetectLabels",
                "handler_s": round(run["handler_s"], 3),
                "images_per_s": round(n / run["handler_s"], 2),
                "rekognition_calls": run["rekognition_calls"],
                "peak_rss_source": "VmHWM of the child (/proc/self/status): its own peak, from exec to exit",
                "ru_maxrss_mb": round(run["ru_maxrss_mb"], 1),
                "ru_maxrss_note": "getrusage(RUSAGE_SELF).ru_maxrss in the same child: Linux carries it over "
                "fork+exec, so it also holds the parent's RSS at spawn time (bench orchestrator: ~"
                f"{round(_parent_rss_mb())} MiB now); not used",
                "idle_ru_maxrss_mb": round(idle["ru_maxrss_mb"], 1),
                **({"diagnostic_variants": variants} if variants else {}),
            },
        )
    }


def _memory_variants(si: StandIns, images: list[bytes], n: int, workers: int) -> dict[str, Any]:
    """Where the memory goes (``--memory-variants N``): the same run on ``n`` images, one change at a time."""
    entries = [
        {"id": f"large-{index:04d}", "url": si.site.url(f"/large/{index % len(images)}.jpg?n={index}")}
        for index in range(n)
    ]
    base = {"workers": workers, "inline": n, "cache": False}
    setups: dict[str, tuple[dict[str, Any], dict[str, str], dict[str, Any]]] = {
        f"as_measured_{n}_images": (base, {}, {}),
        "max_workers_8 (template default)": ({**base, "workers": 8}, {}, {}),
        "max_workers_4": ({**base, "workers": 4}, {}, {}),
        "MALLOC_ARENA_MAX=2": (base, {"MALLOC_ARENA_MAX": "2"}, {}),
        "in_process_stub_backend (no DetectLabels request built)": (base, {}, {"stub_backend": True}),
    }
    found: dict[str, Any] = {}
    for name, (options, extra_env, spec) in setups.items():
        log(f"memory variant: {name}")
        input_bucket, output_bucket = si.new_bucket("in"), si.new_bucket("out")
        event = si.upload_manifest(input_bucket, "manifests/variant.json", entries)
        env = product_env(si, output_bucket, **options) | extra_env
        result = run_child("product", {"event": event, **spec}, env, timeout=600)
        found[name] = {"peak_rss_mb": round(result["peak_rss_mb"], 1), "handler_s": round(result["handler_s"], 2)}
    return found


# --- 4. never pay twice -------------------------------------------------------------------------------------------
def bench_cache(si: StandIns) -> Metrics:
    from bench.images import distinct_jpegs
    from labeler.local.http_server import StaticRoute

    n = 20
    for index, image in enumerate(distinct_jpegs(n, photo="coffee")):
        si.site.add(f"/again/{index}.jpg", StaticRoute(image, "image/jpeg", etag=True))
    entries = [{"id": f"again-{index:02d}", "url": si.site.url(f"/again/{index}.jpg")} for index in range(n)]
    options = {"workers": 8, "inline": n, "cache": True}
    si.rekognition.reset()
    log(f"cache: a {n}-entry manifest, then the same manifest under a new key, then the same key again")
    first = _run_product(si, entries, key="manifests/first.json", env_options=options)
    buckets = {"input_bucket": first["input_bucket"], "output_bucket": first["output_bucket"]}
    si.site.reset_counters()
    again = _run_product(si, entries, key="manifests/second-copy.json", env_options=options, **buckets)
    again_hits = sum(si.site.hits(f"/again/{index}.jpg") for index in range(n))
    again_304 = sum(si.site.not_modified_count(f"/again/{index}.jpg") for index in range(n))
    same_key = _run_product(si, entries, key="manifests/first.json", env_options=options, **buckets)

    unique, copies = 3, 8
    shared = distinct_jpegs(unique, photo="astronaut")
    for index, image in enumerate(shared):
        si.site.add(f"/same/{index}.jpg", StaticRoute(image, "image/jpeg"))
    duplicates = [
        {"id": f"dup-{index:02d}", "url": si.site.url(f"/same/{index % unique}.jpg?n={index}")}
        for index in range(unique * copies)
    ]
    by_workers = {}
    for workers in (1, 16):
        log(f"cache: {unique * copies} URLs serving {unique} distinct images, MAX_WORKERS={workers}")
        run = _run_product(si, duplicates, key="manifests/duplicates.json", env_options={**options, "workers": workers})
        by_workers[workers] = run
    serial, parallel = by_workers[1], by_workers[16]
    return {
        "rekognition_calls_on_reupload": metric(
            again["rekognition_calls"],
            target=0,
            comparison="==",
            unit="calls",
            baseline=first["rekognition_calls"],
            baseline_is="calls: the first upload of the same manifest",
            raw={
                "entries": n,
                "first_upload": _short_report(first["report"]),
                "new_key": _short_report(again["report"]),
                "new_key_requests_to_image_host": again_hits,
                "new_key_answered_304": again_304,
                "new_key_s3_calls_per_entry": {
                    name: round(value / n, 2) for name, value in sorted(again["s3_calls"].items())
                },
                "first_upload_s3_calls_per_entry": {
                    name: round(value / n, 2) for name, value in sorted(first["s3_calls"].items())
                },
                "same_key_reuploaded_calls": same_key["rekognition_calls"],
                "same_key_reuploaded": _short_report(same_key["report"]),
            },
        ),
        "calls_for_identical_bytes": metric(
            serial["rekognition_calls"],
            target=unique,
            comparison="<=",
            unit="calls",
            baseline=unique * copies,
            baseline_is="calls: one per entry (what a labeler without a content cache pays)",
            raw={
                "entries": unique * copies,
                "unique_contents": unique,
                "calls_max_workers_1": serial["rekognition_calls"],
                "calls_max_workers_16": parallel["rekognition_calls"],
                "report_max_workers_1": _short_report(serial["report"]),
                "report_max_workers_16": _short_report(parallel["report"]),
            },
            note="value at MAX_WORKERS=1; calls_max_workers_16 shows concurrent first sightings of the same bytes",
        ),
    }


# --- 5. the offline backend ----------------------------------------------------------------------------------------
def bench_local(images: int, workers: int) -> Metrics:
    log(f"local backend: {images} real photos, sequentially and over {workers} threads")
    env = child_base_env()
    if "S3IL_MODEL_DIR" in os.environ:
        env["S3IL_MODEL_DIR"] = os.environ["S3IL_MODEL_DIR"]
    result = run_child("local", {"images": images, "workers": workers}, env)
    value = result["concurrent_images_per_s"]  # how the pipeline calls it: from MAX_WORKERS threads
    return {
        "local_images_per_s": metric(
            value,
            target=60,
            comparison=">=",
            unit="images/s",
            baseline=round(result["model_only_images_per_s"], 2),
            baseline_is="images/s: model inference alone (onnxruntime on preprocessed tensors), same process",
            raw={key: (round(val, 4) if isinstance(val, float) else val) for key, val in result.items()},
            note="value: detect_labels called from MAX_WORKERS=8 threads, as the pipeline calls it; "
            "sequential_images_per_s: one thread",
        )
    }


# --- informative: manifest reading speed (the splitter's share of the 15-minute limit) -------------------------------
def bench_parse(entries: int) -> dict[str, Any]:
    log(f"manifest parsing: {entries} entries, JSON array and JSON Lines")
    result = run_child("parse", {"entries": entries}, child_base_env())
    out: dict[str, Any] = {}
    for form in ("json_array", "json_lines"):
        item = result[form]
        out[form] = {
            "entries": item["entries"],
            "bytes": item["bytes"],
            "seconds": round(item["seconds"], 3),
            "entries_per_s": round(item["entries_per_s"]),
            "seconds_per_million_entries": round(1_000_000 / item["entries_per_s"], 1),
        }
    out["note"] = "parse_manifest only (in memory); splitting also sends one SendMessageBatch per 10 batches"
    return out


# --- the run ---------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_mb"] = int(line.split()[1]) // 1024
                break
    except OSError:
        pass
    return info


def source_state() -> dict[str, Any]:
    """The commit measured, and whether src/ had uncommitted changes (others may be editing it)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
        return out.stdout.rstrip("\n")  # not strip(): porcelain lines start with a status column

    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "src_uncommitted_changes": sorted(line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()),
    }


def print_table(metrics: Metrics) -> None:
    header = f"{'metric':<32} {'value':>12} {'target':>10} {'ok':>4} {'baseline':>12}  ratio value/baseline"
    print(header)
    print("-" * len(header))
    for name, item in metrics.items():
        if "error" in item:
            print(f"{name:<32} {'ERROR':>12}  {item['error'].splitlines()[0][:80]}")
            continue
        value, baseline = item["value"], item["baseline"]
        ratio = f"{value / baseline:.3g}" if isinstance(baseline, int | float) and baseline else "-"
        target = f"{item['comparison']}{item['target']:g}"
        ok = "yes" if item["meets_target"] else "NO"
        print(f"{name:<32} {value:>12.4g} {target:>10} {ok:>4} {baseline:>12.4g}  {ratio}")
    missed = [name for name, item in metrics.items() if "error" not in item and not item["meets_target"]]
    if missed:
        print(f"\nMISSED TARGETS: {', '.join(missed)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks and write bench/results.json.")
    parser.add_argument("--output", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--only", default="", help="comma-separated groups: import,local,parse,cache,throughput,memory")
    parser.add_argument("--images", type=int, default=200, help="entries of the throughput manifest")
    parser.add_argument("--memory-images", type=int, default=1000, help="entries of the memory manifest")
    parser.add_argument("--repeats", type=int, default=3, help="product runs in the throughput group (median)")
    parser.add_argument("--import-runs", type=int, default=15)
    parser.add_argument(
        "--memory-variants",
        type=int,
        default=0,
        metavar="N",
        help="also run the memory benchmark's diagnostic variants on N images each (slow; off by default)",
    )
    args = parser.parse_args(argv)

    groups = [group for group in args.only.split(",") if group] or [
        "import",
        "local",
        "parse",
        "cache",
        "throughput",
        "memory",
    ]
    started_at, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
    host_at_start = machine()
    metrics: Metrics = {}
    errors: list[str] = []

    def attempt(group: str, names: list[str], run: Callable[[], Metrics]) -> None:
        if group not in groups:
            return
        try:
            metrics.update(run())
        except Exception as exc:
            log(f"ERROR in {group}: {exc}")
            traceback.print_exc()
            errors.append(group)
            for name in names:
                metrics[name] = {"error": f"{type(exc).__name__}: {exc}", "meets_target": False}

    attempt("import", ["import_ratio"], lambda: bench_import(args.import_runs))
    attempt("local", ["local_images_per_s"], lambda: bench_local(300, 8))
    informative: dict[str, Any] = {}
    if "parse" in groups:
        try:
            informative["manifest_parse"] = bench_parse(200_000)
        except Exception as exc:
            log(f"ERROR in parse: {exc}")
            errors.append("parse")
            informative["manifest_parse"] = {"error": f"{type(exc).__name__}: {exc}"}
    needs_standins = {"cache", "throughput", "memory"} & set(groups)
    if needs_standins:
        with StandIns() as si:
            attempt("cache", ["rekognition_calls_on_reupload", "calls_for_identical_bytes"], lambda: bench_cache(si))
            attempt(
                "throughput",
                ["speedup_vs_sequential", "ratio_to_limit", "rekognition_quota_utilisation"],
                lambda: bench_throughput(
                    si, n=args.images, workers=16, download_s=0.1, label_s=0.15, repeats=args.repeats
                ),
            )
            attempt(
                "memory",
                ["peak_rss_mb"],
                lambda: bench_memory(si, n=args.memory_images, workers=16, variant_images=args.memory_variants),
            )

    order = [
        "speedup_vs_sequential",
        "ratio_to_limit",
        "import_ratio",
        "peak_rss_mb",
        "rekognition_calls_on_reupload",
        "calls_for_identical_bytes",
        "local_images_per_s",
        "rekognition_quota_utilisation",
    ]
    ordered = {name: metrics[name] for name in order if name in metrics}
    ordered.update({name: item for name, item in metrics.items() if name not in ordered})
    host = host_at_start
    host["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results = {
        "machine": host,
        "generated_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "source": source_state(),
        "metrics": ordered,
        "informative": informative,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print_table(ordered)
    print(
        f"\nwrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output} "
        f"in {results['duration_s']} s"
    )
    not_made = sorted({*errors, *(name for name, item in ordered.items() if "error" in item)})
    if not_made:
        print(f"ERRORS (measurements not made): {', '.join(not_made)}")
        return 1
    return 0
