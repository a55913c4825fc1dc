"""Completion events on the embedded endpoint: PutEvents on the default bus, a rule with an SQS target, the wait.

The adapter talks to moto's EventBridge through botocore as it would to AWS; the rule (made by the
local helper, as the README's rule) delivers to SQS, and the event is read back from the queue.
"""

from __future__ import annotations

import doctest
import json
from typing import Any

import pytest

from labeler.adapters import events as events_module
from labeler.adapters.events import (
    DETAIL_TYPE_FAILED,
    DETAIL_TYPE_LABELED,
    SOURCE,
    CompletionEvents,
    EventPublishFailed,
    build_events_client,
    completion_entry,
)
from labeler.local.embedded_aws import EmbeddedAws
from labeler.local.events import COMPLETION_EVENT_PATTERN, wait_for_completion_event


def report(status: str = "complete", key: str = "manifests/cats.json", **extra: Any) -> dict[str, Any]:
    return {
        "manifest": {"bucket": "my-input", "key": key, "etag": "abc123", "sequencer": "0A1B"},
        "status": status,
        "total": 3,
        "succeeded": 2 if status == "complete" else 0,
        "failed": 1 if status == "complete" else 0,
        "errors_by_code": {"http_status": 1} if status == "complete" else {},
        "labels_from_cache": 0,
        "not_modified": 0,
        "already_done": 0,
        "mode": "inline",
        "results_prefix": f"results/my-input/{key}~18d58565eadf85a4/",
        "timings_ms": {"total": 12.5},
        "started_at": "2026-11-25T10:00:00.000Z",
        "finished_at": "2026-11-25T10:00:01.000Z",
        **extra,
    }


def test_doctests() -> None:
    failures, attempted = doctest.testmod(events_module, raise_on_error=False)
    assert attempted > 0 and failures == 0


def test_a_complete_run_puts_one_manifest_labeled_event_that_the_rule_delivers(
    embedded_aws: EmbeddedAws, completion_queue: str
) -> None:
    sqs = embedded_aws.client("sqs")
    publisher = CompletionEvents(build_events_client(), output_bucket="my-output")
    event_id = publisher.publish(report(), "reports/my-input/manifests/cats.json~18d58565eadf85a4.json")

    event = wait_for_completion_event(
        sqs, completion_queue, manifest=("my-input", "manifests/cats.json"), timeout_seconds=30
    )
    assert event is not None
    assert event["id"] == event_id
    assert event["source"] == SOURCE and event["detail-type"] == DETAIL_TYPE_LABELED
    detail = event["detail"]
    assert detail["report"] == {
        "bucket": "my-output",
        "key": "reports/my-input/manifests/cats.json~18d58565eadf85a4.json",
    }
    assert detail["manifest"] == report()["manifest"]
    assert (detail["status"], detail["total"], detail["succeeded"], detail["failed"]) == ("complete", 3, 2, 1)
    assert detail["errors_by_code"] == {"http_status": 1}
    assert "timings_ms" not in detail  # the summary, not the whole report
    # Exactly one: nothing else is waiting in the queue.
    assert wait_for_completion_event(sqs, completion_queue, timeout_seconds=1) is None


@pytest.mark.parametrize("status", ["failed", "partial"])
def test_a_failed_or_partial_run_puts_manifest_failed_with_the_error(
    embedded_aws: EmbeddedAws, completion_queue: str, status: str
) -> None:
    error = {"code": "manifest_invalid", "message": "x" * 5000}
    CompletionEvents(build_events_client(), output_bucket="my-output").publish(
        report(status, key=f"manifests/{status}.json", error=error), f"reports/{status}.json"
    )
    event = wait_for_completion_event(
        embedded_aws.client("sqs"),
        completion_queue,
        manifest=("my-input", f"manifests/{status}.json"),
        timeout_seconds=30,
    )
    assert event is not None and event["detail-type"] == DETAIL_TYPE_FAILED
    assert event["detail"]["status"] == status
    assert event["detail"]["error"]["code"] == "manifest_invalid"
    assert len(event["detail"]["error"]["message"]) == events_module.MAX_ERROR_MESSAGE_CHARS


