"""``peak_rss_mb``: the most memory a function container needs at the defaults, conversions included.

Two containers, each its own process, at the template's defaults (``MAX_WORKERS``, ``IMAGE_MEMORY_MB``,
``GLIBC_TUNABLES``, the label cache on): ManifestFunction labeling an inline manifest of
``INLINE_MAX_IMAGES`` entries, and one WorkerFunction container taking every batch of a larger manifest
from the queue, one invocation after the other (as one Lambda container does). The entries cycle through
``bench.images.conversion_mix()``: ~4 MB 12-Mpx JPEGs sent as they are, and a > 5 MB JPEG, a 12,000-px-wide
JPEG, a > 5 MB PNG and a WebP that are converted or downscaled; every URL serves different bytes, so the
cache never skips a conversion. The figure is the larger of the two peaks (``VmHWM``).
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

from bench.common import Metrics, diagnostic, log, metric, run_child, short_report
from bench.runs import read_records, run_fanout, run_manifest, template_defaults
from bench.standins import StandIns, function_child_env


def _parent_rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _budget_mb(si: StandIns, defaults: dict[str, str]) -> int:
    """The image memory budget the containers ran with: the template's IMAGE_MEMORY_MB (or the product's
    default), capped by the function's memory as the product caps it."""
    from tests.support.template_env import Placeholders

    from labeler.adapters.memory import budget_megabytes
    from labeler.models.settings import Settings

    setting = int(defaults.get("IMAGE_MEMORY_MB") or Settings.__dataclass_fields__["image_memory_mb"].default)
    return budget_megabytes(setting, si.template.function("ManifestFunction", Placeholders()).memory_mb)


def _entries(si: StandIns, mix: list[Any], count: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{mix[index % len(mix)].name}-{index:04d}",
            "url": si.site.url(_path(mix[index % len(mix)]) + f"?{prefix}={index}"),
        }
        for index in range(count)
    ]


def _path(image: Any) -> str:
    return f"/mix/{image.name}.{image.extension}"


def paths_taken(records: list[dict[str, Any]], mix: list[Any]) -> dict[str, Any]:
    """Per kind of image: the path ``prepare_image`` was meant to take, and what the records say it did."""
    expected = {image.name: image.path for image in mix}
    seen: dict[str, Counter[str]] = {name: Counter() for name in expected}
    for record in records:
        name = next((name for name in expected if f"-{name}-" in str(record.get("image_id"))), None)
        if name is None:
            continue
        image = record.get("image") or {}
        if "error" in record:
            seen[name][f"error {record['error'].get('code')}"] += 1
        else:
            path = (
                ("converted, downscaled" if image.get("downscaled") else "converted")
                if image.get("converted")
                else "as is"
            )
            seen[name][path] += 1
    return {name: {"expected": expected[name], "seen": dict(counts)} for name, counts in seen.items()}


