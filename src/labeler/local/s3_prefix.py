"""``s3-image-labeler submit --prefix s3://bucket/photos/``: a manifest of the images already in a bucket.

The prefix is listed page by page (ListObjectsV2, or ListObjectVersions with ``--versions`` to pin each
entry to the version listed), counting as it goes; image-looking keys (by suffix) become JSON Lines
entries ``{"url": "s3://bucket/key", "id": key[, "versionId": ...]}``, everything else is counted and
skipped. The summary is printed before anything is uploaded (``--dry-run`` stops there), then the
manifest goes through the usual ``submit`` (upload, follow, table). cli.py only registers the options.

>>> parse_prefix_url("s3://my-photos/2024/")
('my-photos', '2024/')
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from labeler.logic.s3_sources import REKOGNITION_S3_MAX_BYTES, SCHEME, bucket_name_problem, parse_s3_url
from labeler.models.errors import InvalidUrl

# What the pipeline labels: JPEG/PNG as they are (Image.S3Object), the others after conversion.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
MAX_ID_CHARS = 512  # the manifest's id limit; longer keys get the id derived from the URL
DEFAULT_MAX_ENTRIES = 1_000_000  # MAX_MANIFEST_ENTRIES' default


class PrefixError(ValueError):
    """The prefix cannot become a manifest (bad URL, too many images); said on one line."""


@dataclass
class ListingSummary:
    bucket: str
    prefix: str
    listed: int = 0
    images: int = 0
    image_bytes: int = 0
    large: int = 0  # images over 15 MB: labeled through the download-and-convert path
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> objects

    def lines(self) -> list[str]:
        where = f"{SCHEME}{self.bucket}/{self.prefix}"
        out = [f"listed {self.listed:,} object(s) under {where}: {self.images:,} image(s), {_size(self.image_bytes)}"]
        if self.large:
            out.append(f"  {self.large:,} image(s) over 15 MB: converted/downscaled before labeling")
        for reason, count in sorted(self.skipped.items(), key=lambda item: (-item[1], item[0])):
            out.append(f"  skipped {count:,}: {reason}")
        return out


def _size(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{count} bytes"


def parse_prefix_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix); the prefix may be empty (the whole bucket)."""
    if not url.lower().startswith(SCHEME):
        raise PrefixError(f"--prefix takes s3://bucket/prefix/, not {url!r}")
    bucket, _, prefix = url[len(SCHEME) :].partition("/")
    problem = bucket_name_problem(bucket)
    if problem:
        raise PrefixError(f"{bucket!r} is not a bucket name: {problem}")
    return bucket, prefix


def _listing(
    s3: Any, bucket: str, prefix: str, versions: bool, page_size: int | None
) -> Iterator[tuple[str, int, str | None]]:
    """(key, size, version id) of every current object under the prefix, page by page."""
    pages = {"PageSize": page_size} if page_size else {}
    if versions:
        paginator = s3.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig=pages):
            for item in page.get("Versions", []):  # delete markers are listed apart and skipped
                if item.get("IsLatest"):
                    yield item["Key"], int(item.get("Size", 0)), item.get("VersionId")
        return
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, PaginationConfig=pages):
        for item in page.get("Contents", []):
            yield item["Key"], int(item.get("Size", 0)), None


def skip_reason(key: str, size: int) -> str | None:
    """Why the object at ``key`` does not become an entry, or None when it does."""
    if key.endswith("/"):
        return "folder markers"
    if not key.lower().endswith(IMAGE_SUFFIXES):
        suffix = Path(key).suffix.lower()
        return f"not an image suffix ({suffix or 'none'})"
    if size == 0:
        return "empty objects"
    return None


