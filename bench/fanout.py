"""``fanout_quota_utilisation``: a large manifest through the work queue, at the defaults, against the quota.

The splitter (ManifestFunction) runs in one container; the template's default number of WorkerFunction
containers (the event source mapping's ``MaximumConcurrency``) take the batches from the queue as the
mapping would, each in its own process, all against one S3/SQS/DynamoDB endpoint and one Rekognition
quota (the template's ``RekognitionMaxTps`` default, enforced by the stand-in).
"""

from __future__ import annotations

import os
from typing import Any

from bench.common import Metrics, limiter_totals, log, metric, short_report, utilisation
from bench.runs import run_fanout
from bench.standins import StandIns

MIB_PER_WORKER = 250  # a worker container's peak RSS is ~100 MiB; leave room


def worker_processes(wanted: int) -> tuple[int, str]:
    """How many worker processes this machine can hold (memory), and why if fewer than ``wanted``."""
    available_mb = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    if available_mb is None:
        return wanted, "memory unknown: the template's default used"
    fits = max(1, (available_mb - 1024) // MIB_PER_WORKER)
    if fits >= wanted:
        return wanted, f"the template's default ({available_mb} MiB available, {os.cpu_count()} CPUs)"
    return fits, f"only {fits} of {wanted}: {available_mb} MiB available, {MIB_PER_WORKER} MiB kept per worker"


def bench_fanout(si: StandIns, *, n: int, download_s: float, label_s: float, workers: int | None = None) -> Metrics:
    from bench.images import TaggedRoute, distinct_jpegs

    stack = si.new_stack("fanout")
    defaults = si.function(stack, "ManifestFunction").environment
    quota = float(defaults["REKOGNITION_MAX_TPS"])  # the account quota the template assumes
    if n <= int(defaults.get("INLINE_MAX_IMAGES", 0)):
        raise RuntimeError(f"{n} entries are labeled inline at the defaults (INLINE_MAX_IMAGES): nothing fans out")
    mapping = si.template.event_source_mapping("WorkerFunction", stack)
    default_workers = mapping["maximum_concurrency"] or 1000  # unset: Lambda scales the mapping up to 1,000
    if workers is None:
        count, why = worker_processes(default_workers)
    else:
        count, why = workers, f"--fanout-workers {workers} (a diagnostic: the template says {default_workers})"
    si.site.add("/fanout.jpg", TaggedRoute(distinct_jpegs(1)[0], "image/jpeg"))
    entries = [{"id": f"f-{index:05d}", "url": si.site.url(f"/fanout.jpg?n={index}")} for index in range(n)]
    si.rekognition.reset(latency_seconds=label_s, quota_tps=quota)
    si.site.delay_seconds = download_s
    log(f"fan-out: {n} entries, {count} worker containers ({why}), quota {quota:g} TPS")
    try:
        run = run_fanout(
            si, stack, entries, "manifests/fanout.json", quota=quota, workers=count, timeout=max(300, 6 * n / quota)
        )
    finally:
        si.site.delay_seconds = 0.0
    report = run["report"]
    if report.get("status") != "complete" or report.get("failed"):
        raise RuntimeError(f"the fan-out did not label everything: {short_report(report)}")
    use = utilisation(list(si.rekognition.arrivals), quota)
    first_call = min(si.rekognition.arrivals)
    raw: dict[str, Any] = {
        "entries": n,
        "quota_tps": quota,
        "download_delay_s": download_s,
        "label_latency_s": label_s,
        **use,
        "throttled_calls": si.rekognition.throttled,
        "worker_processes": {"template_default": default_workers, "used": count, "why": why},
        "batch_size_entries": int(defaults.get("BATCH_SIZE", 0)),
        "event_source_mapping_batch_size": run["batch_size"],
        "upload_to_final_report_s": round(run["seconds"], 3),
        "split_handler_s": round(run["splitter"]["handler_s"], 3),
        "first_call_after_upload_s": round(first_call - _monotonic_at(run["splitter"]["started_at"]), 3),
        "worker_invocations": [worker["invocations"] for worker in run["workers"]],
        "worker_messages_failed": sum(worker["messages_failed"] for worker in run["workers"]),
        "worker_peak_rss_mb": [round(worker["peak_rss_mb"], 1) for worker in run["workers"]],
        "cpu_ms_per_image": run["cpu_ms_per_image"],
        "limiter": limiter_totals([run["splitter"], *run["workers"]], si.rekognition.successful_calls),
        "report": short_report(report),
        "window": "from the first successful DetectLabels call to the last (work remains: the queue is not empty)",
        "machine_note": f"{os.cpu_count()} CPUs shared by {count + 1} containers, moto and the stand-ins",
    }
    return {
        "fanout_quota_utilisation": metric(
            use["fraction_of_quota"],
            target=0.95,
            comparison=">=",
            unit="fraction of quota",
            baseline=quota,
            baseline_is="calls/s: the quota (the template's REKOGNITION_MAX_TPS default, enforced by the stand-in)",
            raw=raw,
            environment=run["worker_environment"],
            note=f"{count} worker containers: {why}",
        )
    }


def _monotonic_at(epoch: float) -> float:
    """An epoch instant on the monotonic clock the stand-in stamps arrivals with."""
    import time

    return time.monotonic() - (time.time() - epoch)
