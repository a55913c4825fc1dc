"""Faults survived: Rekognition throttling bursts, duplicate deliveries running at the same time.

(S3 write failures and the Lambda deadline are in test_manifest_handler.py; poison batches and
the dead-letter queue in test_fanout.py.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from labeler.handlers import manifest_created
from labeler.handlers.idempotency import DuplicateInProgress
from tests.conftest import Buckets, FakeLambdaContext
from tests.support.fake_rekognition import SAMPLE_LABELS, FakeRekognition
from tests.support.site import Site

pytestmark = pytest.mark.usefixtures("lambda_env")

DISTINCT_IMAGES = ("/photo.jpg", "/photo.png", "/photo.webp", "/photo.gif", "/photo.bmp", "/coffee.jpg")


@pytest.fixture
def slow_site(site: Site) -> Iterator[Site]:
    site.server.delay_seconds = 0.3
    yield site
    site.server.delay_seconds = 0.0


def test_bursts_of_throttling_never_drop_an_image(
    buckets: Buckets, site: Site, fake_rekognition: FakeRekognition, lambda_context: FakeLambdaContext
) -> None:
    manifest = [{"id": path.strip("/"), "url": site.url(path)} for path in DISTINCT_IMAGES]
    fake_rekognition.state.fail_next(
        *(["ThrottlingException", "ProvisionedThroughputExceededException"] * 6), "ThrottlingException"
    )

    manifest_created.handler(buckets.put_manifest("throttled.json", manifest), lambda_context)

    records = buckets.records()
    assert len(records) == len(DISTINCT_IMAGES)
    assert all(record.get("labels") == SAMPLE_LABELS for record in records), [r.get("error") for r in records]
    assert fake_rekognition.state.successful_calls == len(DISTINCT_IMAGES)
    report = buckets.report()
    assert (report["succeeded"], report["failed"], report["errors_by_code"]) == (len(DISTINCT_IMAGES), 0, {})


def test_concurrent_duplicate_events_label_once_and_write_one_set_of_records(
    buckets: Buckets, slow_site: Site, fake_rekognition: FakeRekognition, state_table: str
) -> None:
    manifest = [{"id": path.strip("/"), "url": slow_site.url(path)} for path in DISTINCT_IMAGES]
    event = buckets.put_manifest("twins.json", manifest)
    responses: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            responses.append(manifest_created.handler(event, FakeLambdaContext()))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    twins = [threading.Thread(target=deliver) for _ in range(2)]
    for twin in twins:
        twin.start()
    for twin in twins:
        twin.join(60)

    # One delivery did the work; its twin saw it in progress (Powertools idempotency) and failed, so that
    # Lambda retries it (a twin running and a twin killed look the same at that moment).
    assert [type(error) for error in errors] == [DuplicateInProgress]
    assert len(responses) == 1 and responses[0]["manifests"][0]["succeeded"] == len(DISTINCT_IMAGES)
    assert fake_rekognition.state.successful_calls == len(DISTINCT_IMAGES)
    assert all(slow_site.hits(path) == 1 for path in DISTINCT_IMAGES)
    assert len(buckets.records()) == len(DISTINCT_IMAGES)

    # A later redelivery gets the saved summary: nothing is downloaded or labeled again.
    again = manifest_created.handler(event, FakeLambdaContext())
    assert again["manifests"][0]["succeeded"] == len(DISTINCT_IMAGES)
    assert fake_rekognition.state.successful_calls == len(DISTINCT_IMAGES)
    assert all(slow_site.hits(path) == 1 for path in DISTINCT_IMAGES)


def test_a_reupload_of_the_same_manifest_is_a_new_run_that_pays_nothing(
    buckets: Buckets, site: Site, fake_rekognition: FakeRekognition, state_table: str
) -> None:
    manifest = [{"id": path.strip("/"), "url": site.url(path)} for path in DISTINCT_IMAGES]
    manifest_created.handler(buckets.put_manifest("same.json", manifest), FakeLambdaContext())
    calls = fake_rekognition.state.successful_calls

    response = manifest_created.handler(buckets.put_manifest("same.json", manifest), FakeLambdaContext())

    assert response["manifests"][0]["succeeded"] == len(DISTINCT_IMAGES)  # a new run, not the saved summary
    assert fake_rekognition.state.successful_calls == calls
    assert buckets.report()["labels_from_cache"] == len(DISTINCT_IMAGES)
