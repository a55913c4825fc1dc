"""Never pay twice: a content-hash label cache and per-URL validators, kept in the output bucket.

* ``cache/labels/<backend>/<tag>/<sha256[:2]>/<sha256>.json`` — labels (and image properties) of
  identical bytes, reused across entries, manifests and re-uploads. ``<tag>`` names every option
  that changes DetectLabels' answer (:func:`label_cache_tag`): different options never share an
  answer, the same options always do. The document holds the label model version, checked on
  read, so a new model relabels.
* ``cache/labels/<backend>/<tag>/s3/<h[:2]>/<h>.json`` — the same for an S3 object version named by
  ``s3://`` entries, ``h`` = SHA-256 of its identity (``s3://b/k?versionId=…``, or ``#etag=…`` when
  unversioned: :func:`~labeler.logic.s3_sources.source_identity`). Objects labeled through
  ``Image.S3Object`` have no bytes here to hash: their version or ETag is what is remembered.
* ``cache/urls/<sha256(url)>.json`` — the ``ETag``/``Last-Modified`` a URL last answered with and
  the content hash it had, so the next fetch can be conditional and a ``304`` reuses the labels.

Only ``OUTPUT_BUCKET`` is needed: a fresh deploy has a working cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from labeler.logic.keys import CACHE_PREFIX
from labeler.models.label_options import Feature, LabelOptions
from labeler.observability import logger


def label_cache_tag(options: LabelOptions, salt: str = "") -> str:
    """The cache key's part that names the options: equal for equal requests, different otherwise.

    Labels alone without filters keep the tag the cache always had (``c<MinConfidence>-n<MaxLabels>``),
    so labels cached before options existed stay valid; anything else is ``o-`` and
    :meth:`LabelOptions.cache_tag` (a hash of the request, ``salt`` included: what else the backend's
    answer depends on, e.g. the local image-properties algorithm's version).

    >>> label_cache_tag(LabelOptions(min_confidence=55, max_labels=50))
    'c55-n50'
    >>> label_cache_tag(LabelOptions(exclude_labels=("Cat",)))
    'o-ec0688ee68f86284'
    """
    if options.features == (Feature.GENERAL_LABELS,) and not options.has_filters and not salt:
        return f"c{options.min_confidence:g}-n{options.max_labels}"
    return f"o-{options.cache_tag(salt)}"


class JsonStore(Protocol):
    def put_json(self, key: str, document: dict[str, Any], metadata: dict[str, str] | None = None) -> None: ...

    def get_json(self, key: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class CachedLabels:
    labels: list[dict[str, Any]]
    model_version: str
    image: dict[str, Any]
    image_properties: dict[str, Any] | None = None  # DetectLabels' ImageProperties, when they were asked for


@dataclass(frozen=True)
class UrlMemo:
    etag: str | None
    last_modified: str | None
    sha256: str


class KeyedLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it.

    The pipeline holds the content hash's lock while it checks the cache, labels and stores: two
    threads that meet the same bytes at once (two URLs, one photo) make one DetectLabels call, and
    the second reads the first one's labels from the cache.

    >>> locks = KeyedLocks()
    >>> with locks.hold("ab12"):
    ...     pass
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                _, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def writer_threads(max_workers: int) -> int:
    """Threads for the background cache writes of an invocation with ``max_workers`` entry threads.

    A new image is two writes (its labels, its URL memo): at the whole quota (49 images/s) one invocation
    makes ~100 writes/s, and a small S3 PUT takes ~20-60 ms, so it needs 2-6 writers busy; with fewer,
    writes queue up and the invocation waits for them before it returns (``flush``). A quarter of the
    entry threads (8 at the default 32), at least 4.

    >>> writer_threads(32), writer_threads(8)
    (8, 4)
    """
    return max(4, max_workers // 4)


class LabelCache:
    """Reads and writes cache documents; every failure to read is a miss, never an error."""

    def __init__(
        self,
        store: JsonStore,
        *,
        backend: str,
        current_model_version: Callable[[], str | None] = lambda: None,
        writer: Executor | None = None,
        recent_size: int = 2048,
    ) -> None:
        self._store = store
        self._backend = backend
        self._current_model_version = current_model_version
        # Cache writes are off the entry's critical path when a writer pool is given; flush() waits for them.
        self._writer = writer
        self._pending: set[Future[None]] = set()
        self._pending_lock = threading.Lock()
        # Labels written by this container, newest last: same bytes again (in this invocation or a warm
        # one) cost no S3 read, and a write still in flight is already visible. Keyed by (tag, sha256),
        # or (tag, source identity) for S3 objects.
        self._recent: OrderedDict[tuple[str, str], CachedLabels] = OrderedDict()
        self._recent_size = recent_size
        self._recent_lock = threading.Lock()

    def labels_key(self, sha256: str, tag: str) -> str:
        """The key of the answer for bytes ``sha256`` under the options named by ``tag`` (:func:`label_cache_tag`)."""
        return f"{CACHE_PREFIX}labels/{self._backend}/{tag}/{sha256[:2]}/{sha256}.json"

    def source_key(self, identity: str, tag: str) -> str:
        """The key of the answer for the S3 object version ``identity`` under the options named by ``tag``."""
        digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{CACHE_PREFIX}labels/{self._backend}/{tag}/s3/{digest[:2]}/{digest}.json"

    @staticmethod
    def url_key(url: str) -> str:
        return f"{CACHE_PREFIX}urls/{hashlib.sha256(url.encode('utf-8')).hexdigest()}.json"

    def _read(self, key: str) -> dict[str, Any] | None:
        try:
            return self._store.get_json(key)
        except Exception:  # a cache that cannot be read is a miss: the caller labels again
            logger.warning("label cache read failed", extra={"key": key}, exc_info=True)
            return None

    def _is_current(self, version: str) -> bool:
        current = self._current_model_version()
        # Rekognition reveals its model version only in a response: before the first one, trust the cache.
        return not current or version == current

    def get_labels(self, sha256: str, tag: str) -> CachedLabels | None:
        return self._get((tag, sha256), self.labels_key(sha256, tag))

    def get_source_labels(self, identity: str, tag: str) -> CachedLabels | None:
        """The answer for an S3 object version (``identity``), under the options named by ``tag``."""
        return self._get((tag, identity), self.source_key(identity, tag))

    def _get(self, recent_key: tuple[str, str], key: str) -> CachedLabels | None:
        with self._recent_lock:
            recent = self._recent.get(recent_key)
            if recent is not None:
                self._recent.move_to_end(recent_key)
        if recent is not None and self._is_current(recent.model_version):
            return recent
        document = self._read(key)
        if not document or not isinstance(document.get("labels"), list):
            return None
        version = str(document.get("model_version", ""))
        if not self._is_current(version):
            return None
        properties = document.get("image_properties")
        return CachedLabels(
            labels=document["labels"],
            model_version=version,
            image=document.get("image", {}),
            image_properties=properties if isinstance(properties, dict) else None,
        )

    def put_labels(self, sha256: str, tag: str, answer: CachedLabels) -> None:
        self._put((tag, sha256), self.labels_key(sha256, tag), {"sha256": sha256}, answer)

    def put_source_labels(self, identity: str, tag: str, answer: CachedLabels) -> None:
        """Remember the answer for an S3 object version (``identity``). Never raises."""
        self._put((tag, identity), self.source_key(identity, tag), {"source": identity}, answer)

    def _put(self, recent_key: tuple[str, str], key: str, names: dict[str, str], answer: CachedLabels) -> None:
        with self._recent_lock:
            self._recent[recent_key] = answer
            self._recent.move_to_end(recent_key)
            while len(self._recent) > self._recent_size:
                self._recent.popitem(last=False)
        document = {
            **names,
            "backend": self._backend,
            "model_version": answer.model_version,
            "labels": answer.labels,
            "image": answer.image,
        }
        if answer.image_properties is not None:
            document["image_properties"] = answer.image_properties
        self._write(key, document)

    def _write(self, key: str, document: dict[str, Any]) -> None:
        """Store a cache document, in the background when a writer pool is given. Never raises."""

        def write() -> None:
            try:
                self._store.put_json(key, document)
            except Exception:  # the labels are good; a later run may just pay for them again
                logger.warning("cache write failed", extra={"key": key}, exc_info=True)

        if self._writer is None:
            write()
            return
        future = self._writer.submit(write)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def close(self) -> None:
        """Flush, then stop the writer pool (the container's services are being replaced)."""
        self.flush()
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait for the cache writes in flight (before an invocation returns and Lambda freezes it)."""
        with self._pending_lock:
            pending = set(self._pending)
        if pending:
            wait(pending, timeout=timeout)

    def get_url_memo(self, url: str) -> UrlMemo | None:
        document = self._read(self.url_key(url))
        if not document or not document.get("sha256"):
            return None
        if not (document.get("etag") or document.get("last_modified")):
            return None
        return UrlMemo(
            etag=document.get("etag"), last_modified=document.get("last_modified"), sha256=str(document["sha256"])
        )

    def put_url_memo(self, url: str, memo: UrlMemo) -> None:
        if not (memo.etag or memo.last_modified):
            return  # nothing to validate against next time
        self._write(
            self.url_key(url),
            {"url": url, "etag": memo.etag, "last_modified": memo.last_modified, "sha256": memo.sha256},
        )
