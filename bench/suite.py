"""The benchmark suite behind ``make bench``: measure, compare with a baseline measured alongside, write JSON.

Every figure is measured in this run, each next to its baseline, against loopback stand-ins
(see ``bench/standins.py``), with the functions as ``sam deploy`` configures them: their environment
read from template.yaml at its defaults (``tests/support/template_env.py``), plus only what a harness
must change. The code under test runs in child processes (``bench/child.py``), one per container.
Missed targets are reported, not failed: the exit status is non-zero only when a measurement
itself could not be made.

Groups (``--only``): import, coldstart, local, parse, cache, recheck, throughput, shared, fanout, memory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, Metrics, error_metric, log, metric, run_child
from bench.standins import ROOT, StandIns, child_base_env

DEFAULT_RESULTS = BENCH_DIR / "results.json"
GROUPS = ("import", "coldstart", "local", "parse", "cache", "recheck", "throughput", "shared", "fanout", "memory")
ORDER = (
    "lone_manifest_ratio_to_limit",
    "speedup_vs_sequential",
    "shared_quota_utilisation",
    "throttled_fraction",
    "fanout_quota_utilisation",
    "cold_start_ratio",
    "import_ratio",
    "peak_rss_mb",
    "rekognition_calls_on_reupload",
    "calls_for_identical_bytes",
    "recheck_calls_per_unchanged_image",
    "local_images_per_s",
)
DOWNLOAD_S, LABEL_S = 0.1, 0.15  # an image host's 100 ms, Rekognition's 150 ms


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


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.rstrip("\n")  # not strip(): porcelain lines start with a status column


def source_state(output: Path) -> dict[str, Any]:
    """The commit measured, and whether the tree differed from it (then these are not that commit's figures).

    Every uncommitted change counts, untracked files too (a new module is imported as readily as a changed
    one), except the results file this run writes.
    """
    written = str(output.resolve().relative_to(ROOT)) if output.resolve().is_relative_to(ROOT) else None
    changes = [line for line in git("status", "--porcelain", "--untracked-files=all").splitlines() if line.strip()]
    changed = sorted(line[3:] for line in changes if line[3:] != written)
    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "commit_date": git("show", "-s", "--format=%cI", "HEAD").strip() or None,
        "dirty": bool(changed),
        "uncommitted_changes": changed[:50],
    }


def deployment(si: StandIns) -> dict[str, Any]:
    """The defaults every headline figure ran at: the template's parameters and each function's environment."""
    from tests.support.template_env import Placeholders

    template = si.template
    functions = {}
    for name in template.functions():
        config = template.function(name, Placeholders())
        functions[name] = {
            "timeout_s": config.timeout_seconds,
            "memory_mb": config.memory_mb,
            "environment": config.environment,
        }
        with contextlib.suppress(Exception):  # only the worker has one
            functions[name]["event_source_mapping"] = template.event_source_mapping(name, Placeholders())
    return {
        "template": "template.yaml",
        "parameter_defaults": template.parameter_defaults(),
        "functions": functions,
        "harness_sets": "AWS_ENDPOINT_URL_* (the stand-ins), ALLOW_PRIVATE_NETWORKS=true (the image host is on "
        "loopback), REKOGNITION_MAX_TPS = the stand-in's quota, the stack's resources (local stand-ins)",
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
        for extra in item.get("diagnostics", []):
            overrides = " ".join(f"{key}={val}" for key, val in extra["overrides"].items()) or "input only"
            print(f"{'':<4}diagnostic ({overrides}): {extra['name']} = {extra['value']:.4g} {extra['unit']}")
    missed = [name for name, item in metrics.items() if "error" not in item and not item["meets_target"]]
    if missed:
        print(f"\nMISSED TARGETS: {', '.join(missed)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks and write bench/results.json.")
    parser.add_argument("--output", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--only", default="", help=f"comma-separated groups: {','.join(GROUPS)}")
    parser.add_argument("--images", type=int, default=100, help="entries of the lone manifest (inline at the defaults)")
    parser.add_argument("--repeats", type=int, default=3, help="lone-manifest runs (median)")
    parser.add_argument("--shared-containers", type=int, default=3, help="containers sharing one quota")
    parser.add_argument("--fanout-images", type=int, default=2000, help="entries of the fanned-out manifest")
    parser.add_argument("--fanout-workers", type=int, default=None, help="worker containers (default: the template's)")
    parser.add_argument("--memory-images", type=int, default=400, help="entries the worker container takes in batches")
    parser.add_argument("--recheck-images", type=int, default=200, help="entries of the watched manifest re-checked")
    parser.add_argument("--cold-runs", type=int, default=5, help="cold starts of each handler (interleaved, medians)")
    parser.add_argument("--import-runs", type=int, default=15)
    parser.add_argument(
        "--memory-variants",
        type=int,
        default=0,
        metavar="N",
        help="also run the memory benchmark's diagnostic variants on N images each (slow; off by default)",
    )
    args = parser.parse_args(argv)
    groups = [group for group in args.only.split(",") if group] or list(GROUPS)
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups {sorted(unknown)}; known: {', '.join(GROUPS)}")

    from bench.cache import bench_cache
    from bench.coldstart import bench_cold_start
    from bench.fanout import bench_fanout
    from bench.imports import bench_import
    from bench.memory import bench_memory
    from bench.recheck import bench_recheck
    from bench.throughput import bench_lone_manifest, bench_shared_quota

    started_at, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
    source = source_state(args.output)
    if source["dirty"]:
        log(
            f"the tree has uncommitted changes ({len(source['uncommitted_changes'])}): these figures describe no commit"
        )
    host = machine()
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
                metrics[name] = error_metric(exc)

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
    defaults: dict[str, Any] = {}
    if set(groups) - {"import", "local", "parse"}:
        with StandIns() as si:
            defaults = deployment(si)
            attempt("cache", ["rekognition_calls_on_reupload", "calls_for_identical_bytes"], lambda: bench_cache(si))
            attempt(
                "recheck",
                ["recheck_calls_per_unchanged_image"],
                lambda: bench_recheck(si, n=args.recheck_images, download_s=DOWNLOAD_S),
            )
            attempt(
                "throughput",
                ["lone_manifest_ratio_to_limit", "speedup_vs_sequential"],
                lambda: bench_lone_manifest(
                    si, n=args.images, download_s=DOWNLOAD_S, label_s=LABEL_S, repeats=args.repeats
                ),
            )
            attempt(
                "shared",
                ["shared_quota_utilisation", "throttled_fraction"],
                lambda: bench_shared_quota(
                    si, containers=args.shared_containers, n=args.images, download_s=DOWNLOAD_S, label_s=LABEL_S
                ),
            )
            attempt(
                "fanout",
                ["fanout_quota_utilisation"],
                lambda: bench_fanout(
                    si, n=args.fanout_images, download_s=DOWNLOAD_S, label_s=LABEL_S, workers=args.fanout_workers
                ),
            )
            attempt(
                "coldstart",
                ["cold_start_ratio"],
                lambda: bench_cold_start(si, runs=args.cold_runs, download_s=DOWNLOAD_S, label_s=LABEL_S),
            )
            attempt(
                "memory",
                ["peak_rss_mb"],
                lambda: bench_memory(
                    si, worker_images=args.memory_images, label_s=LABEL_S, variant_images=args.memory_variants
                ),
            )

    ordered = {name: metrics[name] for name in ORDER if name in metrics}
    ordered.update({name: item for name, item in metrics.items() if name not in ordered})
    host["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results = {
        "source": source,
        "machine": host,
        "generated_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "complete_run": not args.only,
        "deployment": defaults,
        "metrics": ordered,
        "informative": informative,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print_table(ordered)
    output = args.output.resolve()
    where = output.relative_to(ROOT) if output.is_relative_to(ROOT) else output
    print(f"\nwrote {where} in {results['duration_s']} s")
    if source["dirty"]:
        print(f"NOT A COMMIT'S FIGURES: uncommitted changes on top of {str(source['commit'])[:12]}")
    not_made = sorted({*errors, *(name for name, item in ordered.items() if "error" in item)})
    if not_made:
        print(f"ERRORS (measurements not made): {', '.join(not_made)}")
        return 1
    return 0
