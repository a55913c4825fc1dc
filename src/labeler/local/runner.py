"""Run the Lambda handler locally, the way Lambda and S3 would, and show what it wrote.

Used by ``make demo`` (:mod:`labeler.local.demo`) and the ``s3-image-labeler`` command
(:mod:`labeler.cli`). Nothing here is used inside Lambda.

* :class:`LocalLambdaContext`: the context object Lambda passes (name, request id, ARN, memory,
  remaining time counted down from a timeout).
* :func:`handler_environment`: the function's environment variables for the duration of a run
  (restored afterwards), with the handler's cached services rebuilt for them.
* :class:`S3EventQueue`: S3 → SQS event notifications on the embedded endpoint, so that the
  handler gets the event S3 itself sent for an upload; :func:`event_from_upload` builds one
  from the object when that route is unavailable.
* :class:`HandlerRun`: the handler in a thread, while the caller follows the results appearing.
* Reading results (:class:`OutputReader`) and printing them (:func:`results_table`,
  :func:`report_line`) with rich.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote_plus, unquote_plus

DEFAULT_FUNCTION_NAME = "s3-image-labeler-ManifestFunction"
MANIFEST_SUFFIXES = (".json", ".jsonl")
TERMINAL_STATUSES = frozenset({"complete", "capped", "partial", "failed"})


# --- the Lambda context --------------------------------------------------------------------------
@dataclass
class LocalLambdaContext:
    """What Lambda passes as ``context``; remaining time counts down from ``timeout_seconds``."""

    function_name: str = DEFAULT_FUNCTION_NAME
    memory_limit_in_mb: int = 1024
    timeout_seconds: float = 900.0
    region: str = "us-east-1"
    account_id: str = "123456789012"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"local/{self.aws_request_id}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - (time.monotonic() - self.started)) * 1000))


# --- the environment of a run ------------------------------------------------------------------
@contextmanager
def patched_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables; restore every one of them afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# The handler's Powertools output that would only clutter a terminal run.
QUIET_POWERTOOLS = {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": "true"}


@contextmanager
def handler_environment(values: Mapping[str, str | None], log_level: str | None = "ERROR") -> Iterator[None]:
    """The function's environment for a local run: ``values`` plus quiet Powertools, services rebuilt.

    The handler caches its services (clients, fetcher, model) per process; they are rebuilt from
    this environment on entry and dropped on exit, so nothing of the run leaks into the caller.
    """
    from labeler.handlers.composition import reset_services
    from labeler.observability import logger

    merged: dict[str, str | None] = {**QUIET_POWERTOOLS, **values}
    previous_level = logger.log_level
    with patched_environ(merged), warnings.catch_warnings():
        # An event without records (s3:TestEvent) has no metrics: Powertools warns about that.
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        reset_services()
        if log_level:
            logger.setLevel(log_level)
        try:
            yield
        finally:
            logger.setLevel(previous_level)
            reset_services()


def invoke_handler(event: dict[str, Any], context: LocalLambdaContext | None = None) -> dict[str, Any]:
    """Call the manifest handler exactly as Lambda does: ``handler(event, context)``."""
    from labeler.handlers import manifest_created

    result: dict[str, Any] = manifest_created.handler(event, context or LocalLambdaContext())
    return result


class HandlerRun:
    """The handler running in a thread; ``result``/``error`` once ``done``."""

    def __init__(self, event: dict[str, Any], context: LocalLambdaContext | None = None) -> None:
        self.event = event
        self.context = context or LocalLambdaContext()
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="lambda-handler", daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self.result = invoke_handler(self.event, self.context)
        except BaseException as exc:  # handed to the caller's thread
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - started

    def start(self) -> HandlerRun:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, seconds: float | None = None) -> bool:
        self._thread.join(seconds)
        return self.done


# --- S3 events -------------------------------------------------------------------------------------
def _next_sequencer() -> str:
    """An increasing hexadecimal sequencer, like the ones S3 gives every upload."""
    return f"{time.time_ns():018X}"


def event_from_upload(s3: Any, bucket: str, key: str, region: str = "us-east-1") -> dict[str, Any]:
    """The ``ObjectCreated:Put`` event S3 sends for an object that exists (key encoded as S3 encodes it)."""
    head = s3.head_object(Bucket=bucket, Key=key)
    obj: dict[str, Any] = {
        "key": quote_plus(key, safe="/"),
        "size": head["ContentLength"],
        "eTag": head["ETag"].strip('"'),
        "sequencer": _next_sequencer(),
    }
    if head.get("VersionId") and head["VersionId"] != "null":
        obj["versionId"] = head["VersionId"]
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": datetime.now().astimezone().isoformat(timespec="milliseconds"),
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "LOCAL"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-amz-request-id": uuid.uuid4().hex[:16].upper()},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "manifest-created",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "LOCAL"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": obj,
                },
            }
        ]
    }


def event_keys(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(bucket, decoded key) of every record of an S3 event."""
    found = []
    for record in event.get("Records") or []:
        s3 = record.get("s3") or {}
        bucket = (s3.get("bucket") or {}).get("name")
        key = (s3.get("object") or {}).get("key")
        if bucket and key is not None:
            found.append((str(bucket), unquote_plus(str(key))))
    return found


