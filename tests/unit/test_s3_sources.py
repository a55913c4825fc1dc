"""s3:// manifest entries: URL and bucket rules, versionId, the SOURCE_BUCKETS allow-list, route, cache identity."""

from __future__ import annotations

import doctest

import pytest

from labeler.logic import s3_sources
from labeler.logic.s3_sources import (
    S3ObjectRef,
    check_source_allowed,
    is_s3_url,
    parse_s3_source,
    parse_s3_url,
    s3_object_route,
    source_identity,
)
from labeler.models.errors import ErrorCode, InvalidUrl, SourceNotAllowed


def test_doctests() -> None:
    failures, attempted = doctest.testmod(s3_sources, raise_on_error=False)
    assert attempted > 0 and failures == 0


@pytest.mark.parametrize(
    ("url", "bucket", "key"),
    [
        ("s3://my-photos/cat.jpg", "my-photos", "cat.jpg"),
        ("S3://my-photos/a/b/c.png", "my-photos", "a/b/c.png"),
        ("s3://my.photos.2024/holiday photos+2024.jpg", "my.photos.2024", "holiday photos+2024.jpg"),
        ("s3://abc/%20literal%2F.jpg", "abc", "%20literal%2F.jpg"),  # keys are literal, never percent-decoded
        ("s3://abc/what?versionId=1", "abc", "what?versionId=1"),  # '?' is part of the key
        ("s3://abc/ünïcødé/猫.jpg", "abc", "ünïcødé/猫.jpg"),
        ("s3://abc/" + "k" * 1024, "abc", "k" * 1024),
    ],
)
def test_valid_urls(url: str, bucket: str, key: str) -> None:
    ref = parse_s3_url(url)
    assert (ref.bucket, ref.key, ref.version_id) == (bucket, key, None)
    assert is_s3_url(url)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://example.com/cat.jpg", "not an s3:// URL"),
        ("s3:/abc/cat.jpg", "not an s3:// URL"),
        ("s3://abc", "does not name an object"),
        ("s3://abc/", "does not name an object"),
        ("s3:///cat.jpg", "does not name an object"),
        ("s3://ab/cat.jpg", "not a valid bucket name"),
        ("s3://" + "a" * 64 + "/cat.jpg", "not a valid bucket name"),
        ("s3://My-Photos/cat.jpg", "not a valid bucket name"),
        ("s3://my_photos/cat.jpg", "not a valid bucket name"),
        ("s3://-photos/cat.jpg", "not a valid bucket name"),
        ("s3://photos-/cat.jpg", "not a valid bucket name"),
        ("s3://my..photos/cat.jpg", "adjacent dots"),
        ("s3://192.168.5.4/cat.jpg", "IP addresses"),
        ("s3://xn--photos/cat.jpg", "reserves"),
        ("s3://photos-s3alias/cat.jpg", "reserves"),
        ("s3://photos--x-s3/cat.jpg", "reserves"),
        ("s3://user:pass@photos/cat.jpg", "not a valid bucket name"),
        ("s3://abc/" + "k" * 1025, "longer than"),
        ("s3://abc/" + "é" * 513, "longer than"),  # bytes, not characters
        ("s3://abc/cat\n.jpg", "control characters"),
        ("s3://abc/cat\x00.jpg", "control characters"),
        ("s3://abc/photos/", "a folder"),
        ("s3://abc/\ud800.jpg", "Unicode"),
    ],
)
def test_invalid_urls_are_invalid_url(url: str, fragment: str) -> None:
    with pytest.raises(InvalidUrl, match=fragment) as raised:
        parse_s3_url(url)
    assert raised.value.code == ErrorCode.INVALID_URL


def test_version_ids() -> None:
    ref = parse_s3_url("s3://abc/cat.jpg", "3/L4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo")
    assert ref.version_id and ref.rekognition_image()["S3Object"]["Version"] == ref.version_id
    assert ref.get_object_args() == {"Bucket": "abc", "Key": "cat.jpg", "VersionId": ref.version_id}
    assert parse_s3_url("s3://abc/cat.jpg", "null").version_id == "null"
    for bad in ("", "  ", 7, ["v"], "v" * 1025, "v\n1"):
        with pytest.raises(InvalidUrl, match="versionId"):
            parse_s3_url("s3://abc/cat.jpg", bad)
    assert "Version" not in parse_s3_url("s3://abc/cat.jpg").rekognition_image()["S3Object"]


def test_the_allow_list() -> None:
    ref = parse_s3_url("s3://photos-a/cat.jpg")
    check_source_allowed(ref, {"photos-a", "photos-b"})
    for allowed in (set(), {"photos-b"}, {"photos-a-2"}, {"PHOTOS-A"}):
        with pytest.raises(SourceNotAllowed) as raised:
            check_source_allowed(ref, allowed)
        assert raised.value.to_dict() == {
            "code": "source_not_allowed",
            "message": "bucket 'photos-a' is not one of the source buckets (SOURCE_BUCKETS)",
            "bucket": "photos-a",
        }
    # A malformed URL is invalid_url before the allow-list is even looked at.
    with pytest.raises(InvalidUrl):
        parse_s3_source("s3://Photos-A/cat.jpg", None, allowed={"Photos-A"})


def test_the_new_code_is_stable() -> None:
    assert ErrorCode("source_not_allowed") is ErrorCode.SOURCE_NOT_ALLOWED
    assert SourceNotAllowed.code == ErrorCode.SOURCE_NOT_ALLOWED


@pytest.mark.parametrize(
    ("size", "fmt", "width", "height", "route"),
    [
        (3_000_000, "jpeg", 4000, 3000, "s3object"),
        (15 * 1024 * 1024, "png", 80, 10_000, "s3object"),  # the limits themselves are fine
        (15 * 1024 * 1024 + 1, "jpeg", 4000, 3000, "download"),  # over S3Object's 15 MB: downscale first
        (3_000_000, "webp", 4000, 3000, "download"),  # converted first
        (3_000_000, "gif", 400, 300, "download"),
        (3_000_000, "jpeg", 12_000, 3000, "download"),  # a side over 10,000 px
        (3_000, "png", 79, 300, "download"),  # the download path records image_too_small
        (3_000_000, None, None, None, "download"),  # unknown: the path with every check
        (3_000_000, "jpeg", None, 300, "download"),
    ],
)
def test_which_objects_rekognition_reads_itself(
    size: int, fmt: str | None, width: int | None, height: int | None, route: str
) -> None:
    assert s3_object_route(size, fmt, width, height) == route


def test_the_cache_identity_is_the_version_else_the_etag() -> None:
    ref = S3ObjectRef("photos-a", "cat.jpg")
    assert source_identity(ref, version_id="v1", etag='"e1"') == "s3://photos-a/cat.jpg?versionId=v1"
    assert (
        source_identity(S3ObjectRef("photos-a", "cat.jpg", "v0"), version_id="v1")
        == "s3://photos-a/cat.jpg?versionId=v0"
    )
    assert source_identity(ref, version_id="null", etag='"e1"') == "s3://photos-a/cat.jpg#etag=e1"
    assert source_identity(ref, etag="e1") == source_identity(ref, etag='"e1"')
    assert source_identity(ref, etag="e1") != source_identity(ref, etag="e2")  # changed content, new identity
    with pytest.raises(ValueError):
        source_identity(ref)
