"""One run of a manifest, from its start to its end: the split, the report, the end hook, the metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from labeler.handlers import manifest_created, work_batch
from labeler.handlers.composition import get_services, reset_services
from labeler.logic.keys import derive_image_id
from labeler.logic.pipeline import Deadline, DeadlineReached
from tests.conftest import Buckets, FakeLambdaContext, manifest_of
from tests.support import images as samples
from tests.support.crash import SimulatedKill, delivery_items, wait_until_leases_expire
from tests.support.fake_rekognition import FakeRekognition
from tests.support.site import Site
from tests.support.sqs_driver import QueueInfo, drain, sqs_event


def queued_bodies(sqs: Any, queue: QueueInfo) -> list[dict[str, Any]]:
    """Every message in the queue; each is received once and made visible again."""
    received: list[dict[str, Any]] = []
    while messages := sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10).get("Messages", []):
        received += messages
    for message in received:
        sqs.change_message_visibility(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    return [json.loads(message["Body"]) for message in received]


@dataclass(frozen=True)
class ExpiresAfterChecks(Deadline):
    """A clock that passes the deadline at its ``checks + 1``-th look (the split looks once per batch)."""

    checks: int = 0
    seen: list[int] = field(default_factory=lambda: [0])

    def expired(self) -> bool:
        self.seen[0] += 1
        return self.seen[0] > self.checks


class _DeadlineAfter:
    def __init__(self, checks: int) -> None:
        self.checks = checks

    def for_invocation(self, remaining_ms: int | None) -> Deadline:
        return ExpiresAfterChecks(checks=self.checks)


# --- the split --------------------------------------------------------------------------------------
def test_the_split_stops_at_its_deadline_and_the_retry_sends_only_what_is_missing(
    buckets: Buckets, site: Site, fanout_env: tuple[QueueInfo, QueueInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    event = buckets.put_manifest("long.json", manifest_of(site, 20))  # 10 batches of 2
    monkeypatch.setattr(manifest_created, "Deadline", _DeadlineAfter(checks=3))

    with pytest.raises(DeadlineReached):
        manifest_created.handler(event, FakeLambdaContext())
    sent_first = sorted(body["batch_index"] for body in queued_bodies(sqs, queue))
    assert sent_first == [0, 1, 2]
    assert buckets.report()["status"] == "in_progress"

    monkeypatch.setattr(manifest_created, "Deadline", Deadline)
    manifest_created.handler(event, FakeLambdaContext())  # Lambda's retry: parses again, sends the rest

    assert sorted(body["batch_index"] for body in queued_bodies(sqs, queue)) == list(range(10))
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())
    report = buckets.report()
    assert (report["status"], report["total"], report["succeeded"]) == ("complete", 20, 20)
    assert report["batches"] == {"count": 10, "done": 10}


def _split_stopped_after_three_batches(
    buckets: Buckets, site: Site, monkeypatch: pytest.MonkeyPatch, name: str, workers: int
) -> dict[str, Any]:
    """A 60-entry manifest split at BATCH_SIZE 10 for ``workers`` workers, stopped by its deadline after three
    batches; its S3 event (the retry's), with the handler's deadline back to the real one."""
    monkeypatch.setenv("BATCH_SIZE", "10")
    monkeypatch.setenv("WORKER_MAX_CONCURRENCY", str(workers))
    reset_services()
    event = buckets.put_manifest(name, manifest_of(site, 60))
    monkeypatch.setattr(manifest_created, "Deadline", _DeadlineAfter(checks=3))
    with pytest.raises(DeadlineReached):
        manifest_created.handler(event, FakeLambdaContext())
    monkeypatch.setattr(manifest_created, "Deadline", Deadline)
    return event


def test_the_first_batches_ramp_up_and_a_retried_split_after_a_redeploy_cuts_as_the_first_did(
    buckets: Buckets, site: Site, fanout_env: tuple[QueueInfo, QueueInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    event = _split_stopped_after_three_batches(buckets, site, monkeypatch, "ramp.json", workers=5)

    monkeypatch.setenv("BATCH_SIZE", "4")  # a redeploy between the split and its retry
    reset_services()
    manifest_created.handler(event, FakeLambdaContext())

    bodies = sorted(queued_bodies(sqs, queue), key=lambda body: body["batch_index"])
    # the workers' first batches end ~1 s apart (docs/scale.md, "Staggered first batches"), then 10 each
    assert [len(body["entries"]) for body in bodies] == [2, 4, 6, 8, 10, 10, 10, 10]
    indexes = [entry["index"] for body in bodies for entry in body["entries"]]
    assert indexes == list(range(60))  # every entry sent once: the retry kept the first split's cut
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())
    report = buckets.report()
    assert (report["status"], report["succeeded"], report["batches"]) == ("complete", 60, {"count": 8, "done": 8})


def test_a_run_split_before_cuts_were_kept_is_resumed_with_its_uniform_cut(
    buckets: Buckets, site: Site, fanout_env: tuple[QueueInfo, QueueInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    from labeler.logic.keys import run_key

    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    # one worker: cut as the code before kept cuts did, 10 each
    event = _split_stopped_after_three_batches(buckets, site, monkeypatch, "legacy.json", workers=1)
    progress = get_services().progress
    assert progress is not None
    key = run_key(manifest_created.manifest_ref(event["Records"][0]))
    progress.client.update_item(  # the progress item as that code left it: options, no cut
        TableName=progress.table,
        Key=progress._run_id(key),
        UpdateExpression="REMOVE batching",
        ConditionExpression="attribute_exists(batching)",
    )

    monkeypatch.setenv("WORKER_MAX_CONCURRENCY", "5")  # the upgraded stack would ramp a new run's batches up
    reset_services()
    manifest_created.handler(event, FakeLambdaContext())

    bodies = sorted(queued_bodies(sqs, queue), key=lambda body: body["batch_index"])
    assert [len(body["entries"]) for body in bodies] == [10] * 6
    assert [entry["index"] for body in bodies for entry in body["entries"]] == list(range(60))


def test_the_split_writes_no_records_rejected_entries_travel_in_the_batches(
    buckets: Buckets, site: Site, fanout_env: tuple[QueueInfo, QueueInfo]
) -> None:
    queue, _ = fanout_env
    entries: list[Any] = [*manifest_of(site, 4), 5, {"id": "img-001", "url": site.url("/photo.png")}, {"id": "x"}]
    manifest_created.handler(buckets.put_manifest("messy.json", entries), FakeLambdaContext())

    assert buckets.output_keys("results/") == []  # no synchronous PUT per rejected entry in the splitter

    drain(buckets.aws.client("sqs"), queue, work_batch.handler, FakeLambdaContext())
    report = buckets.report()
    assert (report["status"], report["total"], report["succeeded"]) == ("complete", 7, 4)
    assert report["errors_by_code"] == {"duplicate_id": 1, "invalid_entry": 2}
    assert len(buckets.records()) == 7


def test_a_late_split_never_moves_a_complete_report_back(
    buckets: Buckets, site: Site, fanout_env: tuple[QueueInfo, QueueInfo], state_table: str
) -> None:
    queue, _ = fanout_env
    sqs, dynamodb = buckets.aws.client("sqs"), buckets.aws.client("dynamodb")
    event = buckets.put_manifest("late.json", manifest_of(site, 5))
    manifest_created.handler(event, FakeLambdaContext())
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())
    complete = buckets.report()
    assert complete["status"] == "complete"

    # The same S3 event once its idempotency record is gone (expired, or replayed from the FailureQueue later).
    for item in delivery_items(dynamodb, state_table):
        dynamodb.delete_item(TableName=state_table, Key={"id": item["id"]})
    manifest_created.handler(event, FakeLambdaContext())

    assert buckets.report() == complete
    assert queued_bodies(sqs, queue) == []  # every batch was sent already: none is sent again


# --- the worker's last delivery -----------------------------------------------------------------------
def test_the_last_delivery_labels_nothing_so_a_batch_killed_every_time_still_completes_the_report(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    state_table: str,
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labeler.logic import pipeline

    queue, dlq = fanout_env
    monkeypatch.setenv("IDEMPOTENCY_LEASE_SECONDS", "1")
    monkeypatch.setenv("MAX_RECEIVE_COUNT", "4")
    reset_services()
    sqs = buckets.aws.client("sqs")
    manifest = [{"id": "doomed-0", "url": site.url("/coffee.jpg")}, {"id": "doomed-1", "url": site.url("/photo.png")}]
    manifest += manifest_of(site, 2)
    manifest_created.handler(buckets.put_manifest("doomed.json", manifest), FakeLambdaContext())

    doomed = {samples.jpeg("coffee"), samples.png()}
    real_prepare = pipeline.prepare_image

    def killed(data: bytes, **options: Any) -> Any:
        if data in doomed:
            raise SimulatedKill()  # out of memory on this batch's images, on every delivery that labels them
        return real_prepare(data, **options)

    monkeypatch.setattr(pipeline, "prepare_image", killed)
    for delivery in (1, 2, 3):
        messages = sqs.receive_message(QueueUrl=queue.url, AttributeNames=["All"], MaxNumberOfMessages=1)["Messages"]
        message = next(m for m in messages if json.loads(m["Body"])["batch_index"] == 0)
        assert message["Attributes"]["ApproximateReceiveCount"] == str(delivery)
        with pytest.raises(SimulatedKill):
            work_batch.handler(sqs_event([message], queue.arn), FakeLambdaContext())
        sqs.change_message_visibility(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
        wait_until_leases_expire(buckets.aws.client("dynamodb"), state_table, 1)

    drain(sqs, queue, work_batch.handler, FakeLambdaContext())  # the 4th delivery of batch 0, and batch 1

    report = buckets.report()
    assert (report["status"], report["succeeded"], report["failed"]) == ("complete", 2, 2)
    assert report["errors_by_code"] == {"batch_failed": 2}
    failed = {r["image_id"]: r["error"] for r in buckets.records() if "error" in r}
    assert set(failed) == {"doomed-0", "doomed-1"}
    assert "killed or timed out" in failed["doomed-0"]["message"]
    dead = sqs.receive_message(QueueUrl=dlq.url, MessageAttributeNames=["All"])["Messages"]
    assert [m["MessageAttributes"]["error_code"]["StringValue"] for m in dead] == ["batch_failed"]


# --- records, reports, metrics, the end of a run ---------------------------------------------------------
@pytest.mark.usefixtures("lambda_env")
def test_a_generated_id_never_takes_a_given_id(buckets: Buckets, site: Site) -> None:
    png = site.url("/photo.png")
    manifest = [
        {"url": 123},  # broken: its made-up id is entry-0
        {"id": "entry-0", "url": site.url("/photo.jpg")},
        png,  # no id: derived from the URL
        {"id": derive_image_id(png), "url": site.url("/coffee.jpg")},  # a given id equal to that derived one
    ]
    manifest_created.handler(buckets.put_manifest("ids.json", manifest), FakeLambdaContext())

    records = buckets.records()
    assert [(r["image_id"], r.get("error", {}).get("code")) for r in records] == [
        ("entry-0", "invalid_entry"),
        ("entry-0", None),
        (derive_image_id(png), None),
        (derive_image_id(png), None),
    ]
    assert len(buckets.output_keys("results/")) == 4
    assert (buckets.report()["succeeded"], buckets.report()["failed"]) == (3, 1)


def emf_values(output: str, name: str) -> list[float]:
    """The values of metric ``name`` in the EMF lines Powertools printed."""
    values: list[float] = []
    for line in output.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            value = json.loads(line).get(name)
            values += value if isinstance(value, list) else [] if value is None else [value]
    return values


def test_every_image_is_counted_once_in_the_metrics_whichever_function_labeled_it(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    fake_rekognition: FakeRekognition,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    entries: list[Any] = [*manifest_of(site, 9), {"id": "no-url"}, {"id": "img-000", "url": site.url("/photo.png")}]
    event = buckets.put_manifest("counted.json", entries)
    manifest_created.handler(event, FakeLambdaContext())
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())
    first = queued_bodies(sqs, queue)
    assert first == []
    # A batch delivered again after it was done (SQS is at least once): counted nothing more.
    body = json.dumps({"manifest": buckets.report()["manifest"], "batch_index": 0, "entries": []})
    sqs.send_message(QueueUrl=queue.url, MessageBody=body)
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())

    output = capsys.readouterr().out
    assert sum(emf_values(output, "ImagesSucceeded")) == 9
    assert sum(emf_values(output, "ImagesFailed")) == 2
    assert sum(emf_values(output, "LabelsFromCache")) == 8  # nine URLs of the same bytes: one DetectLabels call
    assert fake_rekognition.state.successful_calls == 1


def test_inline_and_fanned_out_reports_have_the_same_fields(
    buckets: Buckets, site: Site, fanout_env: tuple[QueueInfo, QueueInfo]
) -> None:
    queue, _ = fanout_env
    manifest_created.handler(buckets.put_manifest("small.json", manifest_of(site, 3)), FakeLambdaContext())
    manifest_created.handler(buckets.put_manifest("large.json", manifest_of(site, 6)), FakeLambdaContext())
    drain(buckets.aws.client("sqs"), queue, work_batch.handler, FakeLambdaContext())
    reports = {r["manifest"]["key"]: r for r in (buckets.read_json(k) for k in buckets.output_keys("reports/"))}
    inline, fanned_out = reports["small.json"], reports["large.json"]

    assert set(inline) == set(fanned_out)
    assert (inline["mode"], inline["batches"], fanned_out["mode"]) == ("inline", None, "fanout")
    for report in (inline, fanned_out):
        assert report["status"] == "complete"
        assert set(report["timings_ms"]) == {"total", "download_sum", "label_sum"}
        assert report["timings_ms"]["download_sum"] > 0 and report["timings_ms"]["total"] > 0
        assert report["options"]["features"] == ["GENERAL_LABELS"]
    # the cost, through the one report writer: three URLs of one photo, then six more of it
    assert inline["cost"] == {"detect_labels_calls": 1, "detect_labels_saved": 2, "estimated_usd": 0.001}
    assert fanned_out["cost"] == {"detect_labels_calls": 0, "detect_labels_saved": 6, "estimated_usd": 0.0}


def test_the_end_of_a_run_is_announced_once_whoever_finishes_it(
    buckets: Buckets, site: Site, fanout_env: tuple[QueueInfo, QueueInfo]
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    ended: list[tuple[str, str]] = []
    get_services().on_run_finished = lambda report: ended.append((report["manifest"]["key"], report["status"]))
    small = buckets.put_manifest("small.json", manifest_of(site, 2))
    large = buckets.put_manifest("large.json", manifest_of(site, 7))

    for event in (small, large, small, large):  # S3 delivers at least once
        manifest_created.handler(event, FakeLambdaContext())
    for message in queued_bodies(sqs, queue):  # every work batch delivered twice
        sqs.send_message(QueueUrl=queue.url, MessageBody=json.dumps(message))
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())

    assert sorted(ended) == [("large.json", "complete"), ("small.json", "complete")]


@pytest.mark.usefixtures("state_table")
def test_an_end_hook_that_fails_is_called_again_by_the_retry(buckets: Buckets, site: Site) -> None:
    calls: list[str] = []

    def flaky(report: dict[str, Any]) -> None:
        calls.append(report["status"])
        if len(calls) == 1:
            raise RuntimeError("EventBridge is down")

    get_services().on_run_finished = flaky
    event = buckets.put_manifest("hook.json", manifest_of(site, 2))
    with pytest.raises(RuntimeError, match="EventBridge"):
        manifest_created.handler(event, FakeLambdaContext())
    manifest_created.handler(event, FakeLambdaContext())
    manifest_created.handler(event, FakeLambdaContext())

    assert calls == ["complete", "complete"]
