"""``s3-image-labeler recheck MANIFEST``: re-check one manifest now, as the schedule re-checks ``watch/``.

    s3-image-labeler recheck watch/photos.json --stack s3-image-labeler     # the deployed stack does it
    s3-image-labeler recheck s3://my-input/watch/photos.json --embedded --output-bucket my-output

With ``--stack`` (or ``--function``) the command invokes ManifestFunction asynchronously with a re-check
event for that one manifest, exactly the event EventBridge Scheduler sends for ``watch/`` but naming one
key, then waits for the run's completion event (the stack's ``CompletionQueueUrl``, ``--completion-queue``
or ``COMPLETION_QUEUE_URL``; else it polls the report). Otherwise the handler runs in this process against
the endpoint boto3 is pointed at (``--embedded``: a local S3-compatible endpoint such as the one ``make
demo`` runs, with dummy credentials and the offline model), and the re-check runs inline.

Before anything is started, the manifest's report and listing are read with the caller's credentials and
the tick's own rule (``labeler.logic.recheck.plan_recheck``) says whether there is something to re-check.
Exit status: 0 the re-check ended ``complete``; 1 it ended otherwise, timed out, or was not started (the
reason is printed); 2 something to fix first (no such manifest, never labeled, no bucket or stack).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from labeler.logic.recheck import EVENT_KEY, NOT_FOUND, NOT_LABELED_YET, plan_recheck
from labeler.models.records import ManifestRef, recheck_iso, recheck_time

DEFAULT_TIMEOUT_SECONDS = 900.0


def recheck_event(bucket: str, *, at: str, key: str | None = None, prefix: str | None = None) -> dict[str, Any]:
    """The event that asks ManifestFunction for re-checks: one ``key``, or every manifest under ``prefix``
    (what the template's schedule sends, ``at`` being its scheduled time, ISO 8601).

    >>> recheck_event("in", key="watch/a.json", at="2026-11-26T00:00:00.000Z")
    {'recheck': {'bucket': 'in', 'at': '2026-11-26T00:00:00.000Z', 'key': 'watch/a.json'}}
    """
    request: dict[str, Any] = {"bucket": bucket, "at": at}
    if key is not None:
        request["key"] = key
    if prefix is not None:
        request["prefix"] = prefix
    return {EVENT_KEY: request}


def recheck_line(report: Mapping[str, Any]) -> Any:
    """One line: what a re-check found (unchanged, changed and which, gone, failed), its status and cost."""
    from rich.text import Text

    from labeler.local.gallery import cost_text

    found = report.get("recheck") or {}
    status = str(report.get("status", "?"))
    line = Text("re-check: ", style="bold")
    line.append(status, style="bold green" if status == "complete" else "bold red")
    line.append(f" · {report.get('total', 0)} entries · {found.get('unchanged', 0)} unchanged · ")
    line.append(f"{found.get('changed', 0)} changed", style="yellow" if found.get("changed") else "")
    ids = list(found.get("changed_ids") or [])
    if ids:
        line.append(
            " (" + ", ".join(ids[:10]) + (", …" if len(ids) > 10 or found.get("changed_ids_truncated") else "") + ")"
        )
    line.append(f" · {found.get('gone', 0)} gone · {found.get('failed', 0)} failed")
    codes = found.get("failed_by_code") or {}
    if codes:
        line.append(" (" + ", ".join(f"{code} {count}" for code, count in sorted(codes.items())) + ")", style="red")
    cost = report.get("cost")
    if isinstance(cost, Mapping):
        line.append(f" · {cost_text(cost)}")
    return line


def _report_and_plan(s3: Any, input_bucket: str, output_bucket: str, key: str, at: str) -> ManifestRef:
    """The re-check run the manifest would get now, by the tick's rule; CliError/RunFailed when none."""
    from labeler.adapters.store import S3Store
    from labeler.cli import CliError, RunFailed, require_bucket
    from labeler.logic.keys import report_key

    require_bucket(s3, output_bucket, "output")
    require_bucket(s3, input_bucket, "input")
    listed = [found for found in S3Store(s3, output_bucket).list_objects(input_bucket, key) if found.key == key]
    if not listed:
        raise CliError(f"{NOT_FOUND}: s3://{input_bucket}/{key}")
    report = S3Store(s3, output_bucket).get_json(report_key(ManifestRef(input_bucket, key)))
    plan = plan_recheck(report, listed[0].etag, at)
    if plan.ref is None:
        message = f"s3://{input_bucket}/{key} is not re-checked: {plan.reason}"
        raise CliError(message) if plan.reason == NOT_LABELED_YET else RunFailed(message)
    return plan.ref


def _embedded_env(args: argparse.Namespace) -> dict[str, str | None]:
    from labeler.cli import CliError
    from labeler.local.embedded_aws import DUMMY_SECRET

    if not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        raise CliError("--embedded needs a local endpoint: set AWS_ENDPOINT_URL_S3 (e.g. to a running moto_server)")
    return {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_REGION": args.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "LABEL_BACKEND": os.environ.get("LABEL_BACKEND") or "local",
        "ALLOW_PRIVATE_NETWORKS": "true",  # local photo servers are on loopback; 169.254.169.254 stays blocked
    }


def _run_here(args: argparse.Namespace, event: dict[str, Any], output_bucket: str) -> dict[str, Any]:
    """The handler in this process on the re-check event: no queue, no state table, so the re-check runs inline."""
    from labeler.local.runner import LocalLambdaContext, handler_environment, invoke_handler

    env: dict[str, str | None] = {
        "OUTPUT_BUCKET": output_bucket,
        "WORK_QUEUE_URL": None,
        "STATE_TABLE": None,
        "DEAD_LETTER_QUEUE_URL": None,
    }
    with handler_environment(env, log_level=args.log_level):
        return invoke_handler(event, LocalLambdaContext(timeout_seconds=args.timeout))


def _invoke_stack(session: Any, function: str, event: dict[str, Any]) -> None:
    """Invoke ManifestFunction asynchronously (as EventBridge Scheduler does): Lambda retries it, failures go to
    the FailureQueue."""
    from labeler.cli import RunFailed

    answer = session.client("lambda").invoke(
        FunctionName=function, InvocationType="Event", Payload=json.dumps(event).encode("utf-8")
    )
    if int(answer.get("StatusCode", 0)) not in (200, 202):
        raise RunFailed(f"Lambda did not accept the invocation of {function}: HTTP {answer.get('StatusCode')}")


def _wait_for_end(
    args: argparse.Namespace, session: Any, s3: Any, ref: ManifestRef, output_bucket: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the run's completion event, its report) once it has ended; (None, last report seen) on timeout."""
    from labeler.cli import completion_queue_url
    from labeler.local.events import CompletionWaiter
    from labeler.local.runner import TERMINAL_STATUSES, OutputReader

    reader = OutputReader(s3, output_bucket, ref.bucket, ref.key)
    queue_url = completion_queue_url(args, session)
    deadline = time.monotonic() + args.timeout
    if queue_url:
        waiter = CompletionWaiter(
            session.client("sqs"),
            queue_url,
            manifest=(ref.bucket, ref.key),
            run_id=ref.upload_run_id,
            recheck=ref.recheck,
        )
        event = waiter.wait(timeout_seconds=args.timeout, poll_seconds=1)
        return event, reader.report()
    report = None
    while time.monotonic() < deadline:
        report = reader.report()
        described = (report or {}).get("manifest") or {}
        if described.get("recheck") == ref.recheck and (report or {}).get("status") in TERMINAL_STATUSES:
            return None, report
        time.sleep(1.0)
    return None, report


def cmd_recheck(args: argparse.Namespace) -> int:
    from labeler.cli import (
        RunFailed,
        aws_session,
        consoles,
        print_json,
        resolve_buckets,
        split_manifest_argument,
        stack_outputs,
    )
    from labeler.local.runner import patched_environ

    out, err = consoles()
    bucket_from_url, key = split_manifest_argument(args.manifest, None)
    if bucket_from_url:
        args.input_bucket = bucket_from_url
    at = recheck_time(datetime.now(UTC))
    env = _embedded_env(args) if args.embedded else {}
    with patched_environ(env):
        session = aws_session(args)
        buckets = resolve_buckets(args, session, need_input=True)
        assert buckets.input is not None
        s3 = session.client("s3")
        ref = _report_and_plan(s3, buckets.input, buckets.output, key, at)
        event = recheck_event(buckets.input, key=key, at=recheck_iso(at))
        function = args.function or (
            stack_outputs(session, args.stack).get("ManifestFunctionArn") if args.stack else None
        )
        err.print(
            f"re-checking s3://{ref.bucket}/{ref.key} (upload {ref.upload_run_id}, run {ref.run_id})", markup=False
        )
        if function:
            _invoke_stack(session, function, event)
            err.print(f"invoked {function} asynchronously; waiting for the re-check to end", markup=False)
            announced, report = _wait_for_end(args, session, s3, ref, buckets.output)
        else:
            answer = _run_here(args, event, buckets.output)
            err.print(f"handler returned: {json.dumps(answer['recheck'], default=str)[:300]}", markup=False)
            announced, report = None, _report_of(s3, buckets.output, ref)
    ended = report is not None and (report.get("manifest") or {}).get("recheck") == ref.recheck
    if args.json:
        print_json({"event": announced, "report": report if ended else None})
    elif ended:
        assert report is not None
        out.print(recheck_line(report))
    if not ended or report is None or report.get("status") not in {"complete", "capped", "partial", "failed"}:
        raise RunFailed(f"the re-check of s3://{ref.bucket}/{ref.key} did not end within {args.timeout:g} s")
    if report.get("status") != "complete":
        raise RunFailed(f"the re-check ended {report.get('status')}: {(report.get('error') or {}).get('message', '')}")
    return 0


def _report_of(s3: Any, output_bucket: str, ref: ManifestRef) -> dict[str, Any] | None:
    from labeler.local.runner import OutputReader

    return OutputReader(s3, output_bucket, ref.bucket, ref.key).report()


def add_recheck_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``recheck`` on the CLI's subcommands."""
    from labeler.cli import add_bucket_options

    recheck = commands.add_parser(
        "recheck",
        parents=[common],
        help="re-check one manifest now: relabel only the images that changed",
        description="Re-check MANIFEST as the schedule re-checks watch/: a conditional GET per image, DetectLabels "
        "only for new bytes, gone images marked. With --stack (or --function): the deployed ManifestFunction "
        "does it (invoked asynchronously) and the command waits for its completion event. Otherwise the handler "
        "runs here, against the endpoint boto3 uses (--embedded: a local one, with the offline model).",
    )
    recheck.add_argument("manifest", metavar="MANIFEST", help="the manifest's key, or s3://bucket/key")
    add_bucket_options(recheck)
    recheck.add_argument("--function", help="the ManifestFunction to invoke (default: the stack's ManifestFunctionArn)")
    recheck.add_argument(
        "--completion-queue",
        metavar="URL",
        help="wait for the completion event here (default: the stack's CompletionQueueUrl, else COMPLETION_QUEUE_URL)",
    )
    recheck.add_argument(
        "--embedded",
        action="store_true",
        help="a local S3-compatible endpoint (AWS_ENDPOINT_URL_S3), dummy credentials, LABEL_BACKEND=local unless set",
    )
    recheck.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds to wait for the re-check (900)"
    )
    recheck.add_argument("--log-level", default="WARNING", help="the handler's log level when it runs here (WARNING)")
    recheck.add_argument("--json", action="store_true", help="print the completion event and the report as JSON")
    recheck.set_defaults(func=cmd_recheck)
