"""Ids and output keys: deterministic, injective, contained under their prefix, within S3's 1,024 bytes."""

from __future__ import annotations

import doctest
import hashlib
import re
from urllib.parse import unquote_to_bytes

import pytest

from labeler.logic import keys
from labeler.logic.keys import (
    CACHE_PREFIX,
    REPORTS_PREFIX,
    RESULTS_PREFIX,
    S3_MAX_KEY_BYTES,
    STATE_PREFIX,
    derive_image_id,
    manifest_slug,
    report_key,
    result_key,
    safe_key_segment,
)
from labeler.models.records import ManifestRef

MANIFEST = ManifestRef("my-input", "manifests/cats.json")
SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")

HOSTILE_IDS = [
    "../../etc",
    "../../etc/passwd",
    "/",
    "//",
    "..",
    ".",
    "...",
    "",
    " ",
    "a/b",
    "a\\b",
    "\x00",
    "nul\x00in the middle",
    "\x01\x02\x1f\x7f",
    "line\nbreak",
    "carriage\rreturn",
    "tab\there",
    "caf\u00e9",
    "cafe\u0301",  # the same word, decomposed: must not collide with the line above
    "\u202eevil\u202c.jpg",  # RTL override
    "\u200f\u200e",  # RTL / LTR marks
    "\ufeffbom",
    "emoji \U0001f600",
    "\ud800",  # a lone surrogate (JSON allows "\ud800")
    "%2e%2e%2f",
    "%2E%2E%2F",
    "%",
    "~",
    "~dup1",
    "a~dup1",
    "~empty",
    "x" * 10_000,
    "é" * 5_000,
    "?query=1&x=y#frag",
    "*",
    "'\";<script>",
]


def _segment_of(key: str, prefix: str) -> str:
    assert key.startswith(prefix)
    assert key.endswith(".json")
    return key[len(prefix) : -len(".json")]


def test_the_constants() -> None:
    assert (RESULTS_PREFIX, REPORTS_PREFIX, CACHE_PREFIX, STATE_PREFIX) == ("results/", "reports/", "cache/", "state/")


def test_docstring_examples_hold() -> None:
    failures, attempted = doctest.testmod(keys, raise_on_error=False)
    assert attempted >= 10
    assert failures == 0


# --- derive_image_id -------------------------------------------------------------------------------
def test_derived_id_is_url_plus_20_hex_of_sha256_of_the_stripped_url() -> None:
    url = "https://example.com/cat.jpg"
    expected = "url-" + hashlib.sha256(url.encode()).hexdigest()[:20]
    assert derive_image_id(url) == expected
    assert derive_image_id(f"  {url}\t\n") == expected
    assert re.fullmatch(r"url-[0-9a-f]{20}", expected)


def test_derived_id_is_deterministic_and_distinguishes_urls() -> None:
    urls = [f"https://example.com/{i}.jpg" for i in range(2000)] + ["https://example.com/a.jpg?v=1", "http://x/\ud800"]
    first = [derive_image_id(url) for url in urls]
    assert first == [derive_image_id(url) for url in urls]
    assert len(set(first)) == len(urls)


# --- safe_key_segment ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_a_segment_is_one_harmless_path_segment(text: str) -> None:
    segment = safe_key_segment(text)
    assert segment
    assert re.fullmatch(r"[A-Za-z0-9._%~-]+", segment), segment
    assert "/" not in segment
    assert segment not in (".", "..")
    assert len(segment.encode("utf-8")) <= keys.ID_SEGMENT_MAX_BYTES
    assert safe_key_segment(text) == segment


