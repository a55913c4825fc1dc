"""The per-manifest report: counts that add up, errors by code, cache use and timings.

>>> tally = Tally(); tally.add_outcome(ok=True, code=None, cached=False)
>>> tally.to_dict()["succeeded"]
1
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from labeler.models.errors import LabelerError
from labeler.models.records import ManifestRef


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
    download_ms: float = 0.0
    label_ms: float = 0.0

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
        download_ms: float = 0.0,
        label_ms: float = 0.0,
    ) -> None:
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

    def merge(self, other: Tally) -> None:
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.errors_by_code.update(other.errors_by_code)
        self.labels_from_cache += other.labels_from_cache
        self.not_modified += other.not_modified
        self.already_done += other.already_done
        self.download_ms += other.download_ms
        self.label_ms += other.label_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors_by_code": dict(sorted(self.errors_by_code.items())),
            "labels_from_cache": self.labels_from_cache,
            "not_modified": self.not_modified,
            "already_done": self.already_done,
            "download_ms": round(self.download_ms, 1),
            "label_ms": round(self.label_ms, 1),
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
            download_ms=float(data.get("download_ms", 0.0)),
            label_ms=float(data.get("label_ms", 0.0)),
        )


def build_report(
    manifest: ManifestRef,
    tally: Tally,
    *,
    status: str,
    results_prefix: str,
    started_at: str,
    duration_ms: float,
    mode: str = "inline",
    manifest_error: LabelerError | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report document: ``{"manifest", "status", "succeeded", "failed", ...}`` at its top level."""
    counts = tally.to_dict()
    report: dict[str, Any] = {
        "manifest": manifest.to_dict(),
        "status": status,
        "total": counts.pop("total"),
        "succeeded": counts.pop("succeeded"),
        "failed": counts.pop("failed"),
        "errors_by_code": counts.pop("errors_by_code"),
        **{k: v for k, v in counts.items() if not k.endswith("_ms")},
        "mode": mode,
        "results_prefix": results_prefix,
        "timings_ms": {
            "total": round(duration_ms, 1),
            "download_sum": counts["download_ms"],
            "label_sum": counts["label_ms"],
        },
        "started_at": started_at,
        "finished_at": utc_now(),
    }
    if manifest_error is not None:
        report["error"] = manifest_error.to_dict()
    if extra:
        report.update(extra)
    return report
