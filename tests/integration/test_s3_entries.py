"""Manifest entries that name S3 objects (issue 10 §3), end to end: the real handlers on real S3 events, against
the embedded S3 and the Rekognition stand-in (which reads Image.S3Object from that S3, as the service does).

Every request the functions make to S3 is recorded (a botocore hook on their own client), so a test can say
which buckets were asked, and the stand-in says whether it received ``S3Object`` or ``Bytes``.
"""

from __future__ import annotations

import gc
import io
import itertools
import json
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from labeler.handlers import manifest_created, work_batch
from labeler.handlers.composition import get_services, reset_services
from labeler.local.embedded_aws import EmbeddedAws
from labeler.logic.index_rows import INDEX_PREFIX
from labeler.logic.keys import report_key
from labeler.models.records import ManifestRef
from tests.conftest import Buckets, FakeLambdaContext
from tests.support import images
from tests.support.fake_rekognition import SAMPLE_LABELS, FakeRekognition
from tests.support.sqs_driver import QueueInfo, drain

_numbers = itertools.count()
MIB = 1024 * 1024
SAMPLE_NAMES = [label["Name"] for label in SAMPLE_LABELS]


@dataclass
class S3Requests:
    """Every request the functions' own S3 client sends: (operation, bucket, key, extra parameters)."""

    sent: list[tuple[str, str | None, str | None, dict[str, Any]]] = field(default_factory=list)

    def record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        extra = {name: params[name] for name in ("VersionId", "Range", "IfMatch") if name in params}
        self.sent.append((model.name, params.get("Bucket"), params.get("Key"), extra))

    def to(self, bucket: str) -> list[tuple[str, str | None, dict[str, Any]]]:
        return [(operation, key, extra) for operation, name, key, extra in self.sent if name == bucket]

    def clear(self) -> None:
        self.sent.clear()


def source_bucket(aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch, *, versioning: bool, **settings: str) -> str:
    """A new bucket that SOURCE_BUCKETS allows (the services are rebuilt with ``settings``)."""
    bucket = f"{'versioned' if versioning else 'source'}-photos-{next(_numbers)}"
    aws.create_bucket(bucket, versioning=versioning)
    allow(monkeypatch, bucket, **settings)
    return bucket


@pytest.fixture
def sources(lambda_env: dict[str, str], embedded_aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch) -> str:
    """A source bucket the stack may read (SOURCE_BUCKETS), unversioned."""
    return source_bucket(embedded_aws, monkeypatch, versioning=False)


@pytest.fixture
def versioned(lambda_env: dict[str, str], embedded_aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch) -> str:
    """A versioned source bucket the stack may read."""
    return source_bucket(embedded_aws, monkeypatch, versioning=True)


def allow(monkeypatch: pytest.MonkeyPatch, *names: str, **settings: str) -> None:
    monkeypatch.setenv("SOURCE_BUCKETS", ",".join(names))
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    reset_services()


def recorded() -> S3Requests:
    """Records every S3 request of the current services from now on (after the settings are final)."""
    found = S3Requests()
    get_services().store.client.meta.events.register("before-parameter-build.s3", found.record)
    return found


@pytest.fixture
def requests_to_s3(lambda_env: dict[str, str]) -> S3Requests:
    """:func:`recorded` as a fixture: list it after the fixtures that change the settings."""
    return recorded()


def put(aws: EmbeddedAws, bucket: str, key: str, body: bytes) -> dict[str, Any]:
    response: dict[str, Any] = aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
    return response


def run(buckets: Buckets, key: str, manifest: Any) -> dict[str, Any]:
    """Upload ``manifest`` at ``key`` and run the manifest function on S3's event; the manifest's report."""
    manifest_created.handler(buckets.put_manifest(key, manifest), FakeLambdaContext())
    report: dict[str, Any] = buckets.read_json(report_key(ManifestRef(buckets.input, key)))
    return report


def image_kinds(fake: FakeRekognition) -> list[str]:
    return [request["Image"] for request in fake.state.requests]