def bench_memory(si: StandIns, *, worker_images: int, label_s: float, variant_images: int = 0) -> Metrics:
    from PIL import Image

    from bench.images import TaggedRoute, conversion_mix

    log("memory: the conversion mix (built once, cached in bench/out)")
    mix = conversion_mix()
    for image in mix:
        si.site.add(_path(image), TaggedRoute(image.data, image.content_type))
    defaults = template_defaults(si)
    inline = int(defaults["INLINE_MAX_IMAGES"])
    if worker_images <= inline:
        raise RuntimeError(f"--memory-images {worker_images}: must be over INLINE_MAX_IMAGES ({inline}) to fan out")
    quota = float(defaults["REKOGNITION_MAX_TPS"])

    log(f"memory: ManifestFunction, {inline} entries inline (INLINE_MAX_IMAGES), the mix, at the defaults")
    si.rekognition.reset(latency_seconds=label_s, quota_tps=quota)
    inline_stack = si.new_stack("mem-inline")
    inline_run = run_manifest(si, inline_stack, _entries(si, mix, inline, "i"), "manifests/memory.json", quota=quota)
    log(f"memory: one WorkerFunction container taking every batch of a {worker_images}-entry manifest")
    si.rekognition.reset(latency_seconds=label_s, quota_tps=quota)
    worker_stack = si.new_stack("mem-worker")
    fanout = run_fanout(
        si,
        worker_stack,
        _entries(si, mix, worker_images, "w"),
        "manifests/memory.json",
        quota=quota,
        workers=1,
        timeout=max(300, 10 * worker_images / quota),
    )
    if fanout["report"].get("status") != "complete" or fanout["report"].get("failed"):
        raise RuntimeError(f"the worker container did not label everything: {short_report(fanout['report'])}")
    [worker] = fanout["workers"]
    idle = run_child("idle", {}, function_child_env(si.function_env(inline_stack, "ManifestFunction", quota=quota)))
    records = read_records(si, inline_run["output_bucket"]) + read_records(si, fanout["output_bucket"])
    peaks = {
        "ManifestFunction (inline)": inline_run["peak_rss_mb"],
        "WorkerFunction (every batch)": worker["peak_rss_mb"],
    }
    variants = _variants(si, mix, variant_images, quota, label_s, inline) if variant_images else []
    return {
        "peak_rss_mb": metric(
            max(peaks.values()),
            target=200,
            comparison="<=",
            unit="MiB",
            baseline=round(idle["peak_rss_mb"], 1),
            baseline_is="MiB: an idle interpreter that imported the handler",
            raw={
                "peak_rss_mb_by_container": {name: round(value, 1) for name, value in peaks.items()},
                "inline_entries": inline,
                "worker_entries": worker_images,
                "worker_invocations": worker["invocations"],
                "max_workers": defaults.get("MAX_WORKERS"),
                "image_memory_mb": _budget_mb(si, defaults),
                "label_latency_s": label_s,
                "quota_tps": quota,
                "mix": [
                    {
                        "name": image.name,
                        "bytes": len(image.data),
                        "pixels": "x".join(map(str, Image.open(io.BytesIO(image.data)).size)),
                        "path": image.path,
                    }
                    for image in mix
                ],
                "paths_taken": paths_taken(records, mix),
                "inline_handler_s": round(inline_run["handler_s"], 2),
                "worker_handler_s": round(worker["handler_s"], 2),
                "reports": {"inline": short_report(inline_run["report"]), "worker": short_report(fanout["report"])},
                "peak_rss_source": "VmHWM of each container's process (/proc/self/status): its own peak, exec to exit",
                "ru_maxrss_note": "ru_maxrss also holds the parent's RSS at spawn on Linux (orchestrator now ~"
                f"{round(_parent_rss_mb())} MiB); not used",
            },
            environment=inline_run["environment"],
            diagnostics=variants,
        )
    }


def _variants(si: StandIns, mix: list[Any], n: int, quota: float, label_s: float, inline: int) -> list[dict[str, Any]]:
    """Where the memory goes (``--memory-variants N``): the inline run on ``n`` entries, one change at a time."""
    setups: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
        "as measured (the mix), inline": ({}, {}),
        "~4 MB JPEGs sent as they are only (no conversion)": ({}, {"jpegs_only": True}),
        "MAX_WORKERS=16": ({"MAX_WORKERS": "16"}, {}),
        "MAX_WORKERS=4": ({"MAX_WORKERS": "4"}, {}),
        "no GLIBC_TUNABLES (glibc's own malloc settings)": ({"GLIBC_TUNABLES": ""}, {}),
        "in-process stub backend (no DetectLabels request built)": ({}, {"stub_backend": True}),
    }
    found = []
    for name, (overrides, spec) in setups.items():
        log(f"memory variant: {name}")
        si.rekognition.reset(latency_seconds=label_s, quota_tps=quota)
        images = [image for image in mix if image.name.startswith("jpeg-4mb")] if spec.pop("jpegs_only", False) else mix
        run = run_manifest(
            si,
            si.new_stack("mem-var"),
            _entries(si, images, n, "v"),
            "manifests/variant.json",
            quota=quota,
            diagnostic={**({"INLINE_MAX_IMAGES": str(n)} if n > inline else {}), **overrides},
            spec=spec,
        )
        found.append(
            diagnostic(name, run["peak_rss_mb"], "MiB", run["environment"], handler_s=round(run["handler_s"], 2))
        )
    return found
