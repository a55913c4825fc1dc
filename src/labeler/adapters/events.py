"""Completion events: one EventBridge event per run on the default bus, ``Manifest Labeled`` or ``Manifest Failed``.

The event's ``source`` is ``s3-image-labeler``; its ``detail`` is the report's summary (manifest,
status, counts, errors by code, mode, prefixes, times) plus where the report is
(``{"report": {"bucket", "key"}}``). A rule on the default bus routes it anywhere (SQS, SNS e-mail,
a Lambda, Step Functions); the template lets the functions put exactly these two detail types with
this source on the default bus, nothing else.

PutEvents answers 200 even when an entry was refused: the refusal is in ``FailedEntryCount`` and the
entry's ``ErrorCode``. Refusals that can pass on a retry (throttling, internal errors) are retried
a few times; anything else, or a refusal that persists, raises :class:`EventPublishFailed`.

>>> events = CompletionEvents(build_events_client(), output_bucket="my-output")     # doctest: +SKIP
>>> events.publish(report, "reports/my-input/manifests/cats.json~18d58565eadf85a4.json")  # doctest: +SKIP
'6a7e8feb-b491-4cf7-a9f1-bf3703467718'
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

SOURCE = "s3-image-labeler"
DETAIL_TYPE_LABELED = "Manifest Labeled"
DETAIL_TYPE_FAILED = "Manifest Failed"
DEFAULT_EVENT_BUS = "default"
# Report statuses that end a run, and the event each one puts. ``partial``: the manifest broke part-way.
DETAIL_TYPES: dict[str, str] = {
    "complete": DETAIL_TYPE_LABELED,
    # capped: the run stopped at its DetectLabels cap with entries over_budget; the job is not done
    # (a re-upload with a higher cap finishes it), so whoever watches for failures must hear of it.
    "capped": DETAIL_TYPE_FAILED,
    "partial": DETAIL_TYPE_FAILED,
    "failed": DETAIL_TYPE_FAILED,
}
# Entry error codes worth another try (EventBridge's own words for a transient refusal).
RETRYABLE_ENTRY_ERRORS = frozenset({"ThrottlingException", "InternalFailure", "InternalException"})
# The report fields copied into the detail; the per-entry records stay in results/.
SUMMARY_FIELDS = (
    "manifest",
    "status",
    "total",
    "succeeded",
    "failed",
    "errors_by_code",
    "labels_from_cache",
    "not_modified",
    "already_done",
    "cost",
    "mode",
    "recheck",  # a re-check run's findings (unchanged, changed, gone, failed, changed ids); null otherwise
    "results_prefix",
    "started_at",
    "finished_at",
)
MAX_ERROR_MESSAGE_CHARS = 1000  # a manifest error's message is ours, but keep the event far from 256 KiB


class EventPublishFailed(RuntimeError):
    """EventBridge refused the completion event (``code`` is the entry's ErrorCode)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"PutEvents refused the completion event: {code}: {message}")
        self.code = code
        self.message = message


def detail_type_for(status: str) -> str:
    """``Manifest Labeled`` for a complete run, ``Manifest Failed`` for a failed, partial or capped one.

    >>> detail_type_for("complete"), detail_type_for("partial")
    ('Manifest Labeled', 'Manifest Failed')
    """
    try:
        return DETAIL_TYPES[status]
    except KeyError:
        raise ValueError(f"a run with status {status!r} has not ended: no completion event") from None


def completion_detail(report: Mapping[str, Any], report_key: str, *, output_bucket: str) -> dict[str, Any]:
    """The event's ``detail``: the report's summary and where the report is."""
    detail: dict[str, Any] = {name: report[name] for name in SUMMARY_FIELDS if name in report}
    error = report.get("error")
    if isinstance(error, Mapping):
        detail["error"] = {
            "code": error.get("code"),
            "message": str(error.get("message", ""))[:MAX_ERROR_MESSAGE_CHARS],
        }
    detail["report"] = {"bucket": output_bucket, "key": report_key}
    return detail


def completion_entry(
    report: Mapping[str, Any], report_key: str, *, output_bucket: str, event_bus: str = DEFAULT_EVENT_BUS
) -> dict[str, Any]:
    """One ``PutEvents`` entry (``Source``, ``DetailType``, ``Detail`` as a JSON string, ``EventBusName``).

    >>> entry = completion_entry({"status": "complete", "total": 2}, "reports/x.json", output_bucket="out")
    >>> entry["Source"], entry["DetailType"], json.loads(entry["Detail"])["report"]
    ('s3-image-labeler', 'Manifest Labeled', {'bucket': 'out', 'key': 'reports/x.json'})
    """
    detail = completion_detail(report, report_key, output_bucket=output_bucket)
    return {
        "Source": SOURCE,
        "DetailType": detail_type_for(str(report.get("status"))),
        "Detail": json.dumps(detail, ensure_ascii=False, separators=(",", ":"), default=str),
        "EventBusName": event_bus,
    }


def build_events_client() -> Any:
    import boto3

    from labeler.adapters.aws_config import client_config

    return boto3.client("events", config=client_config(retries={"mode": "standard", "max_attempts": 5}))


class CompletionEvents:
    """Puts the completion event of a run; call :meth:`publish` once per run, after the final report is stored."""

    def __init__(
        self,
        client: Any,
        *,
        output_bucket: str,
        event_bus: str = DEFAULT_EVENT_BUS,
        max_attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.output_bucket = output_bucket
        self.event_bus = event_bus
        self.max_attempts = max(1, max_attempts)
        self.sleep = sleep

    def publish(self, report: Mapping[str, Any], report_key: str) -> str:
        """Put the event; returns its EventId. Raises :class:`EventPublishFailed` when EventBridge refuses it."""
        entry = completion_entry(report, report_key, output_bucket=self.output_bucket, event_bus=self.event_bus)
        code, message = "", ""
        for attempt in range(1, self.max_attempts + 1):
            response = self.client.put_events(Entries=[entry])
            result = (response.get("Entries") or [{}])[0]
            if not response.get("FailedEntryCount") and result.get("EventId"):
                return str(result["EventId"])
            code = str(result.get("ErrorCode") or "Unknown")
            message = str(result.get("ErrorMessage") or "no EventId in the answer")
            if code not in RETRYABLE_ENTRY_ERRORS or attempt == self.max_attempts:
                break
            self.sleep(0.2 * 2 ** (attempt - 1))
        raise EventPublishFailed(code, message)
