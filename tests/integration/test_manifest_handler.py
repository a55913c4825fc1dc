"""The real handler on real S3 events: moto S3 on loopback, a loopback image server, real image bytes.

Rekognition is the only stand-in (wire-level, shaped like AWS's responses).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from labeler.handlers import manifest_created
from labeler.logic.pipeline import DeadlineReached, ResultWriteFailed
from tests.conftest import Buckets, FakeLambdaContext
from tests.support.fake_rekognition import SAMPLE_LABELS, FakeRekognition
from tests.support.site import Site

pytestmark = pytest.mark.usefixtures("lambda_env")


def invoke(event: dict[str, Any], context: FakeLambdaContext) -> dict[str, Any]:
    return manifest_created.handler(event, context)


def test_every_format_is_labeled_and_labels_are_passed_through_unchanged(
    buckets: Buckets, site: Site, fake_rekognition: FakeRekognition, lambda_context: FakeLambdaContext
) -> None:
    manifest = [
        {"id": "cat-jpeg", "url": site.url("/photo.jpg")},
        {"id": "cat-png", "url": site.url("/photo.png")},
        {"id": "cat-webp", "url": site.url("/photo.webp")},
        {"id": "cat-gif", "url": site.url("/photo.gif")},
    ]
    event = buckets.put_manifest("manifests/formats.json", manifest)

    response = invoke(event, lambda_context)

    assert response["manifests"][0]["succeeded"] == 4
    records = buckets.records_by_id()
    assert sorted(records) == ["cat-gif", "cat-jpeg", "cat-png", "cat-webp"]
    for record in records.values():
        assert record["labels"] == SAMPLE_LABELS  # unchanged Rekognition Label objects
        assert record["label_model_version"] == "3.0"
        assert len(record["image"]["sha256"]) == 64
    assert records["cat-webp"]["image"]["converted"] is True
    assert records["cat-jpeg"]["image"]["converted"] is False
    report = buckets.report()
    assert (report["total"], report["succeeded"], report["failed"], report["status"]) == (4, 4, 0, "complete")
    assert report["manifest"]["key"] == "manifests/formats.json"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/missing", "http_status"),
        ("/error-500", "http_status"),
        ("/page.html", "not_an_image"),
        ("/empty", "empty_body"),
        ("/huge-declared", "too_large"),
        ("/endless-chunked", "too_large"),
        ("/trickle", "timeout"),
        ("/redirect-loop", "redirect_loop"),
        ("/redirect-to-metadata", "blocked_address"),
        ("/tiny.png", "image_too_small"),
        ("/bomb.png", "decompression_bomb"),
        ("/truncated.jpg", "corrupt_image"),
        ("/drawing.svg", "unsupported_image"),
    ],
)
def test_hostile_routes_become_error_records(
    path: str,
    code: str,
    buckets: Buckets,
    site: Site,
    lambda_context: FakeLambdaContext,
    fake_rekognition: FakeRekognition,
) -> None:
    event = buckets.put_manifest(
        "manifests/hostile.json", [{"id": "bad", "url": site.url(path)}, site.url("/photo.jpg")]
    )

    invoke(event, lambda_context)

    records = buckets.records()
    assert len(records) == 2
    assert records[0]["image_id"] == "bad"
    assert records[0]["error"]["code"] == code, records[0]["error"]
    assert "labels" not in records[0]
    assert records[1]["labels"] == SAMPLE_LABELS
    report = buckets.report()
    assert (report["succeeded"], report["failed"], report["errors_by_code"]) == (1, 1, {code: 1})
    assert fake_rekognition.state.successful_calls == 1  # nothing broken was sent to Rekognition


def test_a_key_with_a_space_and_a_plus_is_decoded_the_way_s3_encodes_it(
    buckets: Buckets, site: Site, lambda_context: FakeLambdaContext
) -> None:
    event = buckets.put_manifest("manifests/holiday photos+extra.json", [site.url("/photo.jpg")])
    assert event["Records"][0]["s3"]["object"]["key"] == "manifests/holiday+photos%2Bextra.json"

    invoke(event, lambda_context)

    assert buckets.report()["manifest"]["key"] == "manifests/holiday photos+extra.json"
    assert len(buckets.records()) == 1


def test_every_record_of_an_event_is_processed(buckets: Buckets, site: Site, lambda_context: FakeLambdaContext) -> None:
    first = buckets.put_manifest("a.json", [site.url("/photo.jpg")])
    second = buckets.put_manifest("b.jsonl", site.url("/photo.png") + "\n")
    event = {"Records": first["Records"] + second["Records"]}

    response = invoke(event, lambda_context)

    assert [m["manifest"]["key"] for m in response["manifests"]] == ["a.json", "b.jsonl"]
    assert len(buckets.output_keys("reports/")) == 2


@pytest.mark.parametrize(
    "body",
    [b"{not json at all", b"\xff\xfe\x00garbage", b"", b"[]", b'{"images": 42}', b"[" * 100_000],
)
def test_a_broken_manifest_gets_a_report_with_a_clear_error(
    body: bytes, buckets: Buckets, lambda_context: FakeLambdaContext
) -> None:
    event = buckets.put_manifest("broken.json", body)

    response = invoke(event, lambda_context)  # does not raise

    report = buckets.report()
    assert report["status"] == "failed"
    assert report["error"]["code"].startswith("manifest_")
    assert report["error"]["message"]
    assert (report["total"], report["succeeded"], report["failed"]) == (0, 0, 0)
    assert response["manifests"][0]["status"] == "failed"


def test_a_manifest_that_cannot_be_read_gets_a_report(buckets: Buckets, lambda_context: FakeLambdaContext) -> None:
    event = buckets.put_manifest("gone.json", [])
    buckets.s3.delete_object(Bucket=buckets.input, Key="gone.json")

    invoke(event, lambda_context)

    assert buckets.report()["error"]["code"] == "manifest_unreadable"


def test_duplicate_ids_first_wins_and_the_later_one_is_reported(
    buckets: Buckets, site: Site, lambda_context: FakeLambdaContext, fake_rekognition: FakeRekognition
) -> None:
    manifest = [{"id": "same", "url": site.url("/photo.jpg")}, {"id": "same", "url": site.url("/photo.png")}]
    event = buckets.put_manifest("dups.json", manifest)

    invoke(event, lambda_context)

    records = buckets.records()
    assert len(records) == 2
    assert records[0]["labels"] and records[0]["url"].endswith("/photo.jpg")
    assert records[1]["error"]["code"] == "duplicate_id"
    assert fake_rekognition.state.successful_calls == 1
    assert buckets.report()["errors_by_code"] == {"duplicate_id": 1}


def test_entries_without_ids_get_deterministic_ids(
    buckets: Buckets, site: Site, lambda_context: FakeLambdaContext
) -> None:
    event = buckets.put_manifest("noid.json", [site.url("/photo.jpg")])
    invoke(event, lambda_context)
    first = buckets.records()[0]["image_id"]
    invoke(buckets.put_manifest("noid-again.json", [site.url("/photo.jpg")]), lambda_context)
    ids = {record["image_id"] for record in buckets.records()}
    assert ids == {first}


def test_a_redelivered_event_labels_nothing_twice_and_duplicates_nothing(
    buckets: Buckets, site: Site, lambda_context: FakeLambdaContext, fake_rekognition: FakeRekognition
) -> None:
    event = buckets.put_manifest("redeliver.json", [site.url("/photo.jpg"), site.url("/photo.png")])
    invoke(event, lambda_context)
    keys_before = buckets.output_keys("results/")
    downloads_before = site.hits("/photo.jpg")
    report_before = buckets.report()

    response = invoke(event, lambda_context)

    assert buckets.output_keys("results/") == keys_before
    assert fake_rekognition.state.successful_calls == 2
    assert site.hits("/photo.jpg") == downloads_before  # already done: not even downloaded again
    assert response["manifests"][0]["succeeded"] == 2
    assert buckets.report() == report_before  # the run's final report stands: a final status is terminal


def test_the_same_bytes_are_never_labeled_twice(
    buckets: Buckets, site: Site, lambda_context: FakeLambdaContext, fake_rekognition: FakeRekognition
) -> None:
    # Three URLs serving identical bytes, then the manifest uploaded again under a new key.
    manifest = [site.url("/photo.jpg"), site.url("/photo-copy.jpg"), site.url("/photo.jpg?v=2")]
    invoke(buckets.put_manifest("first.json", manifest), lambda_context)
    # Fetched concurrently, but the content hash is locked while it is labeled: one paid call.
    assert fake_rekognition.state.successful_calls == 1
    calls = fake_rekognition.state.successful_calls

    invoke(buckets.put_manifest("again/second.json", manifest), lambda_context)

    assert fake_rekognition.state.successful_calls == calls
    second = [r for r in buckets.records() if r["manifest"]["key"] == "again/second.json"]
    assert len(second) == 3 and all(r["labels_from_cache"] for r in second)


def test_identical_bytes_in_sequence_cost_one_call(
    buckets: Buckets,
    site: Site,
    lambda_context: FakeLambdaContext,
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labeler.handlers.composition import reset_services

    monkeypatch.setenv("MAX_WORKERS", "1")
    reset_services()
    manifest = [site.url("/photo.jpg"), site.url("/photo-copy.jpg"), site.url("/photo.jpg?v=2")]
    invoke(buckets.put_manifest("seq.json", manifest), lambda_context)
    assert fake_rekognition.state.successful_calls == 1
    assert buckets.report()["labels_from_cache"] == 2


def test_an_unchanged_url_is_not_downloaded_again(
    buckets: Buckets, site: Site, lambda_context: FakeLambdaContext, fake_rekognition: FakeRekognition
) -> None:
    invoke(buckets.put_manifest("one.json", [site.url("/photo.jpg")]), lambda_context)

    invoke(buckets.put_manifest("two.json", [site.url("/photo.jpg")]), lambda_context)

    second = next(r for r in buckets.records() if r["manifest"]["key"] == "two.json")
    assert second["not_modified"] is True and second["labels_from_cache"] is True
    assert second["labels"] == SAMPLE_LABELS
    assert site.not_modified_count("/photo.jpg") == 1  # answered 304: no body sent
    assert fake_rekognition.state.successful_calls == 1


def test_a_crash_on_one_image_becomes_its_error_record(
    buckets: Buckets, site: Site, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labeler.logic import pipeline

    real_prepare = pipeline.prepare_image

    def buggy_prepare(data: bytes, **kwargs: Any) -> Any:
        if data.startswith(b"\x89PNG"):
            raise KeyError("a bug")
        return real_prepare(data, **kwargs)

    monkeypatch.setattr(pipeline, "prepare_image", buggy_prepare)
    event = buckets.put_manifest("crash.json", [site.url("/photo.png"), site.url("/photo.jpg")])

    invoke(event, lambda_context)

    records = buckets.records()
    assert records[0]["error"]["code"] == "internal_error"
    assert "KeyError" in records[0]["error"]["message"]
    assert records[1]["labels"]


def test_a_result_write_that_keeps_failing_fails_loudly_and_the_retry_completes(
    buckets: Buckets,
    site: Site,
    lambda_context: FakeLambdaContext,
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labeler.handlers.composition import get_services

    event = buckets.put_manifest(
        "flaky.json", [{"id": "a", "url": site.url("/photo.jpg")}, {"id": "b", "url": site.url("/photo.png")}]
    )
    store = get_services().store
    real_put = store.put_json

    def failing_put(key: str, *args: Any, **kwargs: Any) -> bool:
        if key.startswith("results/") and key.endswith("/b.json"):
            raise OSError("S3 is having a bad day")
        return real_put(key, *args, **kwargs)

    monkeypatch.setattr(store, "put_json", failing_put)
    with pytest.raises(ResultWriteFailed):
        invoke(event, lambda_context)
    assert buckets.report()["status"] == "incomplete"
    calls_after_first = fake_rekognition.state.successful_calls
    assert calls_after_first == 2

    monkeypatch.setattr(store, "put_json", real_put)  # S3 recovers; Lambda retries the event
    invoke(event, lambda_context)

    assert sorted(buckets.records_by_id()) == ["a", "b"]
    assert fake_rekognition.state.successful_calls == calls_after_first  # b's labels came from the cache
    report = buckets.report()
    assert (report["status"], report["succeeded"], report["failed"]) == ("complete", 2, 0)


def test_near_the_deadline_no_new_work_starts_and_the_retry_finishes(
    buckets: Buckets, site: Site, fake_rekognition: FakeRekognition
) -> None:
    urls = [{"id": f"img-{n}", "url": site.url(f"/photo.jpg?n={n}")} for n in range(6)]
    event = buckets.put_manifest("deadline.json", urls)
    context = FakeLambdaContext(remaining_ms=400)  # less than the smallest margin (0.5 s): nothing may start

    with pytest.raises(DeadlineReached):
        invoke(event, context)
    assert buckets.records() == []
    assert buckets.report()["status"] == "incomplete"

    invoke(event, FakeLambdaContext())
    assert len(buckets.records()) == 6


def test_the_s3_test_event_is_ignored(lambda_context: FakeLambdaContext) -> None:
    event = json.loads('{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b","RequestId":"x"}')
    assert invoke(event, lambda_context) == {"manifests": []}


def test_an_event_without_a_sequencer_is_processed(
    buckets: Buckets, site: Site, lambda_context: FakeLambdaContext
) -> None:
    # S3-compatible endpoints (moto's S3 → SQS notifications among them) may leave the sequencer out.
    event = buckets.put_manifest("no-sequencer.json", [site.url("/photo.jpg")])
    del event["Records"][0]["s3"]["object"]["sequencer"]

    invoke(event, lambda_context)

    assert len(buckets.records()) == 1
    assert buckets.report()["status"] == "complete"


def test_records_that_are_not_from_s3_are_ignored(
    buckets: Buckets, site: Site, lambda_context: FakeLambdaContext
) -> None:
    event = buckets.put_manifest("mixed.json", [site.url("/photo.jpg")])
    event["Records"].append({"eventSource": "aws:sqs", "body": "{}"})

    response = invoke(event, lambda_context)

    assert [m["manifest"]["key"] for m in response["manifests"]] == ["mixed.json"]
    assert len(buckets.records()) == 1


@pytest.mark.parametrize("inline_max", [100, 2], ids=["break-in-the-first-entries-read", "break-later"])
def test_a_manifest_that_breaks_after_some_entries_is_partial_wherever_the_break_is(
    inline_max: int, buckets: Buckets, site: Site, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More entries than MAX_MANIFEST_ENTRIES: met within the first INLINE_MAX_IMAGES entries as well as later.
    from labeler.handlers.composition import reset_services

    monkeypatch.setenv("MAX_MANIFEST_ENTRIES", "3")
    monkeypatch.setenv("INLINE_MAX_IMAGES", str(inline_max))
    reset_services()
    event = buckets.put_manifest("too-many.json", [site.url(f"/photo.jpg?n={n}") for n in range(5)])

    invoke(event, lambda_context)

    report = buckets.report()
    assert (report["status"], report["total"], report["error"]["code"]) == ("partial", 3, "manifest_too_many_entries")
    assert len(buckets.records()) == 3
