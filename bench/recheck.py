"""``recheck_calls_per_unchanged_image``: a scheduled re-check of a watched manifest whose images did not change.

At the defaults: a manifest of distinct images (served with ETags, as most image hosts do) is uploaded under
``watch/`` and labeled through the work queue; then ManifestFunction gets the tick EventBridge Scheduler sends
(the template's schedule input) and re-checks it through the work queue (every re-check fans out). Value:
DetectLabels calls per unchanged image (target 0). Beside it, every S3 request of the re-check (the splitter's
and the workers', counted on the functions' own S3 clients by botocore event, by operation) per image: what a
daily re-check of a million unchanged images costs in requests (docs/scale.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bench.common import Metrics, log, metric, short_report
from bench.runs import run_fanout
from bench.standins import StandIns

WATCHED_KEY = "watch/recheck.json"


def bench_recheck(si: StandIns, *, n: int = 200) -> Metrics:
    from bench.images import distinct_jpegs
    from labeler.local.http_server import StaticRoute
    from labeler.local.recheck_command import recheck_event
    from labeler.models.records import recheck_iso, recheck_time

    stack = si.new_stack("recheck")
    defaults = si.function(stack, "ManifestFunction").environment
    quota = float(defaults["REKOGNITION_MAX_TPS"])
    for index, image in enumerate(distinct_jpegs(n, photo="rocket")):
        si.site.add(f"/watched/{index}.jpg", StaticRoute(image, "image/jpeg", etag=True))
    entries = [{"id": f"w-{index:04d}", "url": si.site.url(f"/watched/{index}.jpg")} for index in range(n)]
    si.rekognition.reset(quota_tps=quota)
    si.site.delay_seconds = 0.0
    log(f"re-check: {n} images uploaded under watch/ and labeled, then the scheduler's tick re-checks them unchanged")
    first = run_fanout(si, stack, entries, WATCHED_KEY, quota=quota, workers=1)
    first_calls = si.rekognition.successful_calls
    at = recheck_time(datetime.now(UTC))
    tick = recheck_event(si.input_bucket(stack), prefix="watch/", at=recheck_iso(at))
    si.site.reset_counters()
    run = run_fanout(si, stack, [], WATCHED_KEY, quota=quota, workers=1, event=tick, recheck=at)
    calls = si.rekognition.successful_calls - first_calls
    report = run["report"]
    found = report.get("recheck") or {}
    if found.get("unchanged") != n:
        raise RuntimeError(f"the re-check did not find the {n} images unchanged: {found}")
    splitter_s3 = run["splitter"].get("s3_calls", {})
    worker_s3 = run["worker_s3_calls"]
    total_s3 = sum(splitter_s3.values()) + sum(worker_s3.values())
    answered_304 = sum(si.site.not_modified_count(f"/watched/{index}.jpg") for index in range(n))
    per_image: dict[str, Any] = {name: round(count / n, 3) for name, count in sorted(worker_s3.items())}
    return {
        "recheck_calls_per_unchanged_image": metric(
            calls / n,
            target=0,
            comparison="==",
            unit="DetectLabels calls per image",
            baseline=round(first_calls / n, 3),
            baseline_is="calls per image: the manifest's first upload (distinct images)",
            raw={
                "images": n,
                "s3_requests_per_unchanged_image": round(total_s3 / n, 3),
                "worker_s3_requests_per_image_by_operation": per_image,
                "splitter_s3_requests": splitter_s3,
                "worker_s3_requests": worker_s3,
                "result_objects_written": result_versions(si, run["output_bucket"]) - n,  # versions beyond the first
                "image_host_requests_answered_304": answered_304,
                "recheck": {name: found.get(name) for name in ("unchanged", "changed", "gone", "failed")},
                "report": short_report(report),
                "seconds": round(run["seconds"], 2),
                "worker_containers": 1,
                "first_upload": short_report(first["report"]),
            },
            environment=run["environment"],
            note="S3 requests counted on the functions' own S3 clients (botocore before-call events), splitter and "
            "workers; per image they are one GetObject of the result object (its run stamp, validators and hash)",
        )
    }


def result_versions(si: StandIns, bucket: str) -> int:
    """Versions of result objects in the (versioned) output bucket: one per write."""
    paginator = si.s3.get_paginator("list_object_versions")
    return sum(len(page.get("Versions", [])) for page in paginator.paginate(Bucket=bucket, Prefix="results/"))
