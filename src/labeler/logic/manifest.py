"""Parse a manifest, in every accepted form, into a lazy stream of entries.

:func:`parse_manifest` yields one :class:`ManifestEntry` (something to label) or
:class:`RejectedEntry` (an entry that is already known to fail) per entry of the manifest, in
order, as they are read. Problems of the whole manifest raise a :class:`ManifestError`
subclass, possibly after some entries were yielded: those stay valid (the report says
``partial``).

Accepted forms (docs/manifests-and-results.md):

* one object ``{"url": ..., "id": ...}``; a list of such objects, of URL strings, or both;
  ``{"images": [...]}`` (other top-level keys are ignored; ``images`` wins over ``url``; a second
  ``images`` key makes the manifest invalid);
* JSON Lines: one object or JSON string per line; blank lines (whitespace only, however long)
  skipped; CRLF fine. A body of a single value is that JSON document, not JSON Lines;
* a UTF-8 byte order mark; trailing commas; hand-written JavaScript style (unquoted keys,
  single quotes, comments) through ``json5``.

Options (how the images are labeled; checked against the stack's bounds by
:meth:`labeler.models.label_options.LabelOptions.for_manifest`, not here), known before the first
entry in every form, whatever the size, so that a streamed manifest labels every entry with them:

* an object manifest's top-level ``"options"`` key: before ``"images"`` (an ``"options"`` key met
  after ``"images"``, or twice, is ``manifest_options_invalid`` where it is met: read whole, before
  any entry; streamed, after the entries of ``images``), anywhere in a one-image ``{"url": ...}``;
* JSON Lines: a first line holding only ``{"options": ...}``; it is not an entry (numbering starts
  at the next line). Such a line later on is ``manifest_options_invalid`` where it is met;
* a list has no place for options. An entry (a list element, an ``images`` element, a JSON Lines
  line) that carries an ``"options"`` key is ``invalid_entry``: options apply to a whole manifest;
* at most ``MAX_OPTIONS_VALUES`` values in ``"options"`` (built in bounded memory when streamed).

:func:`read_manifest` returns the options and the entries; :func:`parse_manifest` the entries alone.

How a body is read:

* Leading whitespace is skipped as it is read (never buffered): a body of nothing but
  whitespace, however large, is ``manifest_empty`` in bounded memory.
* The answer for a body does not depend on its size, except that the lenient forms (trailing
  commas, JSON5) are only accepted where noted below.
* A body of at most ``SMALL_BODY_BYTES`` (8 MiB) is read whole and tried as strict JSON
  (up to ``MAX_TRAILING_COMMA_FIXES`` trailing commas removed where the JSON parser stops at
  them), then as JSON Lines (when its first line is a JSON object or string), then, up to
  ``JSON5_MAX_BYTES`` (128 KiB), as JSON5, whole or line by line. ``json5`` is pure Python
  and slow (about 50 µs per value), hence its smaller limit.
* A larger body is streamed strictly (no trailing commas, comments or JSON5), in bounded memory:
  a ``[`` body, or a ``{`` body whose first line is not a complete object (other than
  ``{"images": …}``), with ``ijson`` (the yajl C backend, entries reduced to their ``url``,
  ``id`` and ``versionId`` as they are read, nothing nested is built); anything else line by line
  as JSON Lines. There, yajl parses numbers itself: one beyond a 64-bit integer or a double,
  anywhere, is a syntax error.
  A syntax error found part-way comes after the entries before it.
* JSON Lines are read by one reader at any size: runs of blank lines are skipped at C speed,
  whitespace around a line's text is never buffered, and a line whose text is longer than
  ``MAX_LINE_BYTES`` (8 MiB) is a rejected entry, never buffered.
* Line and column numbers in messages count from the start of the body, skipped whitespace
  included.

Entries:

* ``index`` is the 0-based position of the entry in the manifest: the position in the list,
  or for JSON Lines the number of non-blank lines before it (messages name the 1-based line).
* ``url``: a non-empty string of at most 8,192 characters, stripped of surrounding whitespace;
  nothing more is checked here (the fetcher reports ``invalid_url``).
* ``id``: a non-empty string of at most 512 characters, or an integer (turned into its decimal
  string); ``null`` or absent means none: then the id is derived from the URL
  (:func:`~labeler.logic.keys.derive_image_id`, ``id_given=False``; for an entry with a ``versionId``,
  from the URL and the version, so two versions of one object are two entries).
* ``versionId`` (``s3://`` entries only): the S3 object version to label, a non-empty string of at
  most 1,024 characters; ``null`` or absent: the current version. On an ``http(s)`` entry, or of any
  other type, it makes the entry ``invalid_entry``. A plain URL string has no place for it.
* Anything else (a number, ``null``, a nested list, an object without a usable ``url`` or with a
  bad ``id``, a JSON Lines line that is not JSON) is a :class:`RejectedEntry` with
  ``invalid_entry``. Its ``image_id`` is its valid ``id`` when it has one, otherwise
  ``entry-<index>`` (``id_given=False``).
* Ids are unique per manifest: the first entry with an id wins, later ones are rejected with
  ``duplicate_id`` (``first_index`` in the error), even when they are broken otherwise; an
  entry rejected as invalid keeps its id taken. Two entries of the same URL without ids share
  the derived id: the later one is a duplicate. Generated ids (derived, ``entry-<index>``) never
  make a given id a duplicate: derived ids are kept apart from given ones, ``entry-<index>`` is
  kept nowhere (its record is keyed by position). Duplicates are found with tables of 16-byte
  BLAKE2b digests (about 50 bytes per id).
* ``id`` or ``url`` holding a lone surrogate (``"\\ud800"``) is invalid: no record could hold it
  (streamed, yajl has already turned it into ``?``).
* Repeated keys in one object: the last one wins, as with ``json``.

Whole-manifest errors: ``manifest_invalid`` (not UTF-8, with the byte offset; UTF-16/32, with or
without a byte order mark; syntax, with line and column when read whole, the byte reached when
streamed; nesting deeper than ``MAX_NESTING`` when streamed or than Python's ``json`` allows
otherwise; a top-level scalar, a lone JSON string included; an object with neither ``url``
nor ``images``; ``images`` not a list), ``manifest_empty`` (nothing but whitespace, ``[]``,
``{"images": []}``), ``manifest_too_large`` (counted while reading, raised by the first read
past ``max_bytes``; at once for ``bytes``), ``manifest_too_many_entries`` (when entry
``max_entries + 1`` is met; rejected entries count). When the source's ``read`` raises, that is not
the manifest's fault: :class:`~labeler.models.errors.ManifestReadInterrupted` (not a
``ManifestError``; the exception is the ``__cause__``) tells the caller to read it again later.

>>> [e.image_id for e in parse_manifest(b'[{"url": "https://example.com/a.jpg", "id": "a"}, "https://example.com/b.png"]')]
['a', 'url-200d8de414eb18988c84']
>>> next(parse_manifest(b"{ url: 'https://example.com/a.jpg', id: 7, }"))
ManifestEntry(index=0, image_id='7', url='https://example.com/a.jpg', id_given=True, version_id=None)
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any, BinaryIO

from labeler.logic.keys import derive_image_id
from labeler.logic.s3_sources import is_s3_url, version_problem
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

SMALL_BODY_BYTES = 8 * 1024 * 1024  # read whole (lenient forms) up to this size; stream beyond
JSON5_MAX_BYTES = 128 * 1024  # json5 is pure Python: only small, hand-written bodies
MAX_LINE_BYTES = 8 * 1024 * 1024  # a longer JSON Lines line (streamed) is a rejected entry
FIRST_LINE_LOOKAHEAD_BYTES = 64 * 1024  # a large "{" body is JSON Lines if its first line is an object
IJSON_READ_BYTES = 16 * 1024  # ijson lists the events of each read: small reads, short lists
MAX_NESTING = 512  # arrays/objects nested deeper refuse a streamed manifest
MAX_TRAILING_COMMA_FIXES = 64
MAX_URL_CHARS = 8192
MAX_ID_CHARS = 512
READ_CHUNK_BYTES = 256 * 1024

_JSON_WHITESPACE = b" \t\r\n"
_JSON_WHITESPACE_STR = " \t\r\n"
_NON_BLANK = re.compile(rb"[^ \t\r\n]")
# "options" is kept only so that an entry carrying it can be refused (options belong to a manifest).
VERSION_KEY = "versionId"  # an s3:// entry's object version (the S3 API's spelling, as submit --prefix writes it)
_ENTRY_KEYS = ("url", "id", VERSION_KEY, "options")
OPTIONS_KEY = "options"
MAX_OPTIONS_VALUES = 1000  # values (scalars and containers) an "options" object may hold: ~400 when full
OPTIONS_AFTER_IMAGES = (
    '"options" must come before "images" (the entries are labeled as they are read, with the options '
    "known by then); write the options first"
)
_STARTS = frozenset(("start_map", "start_array"))
_ENDS = frozenset(("end_map", "end_array"))
_MISSING: Any = object()


# --- reading ------------------------------------------------------------------------------------
class _Body:
    """The source, read in chunks: counts bytes, checks UTF-8 as it goes, wraps I/O errors."""

    def __init__(self, source: bytes | bytearray | memoryview | BinaryIO, max_bytes: int) -> None:
        if isinstance(source, bytes | bytearray | memoryview):
            size = memoryview(source).nbytes
            if size > max_bytes:
                raise ManifestTooLarge(
                    f"the manifest is larger than {max_bytes} bytes ({size} bytes)", max_bytes=max_bytes
                )
            view = memoryview(source).cast("B")
            self._view: memoryview | None = view
            self._read = None
        elif callable(getattr(source, "read", None)):
            self._view = None
            self._read = source.read
        else:
            raise TypeError(f"a manifest is bytes or a binary file-like object, not {type(source).__name__}")
        self.max_bytes = max_bytes
        self.offset = 0  # bytes read so far
        self.eof = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def _raw_read_after(self, pending: int) -> bytes:
        """The next raw chunk when ``pending`` bytes were read but not counted yet."""
        self.offset += pending
        try:
            return self._raw_read()
        finally:
            self.offset -= pending

    def _raw_read(self) -> bytes:
        if self._view is not None:
            return bytes(self._view[self.offset : self.offset + READ_CHUNK_BYTES])
        assert self._read is not None
        try:
            data = self._read(READ_CHUNK_BYTES)
        except ManifestError:
            raise
        except Exception as exc:  # a broken stream is not the manifest's fault: the retry reads it again
            raise ManifestReadInterrupted(
                f"reading the manifest failed after {self.offset} bytes: {type(exc).__name__}: {exc}"[:1000]
            ) from exc
        if data is None:  # a non-blocking stream with nothing yet: botocore never does this
            raise ManifestReadInterrupted(f"the manifest stream returned no data after {self.offset} bytes")
        return bytes(data)

    def read(self) -> bytes:
        """The next chunk (``b""`` at the end), counted and checked."""
        if self.eof:
            return b""
        data = self._raw_read()
        if self.offset == 0:  # the first bytes: enough of them to recognise UTF-16/32 before checking UTF-8
            while 0 < len(data) < 4 and (more := self._raw_read_after(len(data))):
                data += more
            _check_start(data)
        if not data:
            self.eof = True
            self._check_utf8(b"", final=True)
            return b""
        if self.offset + len(data) > self.max_bytes:
            raise ManifestTooLarge(f"the manifest is larger than {self.max_bytes} bytes", max_bytes=self.max_bytes)
        self._check_utf8(data, final=False)
        self.offset += len(data)
        return data

    def _check_utf8(self, data: bytes, *, final: bool) -> None:
        pending = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            position = self.offset - pending + exc.start
            raise _not_utf8(exc, position) from None


def _not_utf8(exc: UnicodeDecodeError, position: int) -> ManifestInvalid:
    bad = exc.object[exc.start : exc.start + 1]
    what = f"byte 0x{bad[0]:02x}" if bad else "a truncated character"
    return ManifestInvalid(
        f"the manifest is not UTF-8: {what} at byte {position} ({exc.reason}); save it as UTF-8", byte=position
    )


_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def _check_start(head: bytes) -> None:
    """Refuse UTF-16/32 (with or without a byte order mark): the first character of JSON text is ASCII."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            raise ManifestInvalid(
                f"the manifest is {name} (it starts with a {name} byte order mark): save it as UTF-8",
                encoding=name.lower(),
            )
    if len(head) >= 2 and (head[0] == 0 or head[1] == 0):
        raise ManifestInvalid(
            "the manifest looks like UTF-16 or UTF-32 (NUL bytes at its start): save it as UTF-8",
            encoding="utf-16/32",
        )


