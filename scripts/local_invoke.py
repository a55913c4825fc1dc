"""``make local-invoke``: the built function, run as Lambda runs it, without Docker.

    .venv/bin/python scripts/local_invoke.py --function ManifestFunction --event events/s3-put-manifest.json
    .venv/bin/python scripts/local_invoke.py --function WorkerFunction --event events/sqs-work-batch.json

What runs (nothing leaves loopback, nothing is left running):

* **the function**: ``.aws-sam/build/<Function>`` (``make build``'s output, the package Lambda gets) run by
  the AWS Lambda Runtime Interface Emulator shipped inside the aws-sam-cli package
  (``samcli/local/rapid/aws-lambda-rie-x86_64``), with the runtime interface client ``awslambdaric`` in
  ``.venv-ric`` (python3.12, the runtime's version). The emulator serves the Lambda Runtime API the service
  itself uses (``/2018-06-01/runtime/invocation/next`` …) and takes invocations on
  ``http://127.0.0.1:<port>/2015-03-31/functions/function/invocations``. The function's environment is the
  template's (``tests/support/template_env.py``, the reader the benchmarks use), pointed at the stand-ins;
  its handler, timeout and memory come from the template too.
* **S3, SQS, DynamoDB, EventBridge** (the run's completion event): the embedded endpoint (moto's server,
  ``labeler.local.embedded_aws``); every resource the function's environment names (output bucket, work
  queue and its dead-letter queue, state table) is created from its template declaration.
* **Rekognition**: the wire-level stand-in (``tests/support/fake_rekognition.py``) as a real endpoint
  (``AWS_ENDPOINT_URL_REKOGNITION``), enforcing the template's ``REKOGNITION_MAX_TPS`` as its quota. The
  built package holds no offline model, so ``LABEL_BACKEND`` stays the template's ``rekognition``.
* **images**: the sample photos (``labeler.local.samples``) on a loopback HTTP server.

Staging: an S3 event gets its buckets and the sample manifest at every key it names (the event's size,
eTag and versionId follow the uploaded object). An SQS work batch has its image URLs pointed at the sample
photos, is sent to the stand-in work queue and received from it (a real receipt handle and receive count),
and the messages the function did not report as failed are deleted afterwards, as the event source mapping
does. Exit status 0 when the invocation succeeded and every entry has its record (and, for an S3 event,
every manifest a complete report); 1 otherwise; 2 when something is missing (``make build``, ``.venv-ric``).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support is a package of the repository, not installed

from tests.support.template_env import REGION, Template, TemplateError, deployed_environment  # noqa: E402

INVOKE_PATH = "/2015-03-31/functions/function/invocations"
RIE_GLOB = ".venv-sam/lib/python3.*/site-packages/samcli/local/rapid/aws-lambda-rie-x86_64"
RIC_PYTHON = ROOT / ".venv-ric" / "bin" / "python"
# `Tracing: Active` makes Powertools' Tracer record X-Ray subsegments, which need the trace id Lambda passes
# with each invocation. The emulator passes none (its tracer is a no-op; checked), so the X-Ray SDK would
# discard every subsegment with a warning: off under the emulator, and only there.
EMULATOR_ONLY = {"AWS_XRAY_SDK_ENABLED": "false"}


class Missing(RuntimeError):
    """Something local-invoke needs is not there; the message says which make target makes it."""


# --- the emulator --------------------------------------------------------------------------------------------
def find_rie() -> Path:
    found = sorted(glob.glob(str(ROOT / RIE_GLOB)))
    if not found:
        raise Missing(f"no Runtime Interface Emulator at {RIE_GLOB}: run `make build` (it installs .venv-sam)")
    return Path(found[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Emulator:
    """The Runtime Interface Emulator running ``python -m awslambdaric <handler>`` in a build directory."""

    rie: Path
    python: Path
    build_dir: Path
    handler: str
    environment: dict[str, str]
    log_path: Path
    invoke_port: int = field(default_factory=free_port)
    runtime_api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None

    def start(self, wait_seconds: float = 15.0) -> Emulator:
        command = [
            str(self.rie),
            "--runtime-interface-emulator-address",
            f"127.0.0.1:{self.invoke_port}",
            "--runtime-api-address",
            f"127.0.0.1:{self.runtime_api_port}",
            str(self.python),
            "-m",
            "awslambdaric",
            self.handler,
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            **self.environment,
        }
        with self.log_path.open("wb") as log:
            # its own session: stop() ends the emulator and the runtime it started, and nothing else
            self.process = subprocess.Popen(
                command, cwd=self.build_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid = self.process.pid
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the emulator exited at once ({self.process.returncode}):\n{self.log()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.invoke_port), timeout=0.5):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"the emulator did not listen on port {self.invoke_port} within {wait_seconds} s")

    def invoke(self, event: dict[str, Any], timeout_s: float) -> tuple[int, Any]:
        """POST the event as the Lambda service invokes a function; (HTTP status, decoded answer)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.invoke_port}{INVOKE_PATH}",
            data=json.dumps(event).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body or b"null")
        except ValueError:
            return status, body.decode("utf-8", "replace")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)  # the group this script created for it (start_new_session)
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


