"""What runs inside a measured child process: ``python -m bench.child TASK SPEC.json RESULT.json``.

Tasks:
  product   the Lambda handler (``labeler.handlers.manifest_created.handler``) on one S3 event,
            configured by the environment exactly as the template configures the function
            (``go_file``: build the clients, then wait for it: several "containers" start at once)
  worker    a WorkerFunction container: ``labeler.handlers.work_batch.handler`` driven from the SQS
            work queue as Lambda's event source mapping drives it, until ``stop_file`` appears
  baseline  the original article's one-by-one loop (``bench/baseline.py``) on the same entries
  idle      an interpreter that imported the handler and did nothing else (RSS baseline)
  local     the offline backend (``LocalLabelBackend``) end to end on real photos
  parse     ``parse_manifest`` over a large generated manifest (how long the splitter reads 1 M entries)

Every task writes one JSON document to RESULT.json, including the process's peak RSS
(``VmHWM``; ``ru_maxrss`` beside it, see :func:`peak_rss_mb`). The parent owns the stand-ins;
a child only talks to them over loopback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MiB.

    ``VmHWM`` (the high-water mark of this process's own address space) where Linux has it.
    ``ru_maxrss`` is only the fallback: Linux carries it over ``fork()`` + ``exec()``, so a child's
    ``ru_maxrss`` is at least its *parent's* RSS at the moment it was spawned (see ``ru_maxrss_mb``).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return ru_maxrss_mb()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _StackSampler(threading.Thread):
    """Samples every thread's stack every 5 ms; counts, per function, the samples that were running
    Python code under it (not blocked in a socket or a lock). Diagnostics only."""

    BLOCKING = ("recv_into", "acquire", "wait", "select", "poll", "sleep", "readinto", "sendall", "connect")

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.halt = threading.Event()
        self.samples = 0
        self.busy: Counter[str] = Counter()
        self.inclusive: Counter[str] = Counter()

    def run(self) -> None:
        me = threading.get_ident()
        while not self.halt.wait(0.005):
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                self.samples += 1
                leaf = frame.f_code.co_name
                if any(word in leaf for word in self.BLOCKING):
                    continue
                self.busy[f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{leaf}"] += 1
                seen: set[str] = set()
                walker: Any = frame
                while walker is not None:
                    path = walker.f_code.co_filename
                    if "site-packages/" in path:
                        name = path.split("site-packages/")[-1].split("/")[0]
                    elif "/src/" in path:
                        name = path.split("/src/")[-1].split("/")[0]
                    else:
                        name = "stdlib/other"
                    if name not in seen:
                        seen.add(name)
                        self.inclusive[name] += 1
                    walker = walker.f_back

    def stop(self) -> None:
        self.halt.set()
        self.join()
        with open(self.path, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "samples": self.samples,
                    "busy_by_leaf": self.busy.most_common(40),
                    "busy_by_package": self.inclusive.most_common(30),
                },
                handle,
                indent=1,
            )


class StubBackend:
    """A LabelBackend answering at once with one label (memory diagnostics: no request is built)."""

    name = "stub"
    model_version = "stub-1"

    def detect_labels(
        self, image: bytes, *, min_confidence: float, max_labels: int, deadline: float | None = None
    ) -> Any:
        from labeler.adapters.labels.base import LabelResult

        label = {"Name": "Thing", "Confidence": 99.0, "Instances": [], "Parents": [], "Aliases": [], "Categories": []}
        return LabelResult(labels=[label], model_version=self.model_version, backend=self.name)


def _context(spec: dict[str, Any]) -> Any:
    """A Lambda context whose remaining time counts down from the function's timeout (template.yaml)."""
    from labeler.local.runner import LocalLambdaContext

    return LocalLambdaContext(
        function_name=spec.get("function_name", "s3-image-labeler-ManifestFunction"),
        timeout_seconds=float(spec.get("timeout_s", 900)),
        memory_limit_in_mb=int(spec.get("memory_mb", 1769)),
    )


