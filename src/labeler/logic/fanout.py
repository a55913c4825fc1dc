"""Fan-out for large manifests: split into SQS work batches, label them in workers, report once.

The manifest is streamed (never loaded whole), cut into batches of ``BATCH_SIZE`` entries sent
with ``SendMessageBatch``; rejected entries (bad shape, duplicate ids) are recorded by the
splitter itself. Every worker counts its finished batch exactly once in the progress table;
the last one to finish (or the splitter, if workers were faster) writes the final report.

Batch numbering is deterministic, so a redelivered S3 event re-sends the same batches and
nothing is counted twice; entries already recorded are skipped by the pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

from labeler.adapters.progress import ProgressTable
from labeler.adapters.queue import WorkQueue
from labeler.logic.keys import manifest_slug, report_key
from labeler.logic.pipeline import (
    Deadline,
    RunResult,
    Services,
    process_entries,
    record_rejected,
    results_prefix,
)
from labeler.logic.report import Tally, build_report, utc_now
from labeler.models.errors import ManifestError
from labeler.models.records import EntryItem, ManifestEntry, ManifestRef, RejectedEntry
from labeler.observability import logger


class MalformedWorkBatch(ValueError):
    """A queue message that is not a work batch: it cannot be attributed to any manifest."""


@dataclass(frozen=True)
class WorkBatch:
    """One SQS message: up to ``BATCH_SIZE`` entries of one manifest run."""

    manifest: ManifestRef
    batch_index: int
    entries: tuple[ManifestEntry, ...]

    def to_message(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest.to_dict(),
            "batch_index": self.batch_index,
            "entries": [{"index": e.index, "image_id": e.image_id, "url": e.url} for e in self.entries],
        }

    @classmethod
    def from_message(cls, body: Any) -> WorkBatch:
        try:
            manifest = body["manifest"]
            ref = ManifestRef(
                bucket=str(manifest["bucket"]),
                key=str(manifest["key"]),
                etag=manifest.get("etag"),
                version_id=manifest.get("version_id"),
                sequencer=manifest.get("sequencer"),
            )
            entries = tuple(
                ManifestEntry(index=int(e["index"]), image_id=str(e["image_id"]), url=str(e["url"]))
                for e in body["entries"]
            )
            return cls(manifest=ref, batch_index=int(body["batch_index"]), entries=entries)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedWorkBatch(f"not a work batch: {exc!r}") from exc


def run_key(manifest: ManifestRef) -> str:
    """Identifies one run: the manifest object and the upload of it that triggered the run."""
    return f"{manifest_slug(manifest.bucket, manifest.key)}#{manifest.run_id or '-'}"


@dataclass
class FanOut:
    services: Services
    queue: WorkQueue
    progress: ProgressTable

    # --- splitter (manifest function) -------------------------------------------------------------
    def split(self, manifest: ManifestRef, entries: Iterator[EntryItem], head: list[EntryItem]) -> dict[str, Any]:
        """Send every entry to the queue in batches; returns the report as it stands."""
        started_at, t0 = utc_now(), time.perf_counter()
        rejected = Tally()
        manifest_error: ManifestError | None = None
        batch_count = 0

        def batches() -> Iterator[dict[str, Any]]:
            nonlocal batch_count, manifest_error
            size = self.services.settings.batch_size
            pending: list[ManifestEntry] = []
            try:
                for item in chain(head, entries):
                    if isinstance(item, RejectedEntry):
                        record_rejected(self.services, manifest, item).add_to(rejected)
                        continue
                    pending.append(item)
                    if len(pending) == size:
                        yield WorkBatch(manifest, batch_count, tuple(pending)).to_message()
                        batch_count, pending = batch_count + 1, []
            except ManifestError as exc:  # mid-stream: what was read is still labeled
                manifest_error = exc
            if pending:
                yield WorkBatch(manifest, batch_count, tuple(pending)).to_message()
                batch_count += 1

        self.queue.send_all(batches())
        plan = {
            "rejected": rejected.to_dict(),
            "error": manifest_error.to_dict() if manifest_error else None,
            "started_at": started_at,
            "split_ms": round((time.perf_counter() - t0) * 1000, 1),
        }
        key = run_key(manifest)
        self.progress.set_plan(key, batch_count, plan)
        logger.info("manifest fanned out", extra={"batches": batch_count, "rejected": rejected.total})
        final = self.maybe_finalize(manifest)
        if final is not None:
            return final
        return self._write_report(manifest, self.progress.read(key), status="in_progress")

    # --- worker ---------------------------------------------------------------------------------------
    def process_batch(
        self, batch: WorkBatch, deadline: Deadline | None = None, *, check_existing: bool = True
    ) -> RunResult:
        """Label one batch and count it. Raises so that SQS delivers the message again when unfinished.

        ``check_existing=False`` (a first delivery) skips the per-entry look for an earlier record.
        """
        from labeler.logic.pipeline import DeadlineReached, ResultWriteFailed

        result = process_entries(self.services, batch.manifest, batch.entries, deadline, check_existing=check_existing)
        if result.write_failures:
            raise ResultWriteFailed(f"{len(result.write_failures)} record(s) not written: {result.write_failures[0]}")
        if result.stopped_early:
            raise DeadlineReached(f"batch {batch.batch_index}: deadline near, {len(result.unstarted)} left for retry")
        self.complete_batch(batch.manifest, batch.batch_index, result.tally)
        return result

    def complete_batch(self, manifest: ManifestRef, batch_index: int, tally: Tally) -> None:
        counted = self.progress.record_batch(run_key(manifest), batch_index, tally)
        if not counted:
            logger.info("batch was already counted (redelivery)", extra={"batch_index": batch_index})
        self.maybe_finalize(manifest)

    def fail_batch(self, batch: WorkBatch, reason: str) -> Tally:
        """Give up on a batch (its last delivery): every entry without a record gets an error record."""
        from labeler.logic.pipeline import label_entry_failed

        tally = Tally()
        for entry in batch.entries:
            label_entry_failed(self.services, batch.manifest, entry, reason).add_to(tally)
        self.complete_batch(batch.manifest, batch.batch_index, tally)
        return tally

    # --- report ------------------------------------------------------------------------------------------
    def maybe_finalize(self, manifest: ManifestRef) -> dict[str, Any] | None:
        key = run_key(manifest)
        progress = self.progress.read(key)
        if progress.batch_count is None or progress.batches_done < progress.batch_count:
            return None
        if progress.batch_count > 0 and not self.progress.claim_finalization(key):
            return None
        status = "partial" if progress.plan.get("error") else "complete"
        return self._write_report(manifest, progress, status=status)

    def _write_report(self, manifest: ManifestRef, progress: Any, *, status: str) -> dict[str, Any]:
        tally = Tally()
        tally.merge(progress.tally)
        tally.merge(Tally.from_dict(progress.plan.get("rejected", {})))
        started_at = progress.plan.get("started_at") or utc_now()
        report = build_report(
            manifest,
            tally,
            status=status,
            results_prefix=results_prefix(manifest),
            started_at=started_at,
            duration_ms=_elapsed_ms(started_at),
            mode="fanout",
            extra={"batches": {"count": progress.batch_count, "done": progress.batches_done}},
        )
        if progress.plan.get("error"):
            report["error"] = progress.plan["error"]
        self.services.store.put_json(report_key(manifest), report)
        return report


def _elapsed_ms(started_at: str) -> float:
    from datetime import UTC, datetime

    try:
        started = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - started).total_seconds() * 1000