def test_waiting_takes_only_the_event_of_its_manifest_and_run(embedded_aws: EmbeddedAws, completion_queue: str) -> None:
    sqs = embedded_aws.client("sqs")
    publisher = CompletionEvents(build_events_client(), output_bucket="my-output")
    publisher.publish(report(key="manifests/a.json"), "reports/a.json")
    publisher.publish(report(key="manifests/b.json"), "reports/b.json")

    assert (
        wait_for_completion_event(
            sqs, completion_queue, manifest=("my-input", "manifests/b.json"), run_id="other", timeout_seconds=1
        )
        is None
    )
    b = wait_for_completion_event(
        sqs, completion_queue, manifest=("my-input", "manifests/b.json"), run_id="0A1B", timeout_seconds=30
    )
    a = wait_for_completion_event(sqs, completion_queue, manifest=("my-input", "manifests/a.json"), timeout_seconds=30)
    assert b is not None and b["detail"]["report"]["key"] == "reports/b.json"
    assert a is not None and a["detail"]["report"]["key"] == "reports/a.json"  # left in the queue for its waiter


def test_a_run_that_has_not_ended_puts_no_event() -> None:
    for status in ("in_progress", "incomplete", None):
        with pytest.raises(ValueError, match="has not ended"):
            completion_entry({"status": status}, "reports/x.json", output_bucket="out")


def test_the_rule_matches_only_our_two_detail_types(embedded_aws: EmbeddedAws, completion_queue: str) -> None:
    assert COMPLETION_EVENT_PATTERN == {"source": [SOURCE], "detail-type": [DETAIL_TYPE_LABELED, DETAIL_TYPE_FAILED]}
    embedded_aws.client("events").put_events(
        Entries=[{"Source": SOURCE, "DetailType": "Something Else", "Detail": json.dumps({"manifest": {}})}]
    )
    messages = embedded_aws.client("sqs").receive_message(QueueUrl=completion_queue, WaitTimeSeconds=1)
    assert not messages.get("Messages")


class DetailDroppingClient:
    """The real EventBridge client, but the entry loses its Detail on the way: EventBridge refuses that entry."""

    def __init__(self) -> None:
        self.client = build_events_client()
        self.calls = 0

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        return self.client.put_events(Entries=[{k: v for k, v in e.items() if k != "Detail"} for e in Entries])


def test_a_refused_entry_is_surfaced_with_its_error_code(embedded_aws: EmbeddedAws) -> None:
    client = DetailDroppingClient()
    publisher = CompletionEvents(client, output_bucket="my-output", sleep=lambda seconds: None)
    with pytest.raises(EventPublishFailed) as raised:
        publisher.publish(report(), "reports/x.json")
    assert raised.value.code == "InvalidArgument"  # HTTP 200 with FailedEntryCount 1: never taken for a success
    assert client.calls == 1  # not a transient refusal: no retry


class ScriptedClient:
    """Answers PutEvents with the given entry results in turn (the shape AWS documents for FailedEntryCount)."""

    def __init__(self, *results: dict[str, Any]) -> None:
        self.results = list(results)
        self.entries: list[list[dict[str, Any]]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.entries.append(Entries)
        result = self.results.pop(0)
        return {"FailedEntryCount": int("ErrorCode" in result), "Entries": [result]}


def test_transient_refusals_are_retried_then_surfaced() -> None:
    throttled = {"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"}
    waits: list[float] = []
    client = ScriptedClient(throttled, {"ErrorCode": "InternalFailure", "ErrorMessage": "oops"}, {"EventId": "e-1"})
    assert CompletionEvents(client, output_bucket="out", sleep=waits.append).publish(report(), "r.json") == "e-1"
    assert len(client.entries) == 3 and client.entries[0] == client.entries[2]  # the same entry each time
    assert waits == [0.2, 0.4]

    client = ScriptedClient(throttled, throttled, throttled)
    with pytest.raises(EventPublishFailed, match="ThrottlingException"):
        CompletionEvents(client, output_bucket="out", sleep=waits.append).publish(report(), "r.json")
    assert len(client.entries) == 3


def test_every_final_status_has_its_detail_type() -> None:
    """A run that ends, whatever its final status, puts its event (a status the adapter did not know
    once made the capped runs' events fail)."""
    from labeler.adapters.events import DETAIL_TYPES
    from labeler.logic.report import FINAL_STATUSES

    assert set(DETAIL_TYPES) == set(FINAL_STATUSES)
