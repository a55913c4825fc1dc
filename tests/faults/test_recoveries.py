"""Faults that end an invocation early, and the retry that finishes the run: a final report write that
fails, S3 errors on the manifest read, a re-upload while a run is going, an invocation short of time.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from labeler.adapters.store import OpenedManifest
from labeler.handlers import manifest_created, work_batch
from labeler.handlers.composition import get_services, reset_services
from labeler.local.runner import LocalLambdaContext
from labeler.logic.pipeline import DeadlineReached
from labeler.models.errors import ManifestReadInterrupted
from tests.conftest import Buckets, FakeLambdaContext, manifest_of
from tests.faults.conftest import PhotoHost
from tests.support.fake_rekognition import FakeRekognition
from tests.support.site import Site
from tests.support.sqs_driver import QueueInfo, drain


# --- the final report ------------------------------------------------------------------------------
def fail_final_report_writes(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """S3 refuses the next ``times`` writes of a final report; returns the countdown."""
    store = get_services().store
    real_put = store.put_json
    left = [times]

    def flaky(key: str, document: dict[str, Any], metadata: dict[str, str] | None = None, **options: Any) -> None:
        if key.startswith("reports/") and document.get("status") == "complete" and left[0] > 0:
            left[0] -= 1
            raise OSError("S3 answered 500 to the final report")
        real_put(key, document, metadata, **options)

    monkeypatch.setattr(store, "put_json", flaky)
    return left


def test_a_final_report_write_that_fails_is_written_by_the_next_delivery(
    buckets: Buckets, site: Site, fanout_env: tuple[QueueInfo, QueueInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue, _ = fanout_env
    ended: list[dict[str, Any]] = []
    get_services().on_run_finished = ended.append
    left = fail_final_report_writes(monkeypatch, times=2)

    manifest_created.handler(buckets.put_manifest("final.json", manifest_of(site, 6)), FakeLambdaContext())
    drain(buckets.aws.client("sqs"), queue, work_batch.handler, FakeLambdaContext())

    assert left == [0]  # it did fail, twice: the last batch's delivery failed and came back
    report = buckets.report()
    assert (report["status"], report["total"], report["succeeded"]) == ("complete", 6, 6)
    assert report["batches"] == {"count": 3, "done": 3}
    assert [r["status"] for r in ended] == ["complete"]  # the end of the run, once, after the report


@pytest.mark.usefixtures("state_table")
def test_an_inline_final_report_write_that_fails_fails_the_invocation_and_the_retry_writes_it(
    buckets: Buckets, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_final_report_writes(monkeypatch, times=1)
    event = buckets.put_manifest("inline-final.json", manifest_of(site, 3))

    with pytest.raises(OSError, match="final report"):
        manifest_created.handler(event, FakeLambdaContext())
    assert buckets.report()["status"] == "in_progress"
    manifest_created.handler(event, FakeLambdaContext())  # Lambda's retry

    report = buckets.report()
    assert (report["status"], report["succeeded"], report["already_done"]) == ("complete", 3, 3)


# --- the manifest read -------------------------------------------------------------------------------
class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        yield self._body


def answer_503_to_manifest_reads(bucket: str, times: int) -> list[int]:
    """S3 answers ``503 SlowDown`` to the next ``times`` GetObject calls on ``bucket`` (at the wire, so
    botocore's retries and error parsing run); returns the countdown."""
    from botocore.awsrequest import AWSResponse

    left = [times]
    body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"

    def before_send(request: Any, **kwargs: Any) -> Any:
        if f"/{bucket}/" in request.url and request.method == "GET" and left[0] > 0:
            left[0] -= 1
            return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Raw(body))
        return None

    get_services().store.client.meta.events.register("before-send.s3.GetObject", before_send)
    return left


