"""List prices in one place: tier boundaries, the month's earlier calls, the report's cost object."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal

import pytest

from labeler.logic import pricing
from labeler.logic.pricing import Cost, detect_labels_bill, detect_labels_usd, s3_requests_usd

M = 1_000_000


def test_the_tiers_are_contiguous_and_cover_every_call() -> None:
    tiers = pricing.DETECT_LABELS_TIERS
    assert tiers[0].starts_after == 0
    for before, after in itertools.pairwise(tiers):
        assert before.up_to == after.starts_after
        assert before.usd_per_call > after.usd_per_call  # volume makes every call cheaper
    assert tiers[-1].up_to is None


def test_list_prices_as_read() -> None:
    assert [(t.starts_after, t.up_to, t.usd_per_call) for t in pricing.DETECT_LABELS_TIERS] == [
        (0, M, Decimal("0.001")),
        (M, 5 * M, Decimal("0.0008")),
        (5 * M, 35 * M, Decimal("0.0006")),
        (35 * M, None, Decimal("0.00025")),
    ]
    assert pricing.PRICES_READ_ON == "2026-11-30"
    assert pricing.DETECT_LABELS_PRICE_SOURCE.startswith("https://aws.amazon.com/rekognition/pricing")


@pytest.mark.parametrize(
    ("calls", "usd"),
    [
        (0, "0"),
        (1, "0.001"),
        (1_000, "1"),
        (M, "1000"),  # the last call of the first tier
        (M + 1, "1000.0008"),  # the first call of the second
        (5 * M, "4200"),  # 1,000 + 4 M x 0.0008
        (10 * M, "7200"),  # docs/scale.md: 10 M images in a month
        (35 * M, "22200"),  # 4,200 + 30 M x 0.0006
        (35 * M + 4, "22200.001"),  # over 35 M: $0.00025 each
    ],
)
def test_calls_are_priced_across_the_tiers(calls: int, usd: str) -> None:
    assert detect_labels_usd(calls) == Decimal(usd)


def test_calls_made_earlier_in_the_month_move_new_calls_to_cheaper_tiers() -> None:
    assert detect_labels_usd(10, calls_this_month=M - 5) == Decimal("0.009")  # 5 x 0.001 + 5 x 0.0008
    assert detect_labels_usd(10, calls_this_month=M) == Decimal("0.008")
    assert detect_labels_usd(1, calls_this_month=35 * M) == Decimal("0.00025")
    # Splitting a month's calls in two bills changes nothing.
    assert detect_labels_usd(3 * M) + detect_labels_usd(4 * M, calls_this_month=3 * M) == detect_labels_usd(7 * M)


def test_the_bill_names_each_tier_used() -> None:
    bill = detect_labels_bill(2 * M, calls_this_month=500_000)
    assert [(use.tier.usd_per_call, use.calls) for use in bill] == [
        (Decimal("0.001"), 500_000),
        (Decimal("0.0008"), 1_500_000),
    ]
    assert sum(use.usd for use in bill) == Decimal("1700")
    assert detect_labels_bill(0) == []
    with pytest.raises(ValueError, match="negative"):
        detect_labels_bill(-1)
    with pytest.raises(ValueError, match="negative"):
        detect_labels_bill(1, calls_this_month=-1)


def test_s3_request_prices() -> None:
    # docs/scale.md: a new image costs 2 GET + 3 PUT; 1 M of them $15.80 in requests.
    assert s3_requests_usd(puts=3 * M, gets=2 * M) == Decimal("15.8")
    assert s3_requests_usd(gets=10_000) == Decimal("0.004")


def test_the_cost_object_is_the_reports_field() -> None:
    cost = Cost.of(calls=1_234, saved=56)
    assert cost.to_dict() == {"detect_labels_calls": 1_234, "detect_labels_saved": 56, "estimated_usd": 1.234}
    assert json.loads(json.dumps({"cost": cost.to_dict()})) == {"cost": cost.to_dict()}
    assert Cost.of(calls=0, saved=9).to_dict()["estimated_usd"] == 0.0
    assert Cost.of(calls=4, saved=0, calls_this_month=40 * M).estimated_usd == 0.001
    assert Cost.of(calls=3, saved=0).estimated_usd == 0.003  # a float, not 0.0030000000000000001 text


def test_image_properties_are_priced_on_their_own_line_when_asked_for() -> None:
    assert [(t.starts_after, t.up_to, t.usd_per_call) for t in pricing.IMAGE_PROPERTIES_TIERS] == [
        (0, M, Decimal("0.00075")),
        (M, None, Decimal("0.0006")),
    ]
    assert pricing.image_properties_usd(M + 1) == Decimal("750.0006")
    both = Cost.of(calls=1_000, saved=3, image_properties=True)
    assert both.to_dict() == {"detect_labels_calls": 1_000, "detect_labels_saved": 3, "estimated_usd": 1.75}
    assert Cost.of(calls=1_000, saved=0, general_labels=False, image_properties=True).estimated_usd == 0.75
    assert pricing.calls_usd(1_000, image_properties=True) == Decimal("1.75")


def test_describe_tiers() -> None:
    assert pricing.describe_tiers() == (
        "DetectLabels per image per month: first 1 M $0.001, next 4 M $0.0008, next 30 M $0.0006, over 35 M $0.00025"
    )