@dataclass(frozen=True)
class _Origin:
    """Where the text after the skipped leading whitespace starts: line and column offsets for messages."""

    lines: int = 0  # line breaks skipped
    columns: int = 0  # characters skipped after the last of them

    def position(self, line: int, column: int) -> tuple[int, int]:
        """The position in the body of a 1-based (line, column) of the text after the whitespace."""
        return line + self.lines, column + self.columns if line == 1 else column

    def after(self, skipped: bytes) -> _Origin:
        breaks = skipped.count(b"\n")
        if breaks:
            return _Origin(self.lines + breaks, len(skipped) - skipped.rfind(b"\n") - 1)
        return _Origin(self.lines, self.columns + len(skipped))


class _Stream:
    """A file-like over some already read chunks, then the rest of the body (what ijson reads from).

    ``read(size)`` returns at most ``size`` bytes: ijson turns each read into a list of events,
    so a small ``size`` bounds that list (a chunk of ``[`` is one event per byte).
    """

    def __init__(self, chunks: list[bytes], body: _Body) -> None:
        self._chunks = chunks
        self._chunks.reverse()
        self._body = body
        self._current = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        if not self._current:
            chunk = self._chunks.pop() if self._chunks else self._body.read()
            if size < 0 or len(chunk) <= size:
                return chunk
            self._current = memoryview(chunk)
        size = len(self._current) if size < 0 else size
        piece, self._current = self._current[:size], self._current[size:]
        return bytes(piece)

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.read():
            yield chunk


