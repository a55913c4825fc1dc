"""Images already in S3: the Rekognition stand-in reads Image.S3Object from the embedded S3; submit --prefix.

The stand-in behaves as the service does for S3Object (15 MB, JPEG/PNG, sides; InvalidS3ObjectException for
an object it cannot read), so the S3Object path can be tested like the bytes path. ``submit --prefix`` lists a
real (embedded) bucket page by page and its manifest is read back with the Lambda's own parser.
"""

from __future__ import annotations

import io
import itertools
import json
import time
from typing import Any

import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image

from labeler import cli
from labeler.local.embedded_aws import EmbeddedAws
from labeler.local.s3_prefix import default_manifest_key, parse_prefix_url, write_prefix_manifest
from labeler.logic.manifest import parse_manifest
from labeler.logic.s3_sources import parse_s3_source
from labeler.models.records import ManifestEntry
from tests.conftest import Buckets
from tests.support import images
from tests.support.fake_rekognition import SAMPLE_LABELS, FakeRekognition

_numbers = itertools.count()
MIB = 1024 * 1024


def source_bucket(aws: EmbeddedAws, versioning: bool = False) -> str:
    name = f"source-photos-{next(_numbers)}"
    aws.create_bucket(name, versioning=versioning)
    return name


def rekognition(fake: FakeRekognition) -> Any:
    import boto3

    return boto3.client(
        "rekognition",
        endpoint_url=fake.endpoint_url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )


def detect(fake: FakeRekognition, image: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = rekognition(fake).detect_labels(Image=image, MinConfidence=55, MaxLabels=10)
    return response


def error_code(fake: FakeRekognition, image: dict[str, Any]) -> str:
    with pytest.raises(ClientError) as raised:
        detect(fake, image)
    return str(raised.value.response["Error"]["Code"])


def noise_png(side: int) -> bytes:
    """A real PNG of random pixels (incompressible): side 1500 gives about 6.8 MB."""
    pixels = np.random.default_rng(7).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# --- the stand-in's S3Object path ------------------------------------------------------------------------
def test_s3object_is_read_from_the_embedded_s3_and_labeled(
    embedded_aws: EmbeddedAws, fake_rekognition: FakeRekognition
) -> None:
    bucket = source_bucket(embedded_aws)
    embedded_aws.client("s3").put_object(Bucket=bucket, Key="2024/cat 1.jpg", Body=images.jpeg())
    ref = parse_s3_source(f"s3://{bucket}/2024/cat 1.jpg", None, allowed={bucket})

    response = detect(fake_rekognition, ref.rekognition_image())
    assert [label["Name"] for label in response["Labels"]] == [label["Name"] for label in SAMPLE_LABELS]
    assert fake_rekognition.state.s3_objects_seen == [(bucket, "2024/cat 1.jpg", None)]
    assert fake_rekognition.state.successful_calls == 1


def test_s3object_reads_the_version_asked_for(embedded_aws: EmbeddedAws, fake_rekognition: FakeRekognition) -> None:
    bucket = source_bucket(embedded_aws, versioning=True)
    s3 = embedded_aws.client("s3")
    first = s3.put_object(Bucket=bucket, Key="cat.jpg", Body=images.jpeg())["VersionId"]
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=images.HTML)  # the current version is not an image

    assert detect(fake_rekognition, {"S3Object": {"Bucket": bucket, "Name": "cat.jpg", "Version": first}})["Labels"]
    assert (
        error_code(fake_rekognition, {"S3Object": {"Bucket": bucket, "Name": "cat.jpg"}})
        == "InvalidImageFormatException"
    )
    unknown = {"S3Object": {"Bucket": bucket, "Name": "cat.jpg", "Version": "no-such-version"}}
    assert error_code(fake_rekognition, unknown) == "InvalidS3ObjectException"


