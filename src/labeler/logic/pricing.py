"""List prices in one place: what a DetectLabels call costs, and the S3 requests around it.

Every dollar figure the product prints or writes (the ``estimate`` command, the report's ``cost``,
docs/cost.md and docs/scale.md) comes from here. Prices are us-east-1 list prices, without free
tiers, credits or private discounts; ``PRICES_READ_ON`` says when they were checked and
``DETECT_LABELS_PRICE_SOURCE`` where.

DetectLabels is billed per image with volume tiers that restart every calendar month and count
every Group 2 image API call of the account in the region (DetectLabels, DetectFaces, DetectText,
DetectModerationLabels, ...), not only this stack's.

>>> detect_labels_usd(1_000)
Decimal('1.000')
>>> detect_labels_usd(10, calls_this_month=999_995)   # 5 at the first tier, 5 at the second
Decimal('0.0090')
>>> Cost.of(calls=3, saved=2).to_dict()
{'detect_labels_calls': 3, 'detect_labels_saved': 2, 'estimated_usd': 0.003}
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

PRICES_READ_ON = "2026-11-30"
PRICE_REGION = "us-east-1"
DETECT_LABELS_PRICE_SOURCE = "https://aws.amazon.com/rekognition/pricing/"
S3_PRICE_SOURCE = "https://aws.amazon.com/s3/pricing/"


@dataclass(frozen=True)
class PriceTier:
    """``usd_per_call`` for the calls of a month from ``starts_after`` (exclusive) up to ``up_to`` (inclusive)."""

    starts_after: int
    up_to: int | None  # None: no upper end
    usd_per_call: Decimal

    def calls_in(self, first: int, last: int) -> int:
        """How many of the month's calls number ``first`` … ``last`` (1-based, inclusive) fall in this tier."""
        low = max(first, self.starts_after + 1)
        high = last if self.up_to is None else min(last, self.up_to)
        return max(0, high - low + 1)


# Rekognition Image, Group 2 APIs (DetectLabels among them), per image, per calendar month.
DETECT_LABELS_TIERS: tuple[PriceTier, ...] = (
    PriceTier(0, 1_000_000, Decimal("0.001")),  # first 1 M
    PriceTier(1_000_000, 5_000_000, Decimal("0.0008")),  # next 4 M
    PriceTier(5_000_000, 35_000_000, Decimal("0.0006")),  # next 30 M
    PriceTier(35_000_000, None, Decimal("0.00025")),  # over 35 M
)

# DetectLabels' IMAGE_PROPERTIES feature (colours, quality), billed per image on its own line, on top of the
# labels when both are asked for, no free tier (docs/image-properties.md, "Pricing": read from a transcription
# of the pricing page; the width of the first tier is the page's example, check before quoting).
IMAGE_PROPERTIES_TIERS: tuple[PriceTier, ...] = (
    PriceTier(0, 1_000_000, Decimal("0.00075")),  # first 1 M
    PriceTier(1_000_000, None, Decimal("0.0006")),  # beyond
)

# S3 Standard: requests are billed per 1,000; DELETE is free.
S3_PUT_USD_PER_1000 = Decimal("0.005")  # PUT, COPY, POST, LIST
S3_GET_USD_PER_1000 = Decimal("0.0004")  # GET, HEAD, SELECT and the rest
S3_STORAGE_USD_PER_GB_MONTH = Decimal("0.023")  # first 50 TB per month


@dataclass(frozen=True)
class TierUse:
    """One line of a bill: ``calls`` at ``tier``'s price."""

    tier: PriceTier
    calls: int

    @property
    def usd(self) -> Decimal:
        return self.tier.usd_per_call * self.calls


def detect_labels_bill(
    calls: int, *, calls_this_month: int = 0, tiers: tuple[PriceTier, ...] = DETECT_LABELS_TIERS
) -> list[TierUse]:
    """The tiers ``calls`` new calls fall in when ``calls_this_month`` were made before them (in the region)."""
    if calls < 0 or calls_this_month < 0:
        raise ValueError("calls must not be negative")
    first, last = calls_this_month + 1, calls_this_month + calls
    uses = [TierUse(tier, tier.calls_in(first, last)) for tier in tiers]
    return [use for use in uses if use.calls]