def _build_services() -> float:
    """What a container builds once, on its first invocation (clients, backend, the idempotency layer and its
    DynamoDB client: ~0.2 s of CPU); returns the seconds it took. Measured apart from the invocations (the cold
    start is ``cold_start_ratio``'s)."""
    from labeler.handlers import composition

    composition.reset_services()
    started = time.perf_counter()
    composition.get_services()
    composition.get_once()
    return time.perf_counter() - started


def _barrier(spec: dict[str, Any]) -> float:
    """Several containers start together: say this one is ready (``ready_file``), then wait for ``go_file``,
    which the parent makes once every container is ready. Returns the seconds waited."""
    if not spec.get("go_file"):
        return 0.0
    started = time.perf_counter()
    with open(spec["ready_file"], "w", encoding="ascii") as ready:
        ready.write(str(os.getpid()))
    while not os.path.exists(spec["go_file"]):
        time.sleep(0.002)
    return time.perf_counter() - started


def _trace() -> Any:
    """The container's timeline when ``BENCH_TRACE`` names a directory (diagnostics: ``bench/trace.py``)."""
    if not os.environ.get("BENCH_TRACE"):
        return None
    from bench.trace import Trace

    trace = Trace(os.environ["BENCH_TRACE"])
    trace.install_on_default_session()
    return trace


def _watch(trace: Any) -> None:
    from labeler.handlers import composition

    limiter = getattr(composition.get_services().backend, "_limiter", None)
    if trace is not None:
        trace.watch_entries()
    if trace is not None and limiter is not None:
        trace.watch_limiter(limiter)


def _limiter_stats() -> dict[str, Any]:
    """What this container's DetectLabels limiter did: its leases, slots, and the table requests they cost."""
    from labeler.handlers import composition

    limiter = getattr(composition.get_services().backend, "_limiter", None)
    if limiter is None:
        return {}
    stats = dataclasses.asdict(limiter.stats)
    stats["table_requests"] = getattr(limiter.source, "requests", 0)  # UpdateItem requests sent (TableSlots)
    return stats


class _AwsCalls:
    """The API calls a container's own S3 and DynamoDB clients make, by operation (botocore ``before-call``
    events: one per call, its retries not included)."""

    def __init__(self) -> None:
        self.s3: Counter[str] = Counter()
        self.dynamodb: Counter[str] = Counter()

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"s3_calls": dict(self.s3), "dynamodb_calls": dict(self.dynamodb)}


def _count_aws_calls(services: Any) -> _AwsCalls:
    calls = _AwsCalls()

    def counter(into: Counter[str]) -> Callable[..., None]:
        def count(event_name: str, **_: Any) -> None:
            into[event_name.rsplit(".", 1)[-1]] += 1

        return count

    services.store.client.meta.events.register("before-call.s3.*", counter(calls.s3))
    if services.progress is not None:  # the state table's client (progress, budgets, leases)
        services.progress.client.meta.events.register("before-call.dynamodb.*", counter(calls.dynamodb))
    return calls


def task_product(spec: dict[str, Any]) -> dict[str, Any]:
    from labeler.handlers import composition, manifest_created

    trace = _trace()
    init_s = _build_services()
    _watch(trace)
    services = composition.get_services()
    if spec.get("stub_backend"):  # diagnostics only: labels without botocore serialising the image
        services = dataclasses.replace(services, backend=StubBackend())
        composition.reset_services(services)
    calls = _count_aws_calls(services)
    waited_s = _barrier(spec)
    cpu_before, sys_before = cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
    sampler = _StackSampler(os.environ["BENCH_SAMPLE"]) if os.environ.get("BENCH_SAMPLE") else None
    if sampler:  # diagnostics: where the worker threads' CPU goes (BENCH_SAMPLE=path.json)
        sampler.start()
    started_at, started = time.time(), time.perf_counter()
    if trace is not None:
        trace.mark("handler_start")
    response = manifest_created.handler(spec["event"], _context(spec))
    finished = time.perf_counter()
    if sampler:
        sampler.stop()
    if trace is not None:
        trace.mark("handler_end")
        trace.write({"task": "product"})
    return {
        "init_s": init_s,
        "handler_s": finished - started,
        "handler_cpu_s": cpu_seconds() - cpu_before,
        "handler_sys_cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys_before,
        "started_at": started_at,
        "finished_at": started_at + (finished - started),
        "waited_at_barrier_s": waited_s,
        "response": response,
        "limiter": _limiter_stats(),
        **calls.as_dict(),
    }


