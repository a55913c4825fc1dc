"""Index rows: the row schema, one row per record, the object layout and the writer (against the embedded S3)."""

from __future__ import annotations

import doctest
import threading
from datetime import date
from itertools import permutations
from typing import Any

import pytest

from labeler.logic import index_rows
from labeler.logic.index_rows import (
    INDEX_COLUMNS,
    INDEX_FIELD_NAMES,
    INDEX_PREFIX,
    INLINE_PART,
    REJECTED_PART,
    IndexRun,
    IndexWriter,
    batch_part,
    decode_index_object,
    encode_index_object,
    hive_type,
    index_key,
    index_row,
)
from labeler.models.errors import HttpStatusError
from labeler.models.records import ManifestRef, ResultRecord, RunStamp
from tests.conftest import Buckets

RUN = IndexRun(
    "my-input", "manifests/cats.json", "v-123", run_id="v-123", run_order="00000001", run_date=date(2026, 11, 25)
)

SUCCESS = {
    "image_id": "cat-1",
    "url": "https://example.com/cat.jpg",
    "labels": [
        {
            "Name": "Cat",
            "Confidence": 98.12345678,
            "Instances": [{"BoundingBox": {}, "Confidence": 98.1}, {"BoundingBox": {}, "Confidence": 90.0}],
            "Parents": [{"Name": "Mammal"}, {"Name": "Animal"}],
            "Aliases": [{"Name": "Kitty"}],
            "Categories": [{"Name": "Animals and Pets"}],
        },
        {"Name": "Animal", "Confidence": 99.0, "Instances": [], "Parents": [], "Aliases": [], "Categories": []},
    ],
    "label_model_version": "3.0",
    "labels_from_cache": False,
    "not_modified": False,
    "image": {"sha256": "ab" * 32, "bytes": 48213, "format": "jpeg", "width": 451, "height": 300},
    "source": {"final_url": "https://example.com/cat.jpg"},
    "manifest": {"bucket": "my-input", "key": "manifests/cats.json"},
    "entry_index": 3,
    "label_backend": "rekognition",
    "timings_ms": {"total": 1.0},
    "processed_at": "2026-11-25T10:00:00.000Z",
}
FAILURE = {
    "image_id": "dog",
    "url": "https://example.com/dog.jpg",
    "error": {"code": "http_status", "message": "HTTP 404", "status": 404},
    "manifest": {"bucket": "my-input", "key": "manifests/cats.json"},
    "entry_index": 4,
    "processed_at": "2026-11-25T10:00:01.000Z",
}


