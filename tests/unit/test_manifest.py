"""parse_manifest: every accepted form, every entry rule, every whole-manifest error, and streaming.

Most tables run in three modes: the body as ``bytes``; as a stream handing out 7 bytes per read
(every chunk boundary: inside UTF-8 characters, the BOM, lines); and "streamed", with the
whole-body threshold lowered so that the streaming parser (ijson / line by line) reads it.
"""

from __future__ import annotations

import doctest
import io
import json
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from labeler.logic import manifest as manifest_module
from labeler.logic.keys import derive_image_id
from labeler.logic.manifest import parse_manifest, read_manifest
from labeler.models.errors import (
    DuplicateId,
    InvalidEntry,
    ManifestEmpty,
    ManifestError,
    ManifestInvalid,
    ManifestOptionsInvalid,
    ManifestReadInterrupted,
    ManifestTooLarge,
    ManifestTooManyEntries,
)
from labeler.models.records import ManifestEntry, RejectedEntry

A, B, C = "https://example.com/a.jpg", "https://example.com/b.png", "https://example.com/c.gif"
ID_A, ID_B, ID_C = derive_image_id(A), derive_image_id(B), derive_image_id(C)
MODES = ["bytes", "stream", "streamed"]


class Reader:
    """A binary stream that counts what was read; ``chunk`` caps every read (botocore reads what it is asked)."""

    def __init__(self, body: bytes, chunk: int | None = None, fail_after: int | None = None) -> None:
        self._body = io.BytesIO(body)
        self.size = len(body)
        self.chunk = chunk
        self.fail_after = fail_after
        self.bytes_read = 0
        self.reads = 0

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.bytes_read >= self.fail_after:
            raise OSError("connection reset by peer")
        if self.chunk is not None:
            n = self.chunk if n < 0 else min(n, self.chunk)
        data = self._body.read(n)
        self.reads += 1
        self.bytes_read += len(data)
        return data


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every body "large": the streaming parsers read it."""
    monkeypatch.setattr(manifest_module, "SMALL_BODY_BYTES", 0)


def source_for(mode: str, body: bytes, monkeypatch: pytest.MonkeyPatch) -> Any:
    if mode == "bytes":
        return body
    if mode == "stream":
        return Reader(body, chunk=7)
    monkeypatch.setattr(manifest_module, "SMALL_BODY_BYTES", 0)
    return Reader(body, chunk=5)


def parse(source: Any, **kwargs: Any) -> tuple[list[ManifestEntry | RejectedEntry], ManifestError | None]:
    """Entries up to the first whole-manifest error, and that error."""
    entries: list[ManifestEntry | RejectedEntry] = []
    try:
        for entry in parse_manifest(source, **kwargs):
            entries.append(entry)
    except ManifestError as exc:
        return entries, exc
    return entries, None


def summary(entries: list[ManifestEntry | RejectedEntry]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for entry in entries:
        if isinstance(entry, ManifestEntry):
            out.append((entry.index, entry.image_id, entry.url, entry.id_given))
        else:
            out.append((entry.index, entry.image_id, entry.url, str(entry.error.code)))
    return out


def ok(index: int, image_id: str, url: str, given: bool = True) -> tuple[Any, ...]:
    return (index, image_id, url, given)


def bad(index: int, image_id: str, url: str | None, code: str = "invalid_entry") -> tuple[Any, ...]:
    return (index, image_id, url, code)


def test_docstring_examples_hold() -> None:
    failures, attempted = doctest.testmod(manifest_module, raise_on_error=False)
    assert attempted >= 2
    assert failures == 0


def test_parsing_is_lazy() -> None:
    reader = Reader(json.dumps([A, B]).encode())
    entries = parse_manifest(reader)
    assert reader.reads == 0
    assert next(entries).url == A


# --- accepted forms ------------------------------------------------------------------------------
STRICT_FORMS: list[tuple[str, bytes, list[tuple[Any, ...]]]] = [
    ("single object", b'{"url": "%s", "id": "cat-1"}' % A.encode(), [ok(0, "cat-1", A)]),
    ("single object, integer id", b'{"id": 42, "url": "%s"}' % A.encode(), [ok(0, "42", A)]),
    (
        "single object, extra keys",
        b'{"title": {"x": [1, 2]}, "url": "%s", "n": 1}' % A.encode(),
        [ok(0, ID_A, A, False)],
    ),
    (
        "list of objects",
        json.dumps([{"url": A, "id": "a"}, {"url": B}]).encode(),
        [ok(0, "a", A), ok(1, ID_B, B, False)],
    ),
    ("list of URLs", json.dumps([A, B]).encode(), [ok(0, ID_A, A, False), ok(1, ID_B, B, False)]),
    (
        "mixed list",
        json.dumps([A, {"url": B, "id": "b"}, C]).encode(),
        [ok(0, ID_A, A, False), ok(1, "b", B), ok(2, ID_C, C, False)],
    ),
    (
        "images wrapper",
        json.dumps({"images": [{"url": A, "id": "a"}, B]}).encode(),
        [ok(0, "a", A), ok(1, ID_B, B, False)],
    ),
    (
        "images wrapper with other keys around",
        json.dumps({"meta": {"deep": [[{"url": "no"}]]}, "images": [A], "version": 2}).encode(),
        [ok(0, ID_A, A, False)],
    ),
    ("images wins over url", json.dumps({"url": C, "images": [A]}).encode(), [ok(0, ID_A, A, False)]),
    (
        "pretty-printed list",
        json.dumps([{"url": A, "id": "a"}, B], indent=2).encode(),
        [ok(0, "a", A), ok(1, ID_B, B, False)],
    ),
    ("pretty-printed object", json.dumps({"url": A, "id": "a"}, indent=2).encode(), [ok(0, "a", A)]),
    (
        "pretty-printed wrapper",
        json.dumps({"images": [A, B]}, indent=2).encode(),
        [ok(0, ID_A, A, False), ok(1, ID_B, B, False)],
    ),
    (
        "JSON Lines of objects",
        b"\n".join(json.dumps(e).encode() for e in [{"url": A, "id": "a"}, {"url": B}, {"url": C, "id": 3}]),
        [ok(0, "a", A), ok(1, ID_B, B, False), ok(2, "3", C)],
    ),
    (
        "JSON Lines of URLs",
        b"\n".join(json.dumps(u).encode() for u in [A, B]) + b"\n",
        [ok(0, ID_A, A, False), ok(1, ID_B, B, False)],
    ),
    (
        "JSON Lines, mixed, CRLF, blank lines",
        b'\r\n{"url": "%s"}\r\n\r\n  \r\n"%s"\r\n\t\r\n{"url": "%s", "id": "c"}\r\n\r\n'
        % (A.encode(), B.encode(), C.encode()),
        [ok(0, ID_A, A, False), ok(1, ID_B, B, False), ok(2, "c", C)],
    ),
    ("UTF-8 BOM, list", b"\xef\xbb\xbf" + json.dumps([A]).encode(), [ok(0, ID_A, A, False)]),
    ("UTF-8 BOM, object", b"\xef\xbb\xbf" + json.dumps({"url": A}).encode(), [ok(0, ID_A, A, False)]),
    (
        "UTF-8 BOM, JSON Lines",
        b"\xef\xbb\xbf" + json.dumps({"url": A}).encode() + b"\n" + json.dumps(B).encode(),
        [ok(0, ID_A, A, False), ok(1, ID_B, B, False)],
    ),
    ("leading whitespace", b" \n\t\r\n" + json.dumps([A]).encode() + b"\n\n", [ok(0, ID_A, A, False)]),
    (
        "non-ASCII ids and URLs",
        json.dumps([{"url": "https://example.com/ü.jpg", "id": "bild-ü-\U0001f600"}], ensure_ascii=False).encode(),
        [ok(0, "bild-ü-\U0001f600", "https://example.com/ü.jpg")],
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("body", "expected"), [f[1:] for f in STRICT_FORMS], ids=[f[0] for f in STRICT_FORMS])
def test_strict_forms_in_every_mode(
    mode: str, body: bytes, expected: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    entries, error = parse(source_for(mode, body, monkeypatch))
    assert error is None
    assert summary(entries) == expected


LENIENT_FORMS: list[tuple[str, bytes, list[tuple[Any, ...]]]] = [
    (
        "trailing comma in a list",
        b'["%s", "%s",]' % (A.encode(), B.encode()),
        [ok(0, ID_A, A, False), ok(1, ID_B, B, False)],
    ),
    ("trailing comma in an object", b'{"url": "%s", "id": "a",\n}' % A.encode(), [ok(0, "a", A)]),
    (
        "trailing commas everywhere",
        b'{"images": [{"url": "%s", }, "%s", ], }' % (A.encode(), B.encode()),
        [ok(0, ID_A, A, False), ok(1, ID_B, B, False)],
    ),
    ("BOM and a trailing comma", b'\xef\xbb\xbf["%s",]' % A.encode(), [ok(0, ID_A, A, False)]),
    ("JavaScript style object", b"{ url: '%s' }" % A.encode(), [ok(0, ID_A, A, False)]),
    (
        "JavaScript style list, trailing comma",
        b"[{url:'%s'}, {url:'%s', id: 'b'},]" % (A.encode(), B.encode()),
        [ok(0, ID_A, A, False), ok(1, "b", B)],
    ),
    (
        "comments",
        b'// my images\n[\n  "%s", /* the dog */ "%s" // last\n]\n' % (A.encode(), B.encode()),
        [ok(0, ID_A, A, False), ok(1, ID_B, B, False)],
    ),
    ("JSON5 hex id", b"{url: '%s', id: 0x1F}" % A.encode(), [ok(0, "31", A)]),
    (
        "JSON Lines in JavaScript style",
        b"{url: '%s'}\n{url: '%s', id: 'b'}\n" % (A.encode(), B.encode()),
        [ok(0, ID_A, A, False), ok(1, "b", B)],
    ),
    (
        "JSON Lines, some lines in JavaScript style",
        b'{"url": "%s"}\n{url: \'%s\'}\n' % (A.encode(), B.encode()),
        [ok(0, ID_A, A, False), ok(1, ID_B, B, False)],
    ),
]


@pytest.mark.parametrize("mode", ["bytes", "stream"])
@pytest.mark.parametrize(("body", "expected"), [f[1:] for f in LENIENT_FORMS], ids=[f[0] for f in LENIENT_FORMS])
def test_lenient_forms_when_read_whole(
    mode: str, body: bytes, expected: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    entries, error = parse(source_for(mode, body, monkeypatch))
    assert error is None
    assert summary(entries) == expected


@pytest.mark.parametrize(
    "body",
    [b"{ url: '%s' }" % A.encode(), b'// c\n["%s"]' % A.encode(), b"[{url:'%s'}]" % A.encode()],
    ids=["js-object", "comment", "js-list"],
)
def test_lenient_forms_are_refused_when_streamed(body: bytes, streamed: None) -> None:
    entries, error = parse(Reader(body))
    assert entries == []
    assert isinstance(error, ManifestInvalid)


def test_a_streamed_list_with_a_trailing_comma_is_partial(streamed: None) -> None:
    entries, error = parse(Reader(json.dumps([A, B]).encode()[:-1] + b",]"))
    assert summary(entries) == [ok(0, ID_A, A, False), ok(1, ID_B, B, False)]
    assert isinstance(error, ManifestInvalid)


def test_trailing_commas_beyond_the_json5_limit_are_still_accepted() -> None:
    items = [{"url": f"https://example.com/{i}.jpg", "id": f"i{i}"} for i in range(20_000)]
    body = json.dumps(items).encode()[:-1] + b",\n]"
    assert manifest_module.JSON5_MAX_BYTES < len(body) <= manifest_module.SMALL_BODY_BYTES
    started = time.perf_counter()
    entries, error = parse(body)
    assert error is None and len(entries) == 20_000
    assert time.perf_counter() - started < 5


def test_javascript_style_beyond_the_json5_limit_is_refused_quickly() -> None:
    body = b"[" + b"{url:'https://example.com/x.jpg'}," * 10_000 + b"]"
    assert len(body) > manifest_module.JSON5_MAX_BYTES
    started = time.perf_counter()
    entries, error = parse(body)
    assert entries == []
    assert isinstance(error, ManifestInvalid)
    assert "JSON5" in error.message and str(manifest_module.JSON5_MAX_BYTES) in error.message
    assert time.perf_counter() - started < 2


# --- entry rules --------------------------------------------------------------------------------------
ENTRY_RULES: list[tuple[str, Any, tuple[Any, ...], str]] = [
    ("url string", A, ok(0, ID_A, A, False), ""),
    ("url with surrounding whitespace", {"url": f"  {A}\n"}, ok(0, ID_A, A, False), ""),
    ("string id", {"url": A, "id": "x y/z"}, ok(0, "x y/z", A), ""),
    ("integer id", {"url": A, "id": 7}, ok(0, "7", A), ""),
    ("negative integer id", {"url": A, "id": -7}, ok(0, "-7", A), ""),
    ("64-bit integer id", {"url": A, "id": 2**63 - 1}, ok(0, str(2**63 - 1), A), ""),
    ("null id means none", {"url": A, "id": None}, ok(0, ID_A, A, False), ""),
    ("512-character id", {"url": A, "id": "i" * 512}, ok(0, "i" * 512, A), ""),
    ("8192-character url", {"url": "u" * 8192}, ok(0, derive_image_id("u" * 8192), "u" * 8192, False), ""),
    ("url not checked here", {"url": "not a url", "id": "n"}, ok(0, "n", "not a url"), ""),
    ("boolean id", {"url": A, "id": True}, bad(0, "entry-0", A), "id must be a string or an integer, not a boolean"),
    ("float id", {"url": A, "id": 1.5}, bad(0, "entry-0", A), "id must be a string or an integer, not a number"),
    ("list id", {"url": A, "id": ["x"]}, bad(0, "entry-0", A), "not a list"),
    ("object id", {"url": A, "id": {"x": 1}}, bad(0, "entry-0", A), "not an object"),
    ("empty id", {"url": A, "id": ""}, bad(0, "entry-0", A), "id is empty"),
    ("513-character id", {"url": A, "id": "i" * 513}, bad(0, "entry-0", A), "longer than 512"),
    ("no url", {"id": "x"}, bad(0, "x", None), "no url"),
    ("numeric url", {"url": 5, "id": "x"}, bad(0, "x", None), "url must be a string, not a number"),
    ("null url", {"url": None}, bad(0, "entry-0", None), "url must be a string, not null"),
    ("object url", {"url": {"href": A}}, bad(0, "entry-0", None), "not an object"),
    ("list url", {"url": [A]}, bad(0, "entry-0", None), "not a list"),
    ("empty url", {"url": ""}, bad(0, "entry-0", ""), "url is empty"),
    ("blank url", {"url": " \t "}, bad(0, "entry-0", ""), "url is empty"),
    ("empty url string", "", bad(0, "entry-0", ""), "url is empty"),
    ("8193-character url", {"url": "u" * 8193}, bad(0, "entry-0", "u" * 8192), "longer than 8192"),
    ("number entry", 5, bad(0, "entry-0", None), "a number, not an object or a URL string"),
    ("null entry", None, bad(0, "entry-0", None), "null"),
    ("boolean entry", False, bad(0, "entry-0", None), "a boolean"),
    ("nested list entry", [[A]], bad(0, "entry-0", None), "a list"),
    ("empty object entry", {}, bad(0, "entry-0", None), "no url"),
    ("bad id and bad url", {"url": 5, "id": True}, bad(0, "entry-0", None), "url must be a string"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("raw", "expected", "message"), [r[1:] for r in ENTRY_RULES], ids=[r[0] for r in ENTRY_RULES])
def test_entry_rules(
    mode: str, raw: Any, expected: tuple[Any, ...], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries, error = parse(source_for(mode, json.dumps([raw]).encode(), monkeypatch))
    assert error is None
    assert summary(entries) == [expected]
    if message:
        rejected = entries[0]
        assert isinstance(rejected, RejectedEntry)
        assert type(rejected.error) is InvalidEntry
        assert message in rejected.error.message


@pytest.mark.parametrize("mode", ["bytes", "stream"])
def test_integer_ids_beyond_64_bits_when_read_whole(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entries, error = parse(source_for(mode, b'[{"url": "%s", "id": %d}]' % (A.encode(), 10**30), monkeypatch))
    assert error is None
    assert summary(entries) == [ok(0, str(10**30), A)]


def test_numbers_beyond_64_bits_refuse_a_streamed_manifest(streamed: None) -> None:
    # yajl parses the numbers of streamed bodies itself: integers beyond 64 bits, doubles beyond
    # their range, are a syntax error there (documented), never a crash.
    for number in (b"%d" % 10**30, b"1e99999", b"1" * 5000):
        entries, error = parse(Reader(b'["%s", {"url": "%s", "size": %s}]' % (A.encode(), B.encode(), number)))
        assert isinstance(error, ManifestInvalid), number
        assert "overflow" in error.message
        assert summary(entries) in ([], [ok(0, ID_A, A, False)])


@pytest.mark.parametrize("raw", [r'{"url": "https://x/\ud800"}', r'{"url": "https://x/", "id": "\udfff"}'])
def test_lone_surrogates_are_rejected_because_no_record_could_hold_them(raw: str) -> None:
    entries, error = parse(f"[{raw}]".encode())
    assert error is None
    (rejected,) = entries
    assert isinstance(rejected, RejectedEntry) and type(rejected.error) is InvalidEntry
    assert "Unicode" in rejected.error.message
    json.dumps(rejected.url, ensure_ascii=False).encode("utf-8")  # the record can be written


def test_a_rejected_entry_does_not_stop_the_others() -> None:
    entries, error = parse(json.dumps([A, 5, {"id": "x"}, B]).encode())
    assert error is None
    assert summary(entries) == [
        ok(0, ID_A, A, False),
        bad(1, "entry-1", None),
        bad(2, "x", None),
        ok(3, ID_B, B, False),
    ]


def test_keys_repeated_in_an_entry_last_one_wins() -> None:
    entries, _ = parse(b'[{"url": "%s", "id": "first", "url": "%s", "id": "last"}]' % (A.encode(), B.encode()))
    assert summary(entries) == [ok(0, "last", B)]


# --- JSON Lines numbering -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_json_lines_index_counts_entries_and_messages_name_the_line(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    body = b'\n{"url": "%s"}\n\nnot json\n\n"%s"\n[1, 2]\n{"url": "%s"\n' % (A.encode(), B.encode(), C.encode())
    entries, error = parse(source_for(mode, body, monkeypatch))
    assert error is None
    assert summary(entries) == [
        ok(0, ID_A, A, False),
        bad(1, "entry-1", None),
        ok(2, ID_B, B, False),
        bad(3, "entry-3", None),
        bad(4, "entry-4", None),
    ]
    not_json, not_entry, truncated = entries[1], entries[3], entries[4]
    assert isinstance(not_json, RejectedEntry) and isinstance(truncated, RejectedEntry)
    assert not_json.error.message.startswith("line 4 is not valid JSON")
    assert not_json.error.to_dict()["line"] == 4
    assert truncated.error.message.startswith("line 8 is not valid JSON")
    assert isinstance(not_entry, RejectedEntry) and "a list" in not_entry.error.message


@pytest.mark.parametrize("mode", MODES)
def test_a_whitespace_only_line_of_any_length_is_blank(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "MAX_LINE_BYTES", 100)
    body = b"\n".join([json.dumps(A).encode(), b" \t " * 400 + b"\r", json.dumps(B).encode()])
    entries, error = parse(source_for(mode, body, monkeypatch))
    assert error is None
    assert summary(entries) == [ok(0, ID_A, A, False), ok(1, ID_B, B, False)]


@pytest.mark.parametrize("mode", MODES)
def test_whitespace_around_a_line_does_not_count_against_the_line_limit(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "MAX_LINE_BYTES", 100)
    padded = b" " * 300 + json.dumps(B).encode() + b"\t" * 300
    too_long = b" " * 300 + json.dumps(B).encode() + b" " * 300 + b'"more text"'
    body = b"\n".join([json.dumps(A).encode(), padded, json.dumps(C).encode(), too_long, b"  "])
    entries, error = parse(source_for(mode, body, monkeypatch))
    assert error is None
    assert summary(entries)[:3] == [ok(0, ID_A, A, False), ok(1, ID_B, B, False), ok(2, ID_C, C, False)]
    assert isinstance(entries[3], RejectedEntry) and "line 4 is longer than 100 bytes" in entries[3].error.message


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"id": "x", "title": "no url"}\n', "manifest_invalid"),
        (b'\n\n{"id": "x"}\n\n', "manifest_invalid"),
        (b'{"images": [], "images": ["https://example.com/a.jpg"]}', "manifest_invalid"),
    ],
)
def test_the_answer_does_not_depend_on_the_size(
    mode: str, body: bytes, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, error = parse(source_for(mode, body, monkeypatch))
    assert error is not None and str(error.code) == expected


@pytest.mark.parametrize("mode", MODES)
def test_one_line_with_a_url_is_one_entry_at_any_size(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entries, error = parse(source_for(mode, json.dumps({"url": A, "id": "a"}).encode() + b"\n", monkeypatch))
    assert (summary(entries), error) == ([ok(0, "a", A)], None)


def _python_lines_run(function: Any) -> int:
    """How many lines of Python the manifest module executes while ``function`` runs (a measure of work, not time)."""
    import sys

    count = 0
    module_file = manifest_module.__file__

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename != module_file:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        function()
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("mode", MODES)
def test_blank_lines_cost_no_python_work_each(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # 300,000 blank lines between two entries: skipped at C speed, not one Python step per line.
    body = json.dumps(A).encode() + b"\n" * 150_000 + b"  \r\n" * 150_000 + json.dumps(B).encode() + b"\n"
    if mode == "streamed":
        monkeypatch.setattr(manifest_module, "SMALL_BODY_BYTES", 0)
    source = body if mode == "bytes" else Reader(body)  # reads of READ_CHUNK_BYTES, as from S3
    found: list[Any] = []
    lines_run = _python_lines_run(lambda: found.extend(parse_manifest(source)))
    assert summary(found) == [ok(0, ID_A, A, False), ok(1, ID_B, B, False)]
    assert lines_run < 20_000, lines_run


def test_a_streamed_line_longer_than_the_limit_is_rejected_without_being_kept(
    streamed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "MAX_LINE_BYTES", 100)
    long_line = json.dumps({"url": A, "pad": "x" * 500}).encode()
    body = b"\n".join([json.dumps(A).encode(), long_line, json.dumps(B).encode(), long_line])
    entries, error = parse(Reader(body, chunk=64))
    assert error is None
    assert summary(entries) == [
        ok(0, ID_A, A, False),
        bad(1, "entry-1", None),
        ok(2, ID_B, B, False),
        bad(3, "entry-3", None),
    ]
    assert isinstance(entries[1], RejectedEntry) and "line 2 is longer than 100 bytes" in entries[1].error.message


# --- duplicate ids ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_duplicate_ids_first_wins(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raws = [
        {"url": A, "id": "same"},
        {"url": B, "id": "same"},
        A,  # derived id
        f" {A} ",  # the same URL, the same derived id
        {"url": C, "id": ID_A},  # a given id equal to a derived one: not a duplicate (generated ids are apart)
        {"url": B, "id": 7},
        {"url": C, "id": "7"},  # the integer 7 became "7"
    ]
    entries, error = parse(source_for(mode, json.dumps(raws).encode(), monkeypatch))
    assert error is None
    assert summary(entries) == [
        ok(0, "same", A),
        bad(1, "same", B, "duplicate_id"),
        ok(2, ID_A, A, False),
        bad(3, ID_A, A, "duplicate_id"),
        ok(4, ID_A, C),
        ok(5, "7", B),
        bad(6, "7", C, "duplicate_id"),
    ]
    firsts = [e.error for e in entries if isinstance(e, RejectedEntry)]
    assert all(type(e) is DuplicateId for e in firsts)
    assert [e.details["first_index"] for e in firsts] == [0, 2, 5]
    assert "entry 0" in firsts[0].message and "same" in firsts[0].message


def test_an_invalid_entry_keeps_its_id_and_the_id_stays_taken() -> None:
    entries, _ = parse(json.dumps([{"id": "x"}, {"url": A, "id": "x"}]).encode())
    assert summary(entries) == [bad(0, "x", None), bad(1, "x", A, "duplicate_id")]


def test_generated_entry_ids_never_collide_with_given_ones() -> None:
    raws = [{"url": A, "id": "entry-2"}, {"url": B, "id": "entry-2-1"}, 5, {"url": C, "id": "entry-3"}, None]
    entries, _ = parse(json.dumps(raws).encode())
    assert summary(entries) == [
        ok(0, "entry-2", A),
        ok(1, "entry-2-1", B),
        bad(2, "entry-2", None),  # a made-up id: its record is keyed by position (keys.entry_key)
        ok(3, "entry-3", C),
        bad(4, "entry-4", None),
    ]
    assert [entry.id_given for entry in entries] == [True, True, False, True, False]


@pytest.mark.parametrize("mode", ["bytes", "streamed"])
def test_a_given_id_equal_to_a_generated_one_is_not_a_duplicate(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The issue's case: the broken first entry's made-up id must not take the valid second entry's id.
    body = json.dumps([{"url": 123}, {"id": "entry-0", "url": A}, {"id": ID_B, "url": C}, B]).encode()
    entries, error = parse(source_for(mode, body, monkeypatch))
    assert error is None
    assert summary(entries) == [bad(0, "entry-0", None), ok(1, "entry-0", A), ok(2, ID_B, C), ok(3, ID_B, B, False)]


def test_duplicates_are_found_across_many_ids() -> None:
    n = 30_000
    ids = [f"img-{i}" for i in range(n)]
    raws = [{"url": f"https://e.com/{i}", "id": image_id} for i, image_id in enumerate(ids)]
    entries, error = parse(json.dumps(raws + raws[::-1]).encode())
    assert error is None
    assert all(isinstance(e, ManifestEntry) for e in entries[:n])
    later = entries[n:]
    assert all(isinstance(e, RejectedEntry) and e.error.code == "duplicate_id" for e in later)
    assert [e.error.details["first_index"] for e in later if isinstance(e, RejectedEntry)] == list(range(n))[::-1]


# --- whole-manifest errors --------------------------------------------------------------------------
WHOLE_ERRORS: list[tuple[str, bytes, type[ManifestError], str]] = [
    ("empty", b"", ManifestEmpty, "manifest_empty"),
    ("whitespace", b" \r\n\t \n", ManifestEmpty, "manifest_empty"),
    ("BOM only", b"\xef\xbb\xbf  \n", ManifestEmpty, "manifest_empty"),
    ("empty list", b"[]", ManifestEmpty, "manifest_empty"),
    ("empty list, spaced", b" [ \n ] \n", ManifestEmpty, "manifest_empty"),
    ("empty images", b'{"images": []}', ManifestEmpty, "manifest_empty"),
    ("number", b"42", ManifestInvalid, "manifest_invalid"),
    ("string", b'"https://example.com/a.jpg"', ManifestInvalid, "manifest_invalid"),
    ("true", b"true", ManifestInvalid, "manifest_invalid"),
    ("null", b"null", ManifestInvalid, "manifest_invalid"),
    ("object without url or images", b'{"id": "x", "name": "y"}', ManifestInvalid, "manifest_invalid"),
    ("empty object", b"{}", ManifestInvalid, "manifest_invalid"),
    ("images a number", b'{"images": 42}', ManifestInvalid, "manifest_invalid"),
    ("images null", b'{"images": null}', ManifestInvalid, "manifest_invalid"),
    ("images an object", b'{"images": {"url": "x"}}', ManifestInvalid, "manifest_invalid"),
    ("images a string", b'{"images": "x"}', ManifestInvalid, "manifest_invalid"),
    ("not JSON", b"{not json at all", ManifestInvalid, "manifest_invalid"),
    ("unclosed list", b'["a", "b"', ManifestInvalid, "manifest_invalid"),
    ("UTF-16 LE BOM", b"\xff\xfe[\x00]\x00", ManifestInvalid, "manifest_invalid"),
    ("UTF-16 BE BOM", b"\xfe\xff\x00[\x00]", ManifestInvalid, "manifest_invalid"),
    ("UTF-32 LE BOM", b"\xff\xfe\x00\x00[\x00\x00\x00", ManifestInvalid, "manifest_invalid"),
    ("UTF-32 BE BOM", b"\x00\x00\xfe\xff\x00\x00\x00[", ManifestInvalid, "manifest_invalid"),
    ("UTF-16 without BOM", '["a"]'.encode("utf-16-le"), ManifestInvalid, "manifest_invalid"),
    ("Latin-1", '["https://example.com/café.jpg"]'.encode("latin-1"), ManifestInvalid, "manifest_invalid"),
    ("deep lists", b"[" * 100_000, ManifestInvalid, "manifest_invalid"),
    ("deep objects", b'{"a":' * 100_000, ManifestInvalid, "manifest_invalid"),
    ("deep balanced", b"[" * 5_000 + b"]" * 5_000, ManifestInvalid, "manifest_invalid"),
    (
        "deep inside an entry",
        b'[{"url": "x", "meta": ' + b"[" * 5_000 + b"]" * 5_000 + b"}]",
        ManifestInvalid,
        "manifest_invalid",
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("body", "cls", "code"), [e[1:] for e in WHOLE_ERRORS], ids=[e[0] for e in WHOLE_ERRORS])
def test_whole_manifest_errors(
    mode: str, body: bytes, cls: type[ManifestError], code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.perf_counter()
    entries, error = parse(source_for(mode, body, monkeypatch))
    if not (mode == "streamed" and body.startswith(b'["a"')):  # streamed: entries before the break come out
        assert entries == []
    assert type(error) is cls
    assert error is not None and str(error.code) == code and error.message
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("body", "encoding"),
    [(b"\xff\xfe[\x00", "UTF-16"), (b"\xfe\xff\x00[", "UTF-16"), (b"\xff\xfe\x00\x00[\x00\x00\x00", "UTF-32")],
)
def test_utf16_and_utf32_say_to_save_as_utf8(
    mode: str, body: bytes, encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, error = parse(source_for(mode, body, monkeypatch))
    assert isinstance(error, ManifestInvalid)
    assert encoding in error.message and "save it as UTF-8" in error.message


@pytest.mark.parametrize("mode", MODES)
def test_not_utf8_names_the_byte(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    body = b'["https://example.com/caf\xe9.jpg"]'
    _, error = parse(source_for(mode, body, monkeypatch))
    assert isinstance(error, ManifestInvalid)
    assert "not UTF-8" in error.message and "at byte 25" in error.message
    assert error.details["byte"] == 25 == body.index(b"\xe9")


def test_not_utf8_far_into_a_streamed_body_keeps_what_came_before(streamed: None) -> None:
    good = "\n".join(json.dumps(f"https://example.com/ü{i}.jpg", ensure_ascii=False) for i in range(1000)).encode()
    body = good + b'\n"https://example.com/\xc3"\n'  # a truncated two-byte character
    entries, error = parse(Reader(body, chunk=1000))
    assert isinstance(error, ManifestInvalid)
    assert error.details["byte"] == len(good) + 22
    assert len(entries) < 1000 and all(isinstance(e, ManifestEntry) for e in entries)


def test_a_body_ending_inside_a_character_is_not_utf8() -> None:
    body = b'["a"]\n\xe2\x82'
    _, error = parse(Reader(body, chunk=3))
    assert isinstance(error, ManifestInvalid)
    assert "not UTF-8" in error.message and error.details["byte"] == 6


@pytest.mark.parametrize(
    ("body", "line", "column"),
    [
        (b'[\n  {"url": "a"},\n  {"url": }\n]', 3, 11),
        (b'{"url": "a" "id": "b"}', 1, 13),
        (b'[\n"a",\n"b"\n"c"]', 4, 1),
        (b'\n\n  [\n"a"\n"b"]', 5, 1),  # leading whitespace is skipped, but counted
        (b'\r\n\t  {"url": "a" "id": "b"}', 2, 16),
        (b'\xef\xbb\xbf  {"url": "a" "id": "b"}', 1, 15),
    ],
)
def test_syntax_errors_give_line_and_column(body: bytes, line: int, column: int) -> None:
    entries, error = parse(body)
    assert entries == []
    assert isinstance(error, ManifestInvalid)
    assert (error.details["line"], error.details["column"]) == (line, column)
    assert f"line {line}, column {column}" in error.message


def test_a_single_url_string_is_not_a_manifest_however_it_is_read(streamed: None) -> None:
    for body in (b'"%s"' % A.encode(), b'\n\n"%s"\n\n' % A.encode()):
        entries, error = parse(Reader(body))
        assert entries == [] and isinstance(error, ManifestInvalid)
    entries, error = parse(Reader(b'\n"%s"\n\n"%s"' % (A.encode(), B.encode())))
    assert error is None and summary(entries) == [ok(0, ID_A, A, False), ok(1, ID_B, B, False)]


def test_streamed_syntax_errors_come_after_the_entries_before_them(streamed: None) -> None:
    body = json.dumps([A, B]).encode()[:-1] + b", {oops}]"
    entries, error = parse(Reader(body))
    assert summary(entries) == [ok(0, ID_A, A, False), ok(1, ID_B, B, False)]
    assert isinstance(error, ManifestInvalid) and "byte" in error.details


def test_streamed_trailing_garbage_is_invalid(streamed: None) -> None:
    entries, error = parse(Reader(json.dumps([A]).encode() + b" [1]"))
    assert len(entries) == 1
    assert isinstance(error, ManifestInvalid)


def test_a_streamed_number_too_long_for_python_is_invalid_not_a_crash(streamed: None) -> None:
    entries, error = parse(Reader(b'[{"url": "x", "id": ' + b"1" * 5000 + b"}]"))
    assert entries == []
    assert isinstance(error, ManifestInvalid)


def test_a_number_too_long_for_python_is_invalid() -> None:
    entries, error = parse(b'[{"url": "x", "id": ' + b"1" * 5000 + b"}]")
    assert entries == []
    assert isinstance(error, ManifestInvalid)


def test_streamed_duplicate_images_key_is_invalid(streamed: None) -> None:
    entries, error = parse(Reader(b'{"images": ["%s"], "images": ["%s"]}' % (A.encode(), B.encode())))
    assert len(entries) == 1
    assert isinstance(error, ManifestInvalid) and "twice" in error.message


def test_deep_nesting_of_a_huge_streamed_body_is_refused_fast_in_bounded_memory() -> None:
    body = b"[" * 20_000_000
    tracemalloc.start()
    try:
        started = time.perf_counter()
        entries, error = parse(Reader(body))
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert entries == []
    assert isinstance(error, ManifestInvalid) and "nested" in error.message
    assert elapsed < 2
    assert peak < 2 * manifest_module.SMALL_BODY_BYTES


@pytest.mark.parametrize("mode", MODES)
def test_too_many_entries_is_raised_at_entry_max_plus_one(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps([A, B, C, "https://example.com/d.jpg"]).encode()
    entries, error = parse(source_for(mode, body, monkeypatch), max_entries=3)
    assert [e.index for e in entries] == [0, 1, 2]
    assert type(error) is ManifestTooManyEntries and str(error.code) == "manifest_too_many_entries"
    assert error.details["max_entries"] == 3

    entries, error = parse(source_for(mode, json.dumps([A, B, C]).encode(), monkeypatch), max_entries=3)
    assert error is None and len(entries) == 3


def test_rejected_entries_count_towards_the_limit() -> None:
    entries, error = parse(json.dumps([A, 1, 2]).encode(), max_entries=2)
    assert len(entries) == 2
    assert isinstance(error, ManifestTooManyEntries)


def test_too_large_bytes_are_refused_before_anything() -> None:
    body = json.dumps([A, B]).encode()
    entries, error = parse(body, max_bytes=len(body) - 1)
    assert entries == []
    assert type(error) is ManifestTooLarge and str(error.code) == "manifest_too_large"
    entries, error = parse(body, max_bytes=len(body))
    assert error is None and len(entries) == 2


def test_too_large_streams_are_counted_while_reading(streamed: None) -> None:
    body = "\n".join(json.dumps(f"https://example.com/{i}.jpg") for i in range(10_000)).encode()
    limit = len(body) // 2
    reader = Reader(body, chunk=4096)
    entries, error = parse(reader, max_bytes=limit)
    assert type(error) is ManifestTooLarge
    assert 0 < len(entries) < 10_000  # the entries before the limit came out
    assert reader.bytes_read <= limit + 4096  # stopped at the first read past the limit
    assert str(limit) in error.message


def test_a_huge_whitespace_body_beyond_the_limit_is_too_large() -> None:
    reader = Reader(b" " * 3_000_000)
    entries, error = parse(reader, max_bytes=1_000_000)
    assert entries == [] and type(error) is ManifestTooLarge
    assert reader.bytes_read <= 1_000_000 + manifest_module.READ_CHUNK_BYTES


@pytest.mark.parametrize("fail_after", [0, 10, 5_000])
def test_read_errors_are_not_the_manifests_fault(fail_after: int, streamed: None) -> None:
    # A stream broken mid-read is retried (the invocation fails), never reported as a broken manifest.
    body = "\n".join(json.dumps(f"https://example.com/{i}.jpg") for i in range(1000)).encode()
    read: list[Any] = []
    with pytest.raises(ManifestReadInterrupted, match="connection reset by peer") as caught:
        read.extend(parse_manifest(Reader(body, chunk=1000, fail_after=fail_after)))
    assert not isinstance(caught.value, ManifestError)
    assert isinstance(caught.value.__cause__, OSError)
    assert len(read) < 1000


def test_read_errors_of_a_small_body_are_not_the_manifests_fault() -> None:
    with pytest.raises(ManifestReadInterrupted):
        list(parse_manifest(Reader(json.dumps([A]).encode(), chunk=3, fail_after=6)))


def test_a_source_that_is_not_bytes_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        list(parse_manifest("[]"))  # type: ignore[arg-type]


# --- JSON "bomb": a million repeated keys ---------------------------------------------------------
@pytest.mark.parametrize("streamed_body", [False, True], ids=["whole", "streamed"])
def test_a_million_repeated_keys_last_one_wins_in_reasonable_time(
    streamed_body: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = b"{" + b",".join([b'"url":"x"'] * 999_999 + [b'"url":"%s"' % A.encode()]) + b"}"
    if streamed_body:
        assert len(body) > manifest_module.SMALL_BODY_BYTES
        source: Any = Reader(body)
    else:
        monkeypatch.setattr(manifest_module, "SMALL_BODY_BYTES", len(body))
        source = body
    started = time.perf_counter()
    entries, error = parse(source)
    assert time.perf_counter() - started < 6
    assert error is None
    assert summary(entries) == [ok(0, ID_A, A, False)]


# --- streaming -----------------------------------------------------------------------------------------
def _entry_lines(n: int, pad: int = 0) -> Iterator[bytes]:
    tail = "x" * pad
    for i in range(n):
        yield b'{"url": "https://images.example.com/photos/%d/%s.jpg", "id": "photo-%d"}' % (i, tail.encode(), i)


def _bodies(n: int, pad: int = 0) -> dict[str, bytes]:
    lines = list(_entry_lines(n, pad))
    return {
        "json-array": b"[" + b",\n".join(lines) + b"]",
        "json-lines": b"\n".join(lines) + b"\n",
        "images": b'{"images": [' + b",".join(lines) + b"]}",
    }


BIG = _bodies(200_000, pad=20)


@pytest.mark.parametrize("form", ["json-array", "json-lines"])
def test_200k_entries_stream_and_the_first_comes_early(form: str) -> None:
    body = BIG[form]
    assert len(body) > 2 * manifest_module.SMALL_BODY_BYTES
    reader = Reader(body)
    entries = parse_manifest(reader)
    first = next(entries)
    assert (first.index, first.image_id) == (0, "photo-0")
    read_at_first = reader.bytes_read
    assert read_at_first < len(body) // 2
    count, last = 1, first
    for entry in entries:
        count, last = count + 1, entry
    assert count == 200_000
    assert (last.index, last.image_id) == (199_999, "photo-199999")
    assert isinstance(last, ManifestEntry)
    assert reader.bytes_read == len(body)
    assert reader.reads > 10


@pytest.mark.parametrize("form", ["json-array", "json-lines", "images"])
def test_streaming_memory_stays_well_below_the_body(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A smaller whole-body threshold keeps tracemalloc's overhead affordable; the code path is the same.
    monkeypatch.setattr(manifest_module, "SMALL_BODY_BYTES", 256 * 1024)
    body = _bodies(20_000, pad=300)[form]
    assert len(body) > 6_000_000
    reader = Reader(body)
    tracemalloc.start()
    try:
        count = sum(1 for _ in parse_manifest(reader))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < len(body) // 2, (peak, len(body))


def test_100mb_of_whitespace_is_empty_fast_in_bounded_memory() -> None:
    reader = Reader(b" \n\t\r" * 25_000_000)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        entries, error = parse(reader)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert entries == [] and type(error) is ManifestEmpty
    assert reader.bytes_read == 100_000_000
    assert elapsed < 3
    assert peak < 2_000_000  # a few read chunks, whatever the size of the body


def test_a_large_object_body_whose_first_line_is_not_an_object_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "SMALL_BODY_BYTES", 64)
    pretty = json.dumps({"images": [A, B]}, indent=2).encode()
    one_line_wrapper = json.dumps({"images": [A, B]}).encode() + b"\n\n"
    lines = json.dumps({"url": A}).encode() + b"\n" + json.dumps({"url": B}).encode()
    for body in (pretty, one_line_wrapper, lines):
        entries, error = parse(Reader(body, chunk=16))
        assert error is None
        assert summary(entries) == [ok(0, ID_A, A, False), ok(1, ID_B, B, False)]


# --- a manifest's options --------------------------------------------------------------------------------
def read(source: Any) -> tuple[Any, list[ManifestEntry | RejectedEntry], ManifestError | None]:
    """The options, the entries up to the first whole-manifest error, and that error (also one found at once)."""
    try:
        started = read_manifest(source)
    except ManifestError as exc:
        return None, [], exc
    entries: list[ManifestEntry | RejectedEntry] = []
    try:
        entries.extend(started.entries)
    except ManifestError as exc:
        return started.options, entries, exc
    return started.options, entries, None


OPTIONS = {"min_confidence": 80, "features": ["GENERAL_LABELS"], "exclude_labels": ["Cat", "Dog"]}
OPTION_FORMS: list[tuple[str, bytes, list[tuple[Any, ...]]]] = [
    (
        "options then images",
        json.dumps({"options": OPTIONS, "images": [A, {"url": B, "id": "b"}]}).encode(),
        [ok(0, ID_A, A, False), ok(1, "b", B)],
    ),
    (
        "one image, options after its url",
        json.dumps({"url": A, "id": "a", "options": OPTIONS}).encode(),
        [ok(0, "a", A)],
    ),
    ("one image on one line", (json.dumps({"options": OPTIONS, "url": A}) + "\n").encode(), [ok(0, ID_A, A, False)]),
    (
        "JSON Lines, options alone on the first line",
        b"\n".join(json.dumps(v).encode() for v in [{"options": OPTIONS}, A, {"url": B, "id": "b"}]) + b"\n",
        [ok(0, ID_A, A, False), ok(1, "b", B)],
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "body", "expected"), OPTION_FORMS, ids=[form[0] for form in OPTION_FORMS])
def test_options_are_known_before_the_first_entry_in_every_form_at_any_size(
    mode: str, name: str, body: bytes, expected: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    options, entries, error = read(source_for(mode, body, monkeypatch))
    assert (options, summary(entries), error) == (OPTIONS, expected, None)
    # parse_manifest reads the same entries, without the options
    entries, error = parse(source_for(mode, body, monkeypatch))
    assert (summary(entries), error) == (expected, None)


@pytest.mark.parametrize("mode", MODES)
def test_a_manifest_without_options_has_none(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    options, entries, error = read(source_for(mode, json.dumps([A, B]).encode(), monkeypatch))
    assert (options, len(entries), error) == (None, 2, None)


def test_a_streamed_manifest_s_options_are_read_before_the_rest_of_its_body(streamed: None) -> None:
    body = json.dumps({"options": OPTIONS, "images": [A] * 50_000}).encode()
    reader = Reader(body)
    started = read_manifest(reader)
    assert started.options == OPTIONS and reader.bytes_read < len(body)
    assert next(started.entries).url == A


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"images": ["%s"], "options": {"max_labels": 5}}' % A.encode(), "must come before"),
        (b'{"options": {}, "options": {"max_labels": 5}, "images": ["%s"]}' % A.encode(), "twice"),
        (b'{"options": {"x": [%s]}, "images": ["%s"]}' % (b",".join([b"1"] * 1000), A.encode()), "more than 1000"),
        (b'"%s"\n{"options": {"max_labels": 5}}\n' % A.encode(), "first line"),
    ],
)
def test_misplaced_or_oversized_options_are_refused_with_the_same_error_at_any_size(
    mode: str, body: bytes, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, entries, error = read(source_for(mode, body, monkeypatch))
    assert isinstance(error, ManifestOptionsInvalid) and words in error.message
    assert error.details["option"] == "options"
    assert len(entries) <= 1  # the entries before the error (a streamed reader cannot see ahead of them)


@pytest.mark.parametrize("mode", MODES)
def test_an_entry_carrying_options_is_rejected_never_labeled_without_them(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = json.dumps([{"url": A, "options": {"max_labels": 5}}, B]).encode()
    options, entries, error = read(source_for(mode, body, monkeypatch))
    assert (options, error) == (None, None)
    assert summary(entries) == [bad(0, "entry-0", A), ok(1, ID_B, B, False)]
    assert isinstance(entries[0], RejectedEntry) and "whole manifest" in entries[0].error.message


# --- s3:// entries: versionId ---------------------------------------------------------------------------
S3 = "s3://my-photos/2024/cat.jpg"
VERSION_FORMS = [
    ("list", json.dumps([{"url": S3, "id": "cat", "versionId": "v1"}, {"url": S3, "versionId": "v2"}, S3])),
    (
        "images",
        json.dumps({"images": [{"url": S3, "id": "cat", "versionId": "v1"}, {"url": S3, "versionId": "v2"}, S3]}),
    ),
    (
        "jsonl",
        "\n".join(
            json.dumps(v) for v in ({"url": S3, "id": "cat", "versionId": "v1"}, {"url": S3, "versionId": "v2"}, S3)
        ),
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("body", [f[1] for f in VERSION_FORMS], ids=[f[0] for f in VERSION_FORMS])
def test_an_s3_entry_s_version_in_every_form(mode: str, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entries, error = parse(source_for(mode, body.encode(), monkeypatch))
    assert error is None
    assert [(e.image_id, e.url, getattr(e, "version_id", "?")) for e in entries] == [
        ("cat", S3, "v1"),
        (derive_image_id(f"{S3}\nversionId=v2"), S3, "v2"),  # the version is part of a derived id
        (derive_image_id(S3), S3, None),  # a plain URL string names the current version
    ]


@pytest.mark.parametrize("mode", MODES)
def test_a_one_image_object_with_a_version(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"versionId": "v1", "url": S3, "id": "cat"}).encode()
    entries, error = parse(source_for(mode, body, monkeypatch))
    assert error is None and entries == [ManifestEntry(0, "cat", S3, version_id="v1")]


VERSION_RULES: list[tuple[str, Any, str]] = [
    ("number", {"url": S3, "versionId": 7}, "versionId must be a non-empty string, not '7'"),
    ("empty", {"url": S3, "versionId": ""}, "versionId must be a non-empty string"),
    ("blank", {"url": S3, "versionId": "  "}, "versionId must be a non-empty string"),
    ("object", {"url": S3, "versionId": {"id": "v1"}}, "versionId must be a non-empty string"),
    ("list", {"url": S3, "versionId": ["v1"]}, "versionId must be a non-empty string"),
    ("too long", {"url": S3, "versionId": "v" * 1025}, "not an S3 version id"),
    ("control character", {"url": S3, "versionId": "v\n1"}, "not an S3 version id"),
    ("on an http url", {"url": A, "versionId": "v1"}, "versionId applies to s3://bucket/key entries only"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("raw", "message"), [r[1:] for r in VERSION_RULES], ids=[r[0] for r in VERSION_RULES])
def test_version_rules(mode: str, raw: Any, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entries, error = parse(source_for(mode, json.dumps([raw, {"url": S3, "versionId": None}]).encode(), monkeypatch))
    assert error is None
    rejected, fine = entries
    assert isinstance(rejected, RejectedEntry) and type(rejected.error) is InvalidEntry
    assert message in rejected.error.message
    assert isinstance(fine, ManifestEntry) and fine.version_id is None  # null: the current version
