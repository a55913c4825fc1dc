"""The index objects the pipeline writes: one per inline run or work batch, a row for every entry, rewritten in place.

Real handlers on the embedded endpoint (S3, SQS, DynamoDB), the image site and the Rekognition stand-in.
The S3 events are dated 2026-11-25 (``tests/conftest.py``), never today: the partition is the event's date.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from labeler.handlers import manifest_created, work_batch
from labeler.handlers.composition import get_fanout, get_services
from labeler.logic.fanout import WorkBatch
from labeler.logic.index_rows import INDEX_PREFIX, batch_part, decode_index_object, index_key, index_row, index_run
from labeler.logic.pipeline import ResultWriteFailed
from labeler.models.records import ManifestRef
from tests.conftest import Buckets, FakeLambdaContext, manifest_of
from tests.support.fake_rekognition import FakeRekognition
from tests.support.site import Site
from tests.support.sqs_driver import QueueInfo, drain, sqs_event

PARTITION = f"{INDEX_PREFIX}dt=2026-11-25/"


def index_objects(buckets: Buckets) -> dict[str, list[dict[str, Any]]]:
    """Every index object of the output bucket: key → rows."""
    found = {}
    for key in buckets.output_keys(INDEX_PREFIX):
        found[key] = decode_index_object(buckets.s3.get_object(Bucket=buckets.output, Key=key)["Body"].read())
    return found


def the_run(buckets: Buckets, key: str) -> ManifestRef:
    """The manifest run as the report names it (the reference the pipeline indexed it under)."""
    return ManifestRef.from_dict(buckets.report()["manifest"])


def expected_rows(buckets: Buckets, run: ManifestRef) -> list[dict[str, Any]]:
    """The rows the stored records give, in entry order: what the index must hold."""
    return [index_row(record, index_run(run)) for record in buckets.records()]


def with_mixed_entries(site: Site) -> list[Any]:
    return [
        {"id": "cat", "url": site.url("/photo.jpg")},
        {"id": "coffee", "url": site.url("/coffee.jpg")},
        {"id": "gone", "url": site.url("/missing.jpg")},  # an error record
        {"id": "cat", "url": site.url("/photo.png")},  # duplicate id: a rejected entry
        {"url": 123},  # invalid entry
    ]


# --- inline runs -------------------------------------------------------------------------------------
@pytest.mark.usefixtures("lambda_env")
def test_an_inline_run_writes_one_object_with_a_row_for_every_entry(buckets: Buckets, site: Site) -> None:
    event = buckets.put_manifest("mixed.json", with_mixed_entries(site))
    manifest_created.handler(event, FakeLambdaContext())

    run = the_run(buckets, "mixed.json")
    objects = index_objects(buckets)
    assert list(objects) == [index_key(index_run(run), "inline")]
    assert next(iter(objects)).startswith(PARTITION)  # the S3 event's date, not the day the test runs
    rows = objects[index_key(index_run(run), "inline")]
    assert rows == expected_rows(buckets, run)
    assert [(r["image_id"], r["status"], r["error_code"]) for r in rows] == [
        ("cat", "ok", None),
        ("coffee", "ok", None),
        ("gone", "error", "http_status"),
        ("cat", "error", "duplicate_id"),
        ("entry-4", "error", "invalid_entry"),
    ]
    assert rows[0]["label_names"] and rows[0]["content_sha256"] and rows[0]["image_format"] == "jpeg"
    assert {r["run_id"] for r in rows} == {event["Records"][0]["s3"]["object"]["sequencer"]}


@pytest.mark.usefixtures("lambda_env")
def test_a_retry_indexes_the_entries_an_earlier_attempt_finished_from_their_stored_records(
    buckets: Buckets, site: Site, fake_rekognition: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = buckets.put_manifest("retried.json", with_mixed_entries(site))
    store = get_services().store
    real_put = store.put_json

    def failing_put(key: str, *args: Any, **kwargs: Any) -> None:
        if key.startswith("results/") and key.endswith("/coffee.json"):
            raise OSError("S3 answered 500")
        real_put(key, *args, **kwargs)

    monkeypatch.setattr(store, "put_json", failing_put)
    with pytest.raises(ResultWriteFailed):
        manifest_created.handler(event, FakeLambdaContext())
    assert index_objects(buckets) == {}  # an entry has no record yet: nothing is indexed before the retry
    monkeypatch.setattr(store, "put_json", real_put)
    calls = fake_rekognition.state.successful_calls

    manifest_created.handler(event, FakeLambdaContext())  # Lambda's retry

    report = buckets.report()
    assert (report["status"], report["already_done"]) == ("complete", 4)
    assert fake_rekognition.state.successful_calls == calls  # nothing labeled again, the rows still have labels
    [rows] = index_objects(buckets).values()
    assert rows == expected_rows(buckets, the_run(buckets, "retried.json"))
    assert rows[0]["label_names"] and rows[0]["labeled_at"]


@pytest.mark.usefixtures("state_table")
def test_a_retried_run_overwrites_its_object_with_the_same_bytes(
    buckets: Buckets, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = buckets.put_manifest("again.json", with_mixed_entries(site))
    store = get_services().store
    real_put = store.put_json
    written: list[tuple[str, bytes]] = []
    real_put_bytes = store.put_bytes
    failed = [False]

    def report_fails_once(key: str, document: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        if key.startswith("reports/") and document["status"] == "complete" and not failed[0]:
            failed[0] = True
            raise OSError("S3 answered 500 to the final report")
        real_put(key, document, *args, **kwargs)

    def recording_put_bytes(key: str, data: bytes, content_type: str) -> None:
        written.append((key, data))
        real_put_bytes(key, data, content_type)

    monkeypatch.setattr(store, "put_json", report_fails_once)
    monkeypatch.setattr(store, "put_bytes", recording_put_bytes)
    with pytest.raises(OSError, match="final report"):
        manifest_created.handler(event, FakeLambdaContext())
    manifest_created.handler(event, FakeLambdaContext())

    assert buckets.report()["status"] == "complete"
    assert len(written) == 2 and written[0] == written[1]  # the same key, the same bytes
    assert list(index_objects(buckets)) == [written[0][0]]


@pytest.mark.usefixtures("state_table")
def test_a_failed_index_write_fails_the_invocation_and_the_retry_writes_it(
    buckets: Buckets, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = buckets.put_manifest("unindexed.json", manifest_of(site, 3))
    store = get_services().store
    real_put_bytes = store.put_bytes
    ended: list[str] = []
    get_services().on_run_finished = lambda report: ended.append(report["status"])

    def refused(key: str, data: bytes, content_type: str) -> None:
        raise OSError("S3 answered 503 SlowDown")

    monkeypatch.setattr(store, "put_bytes", refused)
    with pytest.raises(ResultWriteFailed, match="index object"):
        manifest_created.handler(event, FakeLambdaContext())
    assert buckets.report()["status"] == "incomplete"  # like a failed record write: not done, retried
    assert ended == []
    monkeypatch.setattr(store, "put_bytes", real_put_bytes)

    manifest_created.handler(event, FakeLambdaContext())

    assert buckets.report()["status"] == "complete" and ended == ["complete"]
    [rows] = index_objects(buckets).values()
    assert [r["image_id"] for r in rows] == ["img-000", "img-001", "img-002"]


# --- fanned-out runs ----------------------------------------------------------------------------------
def test_a_fanned_out_run_writes_one_object_per_batch_and_redeliveries_overwrite_them(
    buckets: Buckets, site: Site, fanout_env: tuple[QueueInfo, QueueInfo]
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    entries: list[Any] = [*manifest_of(site, 5), {"id": "img-000", "url": site.url("/photo.png")}, {"url": None}]
    event = buckets.put_manifest("large.json", entries)
    manifest_created.handler(event, FakeLambdaContext())

    messages = [
        json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10)["Messages"]
    ]
    assert {m["manifest"]["event_time"] for m in messages} == {"2026-11-25T00:00:00.000Z"}  # the run's date travels
    for message in messages:  # every batch delivered twice
        sqs.send_message(QueueUrl=queue.url, MessageBody=json.dumps(message))
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())

    report = buckets.report()
    assert (report["status"], report["batches"]) == ("complete", {"count": 4, "done": 4})
    run = index_run(ManifestRef.from_dict(report["manifest"]))
    objects = index_objects(buckets)
    assert sorted(objects) == sorted(index_key(run, batch_part(n)) for n in range(4))
    assert all(key.startswith(PARTITION) for key in objects)
    for n in range(4):  # each object: the rows of its batch's entries
        assert [r["entry_index"] for r in objects[index_key(run, batch_part(n))]] == list(
            range(2 * n, min(7, 2 * n + 2))
        )
    rows = sorted((row for rows in objects.values() for row in rows), key=lambda row: row["entry_index"])
    assert rows == expected_rows(buckets, ManifestRef.from_dict(report["manifest"]))
    assert [r["error_code"] for r in rows[5:]] == ["duplicate_id", "invalid_entry"]


def test_the_last_delivery_indexes_batch_failed_entries_and_those_an_earlier_delivery_finished(
    buckets: Buckets, site: Site, fanout_env: tuple[QueueInfo, QueueInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    manifest_created.handler(buckets.put_manifest("doomed.json", manifest_of(site, 4)), FakeLambdaContext())
    messages = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    first = next(m for m in messages if json.loads(m["Body"])["batch_index"] == 0)
    store = get_services().store
    real_put = store.put_json

    def second_entry_fails(key: str, *args: Any, **kwargs: Any) -> None:
        if key.endswith("/img-001.json"):
            raise OSError("S3 answered 500")
        real_put(key, *args, **kwargs)

    monkeypatch.setattr(store, "put_json", second_entry_fails)
    with pytest.raises(Exception):  # noqa: B017 - every record of the SQS event failed: Powertools raises
        work_batch.handler(sqs_event([first], queue.arn), FakeLambdaContext())
    monkeypatch.setattr(store, "put_json", real_put)

    fanout = get_fanout()
    assert fanout is not None
    batch = WorkBatch.from_message(json.loads(first["Body"]))
    fanout.give_up(batch, deliveries=4)  # the last delivery: labels nothing

    [rows] = index_objects(buckets).values()
    assert [(r["image_id"], r["status"], r["error_code"]) for r in rows] == [
        ("img-000", "ok", None),  # done by the first delivery: its row is its stored record's
        ("img-001", "error", "batch_failed"),
    ]
    assert rows[0]["label_names"]