@pytest.mark.usefixtures("state_table")
def test_a_503_on_the_manifest_read_fails_the_invocation_and_the_retry_labels_it(buckets: Buckets, site: Site) -> None:
    event = buckets.put_manifest("slowdown.json", manifest_of(site, 3))
    left = answer_503_to_manifest_reads(buckets.input, times=6)  # every attempt botocore makes (1 + 5 retries)

    with pytest.raises(ManifestReadInterrupted, match="SlowDown"):
        manifest_created.handler(event, FakeLambdaContext())
    assert left == [0]
    assert buckets.output_keys("reports/") == []  # not a broken manifest: no "failed" report

    manifest_created.handler(event, FakeLambdaContext())  # Lambda's retry, S3 is fine again
    report = buckets.report()
    assert (report["status"], report["succeeded"]) == ("complete", 3)


class _BreaksAfter:
    """A manifest body whose connection breaks after its first bytes, as botocore reports it."""

    def __init__(self, body: Any, first: int) -> None:
        self._body = body
        self._first = first
        self._reads = 0

    def read(self, size: int = -1) -> bytes:
        from botocore.exceptions import ResponseStreamingError

        self._reads += 1
        if self._reads > 1:
            raise ResponseStreamingError(error="Connection broken: IncompleteRead(10 bytes read, 900 more expected)")
        data: bytes = self._body.read(self._first)
        return data