@pytest.mark.parametrize(
    ("text", "segment"),
    [
        ("cat-1", "cat-1"),
        ("Cat_1.JPG", "Cat_1.JPG"),
        ("a b", "a%20b"),
        ("a/b", "a%2Fb"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("...", "..."),
        ("../x", "..%2Fx"),
        ("~", "%7E"),
        ("%", "%25"),
        ("%2e%2e%2f", "%252e%252e%252f"),
        ("é", "%C3%A9"),
        ("\x00\n", "%00%0A"),
        ("", "~empty"),
    ],
)
def test_segment_encoding(text: str, segment: str) -> None:
    assert safe_key_segment(text) == segment


def test_short_segments_decode_back_to_the_text() -> None:
    for text in HOSTILE_IDS:
        segment = safe_key_segment(text)
        if "~" in segment:  # shortened (or empty): not reversible by design
            continue
        assert unquote_to_bytes(segment) == text.encode("utf-8", "surrogatepass")


def test_tilde_only_marks_a_shortened_or_empty_text() -> None:
    for text in HOSTILE_IDS:
        segment = safe_key_segment(text)
        data = text.encode("utf-8", "surrogatepass")
        encoded_length = sum(1 if chr(b) in SAFE else 3 for b in data)
        assert ("~" in segment) == (encoded_length > keys.ID_SEGMENT_MAX_BYTES or not data)
        if "~" in segment and text:
            assert re.fullmatch(r"[A-Za-z0-9._%-]*~[0-9a-f]{16}", segment)


def test_segments_are_injective() -> None:
    texts = [
        *HOSTILE_IDS,
        # differing only in characters that get escaped
        "a b",
        "a+b",
        "a%20b",
        "a\tb",
        # very long ids sharing a long prefix
        *("p" * 5_000 + suffix for suffix in ("", "a", "b", "/", "\n", "\x00", "%")),
        *("p" * 199 + suffix for suffix in ("", "a", "b", "ab")),
        *("é" * 66 + suffix for suffix in ("", "a", "é")),
    ]
    texts = list(dict.fromkeys(texts))
    segments = [safe_key_segment(text) for text in texts]
    assert len(set(segments)) == len(texts)


def test_a_long_segment_is_cut_never_inside_an_escape_and_keeps_a_hash_of_the_whole_text() -> None:
    text = "é" * 1000
    segment = safe_key_segment(text, max_bytes=60)
    head, digest = segment.split("~")
    assert digest == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert len(segment) <= 60
    assert re.fullmatch(r"(%[0-9A-F]{2})+", head)
    assert unquote_to_bytes(head).decode() == "é" * (len(head) // 6)


@pytest.mark.parametrize("max_bytes", [20, 21, 22, 23, 24, 30, 64, 200, 1000])
def test_every_limit_is_respected(max_bytes: int) -> None:
    for text in ("x" * 5000, "é" * 5000, "/" * 5000, "a%" * 2000):
        assert len(safe_key_segment(text, max_bytes=max_bytes)) <= max_bytes


def test_a_limit_too_small_for_the_hash_is_refused() -> None:
    with pytest.raises(ValueError):
        safe_key_segment("x", max_bytes=10)


# --- manifest_slug ---------------------------------------------------------------------------------
def test_slug_keeps_the_key_structure_readable_behind_the_bucket() -> None:
    slug = manifest_slug("my-input", "manifests/2026/cats.json")
    assert re.fullmatch(r"my-input/manifests/2026/cats\.json~[0-9a-f]{16}", slug)
    assert manifest_slug("my-input", "manifests/2026/cats.json") == slug


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "/abs.json", "a//b.json", "dir/", "", ".", "..", "a/./b", "\x00/\n", "é/ü.json"]
)
def test_slug_segments_are_safe(key: str) -> None:
    slug = manifest_slug("bucket", key)
    segments = slug.split("/")
    assert segments[0] == "bucket"
    assert len(segments) == len(key.split("/")) + 1
    for segment in segments:
        assert segment and segment not in (".", "..")
        assert re.fullmatch(r"[A-Za-z0-9._%~-]+", segment)


def test_slugs_are_unique_per_bucket_and_key() -> None:
    pairs = [
        ("b", "a.json"),
        ("b", "a.json/"),
        ("b", "/a.json"),
        ("b", "a%2Ejson"),
        ("b", "a json"),
        ("b", "a+json"),
        ("c", "a.json"),
        ("b/a.json", ""),
        ("b", "x/" * 600 + "a.json"),
        ("b", "x/" * 600 + "b.json"),
        ("b", "y" * 2000),
        ("b", "y" * 2000 + "z"),
    ]
    slugs = [manifest_slug(bucket, key) for bucket, key in pairs]
    assert len(set(slugs)) == len(pairs)


def test_no_manifest_prefix_contains_another_manifests_records() -> None:
    manifests = [
        ManifestRef("b", "a.json"),
        ManifestRef("b", "a.json/b.json"),
        ManifestRef("b", "a"),
        ManifestRef("b", "a/b"),
        ManifestRef("b", "x/" * 600 + "a.json"),
        ManifestRef("b", "x/" * 600 + "a.json/more"),
    ]
    prefixes = [f"{RESULTS_PREFIX}{manifest_slug(m.bucket, m.key)}/" for m in manifests]
    for i, prefix in enumerate(prefixes):
        for j, other in enumerate(manifests):
            if i != j:
                assert not result_key(other, "img").startswith(prefix)
                assert not result_key(other, "a.json").startswith(prefix)


def test_slug_length_is_bounded() -> None:
    for bucket, key in [("b" * 63, "k" * 1024), ("b", "é" * 341), ("b", "/" * 1024), ("x" * 5000, "y" * 5000)]:
        slug = manifest_slug(bucket, key)
        assert len(slug.encode()) <= keys.SLUG_MAX_BYTES
        assert re.search(r"~[0-9a-f]{16}$", slug)
        assert slug.startswith(safe_key_segment(bucket)[:40])


# --- result_key / report_key --------------------------------------------------------------------
def test_result_and_report_keys() -> None:
    slug = manifest_slug(MANIFEST.bucket, MANIFEST.key)
    assert result_key(MANIFEST, "cat-1") == f"results/{slug}/cat-1.json"
    assert result_key(MANIFEST, "cat-1", duplicate_index=4) == f"results/{slug}/cat-1~dup4.json"
    assert report_key(MANIFEST) == f"reports/{slug}.json"


