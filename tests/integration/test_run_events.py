"""The completion event of every run, put by the real handlers on the embedded endpoint's default bus.

A rule with an SQS target (the README's rule) receives them; each test counts what arrived: exactly one
event per run, inline or fanned out, complete or failed, whatever is delivered twice or retried.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from labeler.adapters.events import DETAIL_TYPE_FAILED, DETAIL_TYPE_LABELED, SOURCE
from labeler.handlers import composition, manifest_created, work_batch
from labeler.handlers.composition import get_services, reset_services
from labeler.logic.keys import report_key
from labeler.models.records import ManifestRef
from tests.conftest import Buckets, FakeLambdaContext, manifest_of
from tests.faults.test_recoveries import fail_final_report_writes
from tests.support.crash import delivery_items
from tests.support.site import Site
from tests.support.sqs_driver import QueueInfo, drain


def events_of(buckets: Buckets, queue_url: str, key: str) -> list[dict[str, Any]]:
    """Every completion event in the queue for manifest ``key`` of the test's input bucket."""
    sqs = buckets.aws.client("sqs")
    found = []
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            event = json.loads(message["Body"])
            manifest = event["detail"]["manifest"]
            if (manifest["bucket"], manifest["key"]) == (buckets.input, key):
                found.append(event)
    return found


def test_an_inline_run_puts_one_manifest_labeled_event_with_the_report_summary_and_key(
    buckets: Buckets, site: Site, lambda_env: dict[str, str], completion_queue: str
) -> None:
    entries = [*manifest_of(site, 2), {"id": "gone", "url": site.url("/missing.jpg")}]
    manifest_created.handler(buckets.put_manifest("inline.json", entries), FakeLambdaContext())

    [event] = events_of(buckets, completion_queue, "inline.json")
    assert (event["source"], event["detail-type"]) == (SOURCE, DETAIL_TYPE_LABELED)
    detail, report = event["detail"], buckets.report()
    key = report_key(ManifestRef.from_dict(report["manifest"]))
    assert detail["report"] == {"bucket": buckets.output, "key": key}
    for name in ("manifest", "status", "total", "succeeded", "failed", "errors_by_code", "mode", "started_at"):
        assert detail[name] == report[name], name
    assert (detail["status"], detail["total"], detail["errors_by_code"]) == ("complete", 3, {"http_status": 1})


def forget_deliveries(buckets: Buckets, state_table: str) -> None:
    """Delete the idempotency records (they expire after a day): a later redelivery runs the work again."""
    dynamodb = buckets.aws.client("dynamodb")
    for item in delivery_items(dynamodb, state_table):
        dynamodb.delete_item(TableName=state_table, Key={"id": item["id"]})


def test_an_inline_run_delivered_again_and_again_puts_one_event(
    buckets: Buckets, site: Site, state_table: str, completion_queue: str
) -> None:
    event = buckets.put_manifest("thrice.json", manifest_of(site, 2))
    manifest_created.handler(event, FakeLambdaContext())
    manifest_created.handler(event, FakeLambdaContext())  # S3 delivers at least once
    forget_deliveries(buckets, state_table)
    manifest_created.handler(event, FakeLambdaContext())  # a replay from the FailureQueue days later

    assert [e["detail"]["status"] for e in events_of(buckets, completion_queue, "thrice.json")] == ["complete"]


def test_a_fanned_out_run_puts_one_event_when_the_event_and_every_batch_are_delivered_again(
    buckets: Buckets, site: Site, state_table: str, fanout_env: tuple[QueueInfo, QueueInfo], completion_queue: str
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    event = buckets.put_manifest("large.json", manifest_of(site, 7))
    manifest_created.handler(event, FakeLambdaContext())
    manifest_created.handler(event, FakeLambdaContext())
    messages = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10)["Messages"]
    for message in messages:  # and every work batch twice more
        sqs.send_message(QueueUrl=queue.url, MessageBody=message["Body"])
    sqs.change_message_visibility_batch(
        QueueUrl=queue.url,
        Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for n, m in enumerate(messages)
        ],
    )
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())
    forget_deliveries(buckets, state_table)  # the last batch, finished again after its record expired
    sqs.send_message(QueueUrl=queue.url, MessageBody=messages[-1]["Body"])
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())
    manifest_created.handler(event, FakeLambdaContext())  # and the split, whose retry finds every batch counted

    [announced] = events_of(buckets, completion_queue, "large.json")
    assert (announced["detail-type"], announced["detail"]["mode"], announced["detail"]["total"]) == (
        DETAIL_TYPE_LABELED,
        "fanout",
        7,
    )


