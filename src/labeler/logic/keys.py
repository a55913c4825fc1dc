"""Image ids and the S3 keys of everything the labeler writes. Pure functions: no AWS, no clock, no randomness.

Layout of the output bucket::

    results/<manifest-slug>/<id>.json            one record per manifest entry with an id of its own
    results/<manifest-slug>/~<id>.json           ... whose id was generated (derived from its URL)
    results/<manifest-slug>/<id>~dup<index>.json the record of a rejected entry (a repeated id, a bad shape)
    reports/<manifest-slug>.json                 one report per manifest
    cache/…  state/…                             label cache, run state (see cache.py)

Guarantees (tested in ``tests/unit/test_keys.py``):

* **deterministic**: the same manifest and id always give the same key, so a re-run overwrites
  instead of duplicating;
* **injective**: different ids (or manifests) give different keys. Ids are percent-encoded byte
  by byte, which is reversible; ``~`` is never produced by the encoding, so it is free to mark
  what is *not* the id itself (``~<hash>`` after a shortened text, ``~dup<n>``, ``~empty``, and a
  leading ``~`` for a generated id, so that it never takes the key of a user's id of the same
  text); only shortened texts rely on a hash (64 bits of SHA-256);
* **contained**: whatever an id holds (``../``, ``/``, NUL, newlines, RTL marks, 10,000
  characters), it stays one path segment under its manifest's prefix, never ``.`` or ``..``;
* **bounded**: every key is at most 1,024 bytes of UTF-8 (the S3 limit), whatever the bucket,
  manifest key or id;
* **non-overlapping prefixes**: the last segment of a manifest slug always ends in ``~<hash>``,
  which no directory segment of another slug can end in, so ``results/<slug>/`` lists the
  records of exactly one manifest (``a.json`` and ``a.json/b.json`` never share a prefix).

>>> m = ManifestRef("my-input", "manifests/cats.json")
>>> result_key(m, "cat-1")
'results/my-input/manifests/cats.json~18d58565eadf85a4/cat-1.json'
>>> report_key(m)
'reports/my-input/manifests/cats.json~18d58565eadf85a4.json'
>>> result_key(m, "../../etc/passwd")
'results/my-input/manifests/cats.json~18d58565eadf85a4/..%2F..%2Fetc%2Fpasswd.json'
>>> result_key(m, "cat-1", duplicate_index=7)
'results/my-input/manifests/cats.json~18d58565eadf85a4/cat-1~dup7.json'
>>> result_key(m, "url-777460dbe029a0d171d0", generated=True)
'results/my-input/manifests/cats.json~18d58565eadf85a4/~url-777460dbe029a0d171d0.json'
"""

from __future__ import annotations

import hashlib

from labeler.models.records import EntryItem, ManifestRef, RejectedEntry

RESULTS_PREFIX = "results/"
REPORTS_PREFIX = "reports/"
CACHE_PREFIX = "cache/"
STATE_PREFIX = "state/"

# S3's limit on the length of a key, in bytes of UTF-8.
S3_MAX_KEY_BYTES = 1024
# The longest id segment (before ``~dup<n>`` and ``.json``).
ID_SEGMENT_MAX_BYTES = 200
# The longest manifest slug. With the prefixes, ``~`` (generated ids), an id segment, ``~dup`` + 20
# digits and ``.json``, every key stays well within S3_MAX_KEY_BYTES (8 + 512 + 2 + 200 + 24 + 5 = 751).
SLUG_MAX_BYTES = 512
# Hex digits of SHA-256 appended to a shortened text (and to every slug).
HASH_HEX_DIGITS = 16

_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# byte -> its text in a key: itself when safe, ``%XX`` (upper-case hex) otherwise.
_ENCODED = tuple(chr(b) if b in _SAFE_BYTES else f"%{b:02X}" for b in range(256))
_EMPTY_SEGMENT = "~empty"
_HASH_SUFFIX_LENGTH = 1 + HASH_HEX_DIGITS  # "~" + hex


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (JSON allows "\ud800") still maps to distinct bytes.
    return text.encode("utf-8", "surrogatepass")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HASH_HEX_DIGITS]


def derive_image_id(url: str) -> str:
    """The id of an entry that has none: ``url-`` + 20 hex digits of SHA-256 of the stripped URL.

    Deterministic, so a re-run of the same manifest writes the same keys.

    >>> derive_image_id("https://example.com/cat.jpg")
    'url-777460dbe029a0d171d0'
    >>> derive_image_id("  https://example.com/cat.jpg\\n") == derive_image_id("https://example.com/cat.jpg")
    True
    """
    return "url-" + hashlib.sha256(_utf8(url.strip())).hexdigest()[:20]


def _percent_encode(data: bytes) -> str:
    return "".join(map(_ENCODED.__getitem__, data))


def _cut(encoded: str, limit: int) -> str:
    """The first ``limit`` characters of an encoded text, never ending inside a ``%XX`` escape."""
    head = encoded[:limit]
    if head.endswith("%"):
        return head[:-1]
    if len(head) >= 2 and head[-2] == "%":
        return head[:-2]
    return head


