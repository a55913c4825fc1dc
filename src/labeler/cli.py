"""``s3-image-labeler``: submit a manifest and follow it, read results, make a gallery, run the handler locally.

    s3-image-labeler submit my-images.json --stack s3-image-labeler
    s3-image-labeler submit --prefix s3://my-photos/2024/ --stack s3-image-labeler
    s3-image-labeler query --named label_frequencies --param manifest_bucket=IN --param manifest_key=manifests/a.json
    s3-image-labeler results manifests/my-images.json --input-bucket IN --output-bucket OUT [--json]
    s3-image-labeler gallery s3://IN/manifests/my-images.json --output-bucket OUT -o gallery.html
    s3-image-labeler invoke events/s3-put-manifest.json --embedded
    s3-image-labeler estimate my-images.json --stack s3-image-labeler
    s3-image-labeler recheck watch/my-images.json --stack s3-image-labeler

Bucket names come from ``--input-bucket``/``--output-bucket``, else the stack's outputs
(``--stack NAME``: ``InputBucketName``, ``OutputBucketName``), else ``INPUT_BUCKET``/``OUTPUT_BUCKET``.
Credentials, region and endpoints are boto3's usual ones (``AWS_PROFILE``, ``AWS_REGION``,
``AWS_ENDPOINT_URL_S3``, ...).

Exit status: 0 done; 1 the run did not complete (a failed or partial report, a timeout, the handler
raised); 2 a problem to fix before retrying (a missing bucket, file, key or stack, no credentials),
reported on one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

PROG = "s3-image-labeler"
DEFAULT_LOCAL_OUTPUT_BUCKET = "s3il-local-output"
# How much older than the manifest's upload (S3's clock) a report may start and still belong to it.
CLOCK_SLACK = timedelta(seconds=2)


class CliError(Exception):
    """A problem the user has to fix; printed on one line, exit status 2."""


class RunFailed(Exception):
    """The command ran but the outcome is not a complete run; printed on one line, exit status 1."""


# --- AWS plumbing -----------------------------------------------------------------------------------
def aws_session(args: argparse.Namespace) -> Any:
    import boto3

    return boto3.session.Session(profile_name=args.profile, region_name=args.region)


def stack_outputs(session: Any, stack: str) -> dict[str, str]:
    from botocore.exceptions import ClientError

    try:
        stacks = session.client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in str(error.get("Message", "")):
            region = session.region_name or "the default region"
            raise CliError(f"stack {stack!r} does not exist in {region} (deployed with `sam deploy`?)") from exc
        raise
    return {output["OutputKey"]: output["OutputValue"] for output in stacks[0].get("Outputs", [])}


@dataclass
class Buckets:
    input: str | None
    output: str


def resolve_buckets(args: argparse.Namespace, session: Any, *, need_input: bool) -> Buckets:
    """Flags first, then the stack's outputs (``--stack``), then ``INPUT_BUCKET``/``OUTPUT_BUCKET``."""
    input_bucket = getattr(args, "input_bucket", None)
    output_bucket = getattr(args, "output_bucket", None)
    stack = getattr(args, "stack", None)
    if stack and (not output_bucket or (need_input and not input_bucket)):
        outputs = stack_outputs(session, stack)
        input_bucket = input_bucket or outputs.get("InputBucketName")
        output_bucket = output_bucket or outputs.get("OutputBucketName")
        if not output_bucket or (need_input and not input_bucket):
            raise CliError(f"stack {stack!r} has no InputBucketName/OutputBucketName outputs")
    input_bucket = input_bucket or os.environ.get("INPUT_BUCKET") or None
    output_bucket = output_bucket or os.environ.get("OUTPUT_BUCKET") or None
    if not output_bucket:
        raise CliError("no output bucket: pass --output-bucket or --stack NAME, or set OUTPUT_BUCKET")
    if need_input and not input_bucket:
        raise CliError("no input bucket: pass --input-bucket or --stack NAME, or set INPUT_BUCKET")
    return Buckets(input=input_bucket, output=output_bucket)