def add_missing_sequencers(event: dict[str, Any]) -> int:
    """Give every record without one a ``sequencer`` (real S3 always sends it; moto's events lack it).

    Returns how many were added.
    """
    added = 0
    for record in event.get("Records") or []:
        obj = (record.get("s3") or {}).get("object")
        if isinstance(obj, dict) and not obj.get("sequencer"):
            obj["sequencer"] = _next_sequencer()
            added += 1
    return added


class S3EventQueue:
    """The input bucket's ``ObjectCreated`` notifications, delivered to an SQS queue (S3 → SQS, as in AWS).

    moto's server implements this route (S3 → Lambda needs Docker there), so the handler gets the
    very event the embedded S3 emitted for an upload. ``connect()`` creates the queue, sets the
    bucket's notification configuration (``.json`` and ``.jsonl`` keys) and drops the
    ``s3:TestEvent`` S3 sends when a configuration is set.
    """

    def __init__(self, sqs: Any, s3: Any, bucket: str, queue_name: str | None = None) -> None:
        self.sqs = sqs
        self.s3 = s3
        self.bucket = bucket
        self.queue_name = queue_name or f"{bucket}-events"
        self.queue_url = ""

    def connect(self) -> S3EventQueue:
        self.queue_url = self.sqs.create_queue(QueueName=self.queue_name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        configurations = [
            {
                "Id": f"manifest-created{suffix.replace('.', '-')}",
                "QueueArn": arn,
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": suffix}]}},
            }
            for suffix in MANIFEST_SUFFIXES
        ]
        self.s3.put_bucket_notification_configuration(
            Bucket=self.bucket, NotificationConfiguration={"QueueConfigurations": configurations}
        )
        return self

    def wait_for(self, key: str, timeout_seconds: float = 10.0) -> dict[str, Any] | None:
        """The S3 event for ``key`` (test events and other keys are consumed and dropped); None on timeout."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            wait = max(0, min(1, int(deadline - time.monotonic())))
            response = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait)
            for message in response.get("Messages", []):
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
                try:
                    event = json.loads(message["Body"])
                except ValueError:
                    continue
                if event.get("Event") == "s3:TestEvent" or not event.get("Records"):
                    continue
                if (self.bucket, key) in event_keys(event):
                    return dict(event)
            if not response.get("Messages"):
                time.sleep(0.05)
        return None


# --- reading what the handler wrote ---------------------------------------------------------------
def manifest_locations(bucket: str, key: str) -> tuple[str, str]:
    """(results prefix, report key) of the manifest ``s3://bucket/key`` in the output bucket."""
    from labeler.logic.keys import report_key, results_prefix
    from labeler.models.records import ManifestRef

    ref = ManifestRef(bucket=bucket, key=key)
    return results_prefix(ref), report_key(ref)


def current_records(records: list[dict[str, Any]], total: int | None) -> list[dict[str, Any]]:
    """The records of the latest run: per entry index the newest one, and only indexes below ``total``.

    Older runs of the same manifest key may have left records under the same prefix (other ids).
    """
    newest: dict[Any, dict[str, Any]] = {}
    for record in records:
        index = record.get("entry_index")
        if total is not None and isinstance(index, int) and index >= total:
            continue
        if index not in newest or str(record.get("processed_at", "")) >= str(newest[index].get("processed_at", "")):
            newest[index] = record
    return sorted(newest.values(), key=lambda record: (record.get("entry_index", 1 << 62), str(record.get("image_id"))))


class OutputReader:
    """Reads one manifest's records and report from the output bucket."""

    def __init__(self, s3: Any, output_bucket: str, input_bucket: str, manifest_key: str) -> None:
        self.s3 = s3
        self.output_bucket = output_bucket
        self.prefix, self.report_key = manifest_locations(input_bucket, manifest_key)

    def result_objects(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """The result objects (key, LastModified, ...) under the prefix; only those written at/after ``since``."""
        found = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.output_bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                if since is None or item["LastModified"] >= since:
                    found.append(item)
        return found

    def count(self, since: datetime | None = None) -> int:
        return len(self.result_objects(since))

    def get_json(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            body = self.s3.get_object(Bucket=self.output_bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise
        document: dict[str, Any] = json.loads(body)
        return document

    def report(self) -> dict[str, Any] | None:
        return self.get_json(self.report_key)

    def records(self, since: datetime | None = None, workers: int = 8) -> list[tuple[str, dict[str, Any]]]:
        """(key, record) of every result object (read concurrently), in entry order."""
        keys = [item["Key"] for item in self.result_objects(since)]
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys) or 1))) as pool:
            documents = list(pool.map(self.get_json, keys))
        pairs = [(key, doc) for key, doc in zip(keys, documents, strict=True) if doc is not None]
        return sorted(pairs, key=lambda pair: (pair[1].get("entry_index", 1 << 62), pair[0]))


