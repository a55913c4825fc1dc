"""Large manifests: S3 event → manifest handler → SQS (moto) → worker handler → one complete report."""

from __future__ import annotations

import json
from typing import Any

import pytest

from labeler.handlers import manifest_created, work_batch
from tests.conftest import Buckets, FakeLambdaContext, manifest_of
from tests.support.fake_rekognition import FakeRekognition
from tests.support.site import Site
from tests.support.sqs_driver import QueueInfo, drain


def test_a_large_manifest_fans_out_and_the_report_completes_once(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    fake_rekognition: FakeRekognition,
    lambda_context: FakeLambdaContext,
) -> None:
    queue, _ = fanout_env
    entries: list[Any] = manifest_of(site, 9)
    entries += [{"id": "no-url"}, {"id": "img-000", "url": site.url("/photo.png")}]  # invalid + duplicate
    event = buckets.put_manifest("big/manifest.json", entries)

    response = manifest_created.handler(event, lambda_context)

    assert response["manifests"][0]["status"] == "in_progress"
    in_progress = buckets.report()
    # 11 entries / 2: rejected entries travel in the batches too (the worker writes their records)
    assert in_progress["mode"] == "fanout" and in_progress["batches"]["count"] == 6

    sqs = buckets.aws.client("sqs")
    drain(sqs, queue, work_batch.handler, lambda_context, batch_size=2)

    report = buckets.report()
    assert report["status"] == "complete"
    assert (report["total"], report["succeeded"], report["failed"]) == (11, 9, 2)
    assert report["errors_by_code"] == {"duplicate_id": 1, "invalid_entry": 1}
    assert report["batches"] == {"count": 6, "done": 6}
    assert len(buckets.records()) == 11
    assert fake_rekognition.state.successful_calls == 1  # nine URLs, identical bytes: one paid call


def test_redelivered_batches_are_counted_once(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    lambda_context: FakeLambdaContext,
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    event = buckets.put_manifest("twice.json", manifest_of(site, 5))
    manifest_created.handler(event, lambda_context)
    manifest_created.handler(event, lambda_context)  # S3 delivered the event twice: batches sent twice

    drain(sqs, queue, work_batch.handler, lambda_context)

    report = buckets.report()
    assert (report["status"], report["total"], report["succeeded"]) == ("complete", 5, 5)
    assert len(buckets.records()) == 5


def test_a_poison_batch_ends_in_the_dead_letter_queue_and_the_report_counts_it_failed(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    lambda_context: FakeLambdaContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labeler.logic import fanout

    queue, dlq = fanout_env
    real_process = fanout.label_entries

    def poisoned(services: Any, manifest: Any, entries: Any, *args: Any, **options: Any) -> Any:
        if any(entry.image_id == "img-002" for entry in entries):
            raise RuntimeError("this batch always crashes the worker")
        return real_process(services, manifest, entries, *args, **options)

    monkeypatch.setattr(fanout, "label_entries", poisoned)
    manifest_created.handler(buckets.put_manifest("poison.json", manifest_of(site, 6)), lambda_context)

    drain(buckets.aws.client("sqs"), queue, work_batch.handler, lambda_context, batch_size=1)

    report = buckets.report()
    assert (report["status"], report["total"], report["succeeded"], report["failed"]) == ("complete", 6, 4, 2)
    assert report["errors_by_code"] == {"batch_failed": 2}
    failed = [r for r in buckets.records() if "error" in r]
    assert {r["image_id"] for r in failed} == {"img-002", "img-003"}
    assert "always crashes" in failed[0]["error"]["message"]
    dead = buckets.aws.client("sqs").receive_message(
        QueueUrl=dlq.url, MessageAttributeNames=["All"], MaxNumberOfMessages=10
    )["Messages"]
    assert len(dead) == 1
    assert dead[0]["MessageAttributes"]["error_code"]["StringValue"] == "batch_failed"
    assert json.loads(dead[0]["Body"])["batch_index"] == 1


def test_a_malformed_message_is_dead_lettered_by_the_redrive_policy(
    buckets: Buckets,
    fanout_env: tuple[QueueInfo, QueueInfo],
    lambda_context: FakeLambdaContext,
) -> None:
    queue, dlq = fanout_env
    sqs = buckets.aws.client("sqs")
    sqs.send_message(QueueUrl=queue.url, MessageBody="this is not a work batch")

    drain(sqs, queue, work_batch.handler, lambda_context)

    dead = sqs.receive_message(QueueUrl=dlq.url, MaxNumberOfMessages=10).get("Messages", [])
    assert [m["Body"] for m in dead] == ["this is not a work batch"]