def require_bucket(s3: Any, bucket: str, role: str) -> None:
    """A one-line error now rather than a stack trace later when ``bucket`` does not exist."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in {"404", "NoSuchBucket", "NotFound"}:
            raise CliError(f"the {role} bucket {bucket!r} does not exist") from exc
        if code in {"403", "AccessDenied"}:
            raise CliError(f"access to the {role} bucket {bucket!r} is denied for these credentials") from exc
        raise


def split_manifest_argument(value: str, input_bucket: str | None) -> tuple[str | None, str]:
    """``s3://bucket/key`` or a key (the bucket then comes from the options)."""
    if value.startswith("s3://"):
        bucket, _, key = value[len("s3://") :].partition("/")
        if not bucket or not key:
            raise CliError(f"not an S3 object URL: {value!r} (expected s3://bucket/key)")
        return bucket, key
    return input_bucket, value


# --- output ---------------------------------------------------------------------------------------
def consoles() -> tuple[Any, Any]:
    """(stdout, stderr) rich consoles: tables on stdout, progress and notes on stderr."""
    from labeler.local.demo import make_console

    return make_console(), make_console(stderr=True)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")


def show_results(
    out: Any, records: list[dict[str, Any]], report: dict[str, Any] | None, title: str, *, as_json: bool
) -> None:
    from labeler.local.runner import report_line, results_table

    if as_json:
        print_json({"report": report, "records": records})
        return
    out.print(results_table(records, title=title))
    if report is not None:
        out.print(report_line(report))


