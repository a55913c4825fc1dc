"""Records that flow through the pipeline: manifest entries in, result/error records and reports out.

The data path reads top to bottom: ``ManifestRef`` → ``ManifestEntry`` (or ``RejectedEntry``)
→ fetch → image → labels → ``ResultRecord`` → ``Report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from labeler.models.errors import LabelerError

# S3 sequencers are hexadecimal of varying length (18 digits today): padded to this many to sort as text.
SORT_KEY_SEQUENCER_DIGITS = 32
# A re-check run's id is its upload's run id, this separator and the re-check's time. "!" sorts below every
# character of a version id, sequencer or ETag, so "v1!recheck-…" sorts right after "v1" and before "v10".
RECHECK_RUN_SEPARATOR = "!recheck-"


RECHECK_TIME_FORMAT = "%Y%m%dT%H%M%S"


def recheck_time(moment: datetime) -> str:
    """A re-check's time as its run id carries it: UTC, fixed width (milliseconds always), so it sorts as it compares.

    >>> recheck_time(datetime(2026, 11, 26, 0, 0, tzinfo=UTC))
    '20261126T000000.000Z'
    """
    moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    return f"{moment.strftime(RECHECK_TIME_FORMAT)}.{moment.microsecond // 1000:03d}Z"


def recheck_iso(stamp: str) -> str:
    """:func:`recheck_time`'s text as ISO 8601 (reports, events).

    >>> recheck_iso("20261126T000000.000Z")
    '2026-11-26T00:00:00.000Z'
    """
    moment = datetime.strptime(stamp[:15], RECHECK_TIME_FORMAT)
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S')}{stamp[15:]}"


@dataclass(frozen=True)
class RunStamp:
    """Which run (one upload of a manifest) wrote an object, and where it stands among the runs of its key.

    Every record and report carries its run's stamp in its S3 user metadata. Runs are ordered by the
    S3 event's ``sequencer`` when both have one (hexadecimal, compared after left-padding with zeros,
    as AWS documents), otherwise by the manifest object's ``LastModified`` (1-second resolution; ``""``
    when unknown sorts first), and at last by run id, so that any two runs compare the same way
    everywhere.

    A re-check run (:attr:`ManifestRef.recheck`) carries its upload's sequencer and time, and its run id
    is the upload's plus ``!recheck-<time>``: it sorts after the upload it re-checks and after earlier
    re-checks of it (the times are fixed-width), and before any later upload (a greater sequencer or
    time, or a run id that differs before the ``!``).

    >>> old = RunStamp("v1", sequencer="0A1B", modified="20261125T100000Z")
    >>> RunStamp("v2", sequencer="00A1C", modified="20261125T100000Z").is_newer_than(old)
    True
    >>> RunStamp("v3", modified="20261125T100001Z").is_newer_than(old)  # no sequencer: the time decides
    True
    >>> RunStamp("v1!recheck-20261126T000000.000Z", "0A1B", "20261125T100000Z").is_newer_than(old)
    True
    """

    run_id: str
    sequencer: str = ""
    modified: str = ""

    def to_metadata(self) -> dict[str, str]:
        return {"manifest-run": self.run_id, "run-sequencer": self.sequencer, "run-modified": self.modified}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> RunStamp | None:
        """The stamp an object's metadata names; None for an object written without one."""
        run_id = metadata.get("manifest-run")
        if not run_id:
            return None
        return cls(run_id, metadata.get("run-sequencer", ""), metadata.get("run-modified", ""))

    def is_newer_than(self, other: RunStamp) -> bool:
        return self._order(other) > other._order(self)

    def sort_key(self) -> str:
        """A text that sorts the runs of one manifest as :meth:`is_newer_than` does (the index's ``run_order``).

        The sequencer left-padded to 32 digits (none: zeros), then the modification time, then the run
        id. Runs with and without a sequencer compare by sequencer first here; within one deployment
        either every event carries one (S3) or none does (some S3-compatible endpoints).

        >>> RunStamp("v2", sequencer="00A1C").sort_key() > RunStamp("v1", sequencer="0A1B").sort_key()
        True
        """
        sequencer = self.sequencer.upper().lstrip("0").rjust(SORT_KEY_SEQUENCER_DIGITS, "0")
        return f"{sequencer}-{self.modified}-{self.run_id}"

    def _order(self, other: RunStamp) -> tuple[str, str, str]:
        if self.sequencer and other.sequencer:
            width = max(len(self.sequencer), len(other.sequencer))
            return (self.sequencer.upper().rjust(width, "0"), self.modified, self.run_id)
        return ("", self.modified, self.run_id)


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
    # The object's LastModified (GetObject), "YYYYMMDDTHHMMSSZ": orders runs when events carry no sequencer.
    last_modified: str | None = None
    # The S3 event's eventTime (ISO 8601): the run's date in the index, the same for every batch and retry.
    # A re-check run's is its scheduled time.
    event_time: str | None = None
    # A re-check of the upload described above (docs/recheck.md): when it was scheduled, as
    # "YYYYMMDDTHHMMSS.mmmZ" (fixed width: sorts as it compares). None: the upload's own run.
    recheck: str | None = None

    @property
    def upload_run_id(self) -> str:
        """Identifies one upload of the manifest: redelivered events share it, a re-upload does not."""
        return self.version_id or self.sequencer or self.etag or ""

    @property
    def run_id(self) -> str:
        """Identifies one run: the upload's run id, or for a re-check of it ``<upload run id>!recheck-<time>``.

        >>> ManifestRef("in", "a.json", version_id="v1", recheck="20261126T000000.000Z").run_id
        'v1!recheck-20261126T000000.000Z'
        """
        if self.recheck:
            return f"{self.upload_run_id}{RECHECK_RUN_SEPARATOR}{self.recheck}"
        return self.upload_run_id

    @property
    def stamp(self) -> RunStamp:
        return RunStamp(self.run_id, (self.sequencer or "").upper(), self.last_modified or "")

    def upload(self) -> ManifestRef:
        """The reference of the upload a re-check run re-checks (itself for an upload's run)."""
        return replace(self, recheck=None) if self.recheck else self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bucket": self.bucket, "key": self.key}
        for name in ("etag", "version_id", "sequencer", "last_modified", "event_time", "recheck"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestRef:
        """The reference :meth:`to_dict` described (work batches carry it)."""
        return cls(
            bucket=str(data["bucket"]),
            key=str(data["key"]),
            etag=data.get("etag"),
            version_id=data.get("version_id"),
            sequencer=data.get("sequencer"),
            last_modified=data.get("last_modified"),
            event_time=data.get("event_time"),
            recheck=data.get("recheck"),
        )


@dataclass(frozen=True)
class ManifestEntry:
    """One image to label: its position in the manifest, its id and its URL.

    ``version_id`` is the entry's ``"versionId"``: the S3 object version an ``s3://`` entry names (None:
    the current version).
    """

    index: int
    image_id: str
    url: str
    id_given: bool = True
    version_id: str | None = None


@dataclass(frozen=True)
class RejectedEntry:
    """A manifest entry that cannot be processed at all (not an object, no URL, duplicate id...)."""

    index: int
    image_id: str
    url: str | None
    error: LabelerError
    # False when ``image_id`` was made up (``entry-<index>``, or derived from the URL).
    id_given: bool = True


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
