"""Records that flow through the pipeline: manifest entries in, result/error records and reports out.

The data path reads top to bottom: ``ManifestRef`` → ``ManifestEntry`` (or ``RejectedEntry``)
→ fetch → image → labels → ``ResultRecord`` → ``Report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from labeler.models.errors import LabelerError


@dataclass(frozen=True)
class ManifestRef:
    """The S3 object a manifest was read from (key already URL-decoded)."""

    bucket: str
    key: str
    etag: str | None = None
    version_id: str | None = None
    size: int | None = None
    # The S3 event's sequencer: the same for redeliveries of one upload, new for every upload.
    sequencer: str | None = None

    @property
    def run_id(self) -> str:
        """Identifies one upload of the manifest: redelivered events share it, a re-upload does not."""
        return self.version_id or self.sequencer or self.etag or ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bucket": self.bucket, "key": self.key}
        for name in ("etag", "version_id", "sequencer"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out


@dataclass(frozen=True)
class ManifestEntry:
    """One image to label: its position in the manifest, its id and its URL."""

    index: int
    image_id: str
    url: str
    id_given: bool = True


@dataclass(frozen=True)
class RejectedEntry:
    """A manifest entry that cannot be processed at all (not an object, no URL, duplicate id...)."""

    index: int
    image_id: str
    url: str | None
    error: LabelerError


@dataclass
class ResultRecord:
    """What is written to ``results/…/<id>.json``: labels on success, ``error`` on failure."""

    image_id: str
    url: str | None
    labels: list[dict[str, Any]] | None = None
    error: LabelerError | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image_id": self.image_id, "url": self.url}
        if self.error is None:
            out["labels"] = self.labels or []
        else:
            out["error"] = self.error.to_dict()
        out.update(self.metadata)
        return out


# What a manifest yields per entry: something to label, or something already known to fail.
EntryItem = ManifestEntry | RejectedEntry
