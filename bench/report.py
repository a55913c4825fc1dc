"""bench/results.json as the README's Markdown: ``python bench/report.py [results.json] [--preview]``.

The README's figures must be those of the commit they describe, so this refuses (exit 2) to print
a run as a commit's figures when:

* the tree had uncommitted changes when it ran (``source.dirty``): the figures describe no commit;
* it was a partial run (``--only``): the README shows a whole ``make bench``;
* the code changed between the measured commit and HEAD (anything but ``*.md``, ``docs/`` and
  ``bench/results.json``): the figures would describe older code;
* the measured commit is unknown to this repository.

``--preview`` prints anyway, under a banner that says which of these applies (never for the README).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"
ROOT = RESULTS.parent.parent
NOT_CODE = ("docs/", "bench/results.json")


def _title(name: str, item: dict[str, Any]) -> str:
    raw = item.get("raw", {})
    titles = {
        "lone_manifest_ratio_to_limit": lambda: (
            f"A lone {raw.get('images')}-entry manifest: wall time / limit "
            f"(quota {raw.get('quota_tps', 0):g} TPS, {raw.get('max_workers')} workers)"
        ),
        "speedup_vs_sequential": lambda: f"Speed-up over the one-by-one loop ({raw.get('images')} images)",
        "shared_quota_utilisation": lambda: (
            f"{raw.get('containers')} containers, one {raw.get('quota_tps', 0):g}-TPS quota: calls/s over the quota"
        ),
        "throttled_fraction": lambda: "…throttled calls / successful calls, same run",
        "fanout_quota_utilisation": lambda: (
            f"Fan-out of {raw.get('entries', 0):,} entries, "
            f"{(raw.get('worker_processes') or {}).get('used')} worker containers: calls/s over the quota"
        ),
        "cold_start_ratio": lambda: "Cold start to the first answer (1 entry, built package) / a seed handler's",
        "import_ratio": lambda: "Cold import of the handler / `import boto3`",
        "peak_rss_mb": lambda: "Peak RSS of a container, JPEG, PNG, WebP and > 5 MB images",
        "rekognition_calls_on_reupload": lambda: "DetectLabels calls, same manifest uploaded again",
        "calls_for_identical_bytes": lambda: "DetectLabels calls, 24 URLs / 3 distinct images",
        "recheck_calls_per_unchanged_image": lambda: (
            f"Re-check of {raw.get('images')} unchanged images: DetectLabels calls per image "
            f"({raw.get('s3_requests_per_unchanged_image')} S3 requests per image)"
        ),
        "local_images_per_s": lambda: "Offline backend, end to end",
    }
    return titles[name]() if name in titles else name


UNITS = {"x": "×", "MiB": "MiB", "calls": "calls", "images/s": "images/s"}


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _value(item: dict[str, Any], value: Any, unit: str) -> str:
    if unit.startswith("fraction"):
        return f"{value:.1%}" if unit == "fraction of quota" else f"{value:.2%}"
    return f"{_number(value)} {UNITS.get(unit, unit)}".strip()


def problems(results: dict[str, Any]) -> list[str]:
    """Why these results may not be printed as the figures of a commit (empty: they may)."""
    found = []
    source = results.get("source", {})
    commit = source.get("commit")
    if source.get("dirty"):
        changed = ", ".join(source.get("uncommitted_changes", [])[:5])
        found.append(f"the tree had uncommitted changes when it ran ({changed}): these are no commit's figures")
    if "complete_run" not in results:
        found.append("recorded by an older bench that did not check for dirty trees or partial runs")
    elif not results["complete_run"]:
        found.append(f"a partial run ({results.get('command')}): the README shows a whole `make bench`")
    if not commit:
        found.append("no commit recorded")
        return found
    known = subprocess.run(
        ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True, check=False
    )
    if known.returncode != 0:
        found.append(f"commit {commit[:12]} is not in this repository")
        return found
    diff = subprocess.run(
        ["git", "diff", "--name-only", commit, "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    code = [path for path in diff if not path.endswith(".md") and not path.startswith(NOT_CODE)]
    if code:
        found.append(f"the code changed since {commit[:12]} ({', '.join(code[:5])}): run `make bench` again")
    return found


def defaults_line(results: dict[str, Any]) -> str:
    """The settings the figures ran at: the template's numeric settings, as deployed."""
    functions = results.get("deployment", {}).get("functions", {})
    manifest = functions.get("ManifestFunction", {})
    settings = {
        name: value
        for name, value in manifest.get("environment", {}).items()
        if value.replace(".", "", 1).isdigit() and not name.startswith("POWERTOOLS_")
    }
    parts = [f"`{name}={value}`" for name, value in settings.items()]
    mapping = functions.get("WorkerFunction", {}).get("event_source_mapping") or {}
    if mapping.get("maximum_concurrency"):
        parts.append(f"{mapping['maximum_concurrency']} worker containers at most")
    if manifest.get("memory_mb"):
        parts.append(f"{manifest['memory_mb']} MB")
    return "At the template's defaults: " + ", ".join(parts) + "."


def markdown(results: dict[str, Any]) -> str:
    machine, source = results["machine"], results.get("source", {})
    commit = str(source.get("commit") or "?")
    lines = [
        f"Measured at commit `{commit[:12]}` on {results['generated_at'][:10]}: {machine.get('cpus_available')} vCPUs "
        f"({machine.get('cpu_model', machine.get('machine'))}), Python {machine['python']}; `make bench` took "
        f"{results.get('duration_s')} s (load average {machine.get('load_average_at_start', ['?'])[0]} at the start, "
        f"{machine.get('load_average_at_end', ['?'])[0]} at the end).",
        "",
        defaults_line(results),
        "",
        "| measure | result | target | met | baseline, measured in the same run |",
        "|---|---:|---:|:---:|---|",
    ]
    diagnostics = []
    for name, item in results["metrics"].items():
        title = _title(name, item)
        if "error" in item:
            lines.append(f"| {title} | error | | ✗ | {item['error'][:80]} |")
            continue
        unit = item.get("unit", "")
        target = (
            f"{item['comparison']} {item['target']:.0%}"
            if unit.startswith("fraction")
            else f"{item['comparison'].replace('==', '=')} {_number(item['target'])}"
        )
        met = "✓" if item["meets_target"] else "✗"
        baseline_unit, _, words = item["baseline_is"].partition(":")
        lines.append(
            f"| {title} | {_value(item, item['value'], unit)} | {target} | {met} | "
            f"{_number(item['baseline'])} {baseline_unit}: {words.strip()} |"
        )
        for extra in item.get("diagnostics", []):
            overrides = ", ".join(f"`{key}={value}`" for key, value in extra["overrides"].items())
            diagnostics.append(
                f"| {title} | {extra['name']} | {overrides} | {_value(extra, extra['value'], extra['unit'])} |"
            )
    if diagnostics:
        lines += [
            "",
            "Diagnostics, measured in the same run with one setting changed (beside the figures, never the figures):",
            "",
            "| measure | diagnostic | changed | result |",
            "|---|---|---|---:|",
            *diagnostics,
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS)
    parser.add_argument("--preview", action="store_true", help="print even when these are no commit's figures")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    found = problems(results)
    if found and not args.preview:
        print("bench/report.py: not printing these as a commit's figures:", file=sys.stderr)
        for problem in found:
            print(f"  - {problem}", file=sys.stderr)
        print("(--preview prints them under a banner, not for the README)", file=sys.stderr)
        return 2
    if found:
        print("> **PREVIEW, not a commit's figures:** " + "; ".join(found) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