@pytest.mark.usefixtures("state_table")
def test_a_stream_broken_mid_read_fails_the_invocation_and_the_retry_labels_it(
    buckets: Buckets, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = get_services().store
    real_open = store.open_manifest
    monkeypatch.setattr(store, "open_manifest", lambda ref: _broken(real_open(ref)))
    event = buckets.put_manifest("broken-stream.json", manifest_of(site, 3))

    with pytest.raises(ManifestReadInterrupted, match="IncompleteRead"):
        manifest_created.handler(event, FakeLambdaContext())
    assert buckets.output_keys("reports/") == []

    monkeypatch.setattr(store, "open_manifest", real_open)
    manifest_created.handler(event, FakeLambdaContext())
    assert buckets.report()["status"] == "complete"


def _broken(opened: OpenedManifest) -> OpenedManifest:
    return OpenedManifest(ref=opened.ref, body=_BreaksAfter(opened.body, first=10))  # type: ignore[arg-type]


@pytest.mark.usefixtures("lambda_env")
@pytest.mark.parametrize(("code", "status"), [("AccessDenied", 403), ("NoSuchKey", 404)])
def test_a_manifest_refused_for_good_gets_a_failed_report(
    buckets: Buckets, code: str, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    def refused(**kwargs: Any) -> Any:
        raise ClientError(
            {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    event = buckets.put_manifest("refused.json", [])
    monkeypatch.setattr(get_services().store.client, "get_object", refused)

    response = manifest_created.handler(event, FakeLambdaContext())

    assert response["manifests"][0]["status"] == "failed"
    assert buckets.report()["error"] == {
        "code": "manifest_unreadable",
        "message": f"cannot read s3://{buckets.input}/refused.json: {code} no",
        "aws_code": code,
    }


# --- a re-upload while a run is going ------------------------------------------------------------------
@pytest.fixture
def versioned(buckets: Buckets, monkeypatch: pytest.MonkeyPatch) -> Buckets:
    buckets.s3.put_bucket_versioning(Bucket=buckets.input, VersioningConfiguration={"Status": "Enabled"})
    monkeypatch.setenv("DOWNLOAD_TIMEOUT_SECONDS", "60")  # the held downloads wait for the newer run
    reset_services()
    return buckets


def versions(photos: PhotoHost) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Run 1: two quick entries, four held ones; run 2 (the re-upload): the same ids, other images."""
    first = [{"id": f"img-{n}", "url": photos.distinct(n) if n < 2 else photos.held(n)} for n in range(6)]
    second = [{"id": f"img-{n}", "url": photos.distinct(20 + n)} for n in range(6)]
    return first, second


def assert_only_the_newer_run_stands(buckets: Buckets, newer: list[dict[str, str]], version_id: str) -> None:
    records = buckets.records()
    assert [(r["image_id"], r["url"]) for r in records] == [(e["id"], e["url"]) for e in newer]
    for key in buckets.output_keys("results/") + buckets.output_keys("reports/"):
        assert buckets.s3.head_object(Bucket=buckets.output, Key=key)["Metadata"]["manifest-run"] == version_id
    report = buckets.report()
    assert (report["status"], report["succeeded"], report["manifest"]["version_id"]) == ("complete", 6, version_id)


@pytest.mark.usefixtures("lambda_env")
def test_a_reupload_during_an_inline_run_wins_and_the_older_run_overwrites_nothing(
    versioned: Buckets, photos: PhotoHost, fake_rekognition: FakeRekognition
) -> None:
    first, second = versions(photos)
    photos.gate.clear()
    older_event = versioned.put_manifest("reuploaded.json", first)
    older: dict[str, Any] = {}
    running = threading.Thread(target=lambda: older.update(manifest_created.handler(older_event, FakeLambdaContext())))
    running.start()
    try:
        while photos.held_requests() < 1:  # the older run is in the middle of its manifest
            assert running.is_alive()
            threading.Event().wait(0.05)
        newer_event = versioned.put_manifest("reuploaded.json", second)
        manifest_created.handler(newer_event, FakeLambdaContext())  # the re-upload's run, to its end
    finally:
        photos.gate.set()
        running.join(120)

    assert older["manifests"][0]["status"] == "superseded"
    assert_only_the_newer_run_stands(versioned, second, newer_event["Records"][0]["s3"]["object"]["versionId"])


def test_a_reupload_during_a_fanned_out_run_wins_and_the_older_batches_overwrite_nothing(
    versioned: Buckets, photos: PhotoHost, fanout_env: tuple[QueueInfo, QueueInfo]
) -> None:
    queue, _ = fanout_env
    sqs = versioned.aws.client("sqs")
    first, second = versions(photos)
    manifest_created.handler(versioned.put_manifest("reuploaded.json", first), FakeLambdaContext())
    older = []  # the older run's batches, delivered late (held invisible meanwhile)
    while messages := sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10).get("Messages", []):
        older += messages
    newer_event = versioned.put_manifest("reuploaded.json", second)
    manifest_created.handler(newer_event, FakeLambdaContext())
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())
    assert versioned.report()["status"] == "complete"

    for message in older:
        sqs.change_message_visibility(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())

    assert {json.loads(m["Body"])["manifest"]["version_id"] for m in older} != {None}
    assert_only_the_newer_run_stands(versioned, second, newer_event["Records"][0]["s3"]["object"]["versionId"])


# --- short of time ----------------------------------------------------------------------------------------
@pytest.mark.usefixtures("state_table")
def test_an_invocation_with_8_seconds_makes_progress_on_every_retry_until_done(
    buckets: Buckets, site: Site, fake_rekognition: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_WORKERS", "2")
    reset_services()
    site.server.delay_seconds = 0.4  # 40 downloads, two at a time: more than one 8-second invocation can do
    event = buckets.put_manifest("short.json", manifest_of(site, 40))
    progress = [0]

    for _attempt in range(10):
        try:
            manifest_created.handler(event, LocalLambdaContext(timeout_seconds=8))
            break
        except DeadlineReached:
            assert buckets.report()["status"] == "incomplete"
        progress.append(len(buckets.records()))
        assert progress[-1] > progress[-2]  # every retry gets further
    else:
        pytest.fail(f"not done after 10 invocations: records after each {progress}")

    assert len(progress) >= 2  # it did need a retry
    report = buckets.report()
    assert (report["status"], report["total"], report["succeeded"]) == ("complete", 40, 40)
    assert len(buckets.records()) == 40
    assert fake_rekognition.state.successful_calls == 1  # forty URLs of the same bytes