def follow_progress(
    console: Any,
    count: Callable[[], int],
    total: int | None,
    finished: Callable[[], bool],
    *,
    description: str = "labeling",
    interval: float = 0.2,
    timeout_seconds: float | None = None,
) -> int:
    """A progress bar over ``count()`` (records written) until ``finished()`` or the timeout; the last count."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    done = 0
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        while True:
            is_finished = finished()
            done = count()
            progress.update(task, completed=done if total is None else min(done, total))
            if is_finished or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(interval)
    return done


# --- printing ---------------------------------------------------------------------------------------
def labels_text(labels: list[dict[str, Any]], limit: int = 4) -> str:
    """``"Cat 92 · Pet 92 · Mammal 94"``: the most confident labels, most specific first."""
    from labeler.local.gallery import top_labels

    chosen = top_labels(labels, limit)
    return " · ".join(f"{label.get('Name')} {float(label.get('Confidence') or 0):.0f}" for label in chosen)


def results_table(records: list[dict[str, Any]], *, title: str | None = None) -> Any:
    """A rich table: entry, image id, image, top labels or the error code (red) and message."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", expand=False, show_lines=False)
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("image id", overflow="fold", max_width=28)
    table.add_column("image", style="dim", overflow="fold")
    table.add_column("labels (confidence %) or error", overflow="fold")
    for record in records:
        image = record.get("image") or {}
        image_text = ""
        if image.get("format"):
            image_text = f"{str(image['format']).upper()} {image.get('width', '?')}×{image.get('height', '?')}"
            if image.get("converted"):
                image_text += " → converted"
            route = (record.get("source") or {}).get("route")
            if str(record.get("url", "")).startswith("s3://") and route:
                image_text = f"S3 ({route}) · {image_text}"  # read from S3: never over HTTP
        error = record.get("error")
        if isinstance(error, dict):
            outcome = Text(str(error.get("code", "error")), style="bold red")
            message = str(error.get("message", ""))
            if message:
                outcome.append("  " + (message if len(message) <= 100 else message[:99] + "…"), style="red dim")
        else:
            text = labels_text(list(record.get("labels") or []))
            outcome = Text(text or "(no label above the confidence threshold)", style="green" if text else "yellow")
        table.add_row(str(record.get("entry_index", "")), Text(str(record.get("image_id", ""))), image_text, outcome)
    return table


def report_line(report: Mapping[str, Any]) -> Any:
    """One line: status, totals, failures by code, cache use, the DetectLabels cost and time."""
    from rich.text import Text

    status = str(report.get("status", "?"))
    line = Text("report: ", style="bold")
    line.append(status, style="bold green" if status == "complete" else "bold red")
    line.append(f" · {report.get('total', 0)} entries · ")
    line.append(f"{report.get('succeeded', 0)} succeeded", style="green")
    line.append(" · ")
    line.append(f"{report.get('failed', 0)} failed", style="red" if report.get("failed") else "")
    codes = report.get("errors_by_code") or {}
    if codes:
        line.append(" (" + ", ".join(f"{code} {count}" for code, count in sorted(codes.items())) + ")", style="red")
    if report.get("labels_from_cache"):
        line.append(f" · {report['labels_from_cache']} from cache")
    cost = report.get("cost")
    if isinstance(cost, Mapping):
        from labeler.local.gallery import cost_text

        line.append(f" · {cost_text(cost)}")
    total_ms = (report.get("timings_ms") or {}).get("total")
    if isinstance(total_ms, int | float):
        line.append(f" · {total_ms / 1000:.1f} s")
    error = report.get("error")
    if isinstance(error, Mapping):
        line.append(f"\nmanifest error: {error.get('code')}: {error.get('message')}", style="red")
    return line


def report_adds_up(report: Mapping[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """Inconsistencies between a report and the records (empty: it adds up)."""
    problems = []
    total, succeeded, failed = (int(report.get(name, -1)) for name in ("total", "succeeded", "failed"))
    if succeeded + failed != total:
        problems.append(f"succeeded {succeeded} + failed {failed} != total {total}")
    if len(records) != total:
        problems.append(f"{len(records)} records, report total {total}")
    ok = sum(1 for record in records if "error" not in record)
    if ok != succeeded:
        problems.append(f"{ok} successful records, report says {succeeded}")
    by_code: dict[str, int] = {}
    for record in records:
        if isinstance(record.get("error"), dict):
            code = str(record["error"].get("code"))
            by_code[code] = by_code.get(code, 0) + 1
    if by_code != {str(k): int(v) for k, v in (report.get("errors_by_code") or {}).items()}:
        problems.append(f"errors by code {by_code} != report {report.get('errors_by_code')}")
    return problems
