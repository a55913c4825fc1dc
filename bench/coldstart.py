"""``cold_start_ratio``: from a container's process start to the first handler return, in the built package.

Each sample is a fresh ``python3.12 -I -S -B`` (the Lambda runtime's version) whose only package directory
is ``.aws-sam/build/ManifestFunction`` (as ``/var/task``; ``-B``: nothing compiled is written back, as on
the read-only ``/var/task``), with ManifestFunction's environment from the template and the variables the
Lambda runtime sets. It does what the runtime client does on a cold start: import the handler module
(init), then call ``handler(event, context)`` once (the first invocation: building the clients included,
as the product builds them on first use), on a one-entry manifest: one download, one DetectLabels, the
records. Timed from just before the process is spawned to the handler's return (the process's exit after
it is not counted), interleaved with the same for a minimal seed-style handler (``bench/seed_handler.py``:
boto3 clients built at import, the same download, DetectLabels and ``put_object``), same endpoints,
same latencies, same run. The ratio of the medians is the figure.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, Metrics, log, metric
from bench.standins import ROOT, StandIns

BUILD_DIR = ROOT / ".aws-sam" / "build" / "ManifestFunction"
SEED_HANDLER = "seed_handler.handler"  # bench/seed_handler.py, put on sys.path after the package

# The runtime client's part: import the handler (init), then one invocation. Timestamps are time.time():
# the parent stamps the spawn on the same clock.
CHILD = """
import json, os, sys, time
main_at = time.time()
sys.path[:0] = {paths!r}
import importlib
module_name, _, attribute = {handler!r}.rpartition(".")
handler = getattr(importlib.import_module(module_name), attribute)
imported_at = time.time()
with open({event_path!r}) as handle:
    event = json.load(handle)


class Context:
    function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
    function_version = "$LATEST"
    memory_limit_in_mb = int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + function_name
    aws_request_id = "00000000-0000-4000-8000-000000000001"
    log_group_name = "/aws/lambda/" + function_name
    log_stream_name = "cold-start"
    _deadline = time.time() + int(os.environ["AWS_LAMBDA_FUNCTION_TIMEOUT"])

    def get_remaining_time_in_millis(self):
        return int((self._deadline - time.time()) * 1000)


# What the runtime client sets per invocation with active tracing (a sampled first request).
os.environ["_X_AMZN_TRACE_ID"] = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
answer = handler(event, Context())
done_at = time.time()
print(json.dumps({{"main_at": main_at, "imported_at": imported_at, "done_at": done_at, "answer": answer}}))
"""


def _sample(python: str, handler: str, paths: list[str], event: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(event, handle)
        event_path = handle.name
    try:
        code = CHILD.format(paths=paths, handler=handler, event_path=event_path)
        spawned_at = time.time()
        out = subprocess.run(
            [python, "-I", "-S", "-B", "-c", code],
            cwd=BUILD_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        Path(event_path).unlink(missing_ok=True)
    if out.returncode != 0:
        raise RuntimeError(f"the cold-start child for {handler} failed:\n{out.stderr[-3000:]}")
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "total_ms": (found["done_at"] - spawned_at) * 1000,
        "interpreter_ms": (found["main_at"] - spawned_at) * 1000,
        "import_ms": (found["imported_at"] - found["main_at"]) * 1000,
        "first_invocation_ms": (found["done_at"] - found["imported_at"]) * 1000,
        "answer": found["answer"],
    }


def bench_cold_start(si: StandIns, *, runs: int, download_s: float, label_s: float) -> Metrics:
    from bench.images import TaggedRoute, distinct_jpegs
    from bench.imports import lambda_python
    from bench.standins import function_child_env

    python = lambda_python()
    if not (BUILD_DIR / "labeler").is_dir() or python is None:
        raise RuntimeError("cold start is measured in the built package: run `make build` (needs python3.12)")
    si.site.add("/cold.jpg", TaggedRoute(distinct_jpegs(1, photo="rocket")[0], "image/jpeg"))
    samples: dict[str, list[dict[str, Any]]] = {"product": [], "seed": []}
    environment: dict[str, Any] = {}
    si.site.delay_seconds = download_s
    try:
        for index in range(runs):
            order = ("product", "seed") if index % 2 == 0 else ("seed", "product")
            for kind in order:  # interleaved, alternating: drift and load hit both alike
                stack = si.new_stack(f"cold{index}{kind[0]}")  # new buckets, table: nothing cached anywhere
                config = si.function(stack, "ManifestFunction")
                quota = float(config.environment["REKOGNITION_MAX_TPS"])
                si.rekognition.reset(latency_seconds=label_s, quota_tps=quota)
                function_env = si.function_env(stack, "ManifestFunction", quota=quota)
                environment = function_env.describe()
                entries = [{"id": "cold", "url": si.site.url(f"/cold.jpg?run={index}&kind={kind}")}]
                event = si.upload_manifest(si.input_bucket(stack), f"manifests/cold-{index}.json", entries)
                env = {"PATH": "/usr/bin:/bin"} | function_child_env(function_env) | config.runtime_variables(BUILD_DIR)
                env.pop("PYTHONPATH")  # -I ignores it anyway; the paths are set explicitly
                if kind == "product":
                    sample = _sample(python, config.handler, [str(BUILD_DIR)], event, env)
                    if sample["answer"]["manifests"][0]["status"] != "complete":
                        raise RuntimeError(f"the product's cold run did not complete: {sample['answer']}")
                else:
                    sample = _sample(python, SEED_HANDLER, [str(BUILD_DIR), str(BENCH_DIR)], event, env)
                    if si.count_objects(config.environment["OUTPUT_BUCKET"], "results/") != 1:
                        raise RuntimeError("the seed handler's cold run wrote no result")
                samples[kind].append(sample)
            log(
                f"cold start {index + 1}/{runs}: product {samples['product'][-1]['total_ms']:.0f} ms, "
                f"seed {samples['seed'][-1]['total_ms']:.0f} ms"
            )
    finally:
        si.site.delay_seconds = 0.0

    def medians(kind: str) -> dict[str, float]:
        names = ("total_ms", "interpreter_ms", "import_ms", "first_invocation_ms")
        return {name: round(statistics.median(s[name] for s in samples[kind]), 1) for name in names}

    product, seed = medians("product"), medians("seed")
    return {
        "cold_start_ratio": metric(
            product["total_ms"] / seed["total_ms"],
            target=1.5,
            comparison="<=",
            unit="x",
            baseline=seed["total_ms"],
            baseline_is="ms: a minimal seed-style handler's cold start (clients at import; download, "
            "DetectLabels, put_object), same package, same run",
            raw={
                "runs": runs,
                "product_median_ms": product,
                "seed_median_ms": seed,
                "product_total_ms": [round(s["total_ms"], 1) for s in samples["product"]],
                "seed_total_ms": [round(s["total_ms"], 1) for s in samples["seed"]],
                "download_delay_s": download_s,
                "label_latency_s": label_s,
                "python": python,
                "measured_in": f"{BUILD_DIR.relative_to(ROOT)} (`make build`), python3.12 -I -S -B",
                "seed": "bench/seed_handler.py + bench/baseline.py, compiled from source each run (-B; ~2 ms)",
                "timing": "spawn of the process → the handler's return: interpreter start, imports (init), "
                "then the first invocation (clients built on first use, the manifest, one image)",
                "tracing": "X-Ray SDK active as with Tracing: Active (a sampled trace id set as the runtime sets "
                "it; segments go to a closed UDP port)",
            },
            environment=environment,
        )
    }
