"""Index rows: one compact JSON Lines row per manifest entry, queryable with Athena (and DuckDB locally).

Besides the per-image result objects, every run writes its entries' rows as **one object per inline
run or per work batch** (never one per image) under a date-partitioned prefix::

    index/dt=YYYY-MM-DD/<run token>-<part>.jsonl.gz

``dt`` is the run's date (the same for every retry and every batch of the run), ``<run token>``
identifies (manifest bucket, key, run id) and ``<part>`` is ``inline``, ``rejected`` or ``b<batch>``:
the name is deterministic, so a retried run or a redelivered batch overwrites its object instead of
adding a second copy. Objects are gzip-compressed (fixed mtime: the same rows give the same bytes);
Athena and DuckDB both read ``.gz`` text by its extension, and Athena bills the compressed bytes.

:data:`INDEX_COLUMNS` is the one definition of the row: the writer emits exactly these keys in this
order, and the Glue table in ``template.yaml`` declares exactly these columns with these Hive types
(``tests/infrastructure/test_template.py`` compares them field by field).

>>> run = IndexRun("my-input", "manifests/cats.json", None, run_id="v1", run_order="0001", run_date=date(2026, 11, 25))
>>> record = {"image_id": "cat-1", "url": "https://example.com/cat.jpg", "entry_index": 0,
...           "labels": [{"Name": "Cat", "Confidence": 98.12345, "Instances": [{}], "Parents": [{"Name": "Animal"}],
...                       "Aliases": [], "Categories": [{"Name": "Animals and Pets"}]}],
...           "image": {"sha256": "ab", "format": "jpeg", "width": 451, "height": 300},
...           "label_model_version": "3.0", "processed_at": "2026-11-25T10:00:00.000Z"}
>>> row = index_row(record, run)
>>> row["status"], row["label_names"], row["labels"][0]["confidence"], row["labels"][0]["instance_count"]
('ok', ['Cat'], 98.123, 1)
>>> index_key(run, INLINE_PART)
'index/dt=2026-11-25/3e34e53d11a42e7d823a5381-inline.jsonl.gz'
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

from labeler.models.records import ManifestRef

INDEX_PREFIX = "index/"
# The Glue table (template.yaml) and the local DuckDB view share this name.
INDEX_TABLE = "image_labels"
INDEX_CONTENT_TYPE = "application/gzip"
INDEX_SUFFIX = ".jsonl.gz"
INLINE_PART = "inline"  # the one object of a run labeled inside the triggering invocation
REJECTED_PART = "rejected"  # the entries a fan-out's splitter records itself (bad shape, duplicate ids)
_PART_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
RUN_TOKEN_HEX_DIGITS = 24
# Confidence is kept to 3 decimals: enough to compare with any threshold, half the bytes of a float32 printout.
CONFIDENCE_DECIMALS = 3


# --- the schema -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArrayOf:
    element: ColumnType


@dataclass(frozen=True)
class StructOf:
    fields: tuple[Column, ...]


# A Hive scalar type name ("string", "double", "int", "boolean", "bigint"), an array or a struct.
ColumnType = str | ArrayOf | StructOf


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    comment: str = ""


def hive_type(column_type: ColumnType) -> str:
    """The Hive/Glue spelling of a column type.

    >>> hive_type(ArrayOf(StructOf((Column("name", "string"), Column("n", "int")))))
    'array<struct<name:string,n:int>>'
    """
    if isinstance(column_type, ArrayOf):
        return f"array<{hive_type(column_type.element)}>"
    if isinstance(column_type, StructOf):
        return "struct<" + ",".join(f"{f.name}:{hive_type(f.type)}" for f in column_type.fields) + ">"
    return column_type


LABEL_STRUCT = StructOf(
    (
        Column("name", "string"),
        Column("confidence", "double"),
        Column("parents", ArrayOf("string")),
        Column("categories", ArrayOf("string")),
        Column("aliases", ArrayOf("string")),
        Column("instance_count", "int"),
    )
)

INDEX_COLUMNS: tuple[Column, ...] = (
    Column("manifest_bucket", "string", "input bucket of the manifest"),
    Column("manifest_key", "string", "key of the manifest"),
    Column("manifest_version", "string", "S3 version id of the manifest object (null when unversioned)"),
    Column("run_id", "string", "one upload of the manifest: redeliveries share it, a re-upload does not"),
    Column("run_order", "string", "sorts the runs of one manifest, oldest first"),
    Column("entry_index", "int", "position of the entry in the manifest (0-based)"),
    Column("image_id", "string", "the entry's id (given or derived from the URL)"),
    Column("url", "string", "the entry's URL (https://... or s3://bucket/key)"),
    Column("status", "string", "ok or error"),
    Column("error_code", "string", "the stable error code (docs/reference.md, Error codes); null when ok"),
    Column("label_names", ArrayOf("string"), "names of labels, in the order of labels (for UNNEST)"),
    Column("labels", ArrayOf(LABEL_STRUCT), "DetectLabels labels, compacted; empty on error"),
    Column("content_sha256", "string", "SHA-256 of the image bytes as downloaded"),
    Column("image_format", "string", "jpeg, png, webp, ... as sniffed from the bytes"),
    Column("image_width", "int", "pixels"),
    Column("image_height", "int", "pixels"),
    Column("label_model_version", "string", "Rekognition's LabelModelVersion (or the local model's)"),
    Column("labeled_at", "string", "ISO-8601 UTC time the record was made"),
)
# The partition column: the run's date, also the first path segment under index/.
PARTITION_COLUMN = Column("dt", "string", "the run's date, YYYY-MM-DD (partition projection)")
INDEX_FIELD_NAMES: tuple[str, ...] = tuple(column.name for column in INDEX_COLUMNS)


# --- one run -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexRun:
    """Which manifest run the rows belong to; the same value for every batch and every retry of the run.

    ``run_order`` sorts the runs of one manifest (the value the record guards order runs by);
    ``run_date`` is the partition, the UTC date the run started (the S3 event's ``eventTime``), never
    the date a batch happens to be written.
    """

    manifest_bucket: str
    manifest_key: str
    manifest_version: str | None
    run_id: str
    run_order: str
    run_date: date

    def token(self) -> str:
        """A fixed-length hex name for (bucket, key, run id): deterministic, and never starts with ``_`` or ``.``."""
        text = "\0".join((self.manifest_bucket, self.manifest_key, self.run_id))
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:RUN_TOKEN_HEX_DIGITS]


def run_date(manifest: ManifestRef) -> date:
    """The run's partition date (UTC): the S3 event's ``eventTime``, else the manifest's ``LastModified``.

    Both are the same for every delivery, batch and retry of a run; the write time is not. Only a
    reference that knows neither (never the pipeline's: it has read the manifest) falls back to today.

    >>> run_date(ManifestRef("in", "a.json", event_time="2026-11-25T23:59:59.000-02:00"))
    datetime.date(2026, 11, 26)
    >>> run_date(ManifestRef("in", "a.json", last_modified="20261124T101112Z"))
    datetime.date(2026, 11, 24)
    """
    if manifest.event_time:
        try:
            moment = datetime.fromisoformat(manifest.event_time.replace("Z", "+00:00"))
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).date()
        except ValueError:
            pass  # not ISO 8601: the manifest's own time decides
    if manifest.last_modified:
        try:
            return datetime.strptime(manifest.last_modified, "%Y%m%dT%H%M%SZ").date()
        except ValueError:
            pass
    return datetime.now(UTC).date()


def index_run(manifest: ManifestRef) -> IndexRun:
    """The :class:`IndexRun` of a manifest run as the pipeline knows it (the reference a run or batch carries)."""
    return IndexRun(
        manifest_bucket=manifest.bucket,
        manifest_key=manifest.key,
        manifest_version=manifest.version_id,
        run_id=manifest.run_id,
        run_order=manifest.stamp.sort_key(),
        run_date=run_date(manifest),
    )


def batch_part(batch_index: int) -> str:
    """The part name of fan-out work batch ``batch_index``.

    >>> batch_part(12)
    'b000012'
    """
    if batch_index < 0:
        raise ValueError(f"batch_index must not be negative, not {batch_index}")
    return f"b{batch_index:06d}"


def index_prefix(run_date: date) -> str:
    """``index/dt=YYYY-MM-DD/``: one partition (Athena projects it, no crawler)."""
    return f"{INDEX_PREFIX}{PARTITION_COLUMN.name}={run_date.isoformat()}/"


def index_key(run: IndexRun, part: str) -> str:
    """The key of the index object of one part of a run (deterministic: a retry overwrites it)."""
    if not _PART_PATTERN.fullmatch(part):
        raise ValueError(f"not a part name: {part!r} (inline, rejected or b<batch>)")
    return f"{index_prefix(run.run_date)}{run.token()}-{part}{INDEX_SUFFIX}"


# --- one row -------------------------------------------------------------------------------------------
def _names(items: Any) -> list[str]:
    """``[{"Name": "Animal"}, ...]`` (Rekognition's Parents/Aliases/Categories) as ``["Animal", ...]``."""
    if not isinstance(items, list):
        return []
    return [str(item["Name"]) for item in items if isinstance(item, Mapping) and item.get("Name") is not None]


def compact_label(label: Mapping[str, Any]) -> dict[str, Any]:
    """One Rekognition Label object as the index's label struct (bounding boxes are left in the result object)."""
    instances = label.get("Instances")
    return {
        "name": str(label.get("Name", "")),
        "confidence": round(float(label.get("Confidence", 0.0)), CONFIDENCE_DECIMALS),
        "parents": _names(label.get("Parents")),
        "categories": _names(label.get("Categories")),
        "aliases": _names(label.get("Aliases")),
        "instance_count": len(instances) if isinstance(instances, list) else 0,
    }


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def index_row(record: Mapping[str, Any], run: IndexRun) -> dict[str, Any]:
    """The index row of one result record (the document written to ``results/…/<id>.json``).

    Keys are exactly :data:`INDEX_FIELD_NAMES`, in order; arrays are never null (``[]`` on error),
    so ``UNNEST`` and array comparisons need no null handling.
    """
    manifest = record.get("manifest")
    if isinstance(manifest, Mapping) and (
        manifest.get("bucket") != run.manifest_bucket or manifest.get("key") != run.manifest_key
    ):
        raise ValueError(
            f"record of s3://{manifest.get('bucket')}/{manifest.get('key')} given for the run of "
            f"s3://{run.manifest_bucket}/{run.manifest_key}"
        )
    error = record.get("error")
    labels_in = record.get("labels") if error is None else None
    labels = [compact_label(label) for label in labels_in or [] if isinstance(label, Mapping)]
    image = record.get("image") if isinstance(record.get("image"), Mapping) else {}
    assert isinstance(image, Mapping)
    row: dict[str, Any] = {
        "manifest_bucket": run.manifest_bucket,
        "manifest_key": run.manifest_key,
        "manifest_version": run.manifest_version,
        "run_id": run.run_id,
        "run_order": run.run_order,
        "entry_index": _int_or_none(record.get("entry_index")),
        "image_id": str(record["image_id"]),
        "url": record.get("url"),
        "status": "ok" if error is None else "error",
        "error_code": str(error.get("code")) if isinstance(error, Mapping) and error.get("code") else None,
        "label_names": [label["name"] for label in labels],
        "labels": labels,
        "content_sha256": record.get("content_sha256") or image.get("sha256"),
        "image_format": image.get("format"),
        "image_width": _int_or_none(image.get("width")),
        "image_height": _int_or_none(image.get("height")),
        "label_model_version": record.get("label_model_version"),
        "labeled_at": record.get("labeled_at") or record.get("processed_at"),
    }
    if error is not None and row["error_code"] is None:
        row["error_code"] = "internal_error"
    return row


def to_json_lines(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Rows as UTF-8 JSON Lines (compact separators, one row per line, a final newline)."""
    return b"".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n" for row in rows)


def encode_index_object(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """The bytes of an index object: gzip'd JSON Lines with mtime 0, so equal rows give equal bytes."""
    return gzip.compress(to_json_lines(rows), compresslevel=6, mtime=0)


def decode_index_object(data: bytes) -> list[dict[str, Any]]:
    """The rows of an index object (for tests and local tools)."""
    text = gzip.decompress(data).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- the writer ----------------------------------------------------------------------------------------
class IndexObjectStore(Protocol):
    """What the writer needs from the store: one PUT into the output bucket."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...


class IndexWriter:
    """Collects the rows of one run part (an inline run, a work batch) and writes them as one object.

    Thread-safe: the pipeline's workers may add records concurrently. Rows are written sorted by
    entry index (then image id), so a retry that collects the same records writes the same bytes.

    >>> writer = IndexWriter(store, run, INLINE_PART)       # doctest: +SKIP
    >>> writer.add(record.to_dict())                        # doctest: +SKIP
    >>> writer.write()                                      # doctest: +SKIP
    'index/dt=2026-11-25/…-inline.jsonl.gz'
    """

    def __init__(self, store: IndexObjectStore, run: IndexRun, part: str = INLINE_PART) -> None:
        self.store = store
        self.run = run
        self.part = part
        self.key = index_key(run, part)  # validates the part now, not at write time
        self._rows: dict[tuple[int, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, record: Mapping[str, Any] | Any) -> None:
        """Add the row of one result record (a dict as stored, or a ``ResultRecord``).

        A second record for the same (entry index, image id) replaces the first, so adding the
        records of a retried part again never duplicates rows.
        """
        document = record.to_dict() if hasattr(record, "to_dict") else record
        row = index_row(document, self.run)
        position = (row["entry_index"] if row["entry_index"] is not None else -1, row["image_id"])
        with self._lock:
            self._rows[position] = row

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._rows[position] for position in sorted(self._rows)]

    def write(self) -> str | None:
        """Write the collected rows as one object; returns its key, or None when there are no rows."""
        rows = self.rows()
        if not rows:
            return None
        self.store.put_bytes(self.key, encode_index_object(rows), INDEX_CONTENT_TYPE)
        return self.key