def load_results(
    s3: Any, input_bucket: str, output_bucket: str, key: str, *, check_manifest: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The report and the latest run's records of ``s3://input_bucket/key``; CliError when there are none."""
    from botocore.exceptions import ClientError

    from labeler.local.runner import OutputReader, current_records

    require_bucket(s3, output_bucket, "output")
    reader = OutputReader(s3, output_bucket, input_bucket, key)
    report = reader.report()
    if report is None:
        if check_manifest:
            try:
                s3.head_object(Bucket=input_bucket, Key=key)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code"))
                if code in {"404", "NoSuchKey", "NotFound"}:
                    raise CliError(f"the manifest s3://{input_bucket}/{key} does not exist") from exc
                if code in {"NoSuchBucket"}:
                    raise CliError(f"the input bucket {input_bucket!r} does not exist") from exc
        raise CliError(
            f"no report for s3://{input_bucket}/{key} in bucket {output_bucket!r}: not processed yet, or another bucket"
        )
    total = report.get("total") if isinstance(report.get("total"), int) else None
    records = current_records([record for _, record in reader.records()], total)
    return report, records


# --- submit -----------------------------------------------------------------------------------------
def count_entries(path: Path) -> tuple[int | None, str]:
    """How many records the manifest will give (entries, rejected ones included), by the Lambda's own parser."""
    from labeler.logic.manifest import parse_manifest
    from labeler.models.errors import ManifestError
    from labeler.models.settings import MIB

    count = 0
    try:
        with path.open("rb") as handle:
            for _ in parse_manifest(handle, max_bytes=1024 * MIB, max_entries=1_000_000):
                count += 1
    except ManifestError as exc:
        return None, f"{exc.code}: {exc}"
    return count, ""


def parse_timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def report_is_for(report: dict[str, Any] | None, etag: str, uploaded_at: datetime) -> bool:
    """Whether ``report`` belongs to the upload (same ETag, started after the upload), not an older run."""
    if not report:
        return False
    manifest = report.get("manifest") or {}
    if manifest.get("etag") and str(manifest["etag"]).strip('"') != etag:
        return False
    started = parse_timestamp(report.get("started_at"))
    return started is not None and started >= uploaded_at - CLOCK_SLACK


def report_is_final(report: dict[str, Any], records_written: int) -> bool:
    from labeler.local.runner import TERMINAL_STATUSES

    status = report.get("status")
    if status not in TERMINAL_STATUSES:
        return False  # in_progress (fanned out), incomplete (to be retried)
    total = int(report.get("total", 0))
    return int(report.get("succeeded", 0)) + int(report.get("failed", 0)) == total and records_written >= total


@dataclass
class UploadFollower:
    """Follows the run of one upload: its records as they appear, and its end (the completion event when
    there is a queue to wait on, else the report polled until it is final)."""

    reader: Any  # runner.OutputReader of the manifest
    etag: str
    uploaded_at: datetime
    waiter: Any = None  # events.CompletionWaiter
    report: dict[str, Any] | None = None
    event: dict[str, Any] | None = None
    written: int = 0

    @property
    def since(self) -> datetime:
        return self.uploaded_at - CLOCK_SLACK

    def wait_on(self, sqs: Any, queue_url: str, manifest: tuple[str, str], version_id: str | None) -> None:
        from labeler.local.events import CompletionWaiter

        run_id = version_id if version_id not in (None, "", "null") else self.etag
        self.waiter = CompletionWaiter(sqs, queue_url, manifest=manifest, run_id=run_id, not_before=self.uploaded_at)

    def count(self) -> int:
        self.written = self.reader.count(since=self.since)
        return self.written

    def finished(self) -> bool:
        if self.waiter is not None:  # told when it is done: the report is read once, after the event
            self.event = self.event or self.waiter.poll()
            if self.event is not None and self.report is None:
                self.report = self.reader.report()
            return self.event is not None
        report = self.reader.report()
        if report_is_for(report, self.etag, self.uploaded_at):
            self.report = report
            assert report is not None
            return report_is_final(report, self.reader.count(since=self.since))
        return False

    def ended(self) -> bool:
        return self.event is not None or (self.report is not None and report_is_final(self.report, self.written))

    def waited(self) -> str:
        return " waiting for the completion event" if self.waiter is not None else ""

    def where_it_stands(self) -> str:
        report = self.reader.report()
        if report is not None and not report_is_for(report, self.etag, self.uploaded_at):
            return "the report is another upload's: the manifest was uploaded again, this run was superseded"
        return str(report.get("status")) if report else "no report yet"


def cmd_submit(args: argparse.Namespace) -> int:
    from labeler.local.runner import MANIFEST_SUFFIXES, OutputReader, current_records, follow_progress

    out, err = consoles()
    path = Path(args.manifest)
    if not path.is_file():
        raise CliError(f"the manifest file {str(path)!r} does not exist")
    key = args.key or f"manifests/{path.name}"
    if not key.endswith(MANIFEST_SUFFIXES):
        raise CliError(f"the input bucket only reacts to .json and .jsonl keys, not {key!r}: pass --key NAME.json")
    total, problem = count_entries(path)
    if problem:
        err.print(f"note: the manifest will be rejected ({problem}); uploading it anyway", markup=False)
    session = aws_session(args)
    buckets = resolve_buckets(args, session, need_input=True)
    assert buckets.input is not None
    s3 = session.client("s3")
    require_bucket(s3, buckets.input, "input")
    require_bucket(s3, buckets.output, "output")

    queue_url = completion_queue_url(args, session)
    s3.put_object(Bucket=buckets.input, Key=key, Body=path.read_bytes(), ContentType="application/json")
    head = s3.head_object(Bucket=buckets.input, Key=key)
    err.print(f"uploaded s3://{buckets.input}/{key} ({total if total is not None else '?'} entries)", markup=False)
    follower = UploadFollower(
        OutputReader(s3, buckets.output, buckets.input, key), str(head["ETag"]).strip('"'), head["LastModified"]
    )
    if queue_url:
        follower.wait_on(session.client("sqs"), queue_url, (buckets.input, key), head.get("VersionId"))
        err.print(f"waiting for the run's completion event on {queue_url}", markup=False)

    follow_progress(
        err,
        follower.count,
        total,
        follower.finished,
        description="labeling",
        interval=args.poll,
        timeout_seconds=args.timeout,
    )
    report, event = follower.report, follower.event
    if event is not None:
        err.print(f"completion event: {event['detail-type']} ({event['detail'].get('status')})", markup=False)
    objects = [record for _, record in follower.reader.records(since=follower.since)]
    records = current_records(objects, report.get("total") if report else None)
    show_results(out, records, report, f"s3://{buckets.input}/{key}", as_json=args.json)
    if report is None or not follower.ended():
        raise RunFailed(
            f"timed out after {args.timeout:g} s{follower.waited()}: {len(records)} of {total or '?'} "
            f"records ({follower.where_it_stands()})"
        )
    if report.get("status") != "complete":
        raise RunFailed(f"the run ended {report.get('status')}: {(report.get('error') or {}).get('message', '')}")
    return 0


def completion_queue_url(args: argparse.Namespace, session: Any) -> str | None:
    """Where ``submit`` waits for the completion event: ``--completion-queue``, else the stack's
    ``CompletionQueueUrl`` output, else ``COMPLETION_QUEUE_URL``; None: poll the report instead."""
    if getattr(args, "completion_queue", None):
        return str(args.completion_queue)
    if getattr(args, "stack", None):
        url = stack_outputs(session, args.stack).get("CompletionQueueUrl")
        if url:
            return url
    return os.environ.get("COMPLETION_QUEUE_URL") or None


# --- results and gallery ------------------------------------------------------------------------------
def manifest_target(args: argparse.Namespace, session: Any) -> tuple[str, str, str]:
    """(input bucket, manifest key, output bucket) for results/gallery."""
    input_from_url, key = split_manifest_argument(args.manifest_key, None)
    if input_from_url:
        args.input_bucket = input_from_url
    buckets = resolve_buckets(args, session, need_input=True)
    assert buckets.input is not None
    return buckets.input, key, buckets.output


def cmd_results(args: argparse.Namespace) -> int:
    out, _ = consoles()
    session = aws_session(args)
    input_bucket, key, output_bucket = manifest_target(args, session)
    report, records = load_results(session.client("s3"), input_bucket, output_bucket, key)
    show_results(out, records, report, f"s3://{input_bucket}/{key}", as_json=args.json)
    return 0


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def cmd_gallery(args: argparse.Namespace) -> int:
    from labeler.local.gallery import fetch_thumbnails, render_gallery

    _, err = consoles()
    target = Path(args.output)
    if not target.parent.is_dir():
        raise CliError(f"the directory {str(target.parent)!r} does not exist")
    session = aws_session(args)
    input_bucket, key, output_bucket = manifest_target(args, session)
    report, records = load_results(session.client("s3"), input_bucket, output_bucket, key)
    images: dict[str, bytes] = {}
    if not args.no_thumbnails:
        allow_private = args.allow_private_networks or env_flag("ALLOW_PRIVATE_NETWORKS")
        images = fetch_thumbnails(records, allow_private_networks=allow_private, timeout_seconds=args.fetch_timeout)
    target.write_text(render_gallery(records, report, images), encoding="utf-8")
    wanted = sum(1 for record in records if "error" not in record)
    err.print(
        f"wrote {target}: {len(records)} cards, {len(images)} of {wanted} thumbnails"
        + ("" if args.no_thumbnails else " (downloaded through the SSRF-safe fetcher)"),
        markup=False,
    )
    return 0


# --- invoke ---------------------------------------------------------------------------------------------
def load_event(path_text: str) -> dict[str, Any]:
    from labeler.local.runner import event_keys

    path = Path(path_text)
    if not path.is_file():
        raise CliError(f"the event file {path_text!r} does not exist")
    try:
        event = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"{path_text} is not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise CliError(f"{path_text} is not an S3 event (a JSON object with Records)")
    if event.get("Records") and not event_keys(event):
        raise CliError(f"{path_text} has Records but none names an S3 bucket and key")
    return event


def stage_embedded(aws: Any, photos: Any, event: dict[str, Any], output_bucket: str, err: Any) -> None:
    """Create the event's buckets on the embedded endpoint and put a sample manifest at every key it names.

    The event is adjusted to the objects really uploaded (size, eTag and, for versioned events,
    versionId), so that the handler reads exactly what the event announces.
    """
    import json as json_module
    from urllib.parse import unquote_plus

    from botocore.exceptions import ClientError

    from labeler.local.samples import sample_manifest

    s3 = aws.client("s3")
    entries = sample_manifest(photos.url)
    created: set[str] = set()
    for record in event.get("Records") or []:
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        versioned = bool(obj.get("versionId"))
        for name in (bucket, output_bucket):
            if name in created:
                continue
            try:
                aws.create_bucket(name, versioning=versioned and name == bucket)
            except ClientError as exc:
                message = exc.response.get("Error", {}).get("Message", str(exc))
                raise CliError(f"cannot create bucket {name!r} on the embedded endpoint: {message}") from exc
            created.add(name)
        key = unquote_plus(obj["key"])
        if key.endswith(".jsonl"):  # JSON Lines: one entry per line
            body = "".join(json_module.dumps(entry) + "\n" for entry in entries).encode("utf-8")
        else:
            body = json_module.dumps(entries, indent=1).encode("utf-8")
        put = s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        obj["size"], obj["eTag"] = len(body), str(put["ETag"]).strip('"')
        if versioned:
            obj["versionId"] = put.get("VersionId", obj["versionId"])
        err.print(f"staged a sample manifest at s3://{bucket}/{key} ({len(entries)} entries)", markup=False)


def run_invoke(event: dict[str, Any], env: dict[str, str | None], args: argparse.Namespace) -> dict[str, Any]:
    from labeler.local.runner import LocalLambdaContext, handler_environment, invoke_handler

    context = LocalLambdaContext(timeout_seconds=args.timeout, memory_limit_in_mb=args.memory)
    with handler_environment(env, log_level=args.log_level):
        return invoke_handler(event, context)


def show_invocation(
    out: Any, s3: Any, event: dict[str, Any], output_bucket: str, response: dict[str, Any], as_json: bool
) -> int:
    """Print the handler's answer and, per manifest, its records and report; 0 when every report is complete."""
    from labeler.local.runner import event_keys

    manifests = []
    status = 0
    for bucket, key in event_keys(event):
        try:
            report, records = load_results(s3, bucket, output_bucket, key, check_manifest=False)
        except CliError as exc:
            report, records = None, []
            out.print(f"{exc}", style="red", markup=False)
        manifests.append({"manifest": {"bucket": bucket, "key": key}, "report": report, "records": records})
        if report is None or report.get("status") != "complete":
            status = 1
    if as_json:
        print_json({"response": response, "manifests": manifests})
        return status
    out.print(f"handler returned: {json.dumps(response)}", markup=False, style="dim")
    for item in manifests:
        title = f"s3://{item['manifest']['bucket']}/{item['manifest']['key']}"
        show_results(out, item["records"], item["report"], title, as_json=False)
    return status


def cmd_invoke(args: argparse.Namespace) -> int:
    from labeler.local.runner import add_missing_sequencers

    out, err = consoles()
    event = load_event(args.event)
    if args.embedded:
        return invoke_embedded(args, event, out, err)
    output_bucket = args.output_bucket or os.environ.get("OUTPUT_BUCKET")
    if not output_bucket:
        raise CliError("no output bucket: pass --output-bucket or set OUTPUT_BUCKET (or use --embedded)")
    add_missing_sequencers(event)
    session = aws_session(args)
    s3 = session.client("s3")
    require_bucket(s3, output_bucket, "output")
    response = run_invoke(event, {"OUTPUT_BUCKET": output_bucket}, args)
    return show_invocation(out, s3, event, output_bucket, response, args.json)


def invoke_embedded(args: argparse.Namespace, event: dict[str, Any], out: Any, err: Any) -> int:
    from labeler.local.embedded_aws import EmbeddedAws
    from labeler.local.http_server import LoopbackServer
    from labeler.local.runner import add_missing_sequencers
    from labeler.local.samples import sample_routes

    backend = os.environ.get("LABEL_BACKEND") or "local"
    if backend == "local":
        from labeler.adapters.labels.local import ModelFiles, ModelNotAvailable

        try:
            ModelFiles.at().verify()
        except ModelNotAvailable as exc:
            raise CliError(str(exc)) from exc
    output_bucket = args.output_bucket or DEFAULT_LOCAL_OUTPUT_BUCKET
    with EmbeddedAws() as aws, LoopbackServer(sample_routes()) as photos:
        err.print(f"embedded S3 (moto) at {aws.endpoint_url}; sample photos at {photos.base_url}", markup=False)
        stage_embedded(aws, photos, event, output_bucket, err)
        add_missing_sequencers(event)
        env: dict[str, str | None] = {
            "OUTPUT_BUCKET": output_bucket,
            "LABEL_BACKEND": backend,
            "ALLOW_PRIVATE_NETWORKS": "true",  # the photos are on loopback; 169.254.169.254 stays blocked
            "WORK_QUEUE_URL": None,
            "STATE_TABLE": None,
            "DEAD_LETTER_QUEUE_URL": None,
        }
        err.print(f"LABEL_BACKEND={backend} OUTPUT_BUCKET={output_bucket} ALLOW_PRIVATE_NETWORKS=true", markup=False)
        response = run_invoke(event, env, args)
        return show_invocation(out, aws.client("s3"), event, output_bucket, response, args.json)


# --- the parser ---------------------------------------------------------------------------------------
def add_bucket_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("buckets (flags, else --stack outputs, else INPUT_BUCKET/OUTPUT_BUCKET)")
    group.add_argument("--input-bucket", help="the bucket manifests are uploaded to")
    group.add_argument("--output-bucket", help="the bucket results and reports are written to")
    group.add_argument("--stack", help="take both names from this CloudFormation stack's outputs")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--region", help="AWS region (default: boto3's: AWS_REGION, the profile)")
    common.add_argument("--profile", help="AWS profile (default: boto3's: AWS_PROFILE)")
    common.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Label the images of S3 manifests: submit and follow a manifest, read its results, "
        "render a gallery, or run the Lambda handler locally.",
        epilog="exit status: 0 done, 1 the run did not complete, 2 fix something first (bucket, file, stack, "
        "credentials). See docs/local.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit",
        parents=[common],
        help="upload a manifest and follow it to the end",
        description="Upload MANIFEST to the input bucket, follow its progress until the report says it is done "
        "(or --timeout), then print the result table.",
    )
    submit.add_argument("manifest", metavar="MANIFEST", nargs="?", help="a local .json or .jsonl manifest file")
    add_bucket_options(submit)
    submit.add_argument("--key", help="object key in the input bucket (default: manifests/<file name>)")
    submit.add_argument("--timeout", type=float, default=900.0, help="stop waiting after this many seconds (900)")
    submit.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks (1)")
    submit.add_argument(
        "--completion-queue",
        metavar="URL",
        help="wait for the run's completion event on this SQS queue (default: the stack's CompletionQueueUrl "
        "output, else COMPLETION_QUEUE_URL); without one, the report is polled",
    )
    submit.add_argument("--json", action="store_true", help="print the report and records as JSON")
    submit.set_defaults(func=cmd_submit)

    results = commands.add_parser(
        "results",
        parents=[common],
        help="print the results of a manifest",
        description="Print the result table (or JSON) of a manifest that was processed.",
    )
    results.add_argument("manifest_key", metavar="MANIFEST_KEY", help="the manifest's key, or s3://bucket/key")
    add_bucket_options(results)
    results.add_argument("--json", action="store_true", help="print the report and records as JSON")
    results.set_defaults(func=cmd_results)

    from labeler.local.estimate import add_estimate_command  # the command's code lives in its own module

    add_estimate_command(commands, common)

    gallery = commands.add_parser(
        "gallery",
        parents=[common],
        help="write a self-contained HTML gallery of a manifest's results",
        description="Write one HTML file: a card per entry with a thumbnail (downloaded again through the "
        "SSRF-safe fetcher; a placeholder when that fails), labels or the error.",
    )
    gallery.add_argument("manifest_key", metavar="MANIFEST_KEY", help="the manifest's key, or s3://bucket/key")
    gallery.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the HTML file to write")
    add_bucket_options(gallery)
    gallery.add_argument("--no-thumbnails", action="store_true", help="download nothing: placeholders only")
    gallery.add_argument(
        "--allow-private-networks",
        action="store_true",
        help="allow thumbnails from loopback/private addresses (local runs; also ALLOW_PRIVATE_NETWORKS=true)",
    )
    gallery.add_argument("--fetch-timeout", type=float, default=10.0, help="seconds per thumbnail download (10)")
    gallery.set_defaults(func=cmd_gallery)

    invoke = commands.add_parser(
        "invoke",
        parents=[common],
        help="run the Lambda handler on an S3 event file (no Docker)",
        description="Run the manifest handler in this process on EVENT.json, like `sam local invoke`. "
        "With --embedded: on an embedded S3 (moto) with a sample manifest of photos served on loopback "
        "at every key the event names, LABEL_BACKEND=local unless set. Without: against AWS (or "
        "AWS_ENDPOINT_URL_S3) with your credentials; OUTPUT_BUCKET from --output-bucket or the environment.",
    )
    invoke.add_argument("event", metavar="EVENT.json", help="an S3 event, e.g. events/s3-put-manifest.json")
    invoke.add_argument("--embedded", action="store_true", help="use an embedded S3 and sample photos")
    invoke.add_argument("--output-bucket", help=f"OUTPUT_BUCKET (embedded default: {DEFAULT_LOCAL_OUTPUT_BUCKET})")
    invoke.add_argument("--timeout", type=float, default=900.0, help="the function timeout in seconds (900)")
    invoke.add_argument("--memory", type=int, default=1024, help="memory_limit_in_mb of the context (1024)")
    invoke.add_argument(
        "--log-level", default="WARNING", help="the handler's log level (WARNING; INFO shows its JSON logs)"
    )
    invoke.add_argument("--json", action="store_true", help="print the response, reports and records as JSON")
    invoke.set_defaults(func=cmd_invoke)

    # Commands and options whose code lives in their own modules (labeler/local/): registered here, nothing else.
    from labeler.local.query_command import add_query_command
    from labeler.local.recheck_command import add_recheck_command
    from labeler.local.s3_prefix import add_prefix_options

    add_prefix_options(submit, cmd_submit)
    add_query_command(commands, common)
    add_recheck_command(commands, common)
    return parser


def fail(message: str, status: int) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return status


def aws_error_message(exc: Any) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "?"))
    if code == "NoSuchBucket":
        bucket = error.get("BucketName")
        return (f"the bucket {bucket!r} does not exist" if bucket else "a bucket does not exist (NoSuchBucket)"), 2
    if code in {"NoSuchKey", "404"}:
        return f"{exc.operation_name}: not found ({code})", 2
    if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}:
        return f"{exc.operation_name}: {code}: {error.get('Message', '')}".strip(), 2
    return f"{exc.operation_name}: {code}: {error.get('Message', '')}".strip(), 1


