"""The per-manifest report: counts that add up, errors by code, cache use and timings.

One writer, :func:`publish_report`, for inline and fanned-out runs alike. ``reports/<slug>.json``
is the newest run's report: it is written with the guard of :mod:`labeler.logic.guard` (an older
run never overwrites a newer one's report), and within one run a final status (``complete``,
``capped``, ``partial``, ``failed``) is terminal: nothing moves it back to ``in_progress`` or ``incomplete``.

>>> tally = Tally(); tally.add_outcome(ok=True, code=None, cached=False)
>>> tally.to_dict()["succeeded"]
1
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from labeler.adapters.store import ObjectHead
from labeler.logic.guard import GuardedStore, Verdict, guarded_put, judge
from labeler.logic.keys import report_key, results_prefix
from labeler.logic.pricing import Cost
from labeler.models.errors import ErrorCode, LabelerError
from labeler.models.label_options import LabelOptions
from labeler.models.records import ManifestRef, recheck_iso

# A re-check's report lists at most this many of the image ids it found changed (its count is exact).
CHANGED_IDS_MAX = 100
# How a re-check run found an entry (docs/recheck.md).
RECHECK_UNCHANGED, RECHECK_CHANGED, RECHECK_GONE, RECHECK_FAILED = "unchanged", "changed", "gone", "failed"
# capped: complete except that the run's DetectLabels cap left entries over_budget (a re-upload finishes them).
FINAL_STATUSES = frozenset({"complete", "capped", "partial", "failed"})
# Not final: the run is going (in_progress) or stopped early and will be retried (incomplete).
STATUSES = FINAL_STATUSES | {"in_progress", "incomplete"}


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Tally:
    """Outcome counts of a set of entries; tallies of batches merge into the manifest's."""

    succeeded: int = 0
    failed: int = 0
    errors_by_code: Counter[str] = field(default_factory=Counter)
    labels_from_cache: int = 0
    not_modified: int = 0
    already_done: int = 0
    # Entries left alone because a newer run of the manifest wrote their record (counted apart).
    superseded: int = 0
    download_ms: float = 0.0
    label_ms: float = 0.0
    label_calls: int = 0  # DetectLabels calls made (labels_from_cache counts the calls saved)
    # A re-check run's findings: each entry is one of these; changed_ids holds up to CHANGED_IDS_MAX of the changed.
    unchanged: int = 0
    changed: int = 0
    gone: int = 0
    recheck_failed: int = 0
    recheck_errors_by_code: Counter[str] = field(default_factory=Counter)
    changed_ids: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.succeeded + self.failed

    def add_outcome(
        self,
        *,
        ok: bool,
        code: str | None,
        cached: bool = False,
        not_modified: bool = False,
        already_done: bool = False,
        superseded: bool = False,
        download_ms: float = 0.0,
        label_ms: float = 0.0,
        label_calls: int = 0,
        recheck: str | None = None,
        recheck_code: str | None = None,
        image_id: str | None = None,
    ) -> None:
        if superseded:
            self.superseded += 1
            return
        if recheck is not None:
            self._add_recheck(recheck, recheck_code, image_id)
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1
            self.errors_by_code[code or "internal_error"] += 1
        self.labels_from_cache += int(cached)
        self.not_modified += int(not_modified)
        self.already_done += int(already_done)
        self.download_ms += download_ms
        self.label_ms += label_ms
        self.label_calls += label_calls

    def _add_recheck(self, found: str, code: str | None, image_id: str | None) -> None:
        if found == RECHECK_UNCHANGED:
            self.unchanged += 1
        elif found == RECHECK_CHANGED:
            self.changed += 1
            if image_id is not None and len(self.changed_ids) < CHANGED_IDS_MAX:
                self.changed_ids.append(image_id)
        elif found == RECHECK_GONE:
            self.gone += 1
        else:
            self.recheck_failed += 1
            self.recheck_errors_by_code[code or "internal_error"] += 1

    def merge(self, other: Tally) -> None:
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.errors_by_code.update(other.errors_by_code)
        self.labels_from_cache += other.labels_from_cache
        self.not_modified += other.not_modified
        self.already_done += other.already_done
        self.superseded += other.superseded
        self.download_ms += other.download_ms
        self.label_ms += other.label_ms
        self.label_calls += other.label_calls
        self.unchanged += other.unchanged
        self.changed += other.changed
        self.gone += other.gone
        self.recheck_failed += other.recheck_failed
        self.recheck_errors_by_code.update(other.recheck_errors_by_code)
        self.changed_ids.extend(other.changed_ids[: max(0, CHANGED_IDS_MAX - len(self.changed_ids))])

    def recheck_summary(self) -> dict[str, Any]:
        """What a re-check found: ``unchanged``, ``changed``, ``gone``, ``failed`` (by code) and which ids changed."""
        return {
            RECHECK_UNCHANGED: self.unchanged,
            RECHECK_CHANGED: self.changed,
            RECHECK_GONE: self.gone,
            RECHECK_FAILED: self.recheck_failed,
            "failed_by_code": dict(sorted(self.recheck_errors_by_code.items())),
            "changed_ids": sorted(self.changed_ids)[:CHANGED_IDS_MAX],
            "changed_ids_truncated": self.changed > min(len(self.changed_ids), CHANGED_IDS_MAX),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors_by_code": dict(sorted(self.errors_by_code.items())),
            "labels_from_cache": self.labels_from_cache,
            "not_modified": self.not_modified,
            "already_done": self.already_done,
            "superseded": self.superseded,
            "download_ms": round(self.download_ms, 1),
            "label_ms": round(self.label_ms, 1),
            "label_calls": self.label_calls,
            "recheck": self.recheck_summary(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        return cls(
            succeeded=int(data.get("succeeded", 0)),
            failed=int(data.get("failed", 0)),
            errors_by_code=Counter({str(k): int(v) for k, v in data.get("errors_by_code", {}).items()}),
            labels_from_cache=int(data.get("labels_from_cache", 0)),
            not_modified=int(data.get("not_modified", 0)),
            already_done=int(data.get("already_done", 0)),
            superseded=int(data.get("superseded", 0)),
            download_ms=float(data.get("download_ms", 0.0)),
            label_ms=float(data.get("label_ms", 0.0)),
            label_calls=int(data.get("label_calls", 0)),
            **_recheck_from_dict(data.get("recheck") or {}),
        )


def _recheck_from_dict(found: dict[str, Any]) -> dict[str, Any]:
    return {
        "unchanged": int(found.get(RECHECK_UNCHANGED, 0)),
        "changed": int(found.get(RECHECK_CHANGED, 0)),
        "gone": int(found.get(RECHECK_GONE, 0)),
        "recheck_failed": int(found.get(RECHECK_FAILED, 0)),
        "recheck_errors_by_code": Counter({str(k): int(v) for k, v in found.get("failed_by_code", {}).items()}),
        "changed_ids": [str(image_id) for image_id in found.get("changed_ids", [])],
    }


def elapsed_ms(started_at: str, finished_at: str) -> float:
    """Milliseconds between two :func:`utc_now` timestamps (0 when either cannot be read)."""
    try:
        started = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
        finished = datetime.fromisoformat(finished_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (finished - started).total_seconds() * 1000)


@dataclass(frozen=True)
class RunState:
    """What a report says about a run: its counts, its status, how it ran, and what broke the manifest."""

    tally: Tally
    status: str
    mode: str  # "inline" or "fanout"
    manifest_error: LabelerError | dict[str, Any] | None = None
    batches: dict[str, int] | None = None  # fan-out: {"count", "done"}
    options: LabelOptions | None = None  # the run's (None: refused before they were known)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"not a report status: {self.status!r}")


def final_status(tally: Tally, manifest_error: object | None) -> str:
    """The status of a run that finished: ``partial`` (its manifest broke part-way), ``capped`` (its
    DetectLabels cap left entries ``over_budget``) or ``complete``.

    >>> capped = Tally(); capped.add_outcome(ok=False, code="over_budget")
    >>> final_status(Tally(), None), final_status(capped, None), final_status(capped, {"code": "manifest_invalid"})
    ('complete', 'capped', 'partial')
    """
    if manifest_error:
        return "partial"
    # A re-check at its cap keeps the old records of the entries it could not relabel: capped all the same.
    over_budget = str(ErrorCode.OVER_BUDGET)
    capped = tally.errors_by_code.get(over_budget) or tally.recheck_errors_by_code.get(over_budget)
    return "capped" if capped else "complete"


def run_cost(tally: Tally, options: LabelOptions | None) -> dict[str, Any]:
    """The report's ``cost``: calls made, calls saved (cache hits, 304s), their list price with the run's features."""
    cost = Cost.of(
        calls=tally.label_calls,
        saved=tally.labels_from_cache,
        general_labels=options is None or options.general_labels,
        image_properties=options is not None and options.image_properties,
    )
    return cost.to_dict()


def build_report(manifest: ManifestRef, state: RunState, started_at: str) -> dict[str, Any]:
    """The report document, with the same fields whatever the mode (``batches`` is null inline).

    ``timings_ms.total`` is the run's wall time from its first start (``started_at``, kept across
    retries) to this report; ``download_sum``/``label_sum`` add up the entries' own steps.
    """
    tally, manifest_error = state.tally, state.manifest_error
    finished_at = utc_now()
    report: dict[str, Any] = {
        "manifest": manifest.to_dict(),
        "status": state.status,
        "total": tally.total,
        "succeeded": tally.succeeded,
        "failed": tally.failed,
        "errors_by_code": dict(sorted(tally.errors_by_code.items())),
        "labels_from_cache": tally.labels_from_cache,
        "not_modified": tally.not_modified,
        "already_done": tally.already_done,
        "cost": run_cost(tally, state.options),
        "options": state.options.to_dict() if state.options is not None else None,
        "mode": state.mode,
        "recheck": recheck_report(manifest, tally),
        "results_prefix": results_prefix(manifest),
        "batches": state.batches,
        "timings_ms": {
            "total": round(elapsed_ms(started_at, finished_at), 1),
            "download_sum": round(tally.download_ms, 1),
            "label_sum": round(tally.label_ms, 1),
        },
        "started_at": started_at,
        "finished_at": finished_at,
    }
    if manifest_error is not None:
        report["error"] = manifest_error.to_dict() if isinstance(manifest_error, LabelerError) else manifest_error
    return report


def recheck_report(manifest: ManifestRef, tally: Tally) -> dict[str, Any] | None:
    """The report's ``recheck``: which upload run was re-checked, when, and what was found (None: an upload's run)."""
    if not manifest.recheck:
        return None
    return {"of_run": manifest.upload_run_id, "at": recheck_iso(manifest.recheck), **tally.recheck_summary()}


@dataclass(frozen=True)
class Published:
    """What :func:`publish_report` did with a report."""

    report: dict[str, Any]
    verdict: Verdict  # WRITTEN; SAME_RUN: this run's final report stands there; SUPERSEDED: a newer run's does
    written: ObjectHead | None = None  # the report this call stored (for the run's next publish_report)
    # no report was at the key when this one was stored: no run of this manifest key wrote anything before
    # (every run stores its report before its first record), see pipeline.process_entries(unseen_keys=)
    first_at_key: bool = False

    @property
    def superseded(self) -> bool:
        return self.verdict is Verdict.SUPERSEDED


def publish_report(
    store: GuardedStore, manifest: ManifestRef, state: RunState, *, last: ObjectHead | None = None
) -> Published:
    """Build the run's report and store it at ``reports/<slug>.json`` unless a newer run's report, or
    this run's final one, is there. The only writer of reports.

    The run's ``started_at`` is kept from the report it wrote first (in its metadata). ``last``: the
    report this run stored last in this invocation (``Published.written``): the write then starts from
    it instead of a ``HEAD`` (conditional on its ETag all the same: if anyone wrote since, S3 refuses,
    and the key is looked at and judged again). Raises when S3 fails, so that the delivery is retried.
    """
    key = report_key(manifest)
    existing = last if last is not None else store.head(key)
    same_run = existing is not None and judge(existing, manifest.stamp) is Verdict.SAME_RUN
    started_at = (existing.metadata.get("started-at") if same_run and existing else None) or utc_now()
    report = build_report(manifest, state, started_at)
    written = guarded_put(
        store,
        key,
        report,
        {"status": state.status, "started-at": started_at},
        manifest.stamp,
        head=existing,
        same_run_stays=lambda theirs: theirs.metadata.get("status") in FINAL_STATUSES,
    )
    return Published(report, written.verdict, written.written, first_at_key=written.over_nothing)
