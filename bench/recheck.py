"""``recheck_calls_per_unchanged_image``: a scheduled re-check of a watched manifest whose images did not change.

At the defaults: a manifest of distinct images (served with ETags, as most image hosts do, after the bench's
100 ms) is uploaded under ``watch/`` and labeled through the work queue; then ManifestFunction gets the tick
EventBridge Scheduler sends (the template's schedule input) and re-checks it through the work queue (every
re-check fans out). Value: DetectLabels calls per unchanged image (target 0). Beside it, every S3 and DynamoDB
request of the re-check (the splitter's and the workers', counted on the functions' own clients by botocore
event, by operation) per image, the result objects written (target 0) and the functions' handler seconds:
what a daily re-check of a million unchanged images costs (docs/scale.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from bench.common import Metrics, log, metric, short_report
from bench.runs import run_fanout
from bench.standins import StandIns

WATCHED_KEY = "watch/recheck.json"


def bench_recheck(si: StandIns, *, n: int = 200, download_s: float = 0.1) -> Metrics:
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
    log(f"re-check: {n} images uploaded under watch/ and labeled, then the scheduler's tick re-checks them unchanged")
    first = run_fanout(si, stack, entries, WATCHED_KEY, quota=quota, workers=1)
    first_calls = si.rekognition.successful_calls
    written_before = result_versions(si, first["output_bucket"])
    at = recheck_time(datetime.now(UTC))
    tick = recheck_event(si.input_bucket(stack), prefix="watch/", at=recheck_iso(at))
    si.site.reset_counters()
    si.site.delay_seconds = download_s  # every conditional GET waits for the host, as a real one's does
    try:
        run = run_fanout(si, stack, [], WATCHED_KEY, quota=quota, workers=1, event=tick, recheck=at)
    finally:
        si.site.delay_seconds = 0.0
    calls = si.rekognition.successful_calls - first_calls
    report = run["report"]
    found = report.get("recheck") or {}
    if found.get("unchanged") != n:
        raise RuntimeError(f"the re-check did not find the {n} images unchanged: {found}")
    written = result_versions(si, run["output_bucket"]) - written_before
    if written:
        raise RuntimeError(f"the re-check of unchanged images wrote {written} result object(s)")
    containers = [run["splitter"], *run["workers"]]
    s3, dynamodb = (
        added(c.get("s3_calls", {}) for c in containers),
        added(c.get("dynamodb_calls", {}) for c in containers),
    )
    worker_s3 = added(worker.get("s3_calls", {}) for worker in run["workers"])
    worker_s = sum(worker["handler_s"] for worker in run["workers"])
    answered_304 = sum(si.site.not_modified_count(f"/watched/{index}.jpg") for index in range(n))
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
                "s3_requests_per_unchanged_image": round(sum(s3.values()) / n, 3),
                "s3_requests_per_image_by_operation": per_image(s3, n),
                "worker_s3_requests_per_image_by_operation": per_image(worker_s3, n),
                "dynamodb_requests_per_image_by_operation": per_image(dynamodb, n),
                "s3_requests": s3,
                "dynamodb_requests": dynamodb,
                "result_objects_written": written,
                "image_host_requests_answered_304": answered_304,
                "image_host_latency_s": download_s,
                "recheck": {name: found.get(name) for name in ("unchanged", "changed", "gone", "failed")},
                "splitter_handler_s": round(run["splitter"]["handler_s"], 3),
                "worker_handler_s": round(worker_s, 3),
                "worker_handler_ms_per_image": round(1000 * worker_s / n, 2),
                "batches": report.get("batches"),
                "report": short_report(report),
                "seconds": round(run["seconds"], 2),
                "worker_containers": 1,
                "first_upload": short_report(first["report"]),
            },
            environment=run["environment"],
            note="requests counted on the functions' own S3 and DynamoDB clients (botocore before-call events), "
            "splitter and workers; per image: one GetObject of its result object (run stamp, validators and hash "
            "in one read), then the image host's 304; the rest is per manifest or per batch",
        )
    }


def added(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for each in counts:
        total.update(each)
    return dict(sorted(total.items()))


def per_image(counts: dict[str, int], n: int) -> dict[str, float]:
    return {name: round(count / n, 4) for name, count in counts.items()}


def result_versions(si: StandIns, bucket: str) -> int:
    """Versions of result objects in the (versioned) output bucket: one per write."""
    paginator = si.s3.get_paginator("list_object_versions")
    return sum(len(page.get("Versions", [])) for page in paginator.paginate(Bucket=bucket, Prefix="results/"))