class BucketStore:
    """The one call IndexWriter needs (S3Store.put_bytes, added by the integration), on a real bucket."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3, self.bucket, self.puts = s3, bucket, 0

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.puts += 1
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)


def test_doctests() -> None:
    failures, attempted = doctest.testmod(index_rows, raise_on_error=False)
    assert attempted > 0 and failures == 0


def test_the_schema_is_ordered_unique_and_spelled_for_glue() -> None:
    assert len(set(INDEX_FIELD_NAMES)) == len(INDEX_FIELD_NAMES)
    types = {column.name: hive_type(column.type) for column in INDEX_COLUMNS}
    assert types["labels"] == (
        "array<struct<name:string,confidence:double,parents:array<string>,categories:array<string>,"
        "aliases:array<string>,instance_count:int>>"
    )
    assert types["label_names"] == "array<string>"
    assert {types[name] for name in ("entry_index", "image_width", "image_height")} == {"int"}
    # What the issue asks every row to hold.
    for name in ("manifest_bucket", "manifest_key", "manifest_version", "run_id", "image_id", "url", "status",
                 "error_code", "labels", "content_sha256", "image_format", "image_width", "image_height",
                 "label_model_version", "labeled_at"):  # fmt: skip
        assert name in types
    assert all(column.comment for column in INDEX_COLUMNS)


def test_a_success_record_becomes_one_compact_row_in_schema_order() -> None:
    row = index_row(SUCCESS, RUN)
    assert tuple(row) == INDEX_FIELD_NAMES
    assert row["status"] == "ok" and row["error_code"] is None
    assert row["label_names"] == ["Cat", "Animal"]
    assert row["labels"][0] == {
        "name": "Cat",
        "confidence": 98.123,
        "parents": ["Mammal", "Animal"],
        "categories": ["Animals and Pets"],
        "aliases": ["Kitty"],
        "instance_count": 2,
    }
    assert (row["content_sha256"], row["image_format"], row["image_width"], row["image_height"]) == (
        "ab" * 32,
        "jpeg",
        451,
        300,
    )
    assert row["manifest_version"] == "v-123" and row["run_id"] == "v-123" and row["run_order"] == "00000001"
    assert row["entry_index"] == 3 and row["labeled_at"] == "2026-11-25T10:00:00.000Z"
    assert row["label_model_version"] == "3.0"


def test_an_error_record_has_its_code_and_empty_arrays() -> None:
    row = index_row(FAILURE, RUN)
    assert tuple(row) == INDEX_FIELD_NAMES
    assert (row["status"], row["error_code"]) == ("error", "http_status")
    assert row["labels"] == [] and row["label_names"] == []  # never null: UNNEST and comparisons stay simple
    assert row["content_sha256"] is None and row["image_width"] is None


def test_a_record_of_another_manifest_is_refused() -> None:
    other = dict(SUCCESS, manifest={"bucket": "my-input", "key": "manifests/dogs.json"})
    with pytest.raises(ValueError, match=r"dogs\.json"):
        index_row(other, RUN)


def test_keys_are_date_partitioned_deterministic_and_one_per_part() -> None:
    key = index_key(RUN, INLINE_PART)
    assert key.startswith(f"{INDEX_PREFIX}dt=2026-11-25/") and key.endswith("-inline.jsonl.gz")
    assert key == index_key(IndexRun(**vars(RUN)), INLINE_PART)  # a retry of the run: the same key
    keys = {index_key(RUN, part) for part in (INLINE_PART, REJECTED_PART, batch_part(0), batch_part(1))}
    assert len(keys) == 4
    other_run = IndexRun(**{**vars(RUN), "run_id": "v-124"})
    other_manifest = IndexRun(**{**vars(RUN), "manifest_key": "manifests/cats.jsonl"})
    assert len({key, index_key(other_run, INLINE_PART), index_key(other_manifest, INLINE_PART)}) == 3
    name = key.rsplit("/", 1)[1]
    assert not name.startswith(("_", ".")) and "/" not in name  # Athena skips hidden files
    for bad in ("", "Inline", "../x", "b/1", "x" * 40):
        with pytest.raises(ValueError):
            index_key(RUN, bad)
    with pytest.raises(ValueError):
        batch_part(-1)


def test_objects_are_gzip_json_lines_and_byte_identical_for_the_same_rows() -> None:
    rows = [index_row(SUCCESS, RUN), index_row(FAILURE, RUN)]
    data = encode_index_object(rows)
    assert data[:2] == b"\x1f\x8b"
    assert data == encode_index_object(rows)  # mtime 0: a retry writes the same bytes
    assert decode_index_object(data) == rows


def test_the_writer_puts_one_object_per_part_and_a_retry_overwrites_it(buckets: Buckets) -> None:
    store = BucketStore(buckets.s3, buckets.output)
    writer = IndexWriter(store, RUN, INLINE_PART)
    assert writer.write() is None and store.puts == 0  # nothing collected, nothing written

    records: list[Any] = [dict(SUCCESS, image_id=f"img-{i}", entry_index=i) for i in range(40)]
    threads = [threading.Thread(target=writer.add, args=(record,)) for record in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    manifest = {"bucket": "my-input", "key": "manifests/cats.json"}
    dog = ResultRecord(image_id="dog", url="https://example.com/dog.jpg", error=HttpStatusError("404"))
    dog.metadata.update({"entry_index": 40, "manifest": manifest})
    writer.add(dog)
    key = writer.write()
    assert key == index_key(RUN, INLINE_PART) and store.puts == 1

    retry = IndexWriter(store, RUN, INLINE_PART)  # the retried run collects the same records again
    for record in reversed(records):
        retry.add(record)
        retry.add(record)  # added twice: still one row
    retry.add(FAILURE | {"image_id": "dog", "entry_index": 40})
    assert retry.write() == key

    assert buckets.output_keys(INDEX_PREFIX) == [key]  # overwritten, never duplicated
    head = buckets.s3.head_object(Bucket=buckets.output, Key=key)
    assert head["ContentType"] == "application/gzip"
    rows = decode_index_object(buckets.s3.get_object(Bucket=buckets.output, Key=key)["Body"].read())
    assert [row["entry_index"] for row in rows] == list(range(41))
    assert rows[-1]["error_code"] == "http_status"


def test_run_order_sorts_runs_as_the_record_guards_do() -> None:
    stamps = [
        RunStamp("v1", sequencer="00A1B", modified="20261125T100000Z"),
        RunStamp("v2", sequencer="A1C", modified="20261125T100000Z"),  # shorter, but later: padding decides
        RunStamp("v3", sequencer="0000B000", modified="20261125T095959Z"),
        RunStamp("v4", sequencer="FFFFFFFFFFFFFFFFFF", modified="20261124T000000Z"),
    ]
    for older, newer in permutations(stamps, 2):
        assert (newer.sort_key() > older.sort_key()) == newer.is_newer_than(older), (older, newer)
    ref = ManifestRef("in", "a.json", version_id="v9", sequencer="0A", last_modified="20261125T100000Z")
    run = index_rows.index_run(ref)
    assert (run.run_id, run.manifest_version, run.run_order) == ("v9", "v9", ref.stamp.sort_key())
    assert run.run_date == date(2026, 11, 25)  # no event time: the manifest's LastModified
    later = index_rows.index_run(
        ManifestRef("in", "a.json", event_time="2026-11-24T23:59:59.999Z", last_modified="20261125T000001Z")
    )
    assert later.run_date == date(2026, 11, 24)  # the event's time wins: the upload's day, not the read's