def test_keys_ignore_the_manifest_version_fields() -> None:
    other = ManifestRef("my-input", "manifests/cats.json", etag="e", version_id="v", size=3, sequencer="s")
    assert result_key(other, "x") == result_key(MANIFEST, "x")
    assert report_key(other) == report_key(MANIFEST)


@pytest.mark.parametrize("image_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_a_hostile_id_never_leaves_its_manifests_prefix(image_id: str) -> None:
    prefix = f"{RESULTS_PREFIX}{manifest_slug(MANIFEST.bucket, MANIFEST.key)}/"
    for duplicate_index in (None, 0, 12345):
        key = result_key(MANIFEST, image_id, duplicate_index=duplicate_index)
        segment = _segment_of(key, prefix)
        assert "/" not in segment
        assert segment not in (".", "..")
        assert all(part not in (".", "..", "") for part in key.split("/"))
        assert len(key.encode("utf-8")) <= S3_MAX_KEY_BYTES
        assert key.isprintable() and key.isascii()


def test_result_keys_are_injective_including_duplicates() -> None:
    ids = list(dict.fromkeys([*HOSTILE_IDS, "a", "a~dup1", "a%7Edup1", "p" * 5000 + "1", "p" * 5000 + "2"]))
    keys_seen = set()
    for image_id in ids:
        for duplicate_index in (None, 1, 2, 10):
            keys_seen.add(result_key(MANIFEST, image_id, duplicate_index=duplicate_index))
    assert len(keys_seen) == len(ids) * 4
    assert result_key(MANIFEST, "a") != result_key(MANIFEST, "a", duplicate_index=1)
    assert result_key(MANIFEST, "a", duplicate_index=1) != result_key(MANIFEST, "a~dup1")


def test_generated_ids_never_take_the_key_of_a_given_id() -> None:
    # A given id can be any text, "url-…" and "entry-3" included: a generated id's key starts with "~".
    ids = [*HOSTILE_IDS, "url-777460dbe029a0d171d0", "entry-3", "~url-x", "%7Eurl-x"]
    keys_seen = set()
    for image_id in dict.fromkeys(ids):
        for generated in (False, True):
            for duplicate_index in (None, 3):
                keys_seen.add(result_key(MANIFEST, image_id, duplicate_index, generated=generated))
    assert len(keys_seen) == len(dict.fromkeys(ids)) * 4
    given, made_up = result_key(MANIFEST, "entry-3"), result_key(MANIFEST, "entry-3", generated=True)
    assert given.endswith("/entry-3.json") and made_up.endswith("/~entry-3.json")


def test_entry_keys() -> None:
    from labeler.models.errors import InvalidEntry
    from labeler.models.records import ManifestEntry, RejectedEntry

    slug = manifest_slug(MANIFEST.bucket, MANIFEST.key)
    assert keys.entry_key(MANIFEST, ManifestEntry(0, "a", "https://e.com/")) == f"results/{slug}/a.json"
    assert keys.entry_key(MANIFEST, ManifestEntry(0, "url-1", "u", id_given=False)) == f"results/{slug}/~url-1.json"
    rejected = RejectedEntry(4, "entry-4", None, InvalidEntry("no url"), id_given=False)
    assert keys.entry_key(MANIFEST, rejected) == f"results/{slug}/~entry-4~dup4.json"


def test_negative_duplicate_index_is_refused() -> None:
    with pytest.raises(ValueError):
        result_key(MANIFEST, "a", duplicate_index=-1)


@pytest.mark.parametrize(
    "manifest",
    [
        ManifestRef("b" * 63, "k" * 1024),  # the longest bucket name and a 1,024-byte key
        ManifestRef("b", "é" * 512),  # 1,024 bytes of two-byte characters
        ManifestRef("b", "/" * 1024),
        ManifestRef("b", "\U0001f600" * 256),
        ManifestRef("b" * 2000, "k" * 5000),  # beyond S3's own limits
    ],
    ids=["1024-ascii", "1024-two-byte", "1024-slashes", "1024-emoji", "oversized"],
)
def test_every_key_fits_in_1024_bytes(manifest: ManifestRef) -> None:
    for image_id in ("x" * 5000, "é" * 5000, "\U0001f600" * 5000, "a", ""):
        for duplicate_index in (None, 999_999, 10**19):
            key = result_key(manifest, image_id, duplicate_index=duplicate_index)
            assert len(key.encode("utf-8")) <= S3_MAX_KEY_BYTES, len(key.encode())
            assert key.startswith(f"{RESULTS_PREFIX}{manifest_slug(manifest.bucket, manifest.key)}/")
    assert len(report_key(manifest).encode("utf-8")) <= S3_MAX_KEY_BYTES


def test_keys_are_deterministic() -> None:
    for image_id in HOSTILE_IDS:
        assert result_key(MANIFEST, image_id) == result_key(ManifestRef(MANIFEST.bucket, MANIFEST.key), image_id)
