"""Running the functions as deployed, in child processes: one manifest inline, or a fan-out through the queue.

Every run gets the function's environment from template.yaml (``StandIns.function_env``) and the stack's
resources from a :class:`~tests.support.stack_standins.StackStandIns`; the handler's context counts down
from the function's own ``Timeout``. Each child process is one Lambda container.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.common import OUT_DIR, Child, cpu_ms_per_image, log
from bench.standins import StandIns, function_child_env

FINAL_STATUSES = frozenset({"complete", "partial", "failed"})


def template_defaults(si: StandIns, function: str = "ManifestFunction") -> dict[str, str]:
    """The function's environment at the defaults, resources left as placeholders (nothing is created)."""
    from tests.support.template_env import Placeholders

    return dict(si.template.function(function, Placeholders()).environment)


def start_manifest(
    si: StandIns,
    stack: Any,
    entries: list[dict[str, Any]],
    key: str,
    *,
    quota: float,
    diagnostic: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    name: str = "product",
    event: dict[str, Any] | None = None,
) -> tuple[Child, dict[str, Any]]:
    """Upload ``entries`` as a manifest to the stack's input bucket and start ManifestFunction on its S3 event
    (or on ``event``, e.g. a re-check tick, with nothing uploaded)."""
    input_bucket = si.input_bucket(stack)
    if event is None:
        event = si.upload_manifest(input_bucket, key, entries)
    config = si.function(stack, "ManifestFunction")
    function_env = si.function_env(stack, "ManifestFunction", quota=quota, diagnostic=diagnostic)
    child_spec = {
        "event": event,
        "timeout_s": config.timeout_seconds,
        "memory_mb": config.memory_mb,
        "function_name": config.function_name,
        **(spec or {}),
    }
    child = Child("product", child_spec, function_child_env(function_env), name=name)
    info = {
        "environment": function_env.describe(),
        "output_bucket": function_env.variables["OUTPUT_BUCKET"],
        "input_bucket": input_bucket,
        "key": key,
        "entries": len(entries),
    }
    return child, info


def finish_manifest(
    si: StandIns, child: Child, info: dict[str, Any], *, complete: bool = True, timeout: float = 600
) -> dict[str, Any]:
    """Wait for the child; attach the manifest's report. ``complete``: raise unless every entry was labeled."""
    result = child.wait(timeout)
    result.update(info)
    result["report"] = si.reports(info["output_bucket"]).get(info["key"], {})
    report = result["report"]
    if complete and (report.get("status") != "complete" or report.get("failed")):
        raise RuntimeError(f"the run of {info['key']} did not label everything: {report or 'no report'}")
    return result


def run_manifest(
    si: StandIns,
    stack: Any,
    entries: list[dict[str, Any]],
    key: str,
    *,
    quota: float,
    diagnostic: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    complete: bool = True,
) -> dict[str, Any]:
    """One inline manifest in one container, to the end; ``rekognition_calls`` made during it."""
    calls_before, throttled_before = si.rekognition.successful_calls, si.rekognition.throttled
    child, info = start_manifest(si, stack, entries, key, quota=quota, diagnostic=diagnostic, spec=spec)
    cpu_before = si.cpu_seconds()  # the stack's resources exist by now
    result = finish_manifest(si, child, info, complete=complete)
    result["cpu_ms_per_image"] = cpu_ms_per_image(
        cpu_before, si.cpu_seconds(), len(entries), ManifestFunction=result["handler_cpu_s"]
    )
    result["rekognition_calls"] = si.rekognition.successful_calls - calls_before
    result["throttled_calls"] = si.rekognition.throttled - throttled_before
    return result