# --- options -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _OptionsFound:
    """The manifest's ``"options"`` value, as read: produced before the first entry, never counted as one."""

    value: Any


class _TopLevelKeys:
    """The rules for a manifest object's top-level keys, whoever reads them (whole or streamed), in order."""

    def __init__(self) -> None:
        self.images = False
        self.options = False

    def see(self, key: Any) -> None:
        if key == "images":
            if self.images:
                raise ManifestInvalid('"images" appears twice in the manifest')
            self.images = True
        elif key == OPTIONS_KEY:
            if self.options:
                raise ManifestOptionsInvalid('"options" appears twice in the manifest', option=OPTIONS_KEY)
            if self.images:
                raise ManifestOptionsInvalid(OPTIONS_AFTER_IMAGES, option=OPTIONS_KEY)
            self.options = True


def _too_many_options() -> ManifestOptionsInvalid:
    return ManifestOptionsInvalid(f'"options" holds more than {MAX_OPTIONS_VALUES} values', option=OPTIONS_KEY)


def _check_options_size(value: Any) -> None:
    """Refuse an ``"options"`` value of more than ``MAX_OPTIONS_VALUES`` values (as the streamed reader does)."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_OPTIONS_VALUES:
            raise _too_many_options()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _is_options_line(value: Any) -> bool:
    """A JSON Lines line holding only ``{"options": ...}``: the manifest's options, not an entry."""
    return isinstance(value, dict) and len(value) == 1 and OPTIONS_KEY in value


# --- entries -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _BadLine:
    """A JSON Lines line that is not an entry at all (not JSON, too long)."""

    message: str
    line: int