def write_prefix_manifest(
    s3: Any,
    bucket: str,
    prefix: str,
    out: IO[str],
    *,
    versions: bool = False,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    page_size: int | None = None,
) -> ListingSummary:
    """List the prefix and write one JSON Lines entry per image to ``out``; returns what was counted."""
    summary = ListingSummary(bucket=bucket, prefix=prefix)
    for key, size, version_id in _listing(s3, bucket, prefix, versions, page_size):
        summary.listed += 1
        reason = skip_reason(key, size)
        if reason is None:
            try:
                ref = parse_s3_url(f"{SCHEME}{bucket}/{key}", version_id)
            except InvalidUrl:
                reason = "keys the manifest cannot carry (control characters)"
        if reason is not None:
            summary.skipped[reason] += 1
            continue
        summary.images += 1
        if summary.images > max_entries:
            raise PrefixError(
                f"more than {max_entries:,} images under {SCHEME}{bucket}/{prefix}: "
                "submit narrower prefixes (one manifest each)"
            )
        summary.image_bytes += size
        summary.large += int(size > REKOGNITION_S3_MAX_BYTES)
        entry: dict[str, str] = {"url": ref.url}
        if len(key) <= MAX_ID_CHARS:
            entry["id"] = key
        if ref.version_id:
            entry["versionId"] = ref.version_id
        out.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return summary


def default_manifest_key(bucket: str, prefix: str) -> str:
    """``manifests/s3-<bucket>-<prefix with / as ->.jsonl``: one manifest key per listed prefix.

    >>> default_manifest_key("my-photos", "2024/summer/")
    'manifests/s3-my-photos-2024-summer.jsonl'
    """
    readable = "".join(c if c.isalnum() or c in "._-" else "-" for c in prefix.strip("/"))[:100].strip("-")
    return f"manifests/s3-{bucket}{'-' + readable if readable else ''}.jsonl"


def submit_prefix(args: argparse.Namespace, submit: Callable[[argparse.Namespace], int]) -> int:
    """List ``args.prefix``, print the summary, write the manifest, then hand it to ``submit`` (unless --dry-run)."""
    from labeler.cli import CliError, aws_session, consoles, require_bucket

    _, err = consoles()
    try:
        bucket, prefix = parse_prefix_url(args.prefix)
    except PrefixError as exc:
        raise CliError(str(exc)) from exc
    s3 = aws_session(args).client("s3")
    require_bucket(s3, bucket, "source")
    directory = Path(tempfile.mkdtemp(prefix="s3il-prefix-"))
    path = directory / "manifest.jsonl"
    try:
        with path.open("w", encoding="utf-8") as handle:
            try:
                summary = write_prefix_manifest(s3, bucket, prefix, handle, versions=args.versions)
            except PrefixError as exc:
                raise CliError(str(exc)) from exc
        for line in summary.lines():
            err.print(line, markup=False)
        if summary.images == 0:
            raise CliError(f"no images under {SCHEME}{bucket}/{prefix} (suffixes: {' '.join(IMAGE_SUFFIXES)})")
        err.print(
            f"note: the stack's SourceBuckets parameter must include {bucket!r}, or every entry is source_not_allowed",
            markup=False,
        )
        if args.dry_run:
            err.print(f"--dry-run: nothing uploaded; the manifest would be {summary.images:,} JSON Lines", markup=False)
            return 0
        args.manifest = str(path)
        args.key = args.key or default_manifest_key(bucket, prefix)
        return submit(args)
    finally:
        path.unlink(missing_ok=True)
        directory.rmdir()


def add_prefix_options(submit_parser: argparse.ArgumentParser, submit: Callable[[argparse.Namespace], int]) -> None:
    """Register ``--prefix``/``--versions``/``--dry-run`` on ``submit`` (cli.py calls this)."""
    group = submit_parser.add_argument_group("images already in S3 (instead of MANIFEST)")
    group.add_argument("--prefix", metavar="s3://BUCKET/PREFIX/", help="build the manifest from a listing of images")
    group.add_argument("--versions", action="store_true", help="pin each entry to the version listed (versionId)")
    group.add_argument("--dry-run", action="store_true", help="list and count, print the summary, upload nothing")

    def dispatch(args: argparse.Namespace) -> int:
        from labeler.cli import CliError

        if (args.prefix is None) == (args.manifest is None):
            raise CliError("give a manifest file or --prefix s3://bucket/prefix/ (one of them)")
        if args.prefix is None:
            if args.versions or args.dry_run:
                raise CliError("--versions and --dry-run only apply to --prefix")
            return submit(args)
        return submit_prefix(args, submit)

    submit_parser.set_defaults(func=dispatch)
