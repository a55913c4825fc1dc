"""A killed invocation: its retry fails while the delivery looks in progress, and finishes it after the lease.

A kill is stood in for by a ``BaseException`` raised inside the work (it passes Powertools'
``except Exception``, as a kill does); tests/faults/ kills real processes with SIGKILL.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from labeler.handlers import manifest_created, work_batch
from labeler.handlers.composition import get_once, reset_services
from labeler.handlers.idempotency import DuplicateInProgress
from labeler.logic import pipeline
from tests.conftest import Buckets, FakeLambdaContext, manifest_of
from tests.support.crash import SimulatedKill, delivery_items, wait_until_leases_expire
from tests.support.fake_rekognition import FakeRekognition
from tests.support.site import Site
from tests.support.sqs_driver import QueueInfo, drain, sqs_event

LEASE_SECONDS = 1.0
DISTINCT_IMAGES = ("/photo.jpg", "/photo.png", "/photo.webp", "/photo.gif", "/photo.bmp", "/coffee.jpg")


@pytest.fixture
def short_lease(state_table: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("IDEMPOTENCY_LEASE_SECONDS", str(LEASE_SECONDS))
    reset_services()
    return state_table


def kill_at_prepare(monkeypatch: pytest.MonkeyPatch, call: int) -> Any:
    """Make the ``call``-th image preparation of this process kill the invocation; returns the real function."""
    real = pipeline.prepare_image
    calls = itertools.count(1)

    def prepare(data: bytes, **options: Any) -> Any:
        if next(calls) == call:
            raise SimulatedKill()
        return real(data, **options)

    monkeypatch.setattr(pipeline, "prepare_image", prepare)
    return real


def test_a_killed_manifest_run_fails_its_early_retry_and_is_finished_after_the_lease(
    buckets: Buckets, site: Site, fake_rekognition: FakeRekognition, short_lease: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_WORKERS", "1")
    reset_services()
    event = buckets.put_manifest("killed.json", [{"id": p.strip("/"), "url": site.url(p)} for p in DISTINCT_IMAGES])
    real_prepare = kill_at_prepare(monkeypatch, call=3)

    with pytest.raises(SimulatedKill):
        manifest_created.handler(event, FakeLambdaContext())
    monkeypatch.setattr(pipeline, "prepare_image", real_prepare)
    assert buckets.report()["status"] == "in_progress"  # written when the run started: a dead run is visible
    done_before_the_kill = len(buckets.records())
    assert 0 < done_before_the_kill < len(DISTINCT_IMAGES)

    # Lambda's retry comes while the dead invocation's record still looks in progress: it fails, it
    # never answers success (which would drop the manifest for good).
    with pytest.raises(DuplicateInProgress):
        manifest_created.handler(event, FakeLambdaContext())

    wait_until_leases_expire(buckets.aws.client("dynamodb"), short_lease, LEASE_SECONDS)
    response = manifest_created.handler(event, FakeLambdaContext())

    assert response["manifests"][0]["status"] == "complete"
    assert sorted(r["image_id"] for r in buckets.records()) == sorted(p.strip("/") for p in DISTINCT_IMAGES)
    assert fake_rekognition.state.successful_calls == len(DISTINCT_IMAGES)  # nothing was labeled twice
    report = buckets.report()
    assert (report["status"], report["succeeded"], report["already_done"]) == ("complete", 6, done_before_the_kill)


def receive_one(sqs: Any, queue: QueueInfo) -> dict[str, Any]:
    messages = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=1, AttributeNames=["All"])["Messages"]
    return dict(messages[0])


def test_a_killed_work_batch_fails_its_early_redelivery_and_is_finished_after_the_lease(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    state_table: str,
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue, _ = fanout_env
    monkeypatch.setenv("IDEMPOTENCY_LEASE_SECONDS", str(LEASE_SECONDS))
    reset_services()
    sqs = buckets.aws.client("sqs")
    manifest_created.handler(buckets.put_manifest("batches.json", manifest_of(site, 6)), FakeLambdaContext())
    message = receive_one(sqs, queue)
    real_prepare = kill_at_prepare(monkeypatch, call=1)

    with pytest.raises(SimulatedKill):
        work_batch.handler(sqs_event([message], queue.arn), FakeLambdaContext())
    monkeypatch.setattr(pipeline, "prepare_image", real_prepare)

    # SQS delivers it again (here at once): the delivery looks in progress, so it fails and comes back.
    sqs.change_message_visibility(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    again = receive_one(sqs, queue)
    assert again["MessageId"] == message["MessageId"]
    with pytest.raises(BatchProcessingError, match="already in progress"):  # every record failed: the whole batch
        work_batch.handler(sqs_event([again], queue.arn), FakeLambdaContext())
    sqs.change_message_visibility(QueueUrl=queue.url, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=0)

    wait_until_leases_expire(buckets.aws.client("dynamodb"), state_table, LEASE_SECONDS)
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())

    report = buckets.report()
    assert (report["status"], report["succeeded"], report["failed"]) == ("complete", 6, 0)
    assert len(buckets.records()) == 6


def test_the_heartbeat_renews_the_lease_of_the_record_powertools_wrote(short_lease: str, buckets: Buckets) -> None:
    """Our key derivation finds Powertools' record (pinned 3.37.0: this fails if Powertools changes it)."""
    dynamodb = buckets.aws.client("dynamodb")
    once = get_once()
    once.register_context(FakeLambdaContext())
    delivery = {"run": "in/a.json~0#v1", "batch": 0}
    seen: dict[str, Any] = {}

    def work() -> dict[str, Any]:
        key = once.record_key(delivery)
        first = dynamodb.get_item(TableName=short_lease, Key=key, ConsistentRead=True)["Item"]
        assert first["status"]["S"] == "INPROGRESS"
        start = int(first["in_progress_expiration"]["N"])
        assert start <= int(time.time() * 1000) + int(LEASE_SECONDS * 1000)  # a lease, not the invocation's 900 s
        for _ in range(200):  # until a heartbeat moved it (one comes every third of the lease)
            item = dynamodb.get_item(TableName=short_lease, Key=key, ConsistentRead=True)["Item"]
            if int(item["in_progress_expiration"]["N"]) > start:
                break
            time.sleep(LEASE_SECONDS / 10)
        seen.update(key=key, start=start, renewed=int(item["in_progress_expiration"]["N"]))
        return {"done": True}

    assert once.run_once(delivery, work) == {"done": True}
    assert seen["renewed"] > seen["start"]
    records = delivery_items(dynamodb, short_lease)
    assert [record["id"] for record in records] == [seen["key"]["id"]]
    assert records[0]["status"]["S"] == "COMPLETED"