def detect_labels_usd(calls: int, *, calls_this_month: int = 0) -> Decimal:
    """List price of ``calls`` DetectLabels calls, exact (Decimal), across the volume tiers.

    ``calls_this_month = 0`` (the default) prices every call at the first tier: the most they can cost.
    """
    return sum((use.usd for use in detect_labels_bill(calls, calls_this_month=calls_this_month)), Decimal(0))


def image_properties_usd(calls: int, *, calls_this_month: int = 0) -> Decimal:
    """List price of IMAGE_PROPERTIES for ``calls`` images (its own monthly tiers; from the first by default)."""
    bill = detect_labels_bill(calls, calls_this_month=calls_this_month, tiers=IMAGE_PROPERTIES_TIERS)
    return sum((use.usd for use in bill), Decimal(0))


def calls_usd(
    calls: int, *, general_labels: bool = True, image_properties: bool = False, calls_this_month: int = 0
) -> Decimal:
    """List price of ``calls`` DetectLabels calls asking for these features (labels after ``calls_this_month``
    Group 2 calls; image properties from their first tier).

    >>> calls_usd(1000), calls_usd(1000, image_properties=True)
    (Decimal('1.000'), Decimal('1.75000'))
    >>> calls_usd(1000, general_labels=False, image_properties=True)
    Decimal('0.75000')
    """
    price = detect_labels_usd(calls, calls_this_month=calls_this_month) if general_labels else Decimal(0)
    return price + image_properties_usd(calls) if image_properties else price


def s3_requests_usd(*, puts: int = 0, gets: int = 0) -> Decimal:
    """List price of S3 Standard requests (PUT-class and GET-class)."""
    return (S3_PUT_USD_PER_1000 * puts + S3_GET_USD_PER_1000 * gets) / 1000


def usd(amount: Decimal) -> float:
    """A price as a JSON number: exact to 1/100,000 of a dollar (the smallest tier price is $0.00025)."""
    return float(amount.quantize(Decimal("0.00001")))


@dataclass(frozen=True)
class Cost:
    """What a run cost in DetectLabels: the report's ``cost`` object.

    ``detect_labels_calls``: calls made. ``detect_labels_saved``: calls not made because the labels
    were known (label cache hits, ``304 Not Modified``). ``estimated_usd``: the calls at list
    price, from the first tier (what they cost at most; the account's other usage this month
    may put them in a cheaper tier), IMAGE_PROPERTIES included when the calls asked for it.
    """

    detect_labels_calls: int
    detect_labels_saved: int
    estimated_usd: float

    @classmethod
    def of(
        cls,
        *,
        calls: int,
        saved: int,
        calls_this_month: int = 0,
        general_labels: bool = True,
        image_properties: bool = False,
    ) -> Cost:
        price = calls_usd(
            calls, general_labels=general_labels, image_properties=image_properties, calls_this_month=calls_this_month
        )
        return cls(detect_labels_calls=calls, detect_labels_saved=saved, estimated_usd=usd(price))

    def to_dict(self) -> dict[str, Any]:
        return {
            "detect_labels_calls": self.detect_labels_calls,
            "detect_labels_saved": self.detect_labels_saved,
            "estimated_usd": self.estimated_usd,
        }


def describe_tiers() -> str:
    """The tiers in one line, as the docs and the CLI print them."""
    return "DetectLabels per image per month: " + tier_list()


def tier_list() -> str:
    """``first 1 M $0.001, next 4 M $0.0008, ...``"""
    parts = []
    for tier in DETECT_LABELS_TIERS:
        price = f"${tier.usd_per_call.normalize():f}"
        if tier.starts_after == 0:
            parts.append(f"first {_millions(tier.up_to)} {price}")
        elif tier.up_to is None:
            parts.append(f"over {_millions(tier.starts_after)} {price}")
        else:
            parts.append(f"next {_millions(tier.up_to - tier.starts_after)} {price}")
    return ", ".join(parts)


def _millions(calls: int | None) -> str:
    assert calls is not None
    return f"{calls / 1_000_000:g} M"
