"""The label cache's own logic: keys, model-version checks, the recent-labels memory, background writes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from labeler.logic.cache import CachedLabels, LabelCache, UrlMemo, label_cache_tag, writer_threads
from labeler.models.label_options import LabelOptions

LABELS = [{"Name": "Cat", "Confidence": 92.0, "Instances": [], "Parents": [], "Aliases": [], "Categories": []}]
SHA = "ab" * 32
TAG = label_cache_tag(LabelOptions(min_confidence=55, max_labels=50))


def answer(version: str = "3.0", image: dict[str, Any] | None = None, **extra: Any) -> CachedLabels:
    return CachedLabels(labels=LABELS, model_version=version, image=image or {}, **extra)


class MemoryStore:
    """A dict behind the store interface; ``gate`` holds writes back until it is set."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.reads = 0
        self.gate = threading.Event()
        self.gate.set()

    def put_json(self, key: str, document: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
        self.gate.wait(5)
        self.objects[key] = document

    def get_json(self, key: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.objects.get(key)


def make_cache(store: MemoryStore, version: str | None = "3.0", **kwargs: Any) -> LabelCache:
    return LabelCache(store, backend="rekognition", current_model_version=lambda: version, **kwargs)


def test_labels_round_trip_through_the_store_under_a_settings_specific_key() -> None:
    store = MemoryStore()
    make_cache(store).put_labels(SHA, TAG, answer(image={"format": "jpeg"}))

    key = f"cache/labels/rekognition/c55-n50/ab/{SHA}.json"  # the key labels were always cached under
    assert store.objects[key]["labels"] == LABELS
    fresh = make_cache(store)  # another container: no memory of its own
    assert fresh.get_labels(SHA, TAG).labels == LABELS
    assert make_cache(store).labels_key(SHA, TAG) != LabelCache(store, backend="local").labels_key(SHA, TAG)
    stricter = label_cache_tag(LabelOptions(min_confidence=80, max_labels=50))
    assert make_cache(store).get_labels(SHA, stricter) is None


# Options that change DetectLabels' answer: each pair must never share a cached answer.
DIFFERENT = [
    (LabelOptions(), LabelOptions(min_confidence=80)),
    (LabelOptions(), LabelOptions(max_labels=20)),
    (LabelOptions(), LabelOptions(features=("GENERAL_LABELS", "IMAGE_PROPERTIES"))),
    (LabelOptions(features=("IMAGE_PROPERTIES",)), LabelOptions(features=("GENERAL_LABELS", "IMAGE_PROPERTIES"))),
    (LabelOptions(), LabelOptions(exclude_labels=("Cat",))),
    (LabelOptions(exclude_labels=("Cat",)), LabelOptions(exclude_categories=("Cat",))),
    (LabelOptions(include_labels=("Cat",)), LabelOptions(exclude_labels=("Cat",))),
    (
        LabelOptions(features=("IMAGE_PROPERTIES",), max_dominant_colors=3),
        LabelOptions(features=("IMAGE_PROPERTIES",), max_dominant_colors=4),
    ),
]


@pytest.mark.parametrize(("one", "other"), DIFFERENT)
def test_different_options_never_share_a_cached_answer(one: LabelOptions, other: LabelOptions) -> None:
    store = MemoryStore()
    cache = make_cache(store)
    cache.put_labels(SHA, label_cache_tag(one), answer())
    assert label_cache_tag(one) != label_cache_tag(other)
    assert cache.get_labels(SHA, label_cache_tag(other)) is None
    assert make_cache(store).get_labels(SHA, label_cache_tag(other)) is None  # nor from the store


def test_the_same_options_always_share_it_whatever_their_order() -> None:
    store = MemoryStore()
    written = LabelOptions(exclude_labels=("Dog", "Cat"), features=("IMAGE_PROPERTIES", "GENERAL_LABELS"))
    make_cache(store).put_labels(SHA, label_cache_tag(written, "v1"), answer(image_properties={"Quality": {}}))
    same = LabelOptions(exclude_labels=("Cat", "Dog", "Cat"), features=("GENERAL_LABELS", "IMAGE_PROPERTIES"))
    found = make_cache(store).get_labels(SHA, label_cache_tag(same, "v1"))
    assert found is not None and found.image_properties == {"Quality": {}}
    # what cannot change the answer does not split the cache: a cap, colours without IMAGE_PROPERTIES
    assert label_cache_tag(LabelOptions(max_label_calls=5, max_dominant_colors=3)) == label_cache_tag(LabelOptions())
    # ...but what else the backend's answer depends on does
    assert label_cache_tag(same, "v2") != label_cache_tag(same, "v1")


def test_a_new_model_version_relabels() -> None:
    store = MemoryStore()
    make_cache(store, version="3.0").put_labels(SHA, TAG, answer())
    assert make_cache(store, version="3.1").get_labels(SHA, TAG) is None
    assert make_cache(store, version=None).get_labels(SHA, TAG) is not None  # version unknown yet: trust the cache


def test_labels_written_here_are_read_from_memory_even_while_the_write_is_in_flight() -> None:
    store = MemoryStore()
    store.gate.clear()  # S3 is slow today
    cache = make_cache(store, writer=ThreadPoolExecutor(max_workers=2))
    cache.put_labels(SHA, TAG, answer())

    assert cache.get_labels(SHA, TAG).labels == LABELS
    assert store.reads == 0 and store.objects == {}
    store.gate.set()
    cache.flush()
    assert store.objects  # flushed before the invocation returns
    cache.close()


def test_the_memory_is_bounded() -> None:
    store = MemoryStore()
    cache = make_cache(store, recent_size=2)
    for n in range(3):
        cache.put_labels(f"{n:064x}", TAG, answer())
    store.objects.clear()
    assert cache.get_labels(f"{0:064x}", TAG) is None  # evicted, and gone from the store
    assert cache.get_labels(f"{2:064x}", TAG) is not None


def test_a_failed_background_write_is_only_a_warning() -> None:
    class BrokenStore(MemoryStore):
        def put_json(self, *args: Any, **kwargs: Any) -> bool:
            raise OSError("S3 is down")

    cache = make_cache(BrokenStore(), writer=ThreadPoolExecutor(max_workers=1))
    cache.put_labels(SHA, TAG, answer())
    cache.put_url_memo("https://example.com/cat.jpg", UrlMemo(etag='"x"', last_modified=None, sha256=SHA))
    cache.close()  # does not raise


def test_url_memos_need_a_validator() -> None:
    store = MemoryStore()
    cache = make_cache(store)
    cache.put_url_memo("https://example.com/a.jpg", UrlMemo(etag=None, last_modified=None, sha256=SHA))
    assert store.objects == {}
    cache.put_url_memo("https://example.com/a.jpg", UrlMemo(etag='"v1"', last_modified=None, sha256=SHA))
    assert cache.get_url_memo("https://example.com/a.jpg") == UrlMemo(etag='"v1"', last_modified=None, sha256=SHA)
    assert cache.get_url_memo("https://example.com/b.jpg") is None


def test_an_s3_object_version_has_its_own_key_beside_the_content_keys() -> None:
    store = MemoryStore()
    identity = "s3://my-photos/cat.jpg?versionId=v1"
    make_cache(store).put_source_labels(identity, TAG, answer(image={"format": "jpeg", "bytes": 48213}))

    (key,) = store.objects
    assert key.startswith("cache/labels/rekognition/c55-n50/s3/")  # the labels' lifecycle rule covers it
    assert store.objects[key]["source"] == identity and "sha256" not in store.objects[key]
    fresh = make_cache(store)
    assert fresh.get_source_labels(identity, TAG).image == {"format": "jpeg", "bytes": 48213}
    assert fresh.get_source_labels("s3://my-photos/cat.jpg?versionId=v2", TAG) is None
    assert fresh.get_source_labels(identity, label_cache_tag(LabelOptions(min_confidence=80))) is None
    assert make_cache(store, version="4.0").get_source_labels(identity, TAG) is None  # a new model relabels


def test_an_invocation_at_the_quota_has_writers_enough_for_its_cache_writes() -> None:
    # two writes per new image at ~49 images/s and ~20-60 ms per PUT: 2-6 writers busy at the default 32 workers
    assert writer_threads(32) == 8
    assert writer_threads(8) == writer_threads(1) == 4
