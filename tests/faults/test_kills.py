"""SIGKILL in the middle of a manifest and of a work batch, then the retry Lambda or SQS would make.

The handler runs in a child process against this process's endpoints (moto's S3, SQS and DynamoDB,
the photo host, the Rekognition stand-in). The kill point is a state, not a sleep: every entry
before the held ones has its record and its cached labels, and the held downloads have begun, so
no label call is in flight when the process dies. Afterwards every entry has exactly one record,
the report is complete, and no image was sent to DetectLabels twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from labeler.handlers import manifest_created
from labeler.handlers.composition import reset_services
from labeler.handlers.idempotency import DuplicateInProgress
from tests.conftest import Buckets, FakeLambdaContext
from tests.faults.conftest import PhotoHost
from tests.faults.processes import Child, wait_until
from tests.support.crash import wait_until_leases_expire
from tests.support.fake_rekognition import FakeRekognition
from tests.support.sqs_driver import QueueInfo, sqs_event

LEASE_SECONDS = 4.0
DONE_BEFORE_THE_KILL = 4
HELD = 6


@pytest.fixture
def crash_env(state_table: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in {
        "IDEMPOTENCY_LEASE_SECONDS": str(LEASE_SECONDS),
        "DOWNLOAD_TIMEOUT_SECONDS": "60",  # the held downloads wait for the kill, not for a timeout
        "MAX_WORKERS": "2",
        "BATCH_SIZE": "25",
        "WORKER_MAX_CONCURRENCY": "1",  # one worker: the manifest's entries travel in one batch (no ramp-up)
    }.items():
        monkeypatch.setenv(name, value)
    reset_services()
    return state_table


def manifest_for(photos: PhotoHost) -> list[dict[str, str]]:
    done = [{"id": f"done-{n}", "url": photos.distinct(n)} for n in range(DONE_BEFORE_THE_KILL)]
    return done + [{"id": f"held-{n}", "url": photos.held(n)} for n in range(HELD)]


def mid_run(buckets: Buckets, photos: PhotoHost) -> bool:
    """Every entry before the held ones is recorded with its labels cached, and a held download has begun."""
    recorded = len(buckets.output_keys("results/")) >= DONE_BEFORE_THE_KILL
    cached = len(buckets.output_keys("cache/labels/")) >= DONE_BEFORE_THE_KILL
    return recorded and cached and photos.held_requests() > 0


def assert_finished_once(buckets: Buckets, fake_rekognition: FakeRekognition, photos: PhotoHost) -> dict[str, Any]:
    expected = sorted(entry["id"] for entry in manifest_for(photos))
    assert sorted(record["image_id"] for record in buckets.records()) == expected  # exactly one record each
    assert all("labels" in record for record in buckets.records())
    seen = fake_rekognition.state.images_seen
    assert len(seen) == len(set(seen)) == len(expected)  # no image was labeled twice
    report = buckets.report()
    assert (report["status"], report["total"], report["succeeded"]) == ("complete", len(expected), len(expected))
    assert report["already_done"] >= DONE_BEFORE_THE_KILL
    return report


def test_sigkill_in_the_middle_of_a_manifest_then_lambdas_async_retries(
    buckets: Buckets, photos: PhotoHost, fake_rekognition: FakeRekognition, crash_env: str, tmp_path: Path
) -> None:
    event = buckets.put_manifest("crash.json", manifest_for(photos))
    photos.gate.clear()
    child = Child("manifest", event, tmp_path)
    wait_until(lambda: mid_run(buckets, photos), child, "the middle of the manifest")
    child.kill()
    photos.gate.set()
    assert buckets.report()["status"] == "in_progress"

    # Lambda's first retry comes while the dead invocation's lease runs: it fails (and is retried again).
    with pytest.raises(DuplicateInProgress):
        manifest_created.handler(event, FakeLambdaContext())

    wait_until_leases_expire(buckets.aws.client("dynamodb"), crash_env, LEASE_SECONDS)
    retry = Child("manifest", event, tmp_path)
    assert retry.wait() == 0, retry.last_error()
    assert retry.answer["manifests"][0]["status"] == "complete"
    assert_finished_once(buckets, fake_rekognition, photos)


def test_sigkill_in_the_middle_of_a_work_batch_then_sqs_redelivers(
    buckets: Buckets,
    photos: PhotoHost,
    fake_rekognition: FakeRekognition,
    fanout_env: tuple[QueueInfo, QueueInfo],
    crash_env: str,
    tmp_path: Path,
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    manifest_created.handler(buckets.put_manifest("fanned.json", manifest_for(photos)), FakeLambdaContext())
    first = sqs.receive_message(QueueUrl=queue.url, AttributeNames=["All"])["Messages"]
    assert len(first) == 1 and len(json.loads(first[0]["Body"])["entries"]) == DONE_BEFORE_THE_KILL + HELD

    photos.gate.clear()
    child = Child("worker", sqs_event(first, queue.arn), tmp_path)
    wait_until(lambda: mid_run(buckets, photos), child, "the middle of the batch")
    child.kill()
    photos.gate.set()

    # SQS delivers the message again once its visibility timeout is over; here, once the lease is over.
    wait_until_leases_expire(buckets.aws.client("dynamodb"), crash_env, LEASE_SECONDS)
    sqs.change_message_visibility(QueueUrl=queue.url, ReceiptHandle=first[0]["ReceiptHandle"], VisibilityTimeout=0)
    again = sqs.receive_message(QueueUrl=queue.url, AttributeNames=["All"])["Messages"]
    assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    retry = Child("worker", sqs_event(again, queue.arn), tmp_path)
    assert retry.wait() == 0, retry.last_error()
    assert retry.answer == {"batchItemFailures": []}

    report = assert_finished_once(buckets, fake_rekognition, photos)
    assert report["batches"] == {"count": 1, "done": 1}
