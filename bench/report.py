"""Print bench/results.json as a Markdown table (for the README): ``python bench/report.py [results.json]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"

LABELS = {
    "speedup_vs_sequential": ("Speed-up over the one-by-one loop (200 images, 16 workers)", "×"),
    "ratio_to_limit": ("Wall time / ideal N·(download + label)/workers", "×"),
    "import_ratio": ("Cold import of the handler / `import boto3`", "×"),
    "peak_rss_mb": ("Peak RSS, 1,000 images of ~4 MB, 16 workers", "MiB"),
    "rekognition_calls_on_reupload": ("DetectLabels calls, same manifest uploaded again", "calls"),
    "calls_for_identical_bytes": ("DetectLabels calls, 24 URLs / 3 distinct images", "calls"),
    "local_images_per_s": ("Offline backend, end to end", "images/s"),
    "rekognition_quota_utilisation": ("Share of a 50-TPS quota used once the limiter binds", ""),
}


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"Measured {results['generated_at'][:10]} on {machine.get('cpus_available')} vCPUs "
        f"({machine.get('cpu_model', machine.get('machine'))}), Python {machine['python']}; "
        f"`make bench` took {results.get('duration_s')} s.",
        "",
        "| measure | result | target | met | baseline, measured in the same run |",
        "|---|---:|---:|:---:|---|",
    ]
    for name, item in results["metrics"].items():
        title, unit = LABELS.get(name, (name, item.get("unit", "")))
        if "error" in item:
            lines.append(f"| {title} | error | | ✗ | {item['error'][:80]} |")
            continue
        if item.get("unit") == "fraction of quota":
            value, target = f"{item['value']:.1%}", f"{item['comparison']} {item['target']:.0%}"
        else:
            value = f"{_number(item['value'])} {unit}".strip()
            target = f"{item['comparison'].replace('==', '=')} {_number(item['target'])}"
        met = "✓" if item["meets_target"] else "✗"
        baseline_unit = item["baseline_is"].split(":", 1)[0]
        baseline = f"{_number(item['baseline'])} {baseline_unit}: {_baseline_words(item)}"
        lines.append(f"| {title} | {value} | {target} | {met} | {baseline} |")
    return "\n".join(lines)


def _baseline_words(item: dict[str, Any]) -> str:
    return item["baseline_is"].split(":", 1)[1].strip() if ":" in item["baseline_is"] else ""


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else RESULTS
    print(markdown(json.loads(path.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