def run_fanout(
    si: StandIns,
    stack: Any,
    entries: list[dict[str, Any]],
    key: str,
    *,
    quota: float,
    workers: int,
    timeout: float = 600,
    event: dict[str, Any] | None = None,
    recheck: str | None = None,
) -> dict[str, Any]:
    """A manifest too large to label inline: the splitter (ManifestFunction) in one container, ``workers``
    WorkerFunction containers fed from the work queue as the event source mapping feeds them, until the
    report is final. Returns the splitter's result, each worker's, the report and the seconds it took.

    ``event`` (a re-check tick) starts the splitter instead of an upload; ``recheck`` (its run's
    ``ManifestRef.recheck``) says which report is the one to wait for."""
    mapping = si.template.event_source_mapping("WorkerFunction", stack)
    if mapping["queue"] is None:
        raise RuntimeError(f"cannot tell which queue {mapping['mapping']} reads")
    config = si.function(stack, "WorkerFunction")
    worker_env = function_child_env(si.function_env(stack, "WorkerFunction", quota=quota))
    stop_file = OUT_DIR / f"stop-{uuid.uuid4().hex}"
    worker_spec = {
        "queue_url": stack.ref(mapping["queue"]),
        "queue_arn": stack.attribute(mapping["queue"], "Arn"),
        "batch_size": mapping["batch_size"],
        "stop_file": str(stop_file),
        "timeout_s": config.timeout_seconds,
        "memory_mb": config.memory_mb,
        "function_name": config.function_name,
        "max_seconds": timeout,
    }
    containers = [Child("worker", worker_spec, worker_env, name=f"worker-{index}") for index in range(workers)]
    splitter: Child | None = None
    try:
        started = time.time()
        splitter, info = start_manifest(si, stack, entries, key, quota=quota, name="splitter", event=event)
        cpu_before = si.cpu_seconds()
        split = finish_manifest(si, splitter, info, complete=False, timeout=timeout)
        splitter = None
        report = _wait_for_final_report(si, info["output_bucket"], key, deadline=started + timeout, recheck=recheck)
        finished = time.time()
    except BaseException:
        stop_file.touch()
        for child in [*containers, *([splitter] if splitter else [])]:
            child.stop()
        stop_file.unlink(missing_ok=True)
        raise
    stop_file.touch()  # each container finishes the invocation it is in, then exits
    results = [child.wait(timeout=120) for child in containers]
    stop_file.unlink(missing_ok=True)
    cpu = cpu_ms_per_image(
        cpu_before,
        si.cpu_seconds(),
        len(entries),
        ManifestFunction=split["handler_cpu_s"],
        WorkerFunction=sum(result["cpu_s"] for result in results),
    )
    return {
        "splitter": split,
        "workers": results,
        "report": report,
        "seconds": finished - started,
        "batch_size": mapping["batch_size"],
        "output_bucket": info["output_bucket"],
        "environment": info["environment"],
        "worker_environment": si.function_env(stack, "WorkerFunction", quota=quota).describe(),
        "cpu_ms_per_image": cpu,
    }


def _wait_for_final_report(
    si: StandIns, bucket: str, key: str, *, deadline: float, recheck: str | None = None
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    last_logged = 0.0
    while time.time() < deadline:
        report = si.reports(bucket).get(key, {})
        if report.get("status") in FINAL_STATUSES and report.get("manifest", {}).get("recheck") == recheck:
            return report
        if time.time() - last_logged > 10:
            batches = report.get("batches") or {}
            log(f"  fan-out: report {report.get('status')}, batches done {batches.get('done')}/{batches.get('count')}")
            last_logged = time.time()
        time.sleep(0.5)
    raise RuntimeError(f"the fan-out of {key} did not finish in time; last report: {report or 'none'}")


def read_records(si: StandIns, bucket: str) -> list[dict[str, Any]]:
    """Every result record in ``bucket`` (read concurrently)."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    keys = [
        item["Key"]
        for page in si.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="results/")
        for item in page.get("Contents", [])
    ]

    def read(key: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(si.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        return document

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(read, keys))


def entry_breakdown(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean per-entry ``timings_ms`` of the result records of one run: where an entry's time goes."""
    sums: dict[str, float] = {}
    for record in records:
        for name, value in record.get("timings_ms", {}).items():
            sums[name] = sums.get(name, 0.0) + float(value)
    means: dict[str, Any] = {name: round(total / max(1, len(records)), 1) for name, total in sums.items()}
    if "total" in means:
        steps = sum(means.get(name, 0.0) for name in ("download", "prepare", "label"))
        means["other_in_total (cache reads/writes, hashing)"] = round(means["total"] - steps, 1)
    means["note"] = "total excludes the result write and the already-done check (both S3 calls)"
    return means