def test_a_fanned_out_run_whose_final_report_write_is_retried_puts_one_event(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    completion_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue, _ = fanout_env
    left = fail_final_report_writes(monkeypatch, times=2)
    manifest_created.handler(buckets.put_manifest("final.json", manifest_of(site, 6)), FakeLambdaContext())
    drain(buckets.aws.client("sqs"), queue, work_batch.handler, FakeLambdaContext())

    assert left == [0]
    assert [e["detail"]["status"] for e in events_of(buckets, completion_queue, "final.json")] == ["complete"]


@pytest.mark.usefixtures("state_table")
def test_an_inline_run_whose_final_report_write_is_retried_puts_one_event(
    buckets: Buckets, site: Site, completion_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_final_report_writes(monkeypatch, times=1)
    event = buckets.put_manifest("inline-final.json", manifest_of(site, 2))
    with pytest.raises(OSError, match="final report"):
        manifest_created.handler(event, FakeLambdaContext())
    assert events_of(buckets, completion_queue, "inline-final.json") == []  # not before the report is stored
    manifest_created.handler(event, FakeLambdaContext())
    manifest_created.handler(event, FakeLambdaContext())

    assert [e["detail"]["status"] for e in events_of(buckets, completion_queue, "inline-final.json")] == ["complete"]


@pytest.mark.usefixtures("state_table")
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [(b"this is not json", "failed", "manifest_invalid"), (None, "failed", "manifest_unreadable")],
)
def test_a_manifest_that_cannot_be_read_puts_one_manifest_failed_event(
    buckets: Buckets, completion_queue: str, body: bytes | None, status: str, code: str
) -> None:
    event = buckets.put_manifest("broken.json", body or b"[]")
    if body is None:
        buckets.s3.delete_object(Bucket=buckets.input, Key="broken.json")  # gone before it is read: 404
    manifest_created.handler(event, FakeLambdaContext())
    manifest_created.handler(event, FakeLambdaContext())  # a redelivery

    [announced] = events_of(buckets, completion_queue, "broken.json")
    assert announced["detail-type"] == DETAIL_TYPE_FAILED
    assert (announced["detail"]["status"], announced["detail"]["error"]["code"]) == (status, code)
    assert announced["detail"]["total"] == 0


@pytest.mark.usefixtures("lambda_env")
def test_a_manifest_that_breaks_part_way_puts_manifest_failed(
    buckets: Buckets, site: Site, completion_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_MANIFEST_ENTRIES", "2")  # the third entry breaks it
    reset_services()
    manifest_created.handler(buckets.put_manifest("partial.json", manifest_of(site, 3)), FakeLambdaContext())

    [announced] = events_of(buckets, completion_queue, "partial.json")
    assert announced["detail-type"] == DETAIL_TYPE_FAILED
    assert (announced["detail"]["status"], announced["detail"]["succeeded"]) == ("partial", 2)
    assert announced["detail"]["error"]["code"] == "manifest_too_many_entries"


class RefusesFirst:
    """EventBridge's client, but the first PutEvents entry is refused (HTTP 200, FailedEntryCount 1)."""

    def __init__(self, client: Any) -> None:
        self.client, self.calls = client, 0

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            return {"FailedEntryCount": 1, "Entries": [{"ErrorCode": "AccessDeniedException", "ErrorMessage": "no"}]}
        return dict(self.client.put_events(Entries=Entries))


@pytest.mark.usefixtures("state_table")
def test_a_refused_event_fails_the_delivery_and_the_retry_puts_it_once(
    buckets: Buckets, site: Site, completion_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labeler.adapters.events import EventPublishFailed

    real_build = composition.build_events_client
    monkeypatch.setattr(composition, "build_events_client", lambda: RefusesFirst(real_build()))
    reset_services()
    event = buckets.put_manifest("refused.json", manifest_of(site, 2))

    with pytest.raises(EventPublishFailed, match="AccessDeniedException"):
        manifest_created.handler(event, FakeLambdaContext())
    assert buckets.report()["status"] == "complete"  # the report stands; only its announcement failed
    manifest_created.handler(event, FakeLambdaContext())  # Lambda's retry: the claim was released
    manifest_created.handler(event, FakeLambdaContext())

    assert [e["detail"]["status"] for e in events_of(buckets, completion_queue, "refused.json")] == ["complete"]


@pytest.mark.usefixtures("state_table")
def test_a_run_superseded_by_a_reupload_puts_no_event(buckets: Buckets, site: Site, completion_queue: str) -> None:
    buckets.s3.put_bucket_versioning(Bucket=buckets.input, VersioningConfiguration={"Status": "Enabled"})
    older = buckets.put_manifest("twice.json", manifest_of(site, 2))
    newer = buckets.put_manifest("twice.json", manifest_of(site, 3))
    manifest_created.handler(newer, FakeLambdaContext())
    answer = manifest_created.handler(older, FakeLambdaContext())  # the older upload's event comes late

    assert answer["manifests"][0]["status"] == "superseded"
    [announced] = events_of(buckets, completion_queue, "twice.json")
    assert announced["detail"]["manifest"]["version_id"] == newer["Records"][0]["s3"]["object"]["versionId"]
    assert announced["detail"]["total"] == 3


@pytest.mark.usefixtures("lambda_env")
def test_without_a_state_table_each_run_is_announced_by_its_one_delivery(
    buckets: Buckets, site: Site, completion_queue: str
) -> None:
    assert get_services().progress is None  # local runs: the hook is called directly
    manifest_created.handler(buckets.put_manifest("a.json", manifest_of(site, 1)), FakeLambdaContext())
    manifest_created.handler(buckets.put_manifest("a.json", manifest_of(site, 2)), FakeLambdaContext())

    assert [e["detail"]["total"] for e in events_of(buckets, completion_queue, "a.json")] == [1, 2]