def test_s3object_limits_are_the_services(embedded_aws: EmbeddedAws, fake_rekognition: FakeRekognition) -> None:
    bucket = source_bucket(embedded_aws)
    s3 = embedded_aws.client("s3")
    big = noise_png(1500)
    assert 5 * MIB < len(big) < 15 * MIB
    objects = {
        "big.png": big,
        "huge.jpg": b"\xff\xd8\xff" + b"\x00" * (15 * MIB),
        "cat.webp": images.webp(size=(300, 200)),
        "tiny.png": images.tiny_png(),
        "page.html": images.HTML,
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    def s3_object(key: str, name: str | None = None) -> dict[str, Any]:
        return {"S3Object": {"Bucket": name or bucket, "Name": key}}

    # Over the 5 MB of Image.Bytes, within the 15 MB of Image.S3Object.
    assert detect(fake_rekognition, s3_object("big.png"))["Labels"]
    assert error_code(fake_rekognition, {"Bytes": big}) == "ImageTooLargeException"
    assert error_code(fake_rekognition, s3_object("huge.jpg")) == "ImageTooLargeException"
    assert error_code(fake_rekognition, s3_object("cat.webp")) == "InvalidImageFormatException"
    assert error_code(fake_rekognition, s3_object("page.html")) == "InvalidImageFormatException"
    assert error_code(fake_rekognition, s3_object("tiny.png")) == "InvalidParameterException"
    # What the service says when it cannot read the object, whatever the reason.
    assert error_code(fake_rekognition, s3_object("missing.jpg")) == "InvalidS3ObjectException"
    assert error_code(fake_rekognition, s3_object("cat.jpg", name="no-such-bucket-here")) == "InvalidS3ObjectException"
    assert fake_rekognition.state.successful_calls == 1


# --- the Rekognition adapter's S3Object call -----------------------------------------------------------------
def test_the_adapter_s_s3object_call_takes_the_limiter_retries_and_options_of_the_bytes_call(
    embedded_aws: EmbeddedAws, fake_rekognition: FakeRekognition
) -> None:
    from labeler.adapters.labels.base import DetectsS3Objects
    from labeler.adapters.labels.rekognition import RekognitionBackend, RetryPolicy, build_client
    from labeler.adapters.ratelimit import LocalSlots, SlotLimiter
    from labeler.models.errors import LabelingFailed, OutOfTime
    from labeler.models.label_options import LabelOptions

    bucket = source_bucket(embedded_aws, versioning=True)
    version = embedded_aws.client("s3").put_object(Bucket=bucket, Key="cat.jpg", Body=images.jpeg())["VersionId"]
    limiter = SlotLimiter(LocalSlots(1000))
    backend = RekognitionBackend(build_client(), limiter, retry=RetryPolicy(max_attempts=4), rng=lambda: 0.0)
    assert isinstance(backend, DetectsS3Objects)
    options = LabelOptions(min_confidence=90, max_labels=2, features=("GENERAL_LABELS", "IMAGE_PROPERTIES"))
    fake_rekognition.state.fail_next("ThrottlingException", "InternalServerError")

    result = backend.detect_s3_object({"Bucket": bucket, "Name": "cat.jpg", "Version": version}, options)

    assert [label["Name"] for label in result.labels] == ["Mobile Phone", "Phone"]
    assert "ImageProperties" in result.extra and backend.model_version == "3.0"
    assert fake_rekognition.state.calls == 3 == limiter.stats.slots_used  # every attempt took a slot
    sent = fake_rekognition.state.requests[-1]
    assert (sent["Image"], sent["MinConfidence"], sent["MaxLabels"]) == ("S3Object", 90, 2)
    assert fake_rekognition.state.s3_objects_seen == [(bucket, "cat.jpg", version)]
    with pytest.raises(LabelingFailed) as raised:
        backend.detect_s3_object({"Bucket": bucket, "Name": "missing.jpg"}, options)
    assert raised.value.details["aws_code"] == "InvalidS3ObjectException"
    with pytest.raises(OutOfTime):  # the deadline, as for bytes
        backend.detect_s3_object({"Bucket": bucket, "Name": "cat.jpg"}, options, deadline=time.monotonic() + 0.5)


# --- submit --prefix -----------------------------------------------------------------------------------
def stock(aws: EmbeddedAws, bucket: str) -> dict[str, str]:
    """A bucket as teams have them: photos, other files, folder markers, empty objects, another prefix."""
    s3 = aws.client("s3")
    versions = {}
    for key, body in {
        "photos/a.jpg": images.jpeg(),
        "photos/b.PNG": images.png(),
        "photos/sub/c.webp": images.webp(),
        "photos/sub/d.gif": images.gif(),
        "photos/readme.txt": b"notes",
        "photos/raw.cr2": b"raw",
        "photos/empty.jpg": b"",
        "photos/folder/": b"",
        "photos/big.jpg": b"\xff\xd8\xff" + b"\x00" * (15 * MIB),
        "other/x.jpg": images.jpeg(),
    }.items():
        versions[key] = s3.put_object(Bucket=bucket, Key=key, Body=body).get("VersionId", "")
    return versions


def read_manifest(text: str) -> list[ManifestEntry]:
    entries = list(parse_manifest(io.BytesIO(text.encode()), max_bytes=MIB, max_entries=1000))
    assert all(isinstance(entry, ManifestEntry) for entry in entries)
    return entries  # type: ignore[return-value]


def test_a_prefix_listing_becomes_a_manifest_of_its_images(embedded_aws: EmbeddedAws) -> None:
    bucket = source_bucket(embedded_aws)
    stock(embedded_aws, bucket)
    out = io.StringIO()
    summary = write_prefix_manifest(embedded_aws.client("s3"), bucket, "photos/", out, page_size=2)  # 5 pages

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    keys = ["photos/a.jpg", "photos/b.PNG", "photos/big.jpg", "photos/sub/c.webp", "photos/sub/d.gif"]
    assert lines == [{"url": f"s3://{bucket}/{key}", "id": key} for key in keys]
    assert (summary.listed, summary.images, summary.large) == (9, 5, 1)
    assert dict(summary.skipped) == {
        "not an image suffix (.txt)": 1,
        "not an image suffix (.cr2)": 1,
        "empty objects": 1,
        "folder markers": 1,
    }
    text = "\n".join(summary.lines())
    assert f"listed 9 object(s) under s3://{bucket}/photos/: 5 image(s)" in text and "skipped 1: folder markers" in text
    # The Lambda's own parser reads it: ids are the keys, URLs the s3:// form.
    assert [(e.image_id, e.url) for e in read_manifest(out.getvalue())] == [(k, f"s3://{bucket}/{k}") for k in keys]


def test_versions_pin_each_entry_and_skip_deleted_objects(embedded_aws: EmbeddedAws) -> None:
    bucket = source_bucket(embedded_aws, versioning=True)
    versions = stock(embedded_aws, bucket)
    s3 = embedded_aws.client("s3")
    newer = s3.put_object(Bucket=bucket, Key="photos/a.jpg", Body=images.png())["VersionId"]
    s3.delete_object(Bucket=bucket, Key="photos/b.PNG")  # a delete marker: not an image any more
    out = io.StringIO()
    write_prefix_manifest(s3, bucket, "photos/", out, versions=True, page_size=3)

    entries = {line["id"]: line for line in map(json.loads, out.getvalue().splitlines())}
    assert set(entries) == {"photos/a.jpg", "photos/big.jpg", "photos/sub/c.webp", "photos/sub/d.gif"}
    assert entries["photos/a.jpg"]["versionId"] == newer != versions["photos/a.jpg"]
    assert entries["photos/sub/c.webp"]["versionId"] == versions["photos/sub/c.webp"]


def test_too_many_images_for_one_manifest(embedded_aws: EmbeddedAws) -> None:
    from labeler.local.s3_prefix import PrefixError

    bucket = source_bucket(embedded_aws)
    stock(embedded_aws, bucket)
    with pytest.raises(PrefixError, match="more than 3 images"):
        write_prefix_manifest(embedded_aws.client("s3"), bucket, "photos/", io.StringIO(), max_entries=3)


def test_prefix_urls_and_manifest_keys() -> None:
    assert parse_prefix_url("s3://abc") == ("abc", "")
    assert default_manifest_key("abc", "") == "manifests/s3-abc.jsonl"
    assert default_manifest_key("abc", "a b/c/") == "manifests/s3-abc-a-b-c.jsonl"
    assert default_manifest_key("abc", "a b/c/").endswith(".jsonl")  # the trigger's suffixes


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_submit_prefix_dry_run_counts_and_uploads_nothing(
    buckets: Buckets, embedded_aws: EmbeddedAws, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = source_bucket(embedded_aws)
    stock(embedded_aws, bucket)
    args = ["--input-bucket", buckets.input, "--output-bucket", buckets.output]
    status, _, err = run(capsys, "submit", "--prefix", f"s3://{bucket}/photos/", "--dry-run", *args)
    assert status == 0, err
    assert f"listed 9 object(s) under s3://{bucket}/photos/: 5 image(s)" in err
    assert f"SourceBuckets parameter must include '{bucket}'" in err
    assert "--dry-run: nothing uploaded" in err
    assert buckets.s3.list_objects_v2(Bucket=buckets.input).get("KeyCount") == 0


def test_submit_prefix_uploads_the_manifest_and_follows_it(
    buckets: Buckets, embedded_aws: EmbeddedAws, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = source_bucket(embedded_aws)
    stock(embedded_aws, bucket)
    args = ["--input-bucket", buckets.input, "--output-bucket", buckets.output, "--timeout", "0.5", "--poll", "0.1"]
    # Nothing processes the upload here: submit follows it and times out (status 1), after the upload.
    status, _, err = run(capsys, "submit", "--prefix", f"s3://{bucket}/photos/", *args)
    key = f"manifests/s3-{bucket}-photos.jsonl"
    assert status == 1 and f"uploaded s3://{buckets.input}/{key} (5 entries)" in err
    body = buckets.s3.get_object(Bucket=buckets.input, Key=key)["Body"].read().decode()
    assert read_manifest(body)[0].url == f"s3://{bucket}/photos/a.jpg"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--prefix", "https://example.com/photos/"], "--prefix takes s3://bucket/prefix/"),
        (["--prefix", "s3://Bad_Bucket/photos/"], "is not a bucket name"),
        (["--prefix", "s3://no-such-source-bucket-42/"], "the source bucket 'no-such-source-bucket-42' does not exist"),
        (["photos.json", "--prefix", "s3://abc/photos/"], "give a manifest file or --prefix"),
        ([], "give a manifest file or --prefix"),
        (["photos.json", "--dry-run"], "only apply to --prefix"),
    ],
)
def test_submit_prefix_errors_are_one_line(
    buckets: Buckets, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    status, _, err = run(capsys, "submit", *argv, "--input-bucket", buckets.input, "--output-bucket", buckets.output)
    assert status == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_a_prefix_without_images(
    buckets: Buckets, embedded_aws: EmbeddedAws, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = source_bucket(embedded_aws)
    stock(embedded_aws, bucket)
    status, _, err = run(
        capsys,
        "submit",
        "--prefix",
        f"s3://{bucket}/nothing-here/",
        "--input-bucket",
        buckets.input,
        "--output-bucket",
        buckets.output,
    )
    assert status == 2 and "no images under" in err


def test_help_of_the_new_options_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, fragment in (
        (["submit", "--help"], "--prefix s3://BUCKET/PREFIX/"),
        (["query", "--help"], "--named NAME"),
    ):
        with pytest.raises(SystemExit) as raised:
            cli.main(argv)
        assert raised.value.code == 0
        assert fragment in capsys.readouterr().out