class _EventSourcePoller(threading.Thread):
    """Lambda's SQS event source mapping for one worker container, apart from the function as Lambda's pollers
    are: it reads the next batch while the function works on the current one, and settles what an invocation
    finished after it returned (deletes it, or makes a failed message visible again at once: the queue's
    visibility timeout would stall a benchmark). Neither is part of the function's time."""

    def __init__(self, sqs: Any, spec: dict[str, Any], stopped: Callable[[], bool]) -> None:
        import queue

        super().__init__(name="event-source-poller", daemon=True)
        self.sqs = sqs
        self.queue_url = spec["queue_url"]
        self.batch_size = int(spec.get("batch_size", 1))
        self.stopped = stopped
        self.batches: queue.Queue[list[dict[str, Any]]] = queue.Queue(maxsize=1)  # one batch read ahead
        self.settle: queue.Queue[tuple[dict[str, Any], bool]] = queue.Queue()

    def run(self) -> None:
        import queue

        pending: list[dict[str, Any]] = []
        while not self.stopped():
            self._settle_finished()
            if not pending:
                answer = self.sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=self.batch_size,
                    AttributeNames=["All"],
                    WaitTimeSeconds=1,
                )
                pending = answer.get("Messages", [])
                continue
            try:
                self.batches.put(pending, timeout=0.02)
                pending = []
            except queue.Full:
                continue
        self._settle_finished()

    def _settle_finished(self) -> None:
        import queue

        while True:
            try:
                message, done = self.settle.get_nowait()
            except queue.Empty:
                return
            if done:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            else:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )


