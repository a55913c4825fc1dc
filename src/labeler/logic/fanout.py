"""Fan-out for large manifests: split into SQS work batches, label them in workers, report once.

* **Split** (manifest function): the manifest is streamed (never loaded whole) and cut into batches
  of ``BATCH_SIZE`` entries, rejected ones included (the worker writes their error records, so
  error records have one writer), sent with ``SendMessageBatch``. Batch numbering is
  deterministic, and the run's progress item keeps a cursor, saved after each call: a retried
  split (the deadline came, SQS failed) parses again but sends only what is missing. A batch sent
  twice is harmless: batches are counted once and records are guarded.
* **Work** (worker function): a batch's entries go through the pipeline like an inline
  manifest's, then the batch is counted exactly once (:mod:`labeler.adapters.progress`). On its
  last delivery a batch is not labeled at all: :meth:`FanOut.give_up` records what is unfinished
  as ``batch_failed`` and counts the batch, so a run never stays ``in_progress`` for good.
* **Report**: whoever sees every batch counted (a worker, or the splitter if the workers were
  faster) writes the final report from the counters (:func:`~labeler.logic.pipeline.finish_run`:
  idempotent, guarded, and the run's end hook is called once after it is stored). A failed write
  leaves nothing marked: the next delivery writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

from labeler.adapters.progress import ProgressTable
from labeler.adapters.queue import WorkQueue
from labeler.logic.index_rows import batch_part
from labeler.logic.keys import run_key
from labeler.logic.pipeline import (
    Deadline,
    DeadlineReached,
    EntryOutcome,
    ResultWriteFailed,
    RunResult,
    Services,
    finish_run,
    give_up_entry,
    label_entries,
    run_options,
    superseded_summary,
    write_index,
)
from labeler.logic.report import RunState, Tally, final_status, publish_report
from labeler.logic.run_index import PartIndex
from labeler.models.errors import BatchFailed, LabelerError, ManifestError
from labeler.models.label_options import LabelOptions
from labeler.models.records import EntryItem, ManifestEntry, ManifestRef, RejectedEntry
from labeler.models.settings import Settings
from labeler.observability import logger


class MalformedWorkBatch(ValueError):
    """A queue message that is not a work batch: it cannot be attributed to any manifest."""


def _entry_message(item: EntryItem) -> dict[str, Any]:
    message: dict[str, Any] = {"index": item.index, "image_id": item.image_id, "url": item.url}
    if not item.id_given:
        message["id_given"] = False
    if isinstance(item, ManifestEntry) and item.version_id is not None:
        message["version_id"] = item.version_id
    if isinstance(item, RejectedEntry):
        message["error"] = item.error.to_dict()
    return message


def _entry_from_message(message: dict[str, Any]) -> EntryItem:
    index, image_id, id_given = int(message["index"]), str(message["image_id"]), bool(message.get("id_given", True))
    if "error" in message:
        url = message.get("url")
        error = LabelerError.from_dict(message["error"])
        return RejectedEntry(index, image_id, None if url is None else str(url), error, id_given=id_given)
    version = message.get("version_id")
    return ManifestEntry(
        index=index,
        image_id=image_id,
        url=str(message["url"]),
        id_given=id_given,
        version_id=None if version is None else str(version),
    )


@dataclass(frozen=True)
class WorkBatch:
    """One SQS message: up to ``BATCH_SIZE`` entries of one manifest run (rejected ones included).

    ``options`` are the run's, decided once by the splitter (``max_label_calls``: the run's cap), so
    every worker labels the same way and counts against the same cap, even if the stack's settings
    change mid-run. ``None``: a message written before options existed (the stack's apply).
    ``unseen_keys``: sent by the first split of the first run at the manifest key (the only sender of
    this message; a resumed split sends its batches without it): on its first delivery no entry's
    key holds a record (:func:`~labeler.logic.pipeline.process_entries`).
    """

    manifest: ManifestRef
    batch_index: int
    entries: tuple[EntryItem, ...]
    options: LabelOptions | None = None
    unseen_keys: bool = False

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "manifest": self.manifest.to_dict(),
            "batch_index": self.batch_index,
            "entries": [_entry_message(entry) for entry in self.entries],
        }
        if self.options is not None:
            message["options"] = self.options.to_message()
        if self.unseen_keys:
            message["unseen_keys"] = True
        return message

    @classmethod
    def from_message(cls, body: Any) -> WorkBatch:
        try:
            entries = tuple(_entry_from_message(entry) for entry in body["entries"])
            options = LabelOptions.from_message(body["options"]) if body.get("options") is not None else None
            unseen = body.get("unseen_keys") is True
            return cls(ManifestRef.from_dict(body["manifest"]), int(body["batch_index"]), entries, options, unseen)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedWorkBatch(f"not a work batch: {exc!r}") from exc


@dataclass(frozen=True)
class Batching:
    """How a run's entries are cut into work batches: ``size`` entries each, except the first ``staggered``.

    Those ramp up, batch ``i`` holding ``size × (i + 1) / staggered`` entries (rounded up), so that the
    workers that take them first end their batches at different moments. The shared quota serves every
    worker at the same pace, so batches of one size started together all end together, and each worker
    spends ~0.6-0.9 s between its last DetectLabels call and its next batch's first (the batch's last
    writes, the next invocation's start, its first downloads): with every worker in that gap at once the
    quota went unused for that long at every batch boundary. Staggered, while one worker is between
    batches the others, whose threads are waiting for slots, take its share. ``staggered`` is the
    workers' concurrency (``WORKER_MAX_CONCURRENCY``): one ramp step per worker.
    """

    size: int
    staggered: int = 0

    @classmethod
    def of(cls, settings: Settings) -> Batching:
        # One worker has nobody to stagger against; below two entries per step the steps would be equal.
        workers = settings.worker_max_concurrency
        return cls(settings.batch_size, workers if workers > 1 and 2 * workers <= settings.batch_size else 0)

    def size_of(self, batch_index: int) -> int:
        """How many entries batch ``batch_index`` holds (the manifest's last batch may hold fewer)."""
        if batch_index < self.staggered:
            return -(-self.size * (batch_index + 1) // self.staggered)
        return self.size

    def to_dict(self) -> dict[str, int]:
        return {"size": self.size, "staggered": self.staggered}

    @classmethod
    def from_dict(cls, kept: dict[str, Any]) -> Batching:
        return cls(int(kept["size"]), int(kept.get("staggered", 0)))


@dataclass
class FanOut:
    services: Services
    queue: WorkQueue
    progress: ProgressTable

    # --- splitter (manifest function) -------------------------------------------------------------
    def split(
        self,
        manifest: ManifestRef,
        entries: Iterator[EntryItem],
        head: list[EntryItem],
        deadline: Deadline,
        options: LabelOptions,
        *,
        unseen_keys: bool = False,
    ) -> dict[str, Any]:
        """Send the entries not sent yet to the queue in batches; returns the report as it stands.

        ``options`` are the run's: the first split keeps them on the run's progress item, and a retried
        split uses those, so every batch of a run carries the same. ``unseen_keys``: this split stored
        the run's first report over nothing (``WorkBatch.unseen_keys``). Raises :class:`DeadlineReached`
        when the deadline comes first (the retry resumes).
        """
        key = run_key(manifest)
        kept_options, kept_batching = self.progress.keep_options(
            key, options.to_message(), Batching.of(self.services.settings).to_dict()
        )
        options, batching = LabelOptions.from_message(kept_options), Batching.from_dict(kept_batching)
        state = self.progress.read(key)
        if state.batch_count is None:  # not every batch was sent yet (a first split, or a retried one)
            batch_count, error = self._send_batches(
                manifest,
                chain(head, entries),
                state.cursor,
                deadline,
                options,
                batching,
                unseen_keys and state.cursor == 0,
            )
            self.progress.set_plan(key, batch_count, {"error": error.to_dict() if error else None})
            logger.info("manifest fanned out", extra={"batches": batch_count, "resumed_at": state.cursor})
        final = self.maybe_finalize(manifest, options)
        if final is not None:
            return final
        state = self.progress.read(key)
        batches = {"count": state.batch_count or 0, "done": state.batches_done}
        published = publish_report(
            self.services.store, manifest, RunState(state.tally, "in_progress", "fanout", None, batches, options)
        )
        return superseded_summary(manifest, state.tally) if published.superseded else published.report

    def _send_batches(
        self,
        manifest: ManifestRef,
        items: Iterable[EntryItem],
        cursor: int,
        deadline: Deadline,
        options: LabelOptions,
        batching: Batching,
        unseen_keys: bool = False,
    ) -> tuple[int, ManifestError | None]:
        """Send batches ``cursor``… of ``items``; (how many batches the run has, the manifest's own error)."""
        key = run_key(manifest)
        found: dict[str, Any] = {"count": 0, "error": None, "stopped": False}

        def batch(entries: list[EntryItem]) -> dict[str, Any] | None:
            index = found["count"]
            found["count"] += 1
            if index < cursor:
                return None
            return WorkBatch(manifest, index, tuple(entries), options, unseen_keys).to_message()

        def messages() -> Iterator[dict[str, Any]]:
            pending: list[EntryItem] = []
            try:
                for item in items:
                    pending.append(item)
                    if len(pending) < batching.size_of(found["count"]):
                        continue
                    if deadline.expired():  # checked between batches: what is sent stays sent
                        found["stopped"] = True
                        return
                    message, pending = batch(pending), []
                    if message is not None:
                        yield message
            except ManifestError as exc:  # mid-stream: what was read is still labeled
                found["error"] = exc
            if pending and (message := batch(pending)) is not None:
                yield message

        self.queue.send_all(messages(), on_sent=lambda sent: self.progress.save_cursor(key, cursor + sent))
        if found["stopped"]:
            raise DeadlineReached(f"split stopped at batch {found['count']}: the deadline is near; the retry resumes")
        return found["count"], found["error"]

    # --- worker ---------------------------------------------------------------------------------------
    def run_options(self, batch: WorkBatch) -> LabelOptions:
        """The options (and cap) of the batch's run: the message's, or the stack's for an older message."""
        if batch.options is not None:
            return batch.options
        return run_options(self.services.settings, None)

    def process_batch(
        self,
        batch: WorkBatch,
        deadline: Deadline | None = None,
        on_outcome: Callable[[EntryOutcome], None] | None = None,
        on_calls: Callable[[int], None] | None = None,
        *,
        first_delivery: bool = False,
    ) -> RunResult:
        """Label one batch, write its index object and count it. Raises so that SQS delivers the message again
        when unfinished. ``first_delivery``: SQS delivers the message for the first time (receive count 1); with
        ``batch.unseen_keys`` its entries' keys are not looked at."""
        options = self.run_options(batch)
        index = self.batch_index(batch)
        result = label_entries(
            self.services,
            batch.manifest,
            batch.entries,
            options,
            deadline,
            index.observing(on_outcome),
            on_calls,
            unseen_keys=batch.unseen_keys and first_delivery,
        )
        write_index(index, result)
        if result.write_failures:
            raise ResultWriteFailed(f"{len(result.write_failures)} record(s) not written: {result.write_failures[0]}")
        if result.stopped_early and not result.superseded:
            raise DeadlineReached(f"batch {batch.batch_index}: deadline near, entries left for the retry")
        self.complete_batch(batch, result.tally)
        return result

    def note_failure(self, batch: WorkBatch, exc: BaseException) -> None:
        """Remember why this delivery failed, for the reason its last delivery gives (best effort)."""
        try:
            self.progress.note_failure(run_key(batch.manifest), batch.batch_index, f"{type(exc).__name__}: {exc}")
        except Exception:
            logger.warning("cannot note why the batch failed", exc_info=True)

    def give_up(
        self, batch: WorkBatch, deliveries: int, on_outcome: Callable[[EntryOutcome], None] | None = None
    ) -> str:
        """A batch's last delivery: label nothing; every entry without a record of this run gets its error
        record (``batch_failed``, or a rejected entry's own error), and the batch is counted. Returns the reason."""
        last = self.progress.last_failure(run_key(batch.manifest), batch.batch_index)
        reason = f"batch {batch.batch_index} was not finished in {deliveries - 1} deliveries; " + (
            f"the last one failed with {last}" if last else "the last one was killed or timed out"
        )
        tally = Tally()
        index = self.batch_index(batch)
        observe = index.observing(on_outcome)
        for item in batch.entries:
            error = item.error if isinstance(item, RejectedEntry) else BatchFailed(reason[:500])
            outcome = give_up_entry(self.services, batch.manifest, item, error)
            outcome.add_to(tally)
            observe(outcome)
        if tally.superseded == 0:  # a newer run took over: its own batches index these entries
            index.write()
        self.complete_batch(batch, tally)
        return reason

    def batch_index(self, batch: WorkBatch) -> PartIndex:
        """The index object of one work batch (``b<batch>``: a redelivery overwrites it)."""
        return PartIndex(self.services.store, batch.manifest, batch_part(batch.batch_index))

    def complete_batch(self, batch: WorkBatch, tally: Tally) -> None:
        if not self.progress.record_batch(run_key(batch.manifest), batch.batch_index, tally):
            logger.info("batch was already counted (redelivery)", extra={"batch_index": batch.batch_index})
        self.maybe_finalize(batch.manifest, self.run_options(batch))

    # --- report ------------------------------------------------------------------------------------------
    def maybe_finalize(self, manifest: ManifestRef, options: LabelOptions) -> dict[str, Any] | None:
        """The final report, once every batch is counted (written again by each caller: it is idempotent)."""
        state = self.progress.read(run_key(manifest))
        if state.batch_count is None or state.batches_done < state.batch_count:
            return None
        error = state.plan.get("error")
        batches = {"count": state.batch_count, "done": state.batches_done}
        status = final_status(state.tally, error)
        return finish_run(self.services, manifest, RunState(state.tally, status, "fanout", error, batches, options))