def padded_png(body: bytes, total: int) -> bytes:
    """A valid PNG of ``total`` bytes: ``body``'s image with a private ancillary chunk after IHDR."""
    filler = total - len(body) - 12
    chunk = b"zzZz" + bytes(filler)
    padding = struct.pack(">I", filler) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return body[:33] + padding + body[33:]


def wide_png(width: int = 10_200, height: int = 120) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the routes -------------------------------------------------------------------------------------
def test_a_jpeg_in_an_allowed_bucket_is_labeled_through_s3object_without_reading_it(
    buckets: Buckets,
    sources: str,
    embedded_aws: EmbeddedAws,
    fake_rekognition: FakeRekognition,
    requests_to_s3: S3Requests,
) -> None:
    body = images.jpeg()
    etag = put(embedded_aws, sources, "2024/cat 1.jpg", body)["ETag"]
    report = run(buckets, "s3.jsonl", f'{{"url": "s3://{sources}/2024/cat 1.jpg", "id": "cat"}}\n')

    assert (report["status"], report["succeeded"]) == ("complete", 1)
    assert report["cost"]["detect_labels_calls"] == 1
    assert image_kinds(fake_rekognition) == ["S3Object"]  # not the bytes
    assert fake_rekognition.state.s3_objects_seen == [(sources, "2024/cat 1.jpg", None)]
    # One ranged read of the first bytes, nothing else, from the source bucket.
    assert requests_to_s3.to(sources) == [("GetObject", "2024/cat 1.jpg", {"Range": "bytes=0-131071"})]
    (record,) = buckets.records()
    assert list(record)[:3] == ["image_id", "url", "labels"]  # the classic top level
    assert (record["image_id"], record["url"]) == ("cat", f"s3://{sources}/2024/cat 1.jpg")
    assert [label["Name"] for label in record["labels"]] == SAMPLE_NAMES
    assert record["image"] == {
        "bytes": len(body),
        "format": "jpeg",
        "width": 451,
        "height": 300,
        "converted": False,
        "downscaled": False,
    }  # no sha256: no bytes were read to hash
    assert record["source"] == {
        "bucket": sources,
        "key": "2024/cat 1.jpg",
        "version_id": None,
        "etag": etag,
        "last_modified": record["source"]["last_modified"],
        "route": "s3object",
    }
    assert record["source"]["last_modified"].endswith("Z")
    assert (record["labels_from_cache"], record["label_backend"]) == (False, "rekognition")
    (row,) = index_rows(buckets)
    assert (row["url"], row["content_sha256"], row["image_format"], row["image_width"]) == (
        f"s3://{sources}/2024/cat 1.jpg",
        None,
        "jpeg",
        451,
    )


def index_rows(buckets: Buckets) -> list[dict[str, Any]]:
    import gzip

    rows = []
    for key in buckets.output_keys(INDEX_PREFIX):
        data = buckets.s3.get_object(Bucket=buckets.output, Key=key)["Body"].read()
        rows += [json.loads(line) for line in gzip.decompress(data).splitlines()]
    return rows


