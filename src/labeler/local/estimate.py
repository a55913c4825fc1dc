"""``s3-image-labeler estimate MANIFEST``: what a manifest will cost in DetectLabels, before it is uploaded.

    s3-image-labeler estimate my-images.json
    s3-image-labeler estimate s3://my-input/manifests/big.jsonl --stack s3-image-labeler --json

The manifest (a local file, or ``s3://bucket/key``) is read with the Lambda's own reader
(:func:`labeler.logic.manifest.parse_manifest`), streamed, so a 1 M-entry manifest needs little
memory. The stack makes at most one DetectLabels call per unique URL of a valid entry (later
entries of the same URL, and identical bytes under other URLs, come from the label cache); an
``s3://`` entry's URL is told apart by its ``versionId`` too (two versions, two images). With
an output bucket (``--stack``, ``--output-bucket``, or ``--embedded`` for a local endpoint), each
unique HTTP URL's memo (``cache/urls/<sha256(url)>.json``, :meth:`LabelCache.url_key`) is looked up,
``--concurrency`` at a time, while the manifest is read: a memoized URL was labeled before, and if
it answers ``304 Not Modified`` its labels come from the cache, free. S3 objects are not looked up:
the stack caches them by version or ETag under its own options, which the estimate does not know
(an object labeled before costs nothing, so the real count can be lower than ``min_calls``). Hence a range:

* ``max_calls`` = unique URLs: every URL holds new bytes (memoized ones changed since);
* ``min_calls`` = unique URLs − memoized URLs: every memoized URL is unchanged (and its labels
  are still cached), every other URL holds new bytes. Two new URLs serving identical bytes make
  one call, so the real count can even be lower.

Dollars are list prices across the volume tiers (:mod:`labeler.logic.pricing`), from the first
tier unless ``--calls-this-month`` says how many Group 2 image calls the account already made.

The manifest's own ``"options"`` count too: its ``features`` (else ``--features``, the stack's
``LABEL_FEATURES``) price IMAGE_PROPERTIES on top of the labels, and its ``max_label_calls`` bounds
the calls. Options the stack would refuse whatever its settings (an unknown option, a wrong type, a
value outside DetectLabels' limits) are reported as the stack's refusal; the stack's own bounds
(``MIN_CONFIDENCE``, ``MAX_LABELS``, ``MANIFEST_FEATURES``...) are not known here and not checked.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

from labeler.logic.manifest import VERSION_KEY, read_manifest
from labeler.logic.pricing import (
    DETECT_LABELS_PRICE_SOURCE,
    IMAGE_PROPERTIES_TIERS,
    PRICE_REGION,
    PRICES_READ_ON,
    calls_usd,
    detect_labels_bill,
    image_properties_usd,
    tier_list,
    usd,
)
from labeler.logic.s3_sources import is_s3_url
from labeler.models.errors import ManifestError
from labeler.models.label_options import (
    MAX_DOMINANT_COLORS_LIMIT,
    MAX_LABELS_LIMIT,
    Feature,
    LabelOptions,
    parse_features,
)
from labeler.models.records import ManifestRef, RejectedEntry
from labeler.models.settings import Settings

DEFAULT_CONCURRENCY = 32
S3_SCHEME = "s3://"


def widest_stack(features: str = Feature.GENERAL_LABELS.value) -> LabelOptions:
    """A stack that allows whatever DetectLabels allows, labeling with ``features`` (the estimate's assumption)."""
    return LabelOptions(
        min_confidence=0,
        max_labels=MAX_LABELS_LIMIT,
        features=parse_features(features),
        max_dominant_colors=MAX_DOMINANT_COLORS_LIMIT,
    )


# --- reading the manifest -------------------------------------------------------------------------
@dataclass
class ManifestCount:
    """What the Lambda's reader finds in a manifest; ``error`` when it stopped (after ``entries`` entries)."""

    entries: int = 0
    valid_entries: int = 0
    unique_urls: int = 0
    s3_objects: int = 0  # valid entries naming an S3 object (s3://bucket/key) rather than an HTTP(S) URL
    error: ManifestError | None = None
    options: LabelOptions = field(default_factory=widest_stack)  # the manifest's (features, cap), over the stack's


def manifest_limits() -> tuple[int, int]:
    """The stack's default MAX_MANIFEST_BYTES and MAX_MANIFEST_ENTRIES (Settings' own defaults)."""
    defaults: dict[str, Any] = {spec.name: spec.default for spec in fields(Settings)}
    return int(defaults["max_manifest_bytes"]), int(defaults["max_manifest_entries"])


def count_manifest(
    source: bytes | BinaryIO,
    on_new_url: Callable[[str], None] | None = None,
    stack: LabelOptions | None = None,
) -> ManifestCount:
    """Count entries as the Lambda reads them; ``on_new_url`` sees each unique HTTP URL once, in order.

    URLs are told apart as the memo keys tell them apart (exact text), ``s3://`` URLs with their
    ``versionId``; 16-byte digests keep a million of them in ~100 MB. The manifest's options are read
    over ``stack`` (default: :func:`widest_stack`); options it cannot have end the count with
    ``manifest_options_invalid``.
    """
    max_bytes, max_entries = manifest_limits()
    stack = stack or widest_stack()
    count = ManifestCount(options=stack)
    seen: set[bytes] = set()
    try:
        read = read_manifest(source, max_bytes=max_bytes, max_entries=max_entries)
        every_feature = [feature.value for feature in Feature]
        count.options = stack.for_manifest(read.options, allowed_features=every_feature)
        for item in read.entries:
            count.entries += 1
            if isinstance(item, RejectedEntry):
                continue  # recorded as an error, never labeled
            count.valid_entries += 1
            s3_object = is_s3_url(item.url)
            count.s3_objects += s3_object
            name = item.url if item.version_id is None else f"{item.url}\n{VERSION_KEY}={item.version_id}"
            digest = hashlib.blake2b(name.encode("utf-8"), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                count.unique_urls += 1
                if on_new_url is not None and not s3_object:  # S3 objects have no URL memo
                    on_new_url(item.url)
    except ManifestError as exc:
        count.error = exc
    return count


# --- URL memos ----------------------------------------------------------------------------------------
class _ReadFailuresKept:
    """The JSON store LabelCache reads through: a failed read is kept here (LabelCache would log it to stdout)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.failures = 0
        self.first_error: BaseException | None = None

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] | None = self._store.get_json(key)
        except Exception as exc:  # counted, reported once at the end
            with self._lock:
                self.failures += 1
                self.first_error = self.first_error or exc
            return None
        return document

    def put_json(self, *args: Any, **kwargs: Any) -> bool:
        raise AssertionError("the estimate never writes")


class MemoLookups:
    """Looks up URL memos as URLs arrive: ``concurrency`` requests at a time, at most twice that queued."""

    def __init__(self, store: Any, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        from labeler.logic.cache import LabelCache  # imports Powertools: only when memos are looked up

        self.reads = _ReadFailuresKept(store)
        # Only URL memos are read (the backend does not enter their keys).
        self._cache = LabelCache(self.reads, backend="rekognition")
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="memo")
        self._slots = threading.BoundedSemaphore(2 * concurrency)  # bounded memory, whatever the manifest's size
        self._lock = threading.Lock()
        self.looked_up = 0
        self.found = 0
        self.started = time.perf_counter()
        self.seconds = 0.0

    def submit(self, url: str) -> None:
        self._slots.acquire()
        try:
            self._pool.submit(self._lookup, url)
        except BaseException:
            self._slots.release()
            raise

    def _lookup(self, url: str) -> None:
        try:
            found = self._cache.get_url_memo(url) is not None  # the pipeline's own rules for a usable memo
        finally:
            self._slots.release()
        with self._lock:
            self.looked_up += 1
            self.found += found

    def finish(self) -> None:
        self._pool.shutdown(wait=True)
        self.seconds = time.perf_counter() - self.started


# --- the estimate ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    count: ManifestCount
    memoized_urls: int | None  # None: not looked up (no output bucket given)
    calls_this_month: int = 0

    @property
    def cap(self) -> int | None:
        """The manifest's own ``max_label_calls`` (the stack's cap is not known here)."""
        return self.count.options.max_label_calls

    def _capped(self, calls: int) -> int:
        return calls if self.cap is None else min(calls, self.cap)

    @property
    def max_calls(self) -> int:
        return self._capped(self.count.unique_urls)

    @property
    def min_calls(self) -> int:
        return self._capped(self.count.unique_urls - (self.memoized_urls or 0))

    def usd(self, calls: int) -> Decimal:
        """The calls' list price with the manifest's features (IMAGE_PROPERTIES on its own line)."""
        options = self.count.options
        return calls_usd(
            calls,
            general_labels=options.general_labels,
            image_properties=options.image_properties,
            calls_this_month=self.calls_this_month,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": self.count.entries,
            "valid_entries": self.count.valid_entries,
            "unique_urls": self.count.unique_urls,
            "s3_objects": self.count.s3_objects,
            "memoized_urls": self.memoized_urls,
            "max_calls": self.max_calls,
            "min_calls": self.min_calls,
            "max_usd": usd(self.usd(self.max_calls)),
            "min_usd": usd(self.usd(self.min_calls)),
            "features": [feature.value for feature in self.count.options.features],
            "max_label_calls": self.cap,
            "price_date": PRICES_READ_ON,
        }


def dollars(amount: Decimal) -> str:
    """$1,234.56 — or more digits for amounts under a dollar, so a few calls do not read as $0.00."""
    if amount >= 1 or amount == 0:
        return f"${amount:,.2f}"
    return f"${amount.normalize():f}"


def render_text(estimate: Estimate, where: str, memo_place: str | None, lookups: MemoLookups | None) -> list[str]:
    count = estimate.count
    rejected = count.entries - count.valid_entries
    lines = [
        f"manifest        {where}",
        f"entries         {count.entries:,} ({count.valid_entries:,} valid; {rejected:,} rejected, never labeled)",
        f"unique URLs     {count.unique_urls:,} (entries naming S3 objects: {count.s3_objects:,})",
    ]
    if estimate.memoized_urls is None or lookups is None:
        lines.append("labeled before  not looked up (pass --stack, --output-bucket or --embedded)")
    else:
        per_10k = lookups.seconds / lookups.looked_up * 10_000 if lookups.looked_up else 0.0
        lines.append(
            f"labeled before  {estimate.memoized_urls:,} of {count.unique_urls:,} URLs have a URL memo in {memo_place} "
            f"({lookups.looked_up:,} looked up in {lookups.seconds:.1f} s, {per_10k:.1f} s per 10,000)"
        )
        if count.s3_objects:
            lines.append(
                "                S3 objects are not looked up (cached by version or ETag under the stack's options): "
                "those labeled before cost nothing"
            )
    low, high = estimate.min_calls, estimate.max_calls
    calls = f"{high:,}" if low == high else f"{low:,} to {high:,}"
    price = (
        dollars(estimate.usd(high)) if low == high else f"{dollars(estimate.usd(low))} to {dollars(estimate.usd(high))}"
    )
    month = f", after {estimate.calls_this_month:,} calls this month" if estimate.calls_this_month else ""
    options = count.options
    bound = "at most one per unique URL" + (f", capped at {estimate.cap:,} by max_label_calls" if estimate.cap else "")
    features = " + ".join(feature.value for feature in options.features)
    lines += [f"DetectLabels    {calls} calls ({bound})", f"features        {features}"]
    lines.append(f"list price      {price}{month}")
    bill = detect_labels_bill(high, calls_this_month=estimate.calls_this_month) if options.general_labels else []
    if len(bill) > 1:
        for use in bill:
            lines.append(f"                {use.calls:,} × ${use.tier.usd_per_call.normalize():f} = {dollars(use.usd)}")
    if options.image_properties:
        first = IMAGE_PROPERTIES_TIERS[0].usd_per_call.normalize()
        lines.append(f"                image properties: {dollars(image_properties_usd(high))} (${first:f} per image)")
    lines.append(f"prices          per image per month: {tier_list()}")
    lines.append(
        f"                ({PRICE_REGION} list prices read {PRICES_READ_ON} from {DETECT_LABELS_PRICE_SOURCE})"
    )
    return lines


# --- the command -----------------------------------------------------------------------------------------
def _embedded_session(args: argparse.Namespace) -> Any:
    """A session for a local S3-compatible endpoint (moto): dummy credentials, never a real account."""
    import boto3

    from labeler.cli import CliError
    from labeler.local.embedded_aws import DUMMY_SECRET

    if not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        raise CliError("--embedded needs a local endpoint: set AWS_ENDPOINT_URL_S3 (e.g. to a running moto_server)")
    return boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key=DUMMY_SECRET, region_name=args.region or "us-east-1"
    )


def memo_prefix() -> str:
    """Where URL memos live in the output bucket (the prefix of LabelCache's own memo keys)."""
    from labeler.logic.cache import LabelCache

    return LabelCache.url_key("").rsplit("/", 1)[0] + "/"


def _s3_client(session: Any, concurrency: int) -> Any:
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=concurrency)
    return session.client("s3", config=config)


def _open_s3_manifest(s3: Any, bucket: str, key: str) -> BinaryIO:
    from labeler.adapters.store import S3Store
    from labeler.cli import CliError
    from labeler.models.errors import ManifestUnreadable

    try:
        return S3Store(s3, output_bucket="").open_manifest(ManifestRef(bucket, key)).body
    except ManifestUnreadable as exc:
        code = exc.details.get("aws_code")
        if code in {"NoSuchKey", "404", "NotFound"}:
            raise CliError(f"the manifest s3://{bucket}/{key} does not exist") from exc
        if code == "NoSuchBucket":
            raise CliError(f"the bucket {bucket!r} does not exist") from exc
        raise CliError(str(exc)) from exc


@dataclass
class _Target:
    """Where the manifest is (``bucket``/``key``, or ``path``) and the S3 client, when one is needed."""

    path: Path
    bucket: str | None
    key: str
    s3: Any

    @property
    def name(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.bucket is not None else str(self.path)


def _target(args: argparse.Namespace, wants_memos: bool) -> tuple[_Target, Any]:
    from labeler.cli import CliError, aws_session, split_manifest_argument

    bucket, key = split_manifest_argument(args.manifest, None) if args.manifest.startswith(S3_SCHEME) else (None, "")
    path = Path(args.manifest)
    if bucket is None and not path.is_file():
        raise CliError(f"the manifest file {args.manifest!r} does not exist")
    session = _embedded_session(args) if args.embedded else (aws_session(args) if wants_memos or bucket else None)
    s3 = _s3_client(session, args.concurrency) if session is not None else None
    return _Target(path=path, bucket=bucket, key=key, s3=s3), session


def _memo_lookups(args: argparse.Namespace, session: Any, s3: Any) -> tuple[MemoLookups, str]:
    """Lookups in the output bucket named by --embedded/--output-bucket/--stack, and where that is."""
    from labeler.adapters.store import S3Store
    from labeler.cli import DEFAULT_LOCAL_OUTPUT_BUCKET, require_bucket, resolve_buckets

    output = args.output_bucket or DEFAULT_LOCAL_OUTPUT_BUCKET
    if not args.embedded:
        output = resolve_buckets(args, session, need_input=False).output
    require_bucket(s3, output, "output")
    return MemoLookups(
        S3Store(s3, output_bucket=output), concurrency=args.concurrency
    ), f"s3://{output}/{memo_prefix()}"


def _count(target: _Target, lookups: MemoLookups | None, stack: LabelOptions) -> ManifestCount:
    on_new_url = lookups.submit if lookups is not None else None
    try:
        if target.bucket is None:
            with target.path.open("rb") as handle:
                return count_manifest(handle, on_new_url, stack)
        body = _open_s3_manifest(target.s3, target.bucket, target.key)
        try:
            return count_manifest(body, on_new_url, stack)
        finally:
            body.close()
    finally:
        if lookups is not None:
            lookups.finish()  # also on errors: no lookup thread outlives the command


def _memoized(lookups: MemoLookups, place: str, err: Any) -> int:
    """URLs with a usable memo; a failed read counts as none (said once), every read failing is an error."""
    from labeler.cli import CliError

    reads = lookups.reads
    if reads.failures and reads.failures == lookups.looked_up:
        raise CliError(f"cannot read the URL memos in {place}: {reads.first_error}")
    if reads.failures:
        err.print(
            f"note: {reads.failures:,} of {lookups.looked_up:,} memo lookups failed "
            f"({reads.first_error}); those URLs count as not labeled before",
            markup=False,
        )
    return lookups.found


def cmd_estimate(args: argparse.Namespace) -> int:
    from labeler.cli import CliError, consoles, print_json

    if args.calls_this_month < 0:
        raise CliError("--calls-this-month must not be negative")
    if not 1 <= args.concurrency <= 256:
        raise CliError("--concurrency must be between 1 and 256")
    try:
        stack = widest_stack(args.features)
    except ValueError as exc:
        raise CliError(f"--features: {exc}") from exc
    out, err = consoles()
    wants_memos = bool(args.embedded or args.stack or args.output_bucket)
    target, session = _target(args, wants_memos)
    lookups, place = _memo_lookups(args, session, target.s3) if wants_memos else (None, None)

    count = _count(target, lookups, stack)
    if count.error is not None and count.entries == 0:
        raise CliError(f"the stack would reject this manifest: {count.error.code}: {count.error}")
    memoized = _memoized(lookups, str(place), err) if lookups is not None else None
    estimate = Estimate(count=count, memoized_urls=memoized, calls_this_month=args.calls_this_month)

    if args.json:
        print_json(estimate.to_dict())
    else:
        for line in render_text(estimate, target.name, place, lookups):
            out.print(line, markup=False)
    if count.error is not None:
        raise CliError(
            f"the manifest breaks after {count.entries:,} entries ({count.error.code}: {count.error}): "
            "the stack would label those and report the run as partial"
        )
    return 0


def add_estimate_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``estimate`` on the CLI's subcommands (cli.py only calls this)."""
    from labeler.cli import DEFAULT_LOCAL_OUTPUT_BUCKET

    estimate = commands.add_parser(
        "estimate",
        parents=[common],
        help="estimate the DetectLabels calls and list price of a manifest before uploading it",
        description="Read MANIFEST with the Lambda's own reader and print its entries, valid entries, unique URLs, "
        "entries naming S3 objects, URLs the stack labeled before (from its URL memos, with --stack, "
        "--output-bucket or --embedded), the DetectLabels calls to expect (a range) and their list price "
        "across the volume tiers.",
    )
    estimate.add_argument("manifest", metavar="MANIFEST", help="a local .json/.jsonl file, or s3://bucket/key")
    group = estimate.add_argument_group("URL memos (labeled before?): where the stack keeps them")
    group.add_argument("--output-bucket", help="the stack's output bucket")
    group.add_argument("--stack", help="take the output bucket from this CloudFormation stack's outputs")
    group.add_argument(
        "--embedded",
        action="store_true",
        help="a local S3-compatible endpoint (AWS_ENDPOINT_URL_S3, e.g. moto_server) with dummy credentials; "
        f"output bucket --output-bucket or {DEFAULT_LOCAL_OUTPUT_BUCKET}",
    )
    estimate.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"memo lookups in flight at once (1-256, default {DEFAULT_CONCURRENCY})",
    )
    estimate.add_argument(
        "--calls-this-month",
        type=int,
        default=0,
        metavar="N",
        help="Group 2 image calls (DetectLabels, DetectFaces, ...) the account made this month in the region: "
        "later calls fall in cheaper tiers (default 0: priced from the first tier)",
    )
    estimate.add_argument(
        "--features",
        default=Feature.GENERAL_LABELS.value,
        help="the stack's LABEL_FEATURES, for a manifest whose options name no features "
        "(GENERAL_LABELS, IMAGE_PROPERTIES or both, comma-separated; default GENERAL_LABELS)",
    )
    estimate.add_argument("--json", action="store_true", help="print one JSON object")
    estimate.set_defaults(func=cmd_estimate)
