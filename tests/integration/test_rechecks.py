"""Watched manifests re-checked on a schedule (issue 11 §1), through the real handlers.

The embedded endpoint (S3, SQS, DynamoDB, EventBridge), the image site with routes each test owns (so it
can change, remove or strip an image's validators) and the Rekognition stand-in, which counts every call
it is paid for. The output bucket is versioned, as the template makes it: every write of a result object
is a version, so "no result object written" is counted, not inferred.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest

from labeler.handlers import manifest_created, work_batch
from labeler.handlers.composition import get_services
from labeler.local.http_server import StaticRoute
from labeler.logic.index_rows import INDEX_PREFIX, decode_index_object
from labeler.logic.keys import report_key
from labeler.models.records import ManifestRef
from tests.conftest import Buckets, FakeLambdaContext
from tests.integration.test_run_events import events_of, forget_deliveries
from tests.support import images
from tests.support.fake_rekognition import FakeRekognition
from tests.support.site import Site
from tests.support.sqs_driver import QueueInfo, drain

TICK_AT = "2026-11-26T00:00:00Z"
NEXT_TICK_AT = "2026-11-27T00:00:00Z"


class Photos:
    """Images on the site under a prefix of this test's own: each can be changed, removed or stripped of validators."""

    def __init__(self, site: Site, count: int, *, validators: bool = True) -> None:
        self.site = site
        self.prefix = f"/recheck-{uuid.uuid4().hex[:10]}"
        for n in range(count):
            self.serve(n, images.distinct_png(n), validators=validators)

    def path(self, n: int) -> str:
        return f"{self.prefix}/{n}.png"

    def url(self, n: int) -> str:
        return self.site.url(self.path(n))

    def serve(self, n: int, body: bytes, *, validators: bool = True) -> None:
        self.site.server.add(self.path(n), StaticRoute(body, "image/png", etag=validators))

    def answer(self, n: int, status: int) -> None:
        self.site.server.add(self.path(n), StaticRoute(b"gone\n", "text/plain", status=status, etag=False))

    def entries(self, count: int) -> list[dict[str, str]]:
        return [{"id": f"p{n}", "url": self.url(n)} for n in range(count)]


def versioned_output(buckets: Buckets) -> Buckets:
    buckets.s3.put_bucket_versioning(Bucket=buckets.output, VersioningConfiguration={"Status": "Enabled"})
    return buckets


def result_versions(buckets: Buckets) -> Counter[str]:
    """How many times each result object was written (its versions), by image id (the key's last segment)."""
    found: Counter[str] = Counter()
    for page in buckets.s3.get_paginator("list_object_versions").paginate(Bucket=buckets.output, Prefix="results/"):
        for version in page.get("Versions", []):
            found[version["Key"].rsplit("/", 1)[-1].removesuffix(".json")] += 1
    return found


def tick(at: str = TICK_AT, bucket: str | None = None, **body: Any) -> dict[str, Any]:
    """The event EventBridge Scheduler sends (the template's schedule input), or a re-check of one ``key``."""
    request: dict[str, Any] = {"bucket": bucket, "at": at, **body}
    if "key" not in request:
        request.setdefault("prefix", "watch/")
    return {"recheck": request}


def run_tick(buckets: Buckets, at: str = TICK_AT, **body: Any) -> dict[str, Any]:
    answer: dict[str, Any] = manifest_created.handler(tick(at, buckets.input, **body), FakeLambdaContext())
    return answer["recheck"]


def upload(buckets: Buckets, key: str, manifest: Any) -> dict[str, Any]:
    """Upload a manifest and run the manifest function on S3's event (the upload's own run); its report."""
    manifest_created.handler(buckets.put_manifest(key, manifest), FakeLambdaContext())
    return report_of(buckets, key)


def report_of(buckets: Buckets, key: str) -> dict[str, Any]:
    report: dict[str, Any] = buckets.read_json(report_key(ManifestRef(buckets.input, key)))
    return report


