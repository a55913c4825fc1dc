"""The invocation's deadline bounds every step of every entry: queued entries, downloads, DetectLabels.

These drive :func:`process_entries` with an explicit :class:`Deadline` (a monotonic instant); the
handler builds the same from the Lambda context (tests/faults/ retries a short-lived one until done).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from labeler.handlers import manifest_created
from labeler.handlers.composition import get_services, reset_services
from labeler.logic.pipeline import Deadline, DeadlineReached, process_entries
from labeler.models.errors import OutOfTime
from labeler.models.records import ManifestEntry, ManifestRef
from tests.conftest import Buckets, FakeLambdaContext
from tests.support.fake_rekognition import FakeRekognition
from tests.support.site import Site

pytestmark = pytest.mark.usefixtures("lambda_env")


def deadline_in(seconds: float, margin: float = 1.0) -> Deadline:
    now = time.monotonic()
    return Deadline(work_ends=now + seconds, ends=now + seconds + margin)


def entries_of(site: Site, path: str, count: int) -> list[ManifestEntry]:
    return [ManifestEntry(n, f"img-{n}", site.url(f"{path}?n={n}")) for n in range(count)]


def test_the_margin_is_a_tenth_of_the_invocation_within_bounds() -> None:
    assert [Deadline.for_invocation(ms).margin_seconds for ms in (2_000, 8_000, 60_000, 300_000, 900_000)] == [
        0.5,
        0.8,
        6.0,
        30.0,
        30.0,
    ]
    assert not Deadline.for_invocation(None).expired()


def test_queued_entries_never_start_after_the_deadline(
    buckets: Buckets, site: Site, fake_rekognition: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_WORKERS", "1")  # two entries wait in the queue behind the one running
    reset_services()
    services = get_services()
    site.server.delay_seconds = 0.3
    starts: list[float] = []
    real_fetch = services.fetcher.fetch

    def observed(url: str, *args: Any, **kwargs: Any) -> Any:
        starts.append(time.monotonic())
        return real_fetch(url, *args, **kwargs)

    monkeypatch.setattr(services.fetcher, "fetch", observed)
    deadline = deadline_in(1.0)

    result = process_entries(
        services, ManifestRef(buckets.input, "q.json"), entries_of(site, "/photo.jpg", 10), deadline
    )

    assert result.stopped_early
    assert starts and max(starts) < deadline.work_ends  # compares two instants: no download began later
    assert len(buckets.records()) == result.tally.total < 10


def test_a_download_cut_by_the_deadline_is_left_for_the_retry_not_recorded_as_a_timeout(
    buckets: Buckets, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOWNLOAD_TIMEOUT_SECONDS", "60")
    reset_services()
    entry = ManifestEntry(0, "slow", site.url("/never-answers"))

    result = process_entries(get_services(), ManifestRef(buckets.input, "d.json"), [entry], deadline_in(0.5))

    assert (result.unfinished, result.tally.total) == (1, 0)
    assert buckets.records() == []  # not the image's fault: no `timeout` record, the retry does it


def test_detect_labels_gets_the_deadline_and_running_out_of_time_records_nothing(
    buckets: Buckets, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = get_services()
    deadline = deadline_in(60)
    given: list[Any] = []

    def out_of_time(image: bytes, options: Any, deadline: float | None = None) -> Any:
        given.append(deadline)
        raise OutOfTime("the backend cannot finish before the deadline")  # what a backend does at its limit

    monkeypatch.setattr(services.backend, "detect", out_of_time)
    result = process_entries(
        services, ManifestRef(buckets.input, "l.json"), entries_of(site, "/photo.png", 1), deadline
    )

    assert given == [deadline.work_ends]
    assert (result.unfinished, buckets.records()) == (1, [])


def test_an_entry_out_of_time_fails_the_invocation_after_the_others_are_recorded(
    buckets: Buckets, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = get_services()
    real = services.backend.detect

    def out_of_time_for_png(image: bytes, options: Any, deadline: float | None = None) -> Any:
        if image.startswith(b"\x89PNG"):
            raise OutOfTime("no time left for this one")
        return real(image, options, deadline)

    monkeypatch.setattr(services.backend, "detect", out_of_time_for_png)
    event = buckets.put_manifest("oot.json", [site.url("/photo.jpg"), site.url("/photo.png"), site.url("/coffee.jpg")])

    with pytest.raises(DeadlineReached):
        manifest_created.handler(event, FakeLambdaContext())
    assert len(buckets.records()) == 2 and buckets.report()["status"] == "incomplete"

    monkeypatch.setattr(services.backend, "detect", real)
    manifest_created.handler(event, FakeLambdaContext())
    assert len(buckets.records()) == 3 and buckets.report()["status"] == "complete"