def test_objects_that_need_conversion_are_read_from_s3_and_converted(
    buckets: Buckets,
    embedded_aws: EmbeddedAws,
    lambda_env: dict[str, str],
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = source_bucket(embedded_aws, monkeypatch, versioning=False, MAX_IMAGE_BYTES=str(20 * MIB))
    requests = recorded()
    big = padded_png(images.png(), 16 * MIB)  # over the 15 MB S3Object takes, within MAX_IMAGE_BYTES
    objects = {
        "cat.webp": images.webp(),
        "cat.gif": images.gif(),
        "cat.tiff": images.tiff(),
        "wide.png": wide_png(),
        "big.png": big,
    }
    for key, body in objects.items():
        put(embedded_aws, bucket, key, body)
    report = run(buckets, "convert.json", [{"url": f"s3://{bucket}/{key}", "id": key} for key in objects])

    assert (report["status"], report["succeeded"]) == ("complete", 5)
    assert image_kinds(fake_rekognition) == ["Bytes"] * 5  # converted bytes, never S3Object
    assert fake_rekognition.state.s3_objects_seen == []
    records = buckets.records_by_id()
    for key in ("cat.webp", "cat.gif", "cat.tiff", "big.png"):
        assert records[key]["image"]["converted"] is True and records[key]["source"]["route"] == "download"
    assert records["wide.png"]["image"]["downscaled"] is True  # 10,200 px: over Rekognition's 10,000
    assert records["big.png"]["image"]["bytes"] == 16 * MIB
    for key, body in objects.items():  # the bytes were read, so their hash is known (and cached)
        assert records[key]["image"]["format"] == key.rsplit(".", 1)[1]
        assert records[key]["image"]["sha256"] == __import__("hashlib").sha256(body).hexdigest()
    # The first bytes, then the whole object unless the first read held all of it.
    for key, body in objects.items():
        sent = [(operation, extra.get("Range")) for operation, name, extra in requests.to(bucket) if name == key]
        whole = [] if len(body) <= 128 * 1024 else [("GetObject", None)]
        assert sent == [("GetObject", "bytes=0-131071"), *whole], key
    # Unversioned: the whole object is read only if it is still what the first read saw (its ETag).
    etags = {key: buckets.s3.head_object(Bucket=bucket, Key=key)["ETag"] for key in ("cat.tiff", "big.png")}
    whole_reads = {key: extra.get("IfMatch") for _, key, extra in requests.to(bucket) if "Range" not in extra}
    assert whole_reads == etags
    assert {key: len(body) > 128 * 1024 for key, body in objects.items()} == {
        "cat.webp": False,
        "cat.gif": False,
        "cat.tiff": True,
        "wide.png": False,
        "big.png": True,
    }


def test_an_object_read_whole_is_held_in_the_image_memory_budget_like_a_download(
    buckets: Buckets,
    embedded_aws: EmbeddedAws,
    lambda_env: dict[str, str],
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labeler.adapters.memory import process_budget

    bucket = source_bucket(embedded_aws, monkeypatch, versioning=False, MAX_IMAGE_BYTES=str(20 * MIB))
    budget = process_budget()
    held_when_read: list[int] = []

    def whole_read(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == "big.png" and "Range" not in params:
            held_when_read.append(budget.body_used)

    get_services().store.client.meta.events.register("before-parameter-build.s3.GetObject", whole_read)
    put(embedded_aws, bucket, "big.png", padded_png(images.png(), 16 * MIB))
    gc.collect()
    used_before = budget.used  # other tests' images may be held until collected

    report = run(buckets, "held.json", [f"s3://{bucket}/big.png"])

    assert report["succeeded"] == 1
    assert len(held_when_read) == 1 and held_when_read[0] >= 16 * MIB  # asked for before a byte of it was read
    gc.collect()
    assert budget.used <= used_before  # and given back once the record was written


def test_an_object_over_max_image_bytes_is_too_large_without_being_read(
    buckets: Buckets,
    sources: str,
    embedded_aws: EmbeddedAws,
    fake_rekognition: FakeRekognition,
    requests_to_s3: S3Requests,
) -> None:
    put(embedded_aws, sources, "big.png", padded_png(images.png(), 16 * MIB))  # MAX_IMAGE_BYTES: 15 MiB
    report = run(buckets, "big.json", [f"s3://{sources}/big.png"])

    assert report["errors_by_code"] == {"too_large": 1}
    (record,) = buckets.records()
    assert "MAX_IMAGE_BYTES" in record["error"]["message"]
    assert [operation for operation, _, _ in requests_to_s3.to(sources)] == ["GetObject"]  # the first bytes only
    assert fake_rekognition.state.calls == 0


def test_small_objects_are_read_once(
    buckets: Buckets,
    sources: str,
    embedded_aws: EmbeddedAws,
    fake_rekognition: FakeRekognition,
    requests_to_s3: S3Requests,
) -> None:
    put(embedded_aws, sources, "small.gif", images.gif(size=(120, 90)))
    report = run(buckets, "small.json", [f"s3://{sources}/small.gif"])

    assert report["succeeded"] == 1 and image_kinds(fake_rekognition) == ["Bytes"]
    assert len(requests_to_s3.to(sources)) == 1  # the first read held all of it


def test_a_version_id_is_honoured(
    buckets: Buckets,
    embedded_aws: EmbeddedAws,
    versioned: str,
    fake_rekognition: FakeRekognition,
) -> None:
    bucket = versioned
    requests = recorded()
    first = put(embedded_aws, bucket, "cat.jpg", images.jpeg())["VersionId"]
    webp = put(embedded_aws, bucket, "cat.jpg", images.webp())["VersionId"]
    current = put(embedded_aws, bucket, "cat.jpg", images.HTML)["VersionId"]
    url = f"s3://{bucket}/cat.jpg"
    manifest = [
        {"url": url, "id": "first", "versionId": first},
        {"url": url, "id": "webp", "versionId": webp},
        {"url": url, "id": "current"},
    ]
    report = run(buckets, "versions.json", manifest)

    records = buckets.records_by_id()
    assert records["first"]["labels"] and records["first"]["source"]["route"] == "s3object"
    assert records["first"]["source"]["version_id"] == first
    assert fake_rekognition.state.s3_objects_seen == [(bucket, "cat.jpg", first)]  # DetectLabels' Version
    assert records["webp"]["image"]["format"] == "webp" and records["webp"]["source"]["version_id"] == webp
    assert records["current"]["error"]["code"] == "not_an_image"  # the current version is a web page
    assert records["current"]["url"] == url
    assert report["errors_by_code"] == {"not_an_image": 1}
    # Each entry's one read (its first bytes held all of it) named the version it was after.
    reads = sorted((extra.get("VersionId") or "", "Range" in extra) for _, _, extra in requests.to(bucket))
    assert reads == sorted([(first, True), (webp, True), ("", True)])
    assert records["current"]["error"]["message"] == "an HTML page, not an image" and current


def test_two_versions_of_one_object_without_ids_are_two_entries(
    buckets: Buckets,
    embedded_aws: EmbeddedAws,
    versioned: str,
    fake_rekognition: FakeRekognition,
) -> None:
    bucket = versioned
    versions = [put(embedded_aws, bucket, "cat.jpg", body)["VersionId"] for body in (images.jpeg(), images.png())]
    lines = "\n".join(json.dumps({"url": f"s3://{bucket}/cat.jpg", "versionId": v}) for v in versions)
    report = run(buckets, "two.jsonl", lines)

    assert (report["succeeded"], report["failed"]) == (2, 0)
    assert len({record["image_id"] for record in buckets.records()}) == 2
    assert fake_rekognition.state.successful_calls == 2


def test_the_offline_backend_reads_and_converts_every_object(
    buckets: Buckets,
    sources: str,
    embedded_aws: EmbeddedAws,
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allow(monkeypatch, sources, LABEL_BACKEND="local")  # it has no S3Object call
    put(embedded_aws, sources, "cat.jpg", images.jpeg(size=(1600, 1064)))
    report = run(buckets, "local.json", [{"url": f"s3://{sources}/cat.jpg", "id": "cat"}])

    assert (report["status"], report["succeeded"]) == ("complete", 1)
    (record,) = buckets.records()
    assert (record["label_backend"], record["source"]["route"]) == ("local", "download")
    assert "Cat" in {label["Name"] for label in record["labels"]}
    assert fake_rekognition.state.calls == 0


# --- refusals ---------------------------------------------------------------------------------------
def test_a_bucket_outside_source_buckets_gets_a_record_and_no_request(
    buckets: Buckets,
    sources: str,
    embedded_aws: EmbeddedAws,
    fake_rekognition: FakeRekognition,
    requests_to_s3: S3Requests,
) -> None:
    other = f"someone-elses-photos-{next(_numbers)}"
    embedded_aws.create_bucket(other)
    put(embedded_aws, other, "cat.jpg", images.jpeg())  # it exists and the stand-in could read it: no matter
    put(embedded_aws, sources, "cat.jpg", images.jpeg())
    manifest = [
        {"url": f"s3://{other}/cat.jpg", "id": "theirs"},
        {"url": f"s3://{other}/cat.jpg", "id": "pinned", "versionId": "3HL4kqtJvjVBH40Nrjfkd"},
        {"url": f"s3://{sources}/cat.jpg", "id": "ours"},
        {"url": "s3://Not_A_Bucket/cat.jpg", "id": "bad-name"},
    ]
    report = run(buckets, "mixed.json", manifest)

    assert report["errors_by_code"] == {"source_not_allowed": 2, "invalid_url": 1}
    records = buckets.records_by_id()
    assert records["theirs"]["error"] == {
        "code": "source_not_allowed",
        "message": f"bucket '{other}' is not one of the source buckets (SOURCE_BUCKETS)",
        "bucket": other,
    }
    assert records["ours"]["labels"]
    assert requests_to_s3.to(other) == []  # nothing was sent to it, not even a HEAD
    assert [seen[0] for seen in fake_rekognition.state.s3_objects_seen] == [sources]


def test_without_source_buckets_every_s3_entry_is_refused(
    buckets: Buckets, lambda_env: dict[str, str], fake_rekognition: FakeRekognition
) -> None:
    report = run(buckets, "none.json", ["s3://my-photos/cat.jpg"])
    assert report["errors_by_code"] == {"source_not_allowed": 1}
    assert fake_rekognition.state.calls == 0


def test_a_missing_object_or_version_is_source_unreadable(
    buckets: Buckets,
    embedded_aws: EmbeddedAws,
    lambda_env: dict[str, str],
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = source_bucket(embedded_aws, monkeypatch, versioning=True)
    allow(monkeypatch, bucket, "no-such-bucket-anywhere")
    put(embedded_aws, bucket, "cat.jpg", images.jpeg())
    put(embedded_aws, bucket, "empty.jpg", b"")
    manifest = [
        {"url": f"s3://{bucket}/missing.jpg", "id": "missing"},
        {"url": f"s3://{bucket}/cat.jpg", "id": "no-such-version", "versionId": "no-such-version-id"},
        {"url": "s3://no-such-bucket-anywhere/cat.jpg", "id": "no-bucket"},
        {"url": f"s3://{bucket}/empty.jpg", "id": "empty"},
    ]
    report = run(buckets, "missing.json", manifest)

    assert report["errors_by_code"] == {"source_unreadable": 3, "empty_body": 1}
    records = buckets.records_by_id()
    missing = records["missing"]["error"]
    assert (missing["bucket"], missing["key"], missing["aws_code"]) == (bucket, "missing.jpg", "NoSuchKey")
    assert missing["message"] == f"s3://{bucket}/missing.jpg does not exist"
    version = records["no-such-version"]["error"]
    assert version["version_id"] == "no-such-version-id" and "no such version" in version["message"]
    assert records["no-bucket"]["error"]["aws_code"] == "NoSuchBucket"
    assert "Traceback" not in json.dumps(records)
    assert fake_rekognition.state.calls == 0


def test_a_bucket_in_another_region_is_read_and_labeled_from_its_bytes(
    buckets: Buckets,
    sources: str,
    embedded_aws: EmbeddedAws,
    fake_rekognition: FakeRekognition,
    requests_to_s3: S3Requests,
) -> None:
    # Rekognition reads S3Object from its own region only; the functions' S3 client follows S3's redirect.
    fake_rekognition.state.other_region_buckets.add(sources)
    put(embedded_aws, sources, "cat.jpg", images.jpeg(size=(1600, 1064)))  # more than the first read
    report = run(buckets, "region.json", [{"url": f"s3://{sources}/cat.jpg", "id": "cat"}])

    assert (report["status"], report["succeeded"]) == ("complete", 1)
    assert image_kinds(fake_rekognition) == ["S3Object", "Bytes"]  # refused, then the bytes
    assert report["cost"]["detect_labels_calls"] == 1  # a refused request labels nothing
    (record,) = buckets.records()
    assert record["source"]["route"] == "download" and record["image"]["converted"] is False
    reads = [(operation, extra.get("Range")) for operation, _, extra in requests_to_s3.to(sources)]
    assert reads == [("GetObject", "bytes=0-131071"), ("GetObject", None)]


# --- never labeled twice -----------------------------------------------------------------------------
def test_an_unchanged_object_is_never_labeled_twice(
    buckets: Buckets,
    sources: str,
    embedded_aws: EmbeddedAws,
    fake_rekognition: FakeRekognition,
    requests_to_s3: S3Requests,
) -> None:
    state = fake_rekognition.state
    put(embedded_aws, sources, "cat.jpg", images.jpeg())
    put(embedded_aws, sources, "dog.webp", images.webp("coffee"))
    manifest = [
        {"url": f"s3://{sources}/cat.jpg", "id": "cat"},
        {"url": f"s3://{sources}/dog.webp", "id": "dog"},
        {"url": f"s3://{sources}/cat.jpg", "id": "cat-again"},  # the same object twice in one run: one call
    ]
    first = run(buckets, "photos.json", manifest)
    assert first["succeeded"] == 3 and state.successful_calls == 2
    assert first["cost"] == {"detect_labels_calls": 2, "detect_labels_saved": 1, "estimated_usd": 0.002}

    reset_services()  # a cold container: the cache is read from S3, not this process's memory
    second = run(buckets, "photos.json", manifest)  # the same manifest uploaded again
    third = run(buckets, "other.json", manifest[:2])  # another manifest naming the same objects
    assert state.successful_calls == 2  # 0 calls for either
    assert (second["labels_from_cache"], third["labels_from_cache"]) == (3, 2)
    assert second["cost"] == {"detect_labels_calls": 0, "detect_labels_saved": 3, "estimated_usd": 0.0}
    record = buckets.read_json(
        next(key for key in buckets.output_keys("results/") if "other.json" in key and key.endswith("/cat.json"))
    )
    assert record["labels_from_cache"] is True and record["source"]["route"] == "cache"
    assert [label["Name"] for label in record["labels"]] == SAMPLE_NAMES

    put(embedded_aws, sources, "cat.jpg", images.jpeg("astronaut"))  # a new ETag: new content, new labels
    fourth = run(buckets, "photos.json", manifest)
    assert state.successful_calls == 3 and fourth["cost"]["detect_labels_calls"] == 1


def test_a_pinned_version_labeled_before_costs_no_request_at_all(
    buckets: Buckets,
    embedded_aws: EmbeddedAws,
    versioned: str,
    fake_rekognition: FakeRekognition,
) -> None:
    bucket = versioned
    version = put(embedded_aws, bucket, "cat.jpg", images.jpeg())["VersionId"]
    put(embedded_aws, bucket, "cat.jpg", images.png())  # a newer current version
    run(buckets, "latest.json", [{"url": f"s3://{bucket}/cat.jpg", "id": "latest"}])
    reset_services()
    first = recorded()
    run(buckets, "pinned.json", [{"url": f"s3://{bucket}/cat.jpg", "id": "pinned", "versionId": version}])
    assert fake_rekognition.state.successful_calls == 2
    # A new pinned version: its cache entry is looked up once (before the first read), then written once.
    cache = [op for op, _, key, _ in first.sent if key and key.startswith("cache/labels/") and "/s3/" in key]
    assert cache == ["GetObject", "PutObject"]

    reset_services()
    requests = recorded()
    report = run(buckets, "pinned.json", [{"url": f"s3://{bucket}/cat.jpg", "id": "pinned", "versionId": version}])
    assert report["labels_from_cache"] == 1 and fake_rekognition.state.successful_calls == 2
    assert requests.to(bucket) == []  # the version is its identity: the cache answered without asking S3
    # The unpinned entry found the current version, asked DetectLabels for exactly that version (a newer
    # upload meanwhile would not be labeled under it) and cached it by that version: the same answer for a pin.
    current = buckets.s3.head_object(Bucket=bucket, Key="cat.jpg")["VersionId"]
    assert sorted(fake_rekognition.state.s3_objects_seen) == sorted(
        [(bucket, "cat.jpg", current), (bucket, "cat.jpg", version)]
    )
    report = run(buckets, "pin-current.json", [{"url": f"s3://{bucket}/cat.jpg", "versionId": current}])
    assert report["labels_from_cache"] == 1 and requests.to(bucket) == []


def test_other_options_are_another_answer(
    buckets: Buckets,
    sources: str,
    embedded_aws: EmbeddedAws,
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MANIFEST_FEATURES", "GENERAL_LABELS,IMAGE_PROPERTIES")
    reset_services()
    put(embedded_aws, sources, "cat.jpg", images.jpeg())
    entry = {"url": f"s3://{sources}/cat.jpg", "id": "cat"}
    run(buckets, "plain.json", [entry])
    options = {"features": ["GENERAL_LABELS", "IMAGE_PROPERTIES"], "max_dominant_colors": 3}
    report = run(buckets, "colours.json", {"options": options, "images": [entry]})
    again = run(buckets, "colours-again.json", {"options": options, "images": [entry]})

    assert fake_rekognition.state.successful_calls == 2  # plain, then with properties; the third from the cache
    assert image_kinds(fake_rekognition) == ["S3Object", "S3Object"]
    assert fake_rekognition.state.requests[1]["Settings"] == {"ImageProperties": {"MaxDominantColors": 3}}
    assert (report["cost"]["detect_labels_calls"], again["labels_from_cache"]) == (1, 1)
    record = buckets.read_json(next(k for k in buckets.output_keys("results/") if "colours-again" in k))
    assert len(record["image_properties"]["DominantColors"]) <= 3 and record["labels"]


# --- the run's rules apply unchanged ----------------------------------------------------------------------
def test_s3_entries_count_against_the_run_s_cap(
    buckets: Buckets, sources: str, embedded_aws: EmbeddedAws, fake_rekognition: FakeRekognition
) -> None:
    for n in range(3):
        put(embedded_aws, sources, f"p{n}.png", images.distinct_png(n))
    entries = [{"url": f"s3://{sources}/p{n}.png", "id": f"p{n}"} for n in range(3)]
    report = run(buckets, "capped.json", {"options": {"max_label_calls": 2}, "images": entries})

    assert (report["status"], report["errors_by_code"]) == ("capped", {"over_budget": 1})
    assert fake_rekognition.state.successful_calls == 2 and len(buckets.records()) == 3


def test_a_fanned_out_run_labels_s3_entries_in_its_workers(
    buckets: Buckets,
    embedded_aws: EmbeddedAws,
    fanout_env: tuple[QueueInfo, QueueInfo],
    fake_rekognition: FakeRekognition,
    versioned: str,
) -> None:
    bucket = versioned
    queue, _ = fanout_env
    pinned = [put(embedded_aws, bucket, f"p{n}.png", images.distinct_png(n))["VersionId"] for n in range(5)]
    put(embedded_aws, bucket, "p0.png", images.HTML)  # the pin keeps entry 0 on its image
    entries = [{"url": f"s3://{bucket}/p{n}.png", "id": f"p{n}", "versionId": v} for n, v in enumerate(pinned)]
    manifest_created.handler(buckets.put_manifest("fan.json", entries), FakeLambdaContext())
    drain(buckets.aws.client("sqs"), queue, work_batch.handler, FakeLambdaContext())

    report = buckets.report()
    assert (report["status"], report["mode"], report["succeeded"]) == ("complete", "fanout", 5)
    assert sorted(fake_rekognition.state.s3_objects_seen) == [(bucket, f"p{n}.png", v) for n, v in enumerate(pinned)]
    assert len(index_rows(buckets)) == 5


def test_the_null_version_is_the_content_from_before_versioning(
    buckets: Buckets, sources: str, embedded_aws: EmbeddedAws, fake_rekognition: FakeRekognition
) -> None:
    bucket = sources
    put(embedded_aws, bucket, "cat.jpg", images.jpeg())  # before versioning: its version id is "null"
    embedded_aws.client("s3").put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    entries = [{"url": f"s3://{bucket}/cat.jpg", "id": "cat", "versionId": "null"}]
    first = run(buckets, "null.json", entries)
    again = run(buckets, "null.json", entries)

    (record,) = buckets.records()
    assert first["succeeded"] == 1 and record["source"]["version_id"] == "null"
    assert again["labels_from_cache"] == 1  # cached by its ETag ("null" may be overwritten in place)
    assert fake_rekognition.state.s3_objects_seen == [(bucket, "cat.jpg", "null")]


def test_an_object_replaced_between_its_two_reads_is_not_labeled_under_the_old_etag(
    buckets: Buckets, sources: str, embedded_aws: EmbeddedAws, fake_rekognition: FakeRekognition
) -> None:
    put(embedded_aws, sources, "cat.tiff", images.tiff())  # needs its whole read (> 128 KiB)

    def replace_it(params: dict[str, Any], **_: Any) -> None:
        if params.get("Bucket") == sources and "Range" not in params:  # just before the whole read
            put(embedded_aws, sources, "cat.tiff", images.tiff("coffee"))

    get_services().store.client.meta.events.register("before-parameter-build.s3.GetObject", replace_it)
    report = run(buckets, "race.json", [f"s3://{sources}/cat.tiff"])

    assert report["errors_by_code"] == {"source_unreadable": 1}
    (record,) = buckets.records()
    assert record["error"]["aws_code"] in {"PreconditionFailed", "412"}
    assert "changed while it was being read" in record["error"]["message"]
    assert fake_rekognition.state.calls == 0


# --- re-checks (issue 11 §1) --------------------------------------------------------------------------
def test_a_re_check_of_s3_objects_labels_only_the_replaced_one(
    buckets: Buckets, sources: str, embedded_aws: EmbeddedAws, fake_rekognition: FakeRekognition
) -> None:
    from tests.integration.test_rechecks import NEXT_TICK_AT, result_versions, run_tick, versioned_output

    versioned_output(buckets)
    put(embedded_aws, sources, "cat.jpg", images.jpeg())  # through Image.S3Object: no hash of its bytes
    put(embedded_aws, sources, "dog.jpg", images.jpeg(size=(200, 150)))
    manifest = [{"url": f"s3://{sources}/{name}.jpg", "id": name} for name in ("cat", "dog")]
    assert run(buckets, "watch/in-s3.json", manifest)["succeeded"] == 2
    assert image_kinds(fake_rekognition) == ["S3Object", "S3Object"]
    calls, written = fake_rekognition.state.successful_calls, result_versions(buckets)

    run_tick(buckets)  # nothing changed: no call, nothing written
    assert fake_rekognition.state.successful_calls == calls and result_versions(buckets) == written
    report = buckets.read_json(report_key(ManifestRef(buckets.input, "watch/in-s3.json")))
    assert (report["recheck"]["unchanged"], report["recheck"]["changed"]) == (2, 0)

    put(embedded_aws, sources, "dog.jpg", images.jpeg(size=(220, 160)))  # a new object under the same key
    run_tick(buckets, NEXT_TICK_AT)
    assert fake_rekognition.state.successful_calls == calls + 1  # the dog only
    assert result_versions(buckets) == written + Counter({"dog": 1})
    report = buckets.read_json(report_key(ManifestRef(buckets.input, "watch/in-s3.json")))
    assert (report["recheck"]["unchanged"], report["recheck"]["changed_ids"]) == (1, ["dog"])


def test_a_re_check_of_pinned_versions_writes_nothing(
    buckets: Buckets, versioned: str, embedded_aws: EmbeddedAws, fake_rekognition: FakeRekognition
) -> None:
    from tests.integration.test_rechecks import result_versions, run_tick, versioned_output

    versioned_output(buckets)
    version = put(embedded_aws, versioned, "cat.jpg", images.jpeg())["VersionId"]
    manifest = [{"url": f"s3://{versioned}/cat.jpg", "versionId": version, "id": "cat"}]
    assert run(buckets, "watch/pinned.json", manifest)["succeeded"] == 1
    calls, written = fake_rekognition.state.successful_calls, result_versions(buckets)

    run_tick(buckets)  # the version is the same content for ever: the cached answer, nothing written
    assert fake_rekognition.state.successful_calls == calls and result_versions(buckets) == written
    report = buckets.read_json(report_key(ManifestRef(buckets.input, "watch/pinned.json")))
    assert (report["recheck"]["unchanged"], report["recheck"]["changed"]) == (1, 0)
