"""The label cache's own logic: keys, model-version checks, the recent-labels memory, background writes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from labeler.logic.cache import LabelCache, UrlMemo, writer_threads

LABELS = [{"Name": "Cat", "Confidence": 92.0, "Instances": [], "Parents": [], "Aliases": [], "Categories": []}]
SHA = "ab" * 32


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
    return LabelCache(
        store, backend="rekognition", min_confidence=55, max_labels=50, current_model_version=lambda: version, **kwargs
    )


def test_labels_round_trip_through_the_store_under_a_settings_specific_key() -> None:
    store = MemoryStore()
    make_cache(store).put_labels(SHA, LABELS, "3.0", {"format": "jpeg"})

    key = f"cache/labels/rekognition/c55-n50/ab/{SHA}.json"
    assert store.objects[key]["labels"] == LABELS
    fresh = make_cache(store)  # another container: no memory of its own
    assert fresh.get_labels(SHA).labels == LABELS
    assert make_cache(store).labels_key(SHA) != LabelCache(
        store, backend="local", min_confidence=55, max_labels=50
    ).labels_key(SHA)
    assert LabelCache(store, backend="rekognition", min_confidence=80, max_labels=50).get_labels(SHA) is None


def test_a_new_model_version_relabels() -> None:
    store = MemoryStore()
    make_cache(store, version="3.0").put_labels(SHA, LABELS, "3.0", {})
    assert make_cache(store, version="3.1").get_labels(SHA) is None
    assert make_cache(store, version=None).get_labels(SHA) is not None  # version unknown yet: trust the cache


def test_labels_written_here_are_read_from_memory_even_while_the_write_is_in_flight() -> None:
    store = MemoryStore()
    store.gate.clear()  # S3 is slow today
    cache = make_cache(store, writer=ThreadPoolExecutor(max_workers=2))
    cache.put_labels(SHA, LABELS, "3.0", {})

    assert cache.get_labels(SHA).labels == LABELS
    assert store.reads == 0 and store.objects == {}
    store.gate.set()
    cache.flush()
    assert store.objects  # flushed before the invocation returns
    cache.close()


def test_the_memory_is_bounded() -> None:
    store = MemoryStore()
    cache = make_cache(store, recent_size=2)
    for n in range(3):
        cache.put_labels(f"{n:064x}", LABELS, "3.0", {})
    store.objects.clear()
    assert cache.get_labels(f"{0:064x}") is None  # evicted, and gone from the store
    assert cache.get_labels(f"{2:064x}") is not None


def test_a_failed_background_write_is_only_a_warning() -> None:
    class BrokenStore(MemoryStore):
        def put_json(self, *args: Any, **kwargs: Any) -> bool:
            raise OSError("S3 is down")

    cache = make_cache(BrokenStore(), writer=ThreadPoolExecutor(max_workers=1))
    cache.put_labels(SHA, LABELS, "3.0", {})
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


def test_an_invocation_at_the_quota_has_writers_enough_for_its_cache_writes() -> None:
    # two writes per new image at ~49 images/s and ~20-60 ms per PUT: 2-6 writers busy at the default 32 workers
    assert writer_threads(32) == 8
    assert writer_threads(8) == writer_threads(1) == 4