def safe_key_segment(text: str, max_bytes: int = ID_SEGMENT_MAX_BYTES) -> str:
    """``text`` as one path segment of an S3 key: only ``[A-Za-z0-9._%~-]``, never ``.``/``..``, ≤ ``max_bytes``.

    Every byte of the UTF-8 text outside ``[A-Za-z0-9._-]`` becomes ``%XX``, which is reversible,
    so different texts give different segments. A segment that would be ``.`` or ``..`` has its
    dots encoded. A segment longer than ``max_bytes`` is cut (never inside an escape) and ends
    in ``~`` + 16 hex digits of SHA-256 of the whole text. The empty text is ``~empty``.

    >>> safe_key_segment("cat-1.jpg")
    'cat-1.jpg'
    >>> safe_key_segment("../etc/passwd")
    '..%2Fetc%2Fpasswd'
    >>> safe_key_segment("..")
    '%2E%2E'
    >>> safe_key_segment("%2e%2e%2f")
    '%252e%252e%252f'
    >>> safe_key_segment("a b\\n~ü")
    'a%20b%0A%7E%C3%BC'
    >>> safe_key_segment("")
    '~empty'
    >>> safe_key_segment("x" * 300, max_bytes=40)
    'xxxxxxxxxxxxxxxxxxxxxxx~0d4e2ca9e9cbced7'
    """
    if max_bytes < _HASH_SUFFIX_LENGTH + 3:
        raise ValueError(f"max_bytes must be at least {_HASH_SUFFIX_LENGTH + 3}, not {max_bytes}")
    data = _utf8(text)
    if not data:
        return _EMPTY_SEGMENT
    encoded = _percent_encode(data)
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    if len(encoded) <= max_bytes:
        return encoded
    return _cut(encoded, max_bytes - _HASH_SUFFIX_LENGTH) + "~" + _digest(data)


def manifest_slug(bucket: str, key: str) -> str:
    """A readable, unique, bounded name for the manifest ``s3://bucket/key``, used under ``results/`` and ``reports/``.

    The bucket, then the key's own ``/`` structure with every segment made safe by
    :func:`safe_key_segment`, then ``~`` + 16 hex digits of SHA-256 of (bucket, key). The hash
    ends every slug, so no slug is a prefix of another's directory (``a.json`` vs
    ``a.json/b.json``). A slug longer than ``SLUG_MAX_BYTES`` is cut and keeps the hash.

    >>> manifest_slug("my-input", "manifests/cats.json")
    'my-input/manifests/cats.json~18d58565eadf85a4'
    >>> manifest_slug("my-input", "../x y.json")
    'my-input/%2E%2E/x%20y.json~30d63b0006e85831'
    >>> len(manifest_slug("b", "d/" * 600 + "m.json"))
    512
    """
    pair = f"{len(bucket)}:{bucket}/{key}"  # length-prefixed: unambiguous whatever the bucket holds
    suffix = "~" + _digest(_utf8(pair))
    readable = "/".join([safe_key_segment(bucket), *(safe_key_segment(part) for part in key.split("/"))])
    if len(readable) + len(suffix) > SLUG_MAX_BYTES:
        readable = _cut(readable, SLUG_MAX_BYTES - len(suffix))
    return readable + suffix


def result_key(
    manifest: ManifestRef, image_id: str, duplicate_index: int | None = None, *, generated: bool = False
) -> str:
    """The key of the record of entry ``image_id`` of ``manifest``: ``results/<slug>/<safe id>.json``.

    ``duplicate_index`` (the entry's index) is given for a rejected entry (a later entry that repeated
    an id, or a broken one): its record goes next to the id's, as ``<safe id>~dup<index>.json``.
    ``generated``: the id was made up, not given; its segment starts with ``~``, which no given id's does.

    >>> m = ManifestRef("in", "a.json")
    >>> result_key(m, "a"), result_key(m, "a", duplicate_index=3)
    ('results/in/a.json~a7dec169ee2be8dd/a.json', 'results/in/a.json~a7dec169ee2be8dd/a~dup3.json')
    """
    segment = safe_key_segment(image_id)
    if generated:
        segment = "~" + segment
    if duplicate_index is not None:
        index = int(duplicate_index)
        if index < 0:
            raise ValueError(f"duplicate_index must not be negative, not {duplicate_index}")
        segment += f"~dup{index}"
    return f"{RESULTS_PREFIX}{manifest_slug(manifest.bucket, manifest.key)}/{segment}.json"


def entry_key(manifest: ManifestRef, item: EntryItem) -> str:
    """The key of the record of a manifest entry: by its id, and a rejected entry also by its position.

    >>> from labeler.models.records import ManifestEntry
    >>> entry_key(ManifestRef("in", "a.json"), ManifestEntry(0, "url-1f", "https://e.com/", id_given=False))
    'results/in/a.json~a7dec169ee2be8dd/~url-1f.json'
    """
    duplicate_index = item.index if isinstance(item, RejectedEntry) else None
    return result_key(manifest, item.image_id, duplicate_index, generated=not item.id_given)


def results_prefix(manifest: ManifestRef) -> str:
    """The prefix of every record of ``manifest``: ``results/<slug>/``.

    >>> results_prefix(ManifestRef("in", "a.json"))
    'results/in/a.json~a7dec169ee2be8dd/'
    """
    return f"{RESULTS_PREFIX}{manifest_slug(manifest.bucket, manifest.key)}/"


def run_key(manifest: ManifestRef) -> str:
    """Identifies one run: the manifest object and the upload of it that triggered the run.

    >>> run_key(ManifestRef("in", "a.json", version_id="v1"))
    'in/a.json~a7dec169ee2be8dd#v1'
    """
    return f"{manifest_slug(manifest.bucket, manifest.key)}#{manifest.run_id or '-'}"


def report_key(manifest: ManifestRef) -> str:
    """The key of the report of ``manifest``: ``reports/<slug>.json``.

    >>> report_key(ManifestRef("in", "daily/2026-11-25.jsonl"))
    'reports/in/daily/2026-11-25.jsonl~c23407ac0a7bbfe1.json'
    """
    return f"{REPORTS_PREFIX}{manifest_slug(manifest.bucket, manifest.key)}.json"