# --- staging ---------------------------------------------------------------------------------------------
def event_kind(event: dict[str, Any]) -> str:
    sources = {record.get("eventSource") for record in event.get("Records") or []}
    if sources == {"aws:s3"}:
        return "s3"
    if sources == {"aws:sqs"}:
        return "sqs"
    return "other"


def stage_s3_event(aws: Any, photos: Any, event: dict[str, Any], output_bucket: str) -> None:
    """Buckets and a sample manifest at every key (the command line's own staging for ``invoke --embedded``)."""
    from rich.console import Console

    from labeler.cli import stage_embedded
    from labeler.local.runner import add_missing_sequencers

    stage_embedded(aws, photos, event, output_bucket, Console(stderr=True, highlight=False))
    add_missing_sequencers(event)


def stage_sqs_event(
    aws: Any, photos: Any, event: dict[str, Any], queue_url: str, queue_arn: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send each record's body (image URLs pointed at the sample photos) to the work queue and receive it back.

    Returns the SQS event built from the received messages, and the messages (to delete afterwards).
    """
    from tests.support.sqs_driver import sqs_event

    from labeler.local.samples import PHOTOS

    photo_urls = cycle([photos.url(photo.path) for photo in PHOTOS])
    sqs = aws.client("sqs")
    for record in event["Records"]:
        sqs.send_message(QueueUrl=queue_url, MessageBody=point_urls_at(record["body"], photo_urls))
    wanted, messages = len(event["Records"]), []
    deadline = time.monotonic() + 10
    while len(messages) < wanted and time.monotonic() < deadline:
        answer = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=min(10, wanted - len(messages)), AttributeNames=["All"]
        )
        messages.extend(answer.get("Messages", []))
    if len(messages) != wanted:
        raise RuntimeError(f"sent {wanted} messages to the work queue, received {len(messages)} back")
    return sqs_event(messages, queue_arn), messages


def point_urls_at(body: str, urls: Iterator[str]) -> str:
    """The body with every ``"url"`` of a JSON work batch replaced by the next sample-photo URL."""
    try:
        document = json.loads(body)
    except ValueError:
        return body

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: next(urls) if k == "url" and isinstance(v, str) else walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return json.dumps(walk(document))


# --- results ----------------------------------------------------------------------------------------------
def read_objects(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    documents = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            documents.append({"key": item["Key"], **json.loads(body)})
    return documents


def function_error(status: int, answer: Any) -> str | None:
    if status != 200:
        return f"HTTP {status}: {answer}"
    if isinstance(answer, dict) and "errorType" in answer and "errorMessage" in answer:
        return f"{answer['errorType']}: {answer['errorMessage']}"
    return None


def check_s3_run(event: dict[str, Any], records: list[dict[str, Any]], reports: list[dict[str, Any]]) -> list[str]:
    """Problems with a manifest run on the sample manifest: a complete report, and the record every entry must get."""
    from labeler.local.runner import event_keys
    from labeler.local.samples import BROKEN, PHOTOS

    problems = []
    for bucket, key in event_keys(event):
        report = next((r for r in reports if r.get("manifest", {}).get("key") == key), None)
        if report is None or report.get("status") != "complete":
            problems.append(f"s3://{bucket}/{key}: report {'missing' if report is None else report.get('status')}")
        mine = {r.get("entry_index"): r for r in records if r.get("manifest", {}).get("key") == key}
        for index, photo in enumerate(PHOTOS):
            if "labels" not in mine.get(index, {}):
                problems.append(f"{key}: {photo.image_id} has no labels: {mine.get(index, {}).get('error')}")
        for offset, broken in enumerate(BROKEN, start=len(PHOTOS)):
            code = mine.get(offset, {}).get("error", {}).get("code")
            if code != broken.expected_code:
                problems.append(f"{key}: entry {offset} ({broken.why}) got {code}, not {broken.expected_code}")
    return problems


def check_sqs_run(event: dict[str, Any], answer: Any, records: list[dict[str, Any]]) -> list[str]:
    problems = []
    failures = answer.get("batchItemFailures") if isinstance(answer, dict) else None
    if failures:
        problems.append(f"batchItemFailures: {failures}")
    have = {record.get("image_id") for record in records if "labels" in record}
    for record in event["Records"]:
        for entry in json.loads(record["body"]).get("entries", []):
            if entry.get("image_id") not in have:
                problems.append(f"entry {entry.get('image_id')} has no labeled record")
    return problems


def delete_finished(sqs: Any, queue_url: str, messages: list[dict[str, Any]], status: int, answer: Any) -> int:
    """What the event source mapping does after an invocation: delete every message not reported failed
    (none when the invocation itself failed: then the whole batch comes back)."""
    if function_error(status, answer):
        return 0
    reported = answer.get("batchItemFailures", []) if isinstance(answer, dict) else []
    failed = {item.get("itemIdentifier") for item in reported}
    finished = [message for message in messages if message["MessageId"] not in failed]
    for message in finished:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return len(finished)


def check_run(
    kind: str,
    event: dict[str, Any],
    status: int,
    answer: Any,
    records: list[dict[str, Any]],
    reports: list[dict[str, Any]],
) -> list[str]:
    """Everything wrong with the invocation and what it wrote (empty: all as expected)."""
    error = function_error(status, answer)
    problems = [f"the function failed: {error}"] if error else []
    if kind == "s3":
        problems += check_s3_run(event, records, reports)
    elif kind == "sqs" and not error:
        problems += check_sqs_run(event, answer, records)
    return problems


def summary_line(record: dict[str, Any]) -> str:
    if "labels" in record:
        labels = " · ".join(f"{label['Name']} {label['Confidence']:.0f}" for label in record["labels"][:3])
        image = record.get("image") or {}
        shape = f"{str(image.get('format', '')).upper()} {image.get('width')}×{image.get('height')}"
        converted = " converted" if image.get("converted") else ""
        return f"{shape}{converted}  {labels}"
    error = record.get("error") or {}
    return f"{error.get('code')}: {str(error.get('message'))[:70]}"


def print_human(run: dict[str, Any]) -> None:
    out = sys.stdout
    print(f"function: {run['function']} ({run['handler']}) from {run['build_dir']}", file=out)
    print(f"emulator: {run['emulator']}", file=out)
    print(f"response (HTTP {run['status']}): {json.dumps(run['response'])}", file=out)
    print(f"\nresults: {len(run['records'])} record(s) in s3://{run['output_bucket']}/results/", file=out)
    for record in sorted(run["records"], key=lambda r: (r.get("entry_index", 1 << 30), str(r.get("image_id")))):
        print(f"  {record.get('entry_index', '?'):>3}  {str(record.get('image_id'))[:24]:<24}  {summary_line(record)}")
    for report in run["reports"]:
        counts = {name: report.get(name) for name in ("status", "total", "succeeded", "failed", "errors_by_code")}
        print(f"report s3://{run['output_bucket']}/{report['key']}: {json.dumps(counts)}", file=out)
    if not run["reports"] and run["kind"] == "sqs":
        print("report: none (one work batch alone; the run's report is written when its last batch is counted)")
    if run["deleted_messages"] is not None:
        print(
            f"work queue: {run['deleted_messages']} message(s) deleted after success, as the event source mapping does"
        )
    verdict = "OK" if not run["problems"] else "PROBLEMS:\n  " + "\n  ".join(run["problems"])
    print(f"\n{verdict}", file=out)


# --- the run ------------------------------------------------------------------------------------------------
def local_invoke(function: str, event_path: Path, *, label_latency_s: float = 0.0) -> dict[str, Any]:
    from tests.support.fake_rekognition import FakeRekognition
    from tests.support.stack_standins import StackStandIns

    from labeler.local.embedded_aws import EmbeddedAws
    from labeler.local.http_server import LoopbackServer
    from labeler.local.samples import sample_routes

    template = Template.load()
    if function not in template.functions():
        raise Missing(f"{function} is not a function of template.yaml (it has {', '.join(template.functions())})")
    build_dir = ROOT / ".aws-sam" / "build" / function
    if not (build_dir / "labeler").is_dir():
        raise Missing(f"{build_dir.relative_to(ROOT)} is not built: run `make build`")
    if not RIC_PYTHON.is_file():
        raise Missing("no .venv-ric (python3.12 with awslambdaric): run `make local-invoke-ready`")
    rie = find_rie()
    event = json.loads(event_path.read_text(encoding="utf-8"))
    kind = event_kind(event)

    with contextlib.ExitStack() as stack:
        aws = stack.enter_context(EmbeddedAws(region=REGION, set_environment=False))
        photos = stack.enter_context(LoopbackServer(sample_routes()))
        rekognition = stack.enter_context(FakeRekognition())
        resources = StackStandIns(template, aws.client, prefix="local-invoke")
        config = template.function(function, resources)
        quota = float(config.environment.get("REKOGNITION_MAX_TPS", "50"))
        rekognition.state.quota_tps, rekognition.state.latency_seconds = quota, label_latency_s
        function_env = deployed_environment(
            config,
            endpoints={service: aws.endpoint_url for service in ("S3", "SQS", "DYNAMODB", "EVENTBRIDGE")}
            | {"REKOGNITION": rekognition.endpoint_url},
            rekognition_max_tps=quota,
        )
        output_bucket = config.environment["OUTPUT_BUCKET"]
        messages: list[dict[str, Any]] = []
        queue_url = ""
        if kind == "s3":
            stage_s3_event(aws, photos, event, output_bucket)
        elif kind == "sqs":
            mapping = template.event_source_mapping(function, resources)
            queue_url, queue_arn = resources.ref(mapping["queue"]), resources.attribute(mapping["queue"], "Arn")
            event, messages = stage_sqs_event(aws, photos, event, queue_url, queue_arn)
        log_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="local-invoke-"))) / "emulator.log"
        environment = function_env.variables | config.runtime_variables(build_dir) | EMULATOR_ONLY
        emulator = Emulator(rie, RIC_PYTHON, build_dir, config.handler, environment, log_path)
        stack.callback(emulator.stop)
        started = time.perf_counter()
        emulator.start()
        status, answer = emulator.invoke(event, timeout_s=config.timeout_seconds + 30)
        seconds = time.perf_counter() - started
        emulator.stop()
        s3 = aws.client("s3")
        records = read_objects(s3, output_bucket, "results/")
        reports = read_objects(s3, output_bucket, "reports/")
        deleted = delete_finished(aws.client("sqs"), queue_url, messages, status, answer) if kind == "sqs" else None
        problems = check_run(kind, event, status, answer, records, reports)
        return {
            "function": function,
            "handler": config.handler,
            "build_dir": str(build_dir.relative_to(ROOT)),
            "event": str(event_path),
            "kind": kind,
            "emulator": f"{rie.relative_to(ROOT)} on 127.0.0.1:{emulator.invoke_port} "
            f"(runtime API 127.0.0.1:{emulator.runtime_api_port}), {RIC_PYTHON.relative_to(ROOT)} -m awslambdaric",
            "emulator_pid": emulator.pid,
            "ports": [emulator.invoke_port, emulator.runtime_api_port],
            "environment": function_env.describe() | {"emulator_only": EMULATOR_ONLY},
            "stand_ins": resources.describe(),
            "status": status,
            "response": answer,
            "seconds": round(seconds, 3),
            "output_bucket": output_bucket,
            "records": records,
            "reports": reports,
            "deleted_messages": deleted,
            "log": emulator.log()[-20000:],
            "problems": problems,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--function", default="ManifestFunction", help="a function of template.yaml")
    parser.add_argument("--event", type=Path, default=Path("events/s3-put-manifest.json"), help="the event to POST")
    parser.add_argument("--label-latency", type=float, default=0.0, help="seconds per DetectLabels call (stand-in)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--log", action="store_true", help="also print the function's log (the emulator's output)")
    args = parser.parse_args(argv)
    try:
        run = local_invoke(args.function, args.event, label_latency_s=args.label_latency)
    except (Missing, TemplateError) as exc:
        print(f"local-invoke: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(run, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        if args.log or run["problems"]:
            print("--- function log (the emulator's output) ---\n" + run["log"][-6000:] + "\n---", file=sys.stderr)
        print_human(run)
    return 1 if run["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
