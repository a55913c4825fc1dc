"""The index object of one part of a run: a row for every entry's record, written once the part has them all.

A part is an inline run (``INLINE_PART``) or one fan-out work batch (``batch_part(i)``). The pipeline
hands it every entry's outcome (:meth:`PartIndex.observe`): the record the entry just got, or, for an
entry found done by an earlier attempt, the key of the record that attempt stored. That record is
read back when the part is written (with its run stamp: a newer run's record is not this run's row),
so a retried part writes every row again, the same bytes at the same key (``index_rows.index_key``).

>>> part = PartIndex(store, manifest, INLINE_PART)                               # doctest: +SKIP
>>> run = process_entries(services, manifest, items, on_outcome=part.observing(counted.add))  # doctest: +SKIP
>>> part.write()                                                                 # doctest: +SKIP
'index/dt=2026-11-25/3e34e53d11a42e7d823a5381-inline.jsonl.gz'
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from labeler.adapters.store import ObjectHead
from labeler.logic.guard import Verdict, judge
from labeler.logic.index_rows import IndexWriter, index_run
from labeler.models.records import ManifestRef
from labeler.observability import logger

# Records read back at once when a retried part is written (a batch: up to BATCH_SIZE; inline: up to 100).
READ_BACK_THREADS = 8


class IndexWriteFailed(RuntimeError):
    """The index object (or a record it needs) could not be read or written: the delivery fails and is retried."""


class PartIndexStore(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    def get_json_with_metadata(self, key: str) -> tuple[dict[str, Any], dict[str, str]] | None: ...


class RecordedOutcome(Protocol):
    """What :class:`PartIndex` reads from an entry's outcome (``pipeline.EntryOutcome``)."""

    record: dict[str, Any] | None  # the record this attempt stored
    record_key: str | None  # where the record of an entry found done is
    already_done: bool


class PartIndex:
    """Collects the rows of one part of a run and writes them as one index object."""

    def __init__(self, store: PartIndexStore, manifest: ManifestRef, part: str) -> None:
        self.store = store
        self.manifest = manifest
        self.writer = IndexWriter(store, index_run(manifest), part)
        self._done_keys: list[str] = []
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        return self.writer.key

    def observe(self, outcome: RecordedOutcome) -> None:
        """Take one entry's outcome: its record becomes a row now, a record found done is read at :meth:`write`."""
        if outcome.record is not None:
            self.writer.add(outcome.record)
        elif outcome.already_done and outcome.record_key:
            with self._lock:
                self._done_keys.append(outcome.record_key)

    def observing(self, then: Callable[[Any], None] | None = None) -> Callable[[Any], None]:
        """An ``on_outcome`` callback that observes the outcome, then passes it on to ``then``."""

        def on_outcome(outcome: Any) -> None:
            self.observe(outcome)
            if then is not None:
                then(outcome)

        return on_outcome

    def write(self) -> str | None:
        """Read back the records found done, write the object; its key, or None when the part has no rows.

        Raises :class:`IndexWriteFailed` when S3 fails either way (like a failed record write).
        """
        try:
            self._read_back()
            return self.writer.write()
        except Exception as exc:
            raise IndexWriteFailed(f"cannot write the index object {self.key}: {exc}") from exc

    def _read_back(self) -> None:
        with self._lock:
            keys, self._done_keys = self._done_keys, []
        if not keys:
            return
        with ThreadPoolExecutor(min(READ_BACK_THREADS, len(keys)), thread_name_prefix="index-read") as pool:
            for key, found in zip(keys, pool.map(self.store.get_json_with_metadata, keys), strict=True):
                if found is None or judge(ObjectHead("", found[1]), self.manifest.stamp) is not Verdict.SAME_RUN:
                    # Replaced by a newer run since it was looked at: not this run's row (that run has it).
                    logger.warning("a record found done is no longer this run's; no index row", extra={"key": key})
                    continue
                self.writer.add(found[0])