def record_of(buckets: Buckets, key: str, image_id: str) -> dict[str, Any]:
    prefix = report_of(buckets, key)["results_prefix"]
    record: dict[str, Any] = buckets.read_json(f"{prefix}{image_id}.json")
    return record


@pytest.fixture
def watched(buckets: Buckets, lambda_env: dict[str, str]) -> Buckets:
    return versioned_output(buckets)


# --- done when: an unchanged manifest, one image changed ----------------------------------------------
def test_re_checking_an_unchanged_manifest_makes_no_call_and_writes_no_result_object(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    photos = Photos(site, 4)
    first = upload(watched, "watch/four.json", photos.entries(4))
    assert (first["status"], first["cost"]["detect_labels_calls"], first["recheck"]) == ("complete", 4, None)
    calls, written = fake_rekognition.state.successful_calls, result_versions(watched)

    answer = run_tick(watched)

    assert fake_rekognition.state.successful_calls == calls  # 0 DetectLabels calls
    assert result_versions(watched) == written  # no result object written
    assert sum(site.not_modified_count(photos.path(n)) for n in range(4)) == 4  # one conditional GET each, 304
    report = report_of(watched, "watch/four.json")
    assert (report["status"], report["total"], report["succeeded"]) == ("complete", 4, 4)
    assert report["recheck"] == {
        "of_run": first["manifest"]["sequencer"],  # the upload it re-checks (unversioned bucket: its sequencer)
        "at": "2026-11-26T00:00:00.000Z",
        "unchanged": 4,
        "changed": 0,
        "gone": 0,
        "failed": 0,
        "failed_by_code": {},
        "changed_ids": [],
        "changed_ids_truncated": False,
    }
    assert report["cost"] == {"detect_labels_calls": 0, "detect_labels_saved": 4, "estimated_usd": 0.0}
    assert report["manifest"]["recheck"] == "20261126T000000.000Z"
    assert (answer["listed"], answer["started"], answer["manifests"][0]["plan"]) == (1, 1, "started")


def test_re_checking_after_one_image_changed_makes_exactly_one_call_and_rewrites_only_its_record(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    photos = Photos(site, 4)
    upload(watched, "watch/four.json", photos.entries(4))
    before = record_of(watched, "watch/four.json", "p2")
    calls, written = fake_rekognition.state.successful_calls, result_versions(watched)
    photos.serve(2, images.png("coffee", size=(120, 90)))  # new bytes at the same URL

    run_tick(watched)

    assert fake_rekognition.state.successful_calls == calls + 1
    assert result_versions(watched) == {**written, "p2": 2}  # overwritten in place; the old one is a version
    after = record_of(watched, "watch/four.json", "p2")
    assert after["content_sha256"] != before["content_sha256"] == before["image"]["sha256"]
    assert after["content_sha256"] == after["image"]["sha256"] and after["labeled_at"] > before["labeled_at"]
    report = report_of(watched, "watch/four.json")
    assert {name: report["recheck"][name] for name in ("unchanged", "changed", "gone", "failed", "changed_ids")} == {
        "unchanged": 3,
        "changed": 1,
        "gone": 0,
        "failed": 0,
        "changed_ids": ["p2"],
    }
    assert report["cost"]["detect_labels_calls"] == 1


def test_the_same_bytes_from_a_server_without_validators_are_unchanged(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    photos = Photos(site, 2, validators=False)  # no ETag, no Last-Modified: every GET is a full download
    upload(watched, "watch/plain.json", photos.entries(2))
    calls, written = fake_rekognition.state.successful_calls, result_versions(watched)
    site.reset_counters()

    run_tick(watched)

    assert [site.hits(photos.path(n)) for n in range(2)] == [1, 1]
    assert [site.not_modified_count(photos.path(n)) for n in range(2)] == [0, 0]  # compared by SHA-256
    assert fake_rekognition.state.successful_calls == calls and result_versions(watched) == written
    assert report_of(watched, "watch/plain.json")["recheck"]["unchanged"] == 2


@pytest.mark.parametrize("status", [404, 410])
def test_an_image_gone_keeps_its_labels_and_is_marked_once(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition, status: int
) -> None:
    photos = Photos(site, 2)
    upload(watched, "watch/gone.json", photos.entries(2))
    labels = record_of(watched, "watch/gone.json", "p1")["labels"]
    photos.answer(1, status)

    run_tick(watched)
    run_tick(watched, NEXT_TICK_AT)  # still gone the day after: nothing more is written

    record = record_of(watched, "watch/gone.json", "p1")
    assert record["labels"] == labels and "error" not in record
    assert record["gone"] == {
        "status": status,
        "since": "2026-11-26T00:00:00.000Z",
        "run_id": report_of(watched, "watch/gone.json")["recheck"]["of_run"] + "!recheck-20261126T000000.000Z",
    }
    assert result_versions(watched) == {"p0": 1, "p1": 2}
    report = report_of(watched, "watch/gone.json")
    assert (report["succeeded"], report["recheck"]["gone"], report["recheck"]["unchanged"]) == (2, 1, 1)

    photos.serve(1, images.distinct_png(1))  # back, with the bytes it had: the mark goes, the labels stay
    run_tick(watched, "2026-11-28T00:00:00Z")
    back = record_of(watched, "watch/gone.json", "p1")
    assert "gone" not in back and back["labels"] == labels and back["labeled_at"] == record["labeled_at"]
    assert report_of(watched, "watch/gone.json")["recheck"]["changed_ids"] == ["p1"]
    assert fake_rekognition.state.successful_calls == 2  # the upload's two calls, none since


def test_other_failures_keep_the_record_and_errors_are_labeled_again_but_not_rewritten_when_the_same(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    photos = Photos(site, 3)
    photos.answer(2, 404)  # an error record from the upload's run
    manifest = [*photos.entries(3), {"id": "p0", "url": photos.url(1)}]  # and a duplicate id: rejected
    upload(watched, "watch/mixed.json", manifest)
    labels = record_of(watched, "watch/mixed.json", "p0")["labels"]
    written = result_versions(watched)
    photos.answer(0, 500)  # a record with labels, now failing otherwise

    run_tick(watched)

    assert result_versions(watched) == written  # the 500 kept p0's labels; p2's 404 and the duplicate stand
    assert record_of(watched, "watch/mixed.json", "p0")["labels"] == labels
    report = report_of(watched, "watch/mixed.json")
    assert report["recheck"]["failed"] == 3 and report["recheck"]["failed_by_code"] == {
        "duplicate_id": 1,
        "http_status": 2,
    }
    assert (report["succeeded"], report["failed"], report["errors_by_code"]) == (
        2,
        2,
        {"duplicate_id": 1, "http_status": 1},
    )  # the counts describe the records as they stand

    photos.serve(2, images.distinct_png(2))  # the entry in error is there now: labeled as an upload would
    run_tick(watched, NEXT_TICK_AT)
    assert "labels" in record_of(watched, "watch/mixed.json", "p2")
    assert report_of(watched, "watch/mixed.json")["recheck"]["changed_ids"] == ["p2"]


def test_a_re_check_labels_with_the_manifest_s_options_within_its_cap(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    photos = Photos(site, 3)
    for n in (1, 2):
        photos.serve(n, images.distinct_png(0))  # three URLs, one image: the upload makes one call
    upload(
        watched, "watch/capped.json", {"options": {"max_labels": 2, "max_label_calls": 1}, "images": photos.entries(3)}
    )
    before = {f"p{n}": record_of(watched, "watch/capped.json", f"p{n}")["labels"] for n in range(3)}
    photos.serve(0, images.png("coffee", size=(100, 100)))
    photos.serve(1, images.png("rocket", size=(100, 100)))  # two images changed: two calls needed, one allowed
    fake_rekognition.state.requests.clear()

    run_tick(watched)

    report = report_of(watched, "watch/capped.json")
    assert report["status"] == "capped" and report["cost"]["detect_labels_calls"] == 1
    assert [request["MaxLabels"] for request in fake_rekognition.state.requests] == [2]  # the manifest's options
    assert (report["recheck"]["changed"], report["recheck"]["failed_by_code"]) == (1, {"over_budget": 1})
    [changed] = report["recheck"]["changed_ids"]
    kept = "p1" if changed == "p0" else "p0"
    assert record_of(watched, "watch/capped.json", kept)["labels"] == before[kept]  # over the cap: kept as it was
    assert report["recheck"]["unchanged"] == 1 and report["succeeded"] == 3


def test_a_manifest_uploaded_again_is_left_to_its_new_upload_s_run(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    photos = Photos(site, 1)
    upload(watched, "watch/again.json", photos.entries(1))
    watched.s3.put_object(Bucket=watched.input, Key="watch/again.json", Body=json.dumps(photos.entries(1) * 2))

    assert run_tick(watched)["skipped"] == {"uploaded again since its last run (that upload's run labels it)": 1}


# --- which manifests a tick re-checks -------------------------------------------------------------------
def test_a_tick_re_checks_every_manifest_under_watch_and_nothing_else(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    photos = Photos(site, 2)
    for key in ("watch/a.json", "watch/b.jsonl", "watch/deeper/c.json", "manifests/not-watched.json"):
        body = photos.entries(2) if key.endswith(".json") else "\n".join(json.dumps(e) for e in photos.entries(2))
        upload(watched, key, body)
    watched.s3.put_object(Bucket=watched.input, Key="watch/notes.txt", Body=b"not a manifest")
    watched.s3.put_object(Bucket=watched.input, Key="watch/never-run.json", Body=json.dumps(photos.entries(1)))

    answer = run_tick(watched)

    assert (answer["listed"], answer["started"]) == (4, 3)
    assert answer["skipped"] == {"not labeled yet (no report)": 1}
    started = sorted(summary["manifest"]["key"] for summary in answer["manifests"])
    assert started == ["watch/a.json", "watch/b.jsonl", "watch/deeper/c.json"]
    for key in started:
        assert report_of(watched, key)["recheck"]["unchanged"] == 2
    assert report_of(watched, "manifests/not-watched.json")["recheck"] is None
    assert fake_rekognition.state.successful_calls == 2  # the first upload's; the same bytes after that


def test_a_manifest_moved_out_of_watch_or_deleted_is_not_re_checked_any_more(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    photos = Photos(site, 1)
    upload(watched, "watch/moving.json", photos.entries(1))
    upload(watched, "watch/deleted.json", photos.entries(1))
    assert run_tick(watched)["started"] == 2
    watched.s3.copy_object(
        Bucket=watched.input,
        Key="archive/moving.json",
        CopySource={"Bucket": watched.input, "Key": "watch/moving.json"},
    )
    watched.s3.delete_object(Bucket=watched.input, Key="watch/moving.json")
    watched.s3.delete_object(Bucket=watched.input, Key="watch/deleted.json")

    answer = run_tick(watched, NEXT_TICK_AT)

    assert (answer["listed"], answer["started"]) == (0, 0)
    assert report_of(watched, "watch/moving.json")["manifest"]["recheck"] == "20261126T000000.000Z"  # the last one


def test_a_tick_skips_a_manifest_whose_upload_is_still_running(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    photos = Photos(site, 1)
    upload(watched, "watch/busy.json", photos.entries(1))
    report = report_of(watched, "watch/busy.json")
    key = report_key(ManifestRef(watched.input, "watch/busy.json"))
    running = {**report, "status": "in_progress"}
    head = watched.s3.head_object(Bucket=watched.output, Key=key)
    watched.s3.put_object(Bucket=watched.output, Key=key, Body=json.dumps(running), Metadata=head["Metadata"])

    assert run_tick(watched)["skipped"] == {"its upload's run has not ended": 1}


def test_one_manifest_is_re_checked_on_demand_and_a_tick_does_it_once(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    photos = Photos(site, 1)
    upload(watched, "manifests/any.json", photos.entries(1))  # not watched: re-checked when asked

    first = run_tick(watched, key="manifests/any.json")
    again = run_tick(watched, key="manifests/any.json")  # the same request delivered twice
    missing = run_tick(watched, key="manifests/missing.json")

    assert (first["started"], again["skipped"]) == (1, {"re-checked by this tick already": 1})
    assert missing["skipped"] == {"no such manifest": 1}
    bad = manifest_created.handler(tick(TICK_AT, watched.input, prefix="manifests/"), FakeLambdaContext())
    assert "only manifests under watch/" in bad["recheck"]["error"]


# --- runs, order, events and the index -------------------------------------------------------------------
def test_the_completion_event_of_a_re_check_carries_its_counts_once(
    buckets: Buckets, site: Site, state_table: str, completion_queue: str, fake_rekognition: FakeRekognition
) -> None:
    versioned_output(buckets)
    photos = Photos(site, 2)
    upload(buckets, "watch/told.json", photos.entries(2))
    photos.serve(0, images.png("coffee", size=(90, 90)))
    run_tick(buckets)
    forget_deliveries(buckets, state_table)
    run_tick(buckets)  # the tick delivered again, after its idempotency records expired

    upload_event, recheck_event = events_of(buckets, completion_queue, "watch/told.json")
    assert upload_event["detail"]["recheck"] is None
    assert recheck_event["detail"]["manifest"]["recheck"] == "20261126T000000.000Z"
    assert recheck_event["detail"]["recheck"]["changed_ids"] == ["p0"]
    assert (recheck_event["detail"]["recheck"]["unchanged"], recheck_event["detail-type"]) == (1, "Manifest Labeled")


def test_re_check_runs_order_after_their_upload_and_write_index_rows_only_for_what_changed(
    watched: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    from labeler.local.query import LocalIndex

    photos = Photos(site, 3)
    upload(watched, "watch/indexed.json", photos.entries(3))
    run_tick(watched)  # nothing changed: no index object
    photos.serve(1, images.png("coffee", size=(90, 90)))
    run_tick(watched, NEXT_TICK_AT)

    objects = {
        key: decode_index_object(watched.s3.get_object(Bucket=watched.output, Key=key)["Body"].read())
        for key in watched.output_keys(INDEX_PREFIX)
    }
    rows = sorted((row["run_order"], row["run_id"], row["image_id"]) for rows in objects.values() for row in rows)
    upload_run = report_of(watched, "watch/indexed.json")["recheck"]["of_run"]
    assert [(run_id, image_id) for _, run_id, image_id in rows] == [
        (upload_run, "p0"),
        (upload_run, "p1"),
        (upload_run, "p2"),
        (f"{upload_run}!recheck-20261127T000000.000Z", "p1"),  # sorts after its upload
    ]
    assert len(objects) == 2 and any("dt=2026-11-27/" in key for key in objects)  # the re-check's date
    with LocalIndex.from_bucket(watched.s3, watched.output) as index:
        changed = index.run_named(
            "labels_changed",
            {
                "manifest_bucket": watched.input,
                "manifest_key": "watch/indexed.json",
                "old_run_id": upload_run,
                "new_run_id": f"{upload_run}!recheck-20261127T000000.000Z",
            },
        ).records()
        frequencies = index.run_named(
            "label_frequencies", {"manifest_bucket": watched.input, "manifest_key": "watch/indexed.json"}
        ).records()
    assert [row["image_id"] for row in changed] == []  # the stand-in answers the same labels for any image
    assert {row["images"] for row in frequencies} == {3}  # the current state: the upload's rows and the re-check's


def test_a_re_upload_during_a_fanned_out_re_check_wins(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    completion_queue: str,
    fake_rekognition: FakeRekognition,
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    versioned_output(buckets)
    buckets.s3.put_bucket_versioning(Bucket=buckets.input, VersioningConfiguration={"Status": "Enabled"})
    photos = Photos(site, 6)
    upload(buckets, "watch/race.json", photos.entries(6))
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())
    photos.serve(0, images.png("coffee", size=(90, 90)))

    started = run_tick(buckets)  # the re-check is split into batches (a fan-out whatever its size)...
    assert started["manifests"][0]["status"] == "in_progress"
    photos.serve(6, images.distinct_png(6))  # ... and before any is worked on, the manifest is uploaded again
    upload(buckets, "watch/race.json", photos.entries(7))
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())

    report = report_of(buckets, "watch/race.json")
    assert (report["status"], report["total"], report["recheck"]) == ("complete", 7, None)
    stamps = {
        key.rsplit("/", 1)[-1]: buckets.s3.head_object(Bucket=buckets.output, Key=key)["Metadata"]["manifest-run"]
        for key in buckets.output_keys("results/")
    }
    assert set(stamps.values()) == {report["manifest"]["version_id"]}  # every record is the re-upload's
    details = [event["detail"] for event in events_of(buckets, completion_queue, "watch/race.json")]
    assert [detail["recheck"] for detail in details] == [None, None]  # the superseded re-check announced nothing


def test_a_re_check_batch_delivered_again_counts_what_its_first_delivery_did(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    state_table: str,
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    versioned_output(buckets)
    photos = Photos(site, 2)
    upload(buckets, "watch/twice.json", photos.entries(2))  # 2 entries: inline; its re-check: one batch of 2
    photos.serve(1, images.png("coffee", size=(90, 90)))
    run_tick(buckets)
    store = get_services().store
    real_put, failing = store.put_bytes, [1]

    def index_write_fails_once(key: str, data: bytes, content_type: str) -> None:
        if key.startswith(INDEX_PREFIX) and failing:
            failing.clear()
            raise OSError("S3 answered 500 to the index object")
        real_put(key, data, content_type)

    monkeypatch.setattr(store, "put_bytes", index_write_fails_once)
    calls = fake_rekognition.state.successful_calls
    [message] = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10)["Messages"]
    sqs.change_message_visibility(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)

    # the first delivery writes p1's record, then fails (its batch is not counted); SQS delivers it again
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())
    assert not failing and fake_rekognition.state.successful_calls == calls + 1
    forget_deliveries(buckets, state_table)  # and once more, much later: the batch is counted already
    sqs.send_message(QueueUrl=queue.url, MessageBody=message["Body"])
    drain(sqs, queue, work_batch.handler, FakeLambdaContext())

    assert result_versions(buckets) == {"p0": 1, "p1": 2}
    report = report_of(buckets, "watch/twice.json")
    assert (report["status"], report["mode"], report["batches"]) == ("complete", "fanout", {"count": 1, "done": 1})
    assert {name: report["recheck"][name] for name in ("unchanged", "changed", "changed_ids")} == {
        "unchanged": 1,
        "changed": 1,
        "changed_ids": ["p1"],
    }
    assert report["already_done"] == 1  # p1, found written by the first delivery


def test_a_tick_that_fails_part_way_resumes_after_the_last_manifest_it_finished(
    buckets: Buckets, site: Site, state_table: str, fake_rekognition: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    versioned_output(buckets)
    photos = Photos(site, 1)
    for name in ("a", "b", "c"):
        upload(buckets, f"watch/{name}.json", photos.entries(1))
    store = get_services().store
    real_open, failing = store.open_manifest, ["watch/b.json"]

    def flaky(ref: ManifestRef) -> Any:
        if ref.key in failing and ref.recheck:
            failing.clear()
            raise OSError("S3 answered 503 to the manifest")
        return real_open(ref)

    monkeypatch.setattr(store, "open_manifest", flaky)
    with pytest.raises(OSError, match="503"):
        run_tick(buckets)  # a and c are re-checked, b failed: Lambda retries the tick
    assert [report_of(buckets, f"watch/{n}.json")["status"] for n in "ac"] == ["complete", "complete"]

    retried = run_tick(buckets)

    assert retried["resumed_after"] == "watch/a.json" and retried["listed"] == 2  # a is not looked at again
    assert (retried["started"], retried["skipped"]) == (1, {"re-checked by this tick already": 1})
    assert report_of(buckets, "watch/b.json")["recheck"]["unchanged"] == 1


def test_a_tick_out_of_time_fails_before_starting_anything(
    buckets: Buckets, site: Site, state_table: str, fake_rekognition: FakeRekognition
) -> None:
    from labeler.logic.pipeline import DeadlineReached

    photos = Photos(site, 1)
    upload(buckets, "watch/late.json", photos.entries(1))

    with pytest.raises(DeadlineReached, match=r"before watch/late\.json"):
        manifest_created.handler(tick(TICK_AT, buckets.input), FakeLambdaContext(remaining_ms=100))
    assert report_of(buckets, "watch/late.json")["recheck"] is None
    assert run_tick(buckets)["started"] == 1  # Lambda's retry


# --- the command: s3-image-labeler recheck ------------------------------------------------------------------
def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from labeler import cli

    capsys.readouterr()
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_command_invokes_the_stack_s_function_asynchronously_and_waits_for_the_re_check_s_event(
    buckets: Buckets,
    site: Site,
    lambda_env: dict[str, str],
    completion_queue: str,
    fake_rekognition: FakeRekognition,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support.fake_lambda import FakeLambda

    photos = Photos(site, 2)
    upload(buckets, "manifests/asked.json", photos.entries(2))
    photos.serve(1, images.png("coffee", size=(90, 90)))
    events_of(buckets, completion_queue, "manifests/asked.json")  # the upload's event, taken away

    def manifest_function(payload: dict[str, Any]) -> dict[str, Any]:  # what Lambda runs: the real handler
        answer: dict[str, Any] = manifest_created.handler(payload, FakeLambdaContext())
        return answer

    with FakeLambda(manifest_function) as function:
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", function.endpoint_url)
        status, out, err = run_cli(
            capsys,
            "recheck",
            "manifests/asked.json",
            "--input-bucket",
            buckets.input,
            "--output-bucket",
            buckets.output,
            "--function",
            "s3-image-labeler-ManifestFunction",
            "--completion-queue",
            completion_queue,
            "--timeout",
            "60",
        )

    assert status == 0, err
    [invocation] = function.invocations
    assert (invocation["function"], invocation["type"]) == ("s3-image-labeler-ManifestFunction", "Event")
    request = invocation["payload"]["recheck"]
    assert (request["bucket"], request["key"], set(request)) == (
        buckets.input,
        "manifests/asked.json",
        {"bucket", "key", "at"},
    )
    said = " ".join(out.split())  # the console wraps at its width (80 columns without a terminal)
    assert "re-check: complete · 2 entries · 1 unchanged · 1 changed (p1) · 0 gone · 0 failed" in said
    assert "DetectLabels 1 call, 1 saved" in said and function.errors == []


def test_the_command_runs_the_handler_here_against_a_local_endpoint(
    buckets: Buckets,
    site: Site,
    lambda_env: dict[str, str],
    fake_rekognition: FakeRekognition,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    photos = Photos(site, 2)
    upload(buckets, "watch/here.json", photos.entries(2))
    monkeypatch.setenv("LABEL_BACKEND", "rekognition")  # the stand-in; --embedded would pick the offline model
    where = f"s3://{buckets.input}/watch/here.json"

    status, out, err = run_cli(capsys, "recheck", where, "--output-bucket", buckets.output, "--embedded")
    assert status == 0, err
    assert "re-check: complete · 2 entries · 2 unchanged · 0 changed · 0 gone · 0 failed" in " ".join(out.split())

    status, out, err = run_cli(
        capsys, "recheck", f"s3://{buckets.input}/watch/never.json", "--output-bucket", buckets.output, "--embedded"
    )
    assert (status, err.strip()) == (
        2,
        f"s3-image-labeler: error: no such manifest: s3://{buckets.input}/watch/never.json",
    )
    buckets.s3.put_object(Bucket=buckets.input, Key="watch/never.json", Body=b"[]")
    status, out, err = run_cli(
        capsys, "recheck", f"s3://{buckets.input}/watch/never.json", "--output-bucket", buckets.output, "--embedded"
    )
    assert status == 2 and "is not re-checked: not labeled yet (no report)" in err