def main(argv: Sequence[str] | None = None) -> int:
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    from labeler.models.settings import ConfigurationError

    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    handlers: list[tuple[type[BaseException] | tuple[type[BaseException], ...], Callable[[Any], tuple[str, int]]]] = [
        (CliError, lambda exc: (str(exc), 2)),
        (RunFailed, lambda exc: (str(exc), 1)),
        (
            (NoCredentialsError, PartialCredentialsError),
            lambda exc: ("no AWS credentials found: set AWS_PROFILE, run `aws configure` or `aws sso login`", 2),
        ),
        (ProfileNotFound, lambda exc: (str(exc), 2)),
        (NoRegionError, lambda exc: ("no AWS region: pass --region or set AWS_REGION", 2)),
        (EndpointConnectionError, lambda exc: (f"cannot reach {exc.kwargs.get('endpoint_url', 'AWS')}", 2)),
        (ConfigurationError, lambda exc: (f"configuration: {exc}", 2)),
        (ClientError, aws_error_message),
    ]
    try:
        return func(args)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as exc:
        if args.debug:
            raise
        for kinds, describe in handlers:
            if isinstance(exc, kinds):
                message, status = describe(exc)
                return fail(message, status)
        if args.command == "invoke":  # the handler itself failed: that is a result, say what happened
            frames = traceback.extract_tb(exc.__traceback__)
            where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            return fail(f"the handler raised {type(exc).__name__}: {exc}{where}", 1)
        raise


if __name__ == "__main__":
    sys.exit(main())