class _IdTable:
    """The ids seen so far and the index of the first entry with each: 16-byte BLAKE2b digests.

    An open-addressing hash table (linear probing, at most half full) in one ``bytearray`` of
    22-byte slots: the digest, then ``index + 1`` in 6 bytes (0: empty). About 50 bytes per id,
    against about 130 for a ``dict`` of ``bytes`` to ``int``: 1,000,000 ids fit in ~50 MB.
    """

    _SLOT = 22
    _EMPTY = bytes(6)

    def __init__(self, capacity: int = 1 << 14) -> None:
        self._mask = capacity - 1
        self._table = bytearray(capacity * self._SLOT)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, image_id: str, index: int) -> int | None:
        """Remember ``image_id`` as first seen at ``index``; if it was seen before, return that index instead."""
        digest = hashlib.blake2b(image_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        table, mask, slot, empty = self._table, self._mask, self._SLOT, self._EMPTY
        position = int.from_bytes(digest, "little") & mask
        while True:
            offset = position * slot
            if table.startswith(empty, offset + 16, offset + slot):
                break
            if table.startswith(digest, offset, offset + 16):
                return int.from_bytes(table[offset + 16 : offset + slot], "little") - 1
            position = (position + 1) & mask
        table[offset : offset + slot] = digest + (index + 1).to_bytes(6, "little")
        self._count += 1
        if self._count * 2 > mask:
            self._grow()
        return None

    def _grow(self) -> None:
        old, slot, empty = self._table, self._SLOT, self._EMPTY
        mask = self._mask * 2 + 1
        table = bytearray((mask + 1) * slot)
        for start in range(0, len(old), slot):
            if old.startswith(empty, start + 16, start + slot):
                continue
            position = int.from_bytes(old[start : start + 16], "little") & mask
            while not table.startswith(empty, position * slot + 16, position * slot + slot):
                position = (position + 1) & mask
            table[position * slot : position * slot + slot] = old[start : start + slot]
        self._table, self._mask = table, mask


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _unicode_ok(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): it could not even be written to a record
        return False
    return True


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _check_url(raw: Any) -> tuple[str | None, str | None]:
    """(the usable URL, None) or (what to record as the URL, the problem)."""
    if raw is _MISSING:
        return None, "the entry has no url"
    if not isinstance(raw, str):
        return None, f"url must be a string, not {_type_name(raw)}"
    url = raw.strip()
    if not url:
        return url, "url is empty"
    if len(url) > MAX_URL_CHARS:
        return _printable(url[:MAX_URL_CHARS]), f"url is longer than {MAX_URL_CHARS} characters ({len(url)})"
    if not _unicode_ok(url):
        return _printable(url), "url is not valid Unicode (it holds a lone surrogate)"
    return url, None


def _check_id(raw: Any) -> tuple[str | None, str | None]:
    """(the id or None when there is none, None) or (None, the problem)."""
    if raw is _MISSING or raw is None:
        return None, None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        return None, f"id must be a string or an integer, not {_type_name(raw)}"
    image_id = str(raw) if isinstance(raw, int) else raw
    if not image_id:
        return None, "id is empty"
    if len(image_id) > MAX_ID_CHARS:
        return None, f"id is longer than {MAX_ID_CHARS} characters ({len(image_id)})"
    if not _unicode_ok(image_id):
        return None, "id is not valid Unicode (it holds a lone surrogate)"
    return image_id, None


def _check_version(raw: Any, url: str | None) -> tuple[str | None, str | None]:
    """(the entry's ``versionId`` or None, None) or (None, the problem)."""
    if raw is None:
        return None, None
    problem = version_problem(raw)
    if problem is None and not _unicode_ok(raw):
        problem = "versionId is not valid Unicode (it holds a lone surrogate)"
    if problem is None and url is not None and not is_s3_url(url):
        problem = "versionId applies to s3://bucket/key entries only"
    return (None, problem) if problem else (raw, None)


class _Entries:
    """Turns raw values into entries: numbering, the entry rules, the id tables, the entry limit."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.count = 0
        # Given ids and ids derived from URLs are apart: a derived id never makes a given one a duplicate.
        self._given = _IdTable()
        self._derived = _IdTable()

    def make(self, raw: Any) -> ManifestEntry | RejectedEntry:
        index = self.count
        if index >= self.max_entries:
            raise ManifestTooManyEntries(
                f"the manifest has more than {self.max_entries} entries", max_entries=self.max_entries
            )
        self.count += 1

        url: str | None = None
        image_id: str | None = None
        version_id: str | None = None
        problem: str | None = None
        details: dict[str, Any] = {}
        if isinstance(raw, _BadLine):
            problem, details = raw.message, {"line": raw.line}
        elif isinstance(raw, str):
            url, problem = _check_url(raw)
        elif isinstance(raw, dict):
            url, problem = _check_url(raw.get("url", _MISSING))
            image_id, id_problem = _check_id(raw.get("id", _MISSING))
            version_id, version_problem = _check_version(raw.get(VERSION_KEY), url)
            problem = problem or id_problem or version_problem
            if OPTIONS_KEY in raw:  # never silently ignored: the entry would be labeled without them
                problem = (
                    'an entry cannot carry "options": they apply to a whole manifest '
                    '({"options": ..., "images": [...]}, or a first JSON Lines line holding only "options")'
                )
        else:
            problem = f"the entry is {_type_name(raw)}, not an object or a URL string"

        id_given = image_id is not None
        if image_id is None and problem is None and url is not None:
            # Two versions of one object are two images: the version is part of the derived id.
            image_id = derive_image_id(url if version_id is None else f"{url}\n{VERSION_KEY}={version_id}")
        if image_id is not None:
            first = (self._given if id_given else self._derived).add(image_id, index)
            if first is not None:
                return RejectedEntry(
                    index=index,
                    image_id=image_id,
                    url=url,
                    error=DuplicateId(
                        f"duplicate id {_printable(image_id)[:100]!r}: entry {first} has it already (the first wins)",
                        first_index=first,
                    ),
                    id_given=id_given,
                )
        if problem is not None:
            # A made-up id takes no one's place: it is in no table, and its key is its own (keys.entry_key).
            return RejectedEntry(
                index=index,
                image_id=image_id if image_id is not None else f"entry-{index}",
                url=url,
                error=InvalidEntry(problem, **details),
                id_given=id_given,
            )
        assert url is not None and image_id is not None
        return ManifestEntry(index=index, image_id=image_id, url=url, id_given=id_given, version_id=version_id)

    def all(self, raws: Iterable[Any]) -> Iterator[ManifestEntry | RejectedEntry | _OptionsFound]:
        for raw in raws:
            if isinstance(raw, _OptionsFound):  # the readers produce it before any entry
                yield raw
                continue
            yield self.make(raw)
        if self.count == 0:
            raise ManifestEmpty("the manifest has no entries")


# --- small bodies: read whole, every form --------------------------------------------------------
def _syntax_error(exc: json.JSONDecodeError, origin: _Origin, hint: str = "") -> ManifestInvalid:
    line, column = origin.position(exc.lineno, exc.colno)
    return ManifestInvalid(
        f"the manifest is not valid JSON: {exc.msg} at line {line}, column {column}{hint}", line=line, column=column
    )


def _too_deep() -> ManifestInvalid:
    return ManifestInvalid("the manifest is nested too deeply to be a manifest")


def _without_trailing_comma(text: str, exc: json.JSONDecodeError) -> str | None:
    """``text`` without the trailing comma ``json`` stopped at, or None if that is not what it stopped at."""
    pos = exc.pos
    if pos >= len(text):
        return None
    if text[pos] in "]}":  # Python ≤ 3.12: the error is at the closing bracket
        comma = pos - 1
        while comma >= 0 and text[comma] in _JSON_WHITESPACE_STR:
            comma -= 1
        if comma < 0 or text[comma] != ",":
            return None
    elif text[pos] == ",":  # Python ≥ 3.13: "Illegal trailing comma", at the comma
        after = pos + 1
        while after < len(text) and text[after] in _JSON_WHITESPACE_STR:
            after += 1
        if after >= len(text) or text[after] not in "]}":
            return None
        comma = pos
    else:
        return None
    return text[:comma] + " " + text[comma + 1 :]  # a space: lines and columns of later errors stay right


def _loads_strict(text: str, **options: Any) -> Any:
    """``json.loads``, forgiving trailing commas (where the JSON parser itself finds them)."""
    for _ in range(MAX_TRAILING_COMMA_FIXES + 1):
        try:
            return json.loads(text, **options)
        except json.JSONDecodeError as exc:
            fixed = _without_trailing_comma(text, exc)
            if fixed is None:
                raise
            text = fixed
    return json.loads(text, **options)


def _top_level_keys(text: str) -> list[str]:
    """The keys of the top-level object of ``text`` (valid, strict JSON) in order, repeated ones included."""
    last: list[list[str]] = [[]]

    def keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        last[0] = [key for key, _ in pairs]  # the top-level object closes last
        return dict(pairs)

    _loads_strict(text, object_pairs_hook=keys)
    return last[0]


def _loads_line(line: str, lenient: bool) -> Any:
    """One JSON Lines line: strict JSON, or JSON5 when ``lenient``. Raises ValueError."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        if not lenient:
            raise
        strict = exc
    try:
        import json5  # lazy: only hand-written manifests need it, and the handler must import fast

        return json5.loads(line)
    except Exception:  # json5's ValueError, RecursionError...: JSON's own message is the clearer one
        raise strict from None


def _line_error(number: int, exc: ValueError) -> _BadLine:
    reason = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
    return _BadLine(f"line {number} is not valid JSON: {reason[:200]}", number)


def _first_line_value(text: str, lenient: bool) -> Any:
    """The value of the first line of ``text`` (which starts with something other than whitespace)."""
    try:
        return _loads_line(text.split("\n", 1)[0], lenient)
    except ValueError:
        return _MISSING


def _is_jsonl_start(value: Any) -> bool:
    return isinstance(value, dict | str)


def _top_values(value: Any, keys: Iterable[str] | None = None) -> Iterable[Any]:
    """The raw entries of a parsed JSON document, its ``"options"`` first (as :class:`_OptionsFound`).

    ``keys``: the top-level object's keys as written, repeats included, when they may differ from
    the parsed object's (a key given twice); they are checked as the streamed reader checks them.
    """
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        rules = _TopLevelKeys()
        for key in value if keys is None else keys:
            rules.see(key)
        found: list[Any] = []
        if OPTIONS_KEY in value:
            _check_options_size(value[OPTIONS_KEY])
            found.append(_OptionsFound(value[OPTIONS_KEY]))
        if "images" in value:
            images = value["images"]
            if not isinstance(images, list):
                raise ManifestInvalid(f'"images" must be a list, not {_type_name(images)}')
            return [*found, *images] if found else images
        if "url" in value:  # one image: the object is the manifest and its only entry
            return [*found, {key: item for key, item in value.items() if key != OPTIONS_KEY}]
        raise ManifestInvalid('a manifest object needs "url" (one image) or "images" (a list of them)')
    raise ManifestInvalid(
        f"the manifest is {_type_name(value)}: it must be an object, a list or JSON Lines of objects or URLs"
    )


def _small_values(data: bytes, origin: _Origin) -> Iterable[Any]:
    """Every accepted form, for a body read whole (no BOM, no leading whitespace)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # _Body checked already; kept for direct callers
        raise _not_utf8(exc, exc.start) from None
    lenient = len(data) <= JSON5_MAX_BYTES
    try:
        value = _loads_strict(text)
        # A key given twice is refused as when streamed (where the first list is gone by the second key).
        keys = None
        if isinstance(value, dict) and (text.count('"images"') > 1 or text.count(f'"{OPTIONS_KEY}"') > 1):
            keys = _top_level_keys(text)
        return _top_values(value, keys)
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as exc:
        strict_error = exc
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ManifestInvalid(f"the manifest is not valid JSON: {str(exc)[:200]}") from None

    if _is_jsonl_start(_first_line_value(text, lenient=False)):
        return _jsonl_values([data], lenient, origin)
    if not lenient:
        raise _syntax_error(
            strict_error, origin, hint=f" (neither JSON Lines; JSON5 is only accepted up to {JSON5_MAX_BYTES} bytes)"
        )
    try:
        import json5  # lazy, see above

        value = json5.loads(text)
    except RecursionError:
        raise _too_deep() from None
    except Exception:  # json5 raises ValueError, but any failure here just means "not JSON5"
        value = _MISSING
    if value is not _MISSING:
        return _top_values(value)
    if _is_jsonl_start(_first_line_value(text, lenient=True)):
        return _jsonl_values([data], True, origin)
    raise _syntax_error(strict_error, origin, hint=" (nor JSON Lines, nor JSON5)")


# --- JSON Lines, any size ------------------------------------------------------------------------------
def _lines(chunks: Iterable[bytes], first_number: int = 1) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) of every line of a stream of chunks that holds more than whitespace.

    Blank lines are skipped at C speed (a regular-expression search and a count per run of them,
    never a Python step per line), and whitespace before a line's first character or after its
    last is never buffered: only the text between them counts against ``MAX_LINE_BYTES``; a line
    whose text is longer is ``None``.
    """
    number = first_number
    pending = bytearray()  # the current line from its first character, while it spans chunks
    started = False  # the current line has a character other than whitespace
    overflow = False  # ... and its text is longer than MAX_LINE_BYTES
    cut = False  # whitespace after its text was dropped (any more text makes it too long)
    for chunk in chunks:
        position, size = 0, len(chunk)
        while position < size:
            if not started:
                found = _NON_BLANK.search(chunk, position)
                if found is None:
                    number += chunk.count(b"\n", position)
                    break
                number += chunk.count(b"\n", position, found.start())
                position, started = found.start(), True
            end = chunk.find(b"\n", position)
            stop = size if end < 0 else end
            if end >= 0 and not pending and not overflow and stop - position <= MAX_LINE_BYTES:
                line: bytes | None = chunk[position:stop]  # the common case: the whole line in this chunk
            else:
                if overflow:
                    pass
                elif cut:
                    overflow = _NON_BLANK.search(chunk, position, stop) is not None
                else:
                    pending += chunk[position:stop]
                    if len(pending) > MAX_LINE_BYTES:
                        text = len(pending.rstrip(_JSON_WHITESPACE))
                        overflow, cut = text > MAX_LINE_BYTES, True
                        del pending[text:]
                if end < 0:
                    break
                line = None if overflow else bytes(pending)
            yield number, line
            number, position = number + 1, end + 1
            pending.clear()
            started = overflow = cut = False
    if started:
        yield number, None if overflow else bytes(pending)


def _jsonl_values(chunks: Iterable[bytes], lenient: bool, origin: _Origin) -> Iterator[Any]:
    """The values of the lines of a JSON Lines body (its first line must be an object or a string).

    The same reader for every size (``lenient``, JSON5 per line, only for small bodies). A body of
    one value is that JSON document, whatever its size: one object without ``url`` is
    ``manifest_invalid``, as when it is parsed whole.
    """
    first: list[Any] = []  # the first value, held until a second one shows the body is JSON Lines
    seen = 0
    for number, line in _lines(chunks, first_number=1 + origin.lines):
        if line is None:
            value: Any = _BadLine(f"line {number} is longer than {MAX_LINE_BYTES} bytes", number)
        else:
            try:
                value = _loads_line(line.decode("utf-8"), lenient)
            except ValueError as exc:
                value = _line_error(number, exc)
        seen += 1
        if seen == 1:
            if not _is_jsonl_start(value):
                raise ManifestInvalid(
                    f"line {number} of the manifest is neither a JSON object nor a URL string "
                    f"(manifests over {SMALL_BODY_BYTES} bytes must be strict JSON or JSON Lines)",
                    line=number,
                )
            first.append(value)
            continue
        if first:
            held = first.pop()
            if _is_options_line(held):  # JSON Lines: the first line may hold only the manifest's options
                _check_options_size(held[OPTIONS_KEY])
                yield _OptionsFound(held[OPTIONS_KEY])
            else:
                yield held
        if _is_options_line(value):
            raise ManifestOptionsInvalid(
                f'line {number} holds "options": in JSON Lines they must be the first line, before any entry',
                option=OPTIONS_KEY,
                line=number,
            )
        yield value
    if first:  # one value and nothing else: a JSON document, as when read whole
        yield from _top_values(first[0])


# --- large bodies: streamed, strict -------------------------------------------------------------------
def _skip(events: Iterator[tuple[str, Any]], depth: int) -> None:
    """Consume the rest of a container opened at nesting ``depth``."""
    level = 0
    for event, _ in events:
        if event in _STARTS:
            level += 1
            if depth + level > MAX_NESTING:
                raise ManifestInvalid(f"the manifest is nested more than {MAX_NESTING} levels deep")
        elif event in _ENDS:
            if level == 0:
                return
            level -= 1


def _element(events: Iterator[tuple[str, Any]], event: str, value: Any, depth: int) -> Any:
    """One value at nesting ``depth``: a scalar as is; an object reduced to its entry keys; a list as ``[]``.

    Nothing nested is built, so a huge or deep entry costs no memory (containers under ``url``,
    ``id`` or ``versionId`` stand as ``{}`` / ``[]``: only their type matters).
    """
    if event == "start_array":
        _skip(events, depth + 1)
        return []
    if event != "start_map":
        return value
    entry: dict[str, Any] = {}
    key = None
    for event, value in events:
        if event == "map_key":
            key = value
        elif event == "end_map":
            return entry
        elif event in _STARTS:
            if depth + 2 > MAX_NESTING:
                raise ManifestInvalid(f"the manifest is nested more than {MAX_NESTING} levels deep")
            _skip(events, depth + 2)
            if key in _ENTRY_KEYS:
                entry[key] = {} if event == "start_map" else []
        elif key in _ENTRY_KEYS:
            entry[key] = value
    return entry  # unreachable: ijson raises on a truncated document first


def _streamed_json(events: Iterator[tuple[str, Any]]) -> Iterator[Any]:
    event, _ = next(events)
    if event == "start_array":
        for event, value in events:
            if event == "end_array":
                break
            yield _element(events, event, value, 1)
    else:  # start_map: one entry, or {"images": [...]}
        yield from _streamed_object(events)
    for _ in events:  # ijson raises on anything after the document
        pass


def _streamed_object(events: Iterator[tuple[str, Any]]) -> Iterator[Any]:
    fields: dict[str, Any] = {}
    rules = _TopLevelKeys()
    key = None
    for event, value in events:
        if event == "end_map":
            break
        if event == "map_key":
            key = value
            rules.see(key)
            continue
        if key == "images":
            yield from _streamed_images(events, event, value)
        elif key == OPTIONS_KEY:
            yield _OptionsFound(_streamed_value(events, event, value))
        elif key in _ENTRY_KEYS:
            fields[key] = _element(events, event, value, 1)
        elif event in _STARTS:
            _skip(events, 2)
    if rules.images:
        return
    if "url" not in fields:
        raise ManifestInvalid('a manifest object needs "url" (one image) or "images" (a list of them)')
    yield fields


def _streamed_value(events: Iterator[tuple[str, Any]], event: str, value: Any) -> Any:
    """One whole value (the manifest's ``"options"``), built without recursion, of ``MAX_OPTIONS_VALUES`` at most."""
    if event not in _STARTS:
        return value
    root: Any = {} if event == "start_map" else []
    stack: list[tuple[Any, Any]] = [(root, None)]  # (container, its pending key)
    count = 1
    for event, value in events:
        container, key = stack[-1]
        if event == "map_key":
            stack[-1] = (container, value)
            continue
        if event in _ENDS:
            stack.pop()
            if not stack:
                return root
            continue
        count += 1
        if count > MAX_OPTIONS_VALUES:
            raise _too_many_options()
        item: Any = ({} if event == "start_map" else []) if event in _STARTS else value
        if isinstance(container, dict):
            container[key] = item
        else:
            container.append(item)
        if event in _STARTS:
            stack.append((item, None))
    return root  # unreachable: ijson raises on a truncated document first


def _streamed_images(events: Iterator[tuple[str, Any]], event: str, value: Any) -> Iterator[Any]:
    """The elements of the value of the top-level ``images`` key, which must be a list."""
    if event != "start_array":
        shown = _type_name(_element(events, event, value, 1))
        raise ManifestInvalid(f'"images" must be a list, not {shown}')
    for event, value in events:
        if event == "end_array":
            return
        yield _element(events, event, value, 2)


def _ijson_values(stream: _Stream, body: _Body) -> Iterator[Any]:
    """The raw entries of a streamed JSON document; ijson's errors become ManifestInvalid."""
    # use_float: yajl itself parses numbers, and refuses those beyond 64-bit integers or doubles
    # ("integer overflow"). Without it, ijson hands a 5,000-digit integer to int(), whose
    # ValueError it mishandles (SystemError, even a segmentation fault in ijson 3.6).
    import ijson  # lazy: only large manifests are streamed

    events = iter(ijson.basic_parse(stream, use_float=True, buf_size=IJSON_READ_BYTES))
    values = _streamed_json(events)
    while True:
        try:
            value = next(values)
        except StopIteration:
            return
        except ManifestError:
            raise
        except Exception as exc:  # ijson.JSONError (IncompleteJSONError), or anything else ijson raises
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ManifestInvalid(
                f"the manifest is not valid JSON: {reason[:200]} (before byte {body.offset})", byte=body.offset
            ) from None
        yield value


def _first_line_is_object(chunks: list[bytes], body: _Body) -> bool:
    """Whether the first line of a large ``{`` body is a complete JSON object, and not a wrapper.

    Then the body is JSON Lines; otherwise (``{`` alone on its line, ``{"images": [...]}`` then a
    line break, no line break within the look-ahead) it is one JSON document. The look-ahead is
    what is buffered already (``SMALL_BODY_BYTES``), at least ``FIRST_LINE_LOOKAHEAD_BYTES``:
    more is read into ``chunks`` if needed.
    """
    lookahead = max(SMALL_BODY_BYTES, FIRST_LINE_LOOKAHEAD_BYTES)
    parts: list[bytes] = []
    size, i = 0, 0
    while True:
        if i == len(chunks):
            if size >= lookahead or not (more := body.read()):
                return False
            chunks.append(more)
        chunk = chunks[i]
        i += 1
        end = chunk.find(b"\n")
        if end >= 0:
            parts.append(chunk[:end])
            break
        parts.append(chunk)
        size += len(chunk)
    try:
        value = json.loads(b"".join(parts).decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and "images" not in value


# --- entry point ------------------------------------------------------------------------------------
def _start(body: _Body) -> tuple[bytes, _Origin]:
    """The body from its first character other than whitespace (``b""`` if none), and where that is.

    The whitespace is dropped as it is read, never kept.
    """
    head = body.read()
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    origin = _Origin()
    while True:
        rest = head.lstrip(_JSON_WHITESPACE)
        origin = origin.after(head[: len(head) - len(rest)])
        if rest:
            return rest, origin
        head = body.read()
        if not head:
            return b"", origin


def parse_manifest(
    source: bytes | BinaryIO, *, max_bytes: int = 1 << 30, max_entries: int = 1_000_000
) -> Iterator[ManifestEntry | RejectedEntry]:
    """Yield the entries of the manifest in ``source`` (bytes, or a binary file-like such as botocore's
    ``StreamingBody``), lazily, in order. See the module documentation for the forms and rules.

    Raises :class:`ManifestError` subclasses, possibly after entries were yielded. The manifest's
    ``"options"`` are read but not returned: :func:`read_manifest` returns them.
    """
    for item in _items(source, max_bytes, max_entries):
        if not isinstance(item, _OptionsFound):
            yield item


@dataclass
class ReadManifest:
    """A manifest being read: its raw ``"options"`` (``None`` without any), known before any entry, and its entries."""

    options: Any
    entries: Iterator[ManifestEntry | RejectedEntry]


def read_manifest(source: bytes | BinaryIO, *, max_bytes: int = 1 << 30, max_entries: int = 1_000_000) -> ReadManifest:
    """Start reading a manifest: its options at once, its entries lazily (as :func:`parse_manifest` yields them).

    Reads up to the first entry (the options come before it in every form), so a manifest broken
    before its first entry raises :class:`ManifestError` here. The options are returned as written;
    :meth:`labeler.models.label_options.LabelOptions.for_manifest` checks them.

    >>> read = read_manifest(b'{"options": {"max_labels": 5}, "images": ["https://example.com/a.jpg"]}')
    >>> read.options, [entry.index for entry in read.entries]
    ({'max_labels': 5}, [0])
    """
    items = _items(source, max_bytes, max_entries)
    first = next(items, None)
    if isinstance(first, _OptionsFound):
        return ReadManifest(first.value, items)  # type: ignore[arg-type]  # no other options follow
    ahead: Iterator[Any] = iter(()) if first is None else iter((first,))
    return ReadManifest(None, chain(ahead, items))


def _items(
    source: bytes | BinaryIO, max_bytes: int, max_entries: int
) -> Iterator[ManifestEntry | RejectedEntry | _OptionsFound]:
    """The entries of the manifest, preceded by its options when it has some."""
    body = _Body(source, max_bytes)
    entries = _Entries(max_entries)
    head, origin = _start(body)
    if not head:
        raise ManifestEmpty("the manifest is empty (nothing but whitespace)")
    chunks, size = [head], len(head)
    while size <= SMALL_BODY_BYTES and (chunk := body.read()):
        chunks.append(chunk)
        size += len(chunk)
    if size <= SMALL_BODY_BYTES:
        data = b"".join(chunks)
        del chunks, head
        values = _small_values(data, origin)
        del data  # the parsed values (or lines) are all that is kept
        yield from entries.all(values)
        return

    first = head[:1]
    del head
    as_json = first == b"[" or (first == b"{" and not _first_line_is_object(chunks, body))
    stream = _Stream(chunks, body)  # takes the buffered chunks over, releasing each once read
    del chunks
    if as_json:
        yield from entries.all(_ijson_values(stream, body))
    else:
        yield from entries.all(_jsonl_values(stream.chunks(), False, origin))