def task_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One WorkerFunction container fed by the work queue, as Lambda's SQS event source mapping feeds it.

    Take the batch the poller read (up to the mapping's ``batch_size`` messages), call the handler with the
    SQS event Lambda would build, hand the poller back what it did not report in ``batchItemFailures`` to
    delete (a failed message is counted and made visible again at once).
    """
    import queue

    import boto3
    from tests.support.sqs_driver import sqs_event

    from labeler.handlers import composition, work_batch

    trace = _trace()
    init_s = _build_services()
    _watch(trace)
    calls = _count_aws_calls(composition.get_services())
    stop_file = spec["stop_file"]
    deadline = time.monotonic() + float(spec.get("max_seconds", 600))

    def stopped() -> bool:
        return os.path.exists(stop_file) or time.monotonic() >= deadline

    poller = _EventSourcePoller(boto3.client("sqs"), spec, stopped)
    cpu_before = cpu_seconds()
    poller.start()
    invocations = messages_done = redelivered = 0
    handler_s = 0.0
    while not stopped():
        try:
            messages = poller.batches.get(timeout=0.1)
        except queue.Empty:
            continue
        started = time.perf_counter()
        if trace is not None:
            trace.mark(f"invocation_{invocations}_start")
        try:
            result = work_batch.handler(sqs_event(messages, spec["queue_arn"]), _context(spec))
            failed = {item["itemIdentifier"] for item in result.get("batchItemFailures", [])}
        except Exception:  # every record failed: Lambda retries the whole batch
            failed = {message["MessageId"] for message in messages}
        handler_s += time.perf_counter() - started
        if trace is not None:
            trace.mark(f"invocation_{invocations}_end")
        invocations += 1
        for message in messages:
            done = message["MessageId"] not in failed
            messages_done += done
            redelivered += not done
            poller.settle.put((message, done))
    poller.join(timeout=10)
    cpu_s = cpu_seconds() - cpu_before  # the invocations, and the poller (Lambda's, not the function's: small)
    if trace is not None:
        trace.write({"task": "worker"})
    return {
        "init_s": init_s,
        "invocations": invocations,
        "messages_done": messages_done,
        "messages_failed": redelivered,
        "handler_s": handler_s,
        "cpu_s": cpu_s,
        "limiter": _limiter_stats(),
        **calls.as_dict(),
        "stopped_by": "stop file" if os.path.exists(stop_file) else "max_seconds",
    }


def task_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    from bench import baseline

    started = time.perf_counter()
    clients = baseline.make_clients()
    built = time.perf_counter()
    timings = baseline.label_all(spec["entries"], spec["output_bucket"], clients)
    finished = time.perf_counter()
    return {"init_s": built - started, "wall_s": finished - built, "timings": timings}


def task_idle(spec: dict[str, Any]) -> dict[str, Any]:
    import labeler.handlers.manifest_created  # noqa: F401 - importing is the point

    return {"imported": "labeler.handlers.manifest_created"}


def task_local(spec: dict[str, Any]) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from bench.images import sample_photos
    from labeler.adapters.labels.local import LocalLabelBackend, _runtime, preprocess

    photos = sample_photos()
    names = sorted(photos)
    count = int(spec.get("images", 300))
    workers = int(spec.get("workers", 8))
    inputs = [photos[names[index % len(names)]] for index in range(count)]

    started = time.perf_counter()
    backend = LocalLabelBackend().load()
    load_s = time.perf_counter() - started

    def label(image: bytes) -> list[dict[str, Any]]:
        return backend.detect_labels(image, min_confidence=55, max_labels=50).labels

    top = {
        name: [(label["Name"], round(label["Confidence"], 1)) for label in label(photos[name])[:3]] for name in names
    }
    for image in inputs[:20]:  # warm-up: first runs of onnxruntime allocate their arenas
        label(image)

    def timed(run: Callable[[], None]) -> float:
        begin = time.perf_counter()
        run()
        return time.perf_counter() - begin

    def sequential() -> None:
        for image in inputs:
            label(image)

    def concurrent() -> None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(label, inputs))

    runtime = _runtime(backend._files, backend._intra_op_threads)  # the session detect_labels uses
    tensors = [preprocess(photos[name]) for name in names]

    def model_only() -> None:
        for index in range(count):
            runtime.probabilities(tensors[index % len(tensors)])

    sequential_s = timed(sequential)
    concurrent_s = timed(concurrent)
    model_only_s = timed(model_only)
    return {
        "photos": {name: len(photos[name]) for name in names},
        "images": count,
        "workers": workers,
        "load_s": load_s,
        "sequential_s": sequential_s,
        "concurrent_s": concurrent_s,
        "sequential_images_per_s": count / sequential_s,
        "concurrent_images_per_s": count / concurrent_s,
        "model_only_s": model_only_s,
        "model_only_images_per_s": count / model_only_s,
        "top_labels": top,
    }


def task_parse(spec: dict[str, Any]) -> dict[str, Any]:
    """How fast the splitter can read a big manifest: ``parse_manifest`` over a JSON array and JSON Lines."""
    import io

    from labeler.logic.manifest import parse_manifest

    count = int(spec.get("entries", 200_000))
    entries = [{"id": f"img-{i:07d}", "url": f"https://images.example.com/photos/{i:07d}.jpg"} for i in range(count)]
    documents = {
        "json_array": json.dumps(entries).encode(),
        "json_lines": "\n".join(json.dumps(entry) for entry in entries).encode(),
    }
    found: dict[str, Any] = {}
    for name, data in documents.items():
        started = time.perf_counter()
        seen = sum(1 for _ in parse_manifest(io.BytesIO(data), max_entries=count))
        elapsed = time.perf_counter() - started
        if seen != count:
            raise RuntimeError(f"{name}: parsed {seen} entries of {count}")
        found[name] = {"entries": count, "bytes": len(data), "seconds": elapsed, "entries_per_s": count / elapsed}
    return found


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "product": task_product,
    "worker": task_worker,
    "baseline": task_baseline,
    "idle": task_idle,
    "local": task_local,
    "parse": task_parse,
}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in TASKS:
        print(f"usage: python -m bench.child {{{','.join(TASKS)}}} SPEC.json RESULT.json", file=sys.stderr)
        return 2
    task, spec_path, result_path = argv
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    result = TASKS[task](spec)
    result["peak_rss_mb"] = peak_rss_mb()
    result["ru_maxrss_mb"] = ru_maxrss_mb()
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
