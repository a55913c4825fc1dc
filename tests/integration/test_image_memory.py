"""The image memory budget under the real handler: big bodies and conversions take turns, nothing stalls.

MAX_WORKERS entries at once against the smallest budget (IMAGE_MEMORY_MB=16): > 5 MB PNGs converted to
JPEG (each decode ~23 MB, larger than the whole budget: it runs alone), WebP conversions and JPEGs sent as
they are, every body held in the budget from download to record. Every entry must be labeled, and every
byte given back when the run is over.
"""

from __future__ import annotations

import gc

import pytest

from labeler.adapters.memory import MIB, process_budget
from labeler.handlers import manifest_created
from labeler.local.http_server import StaticRoute
from tests.conftest import Buckets, FakeLambdaContext
from tests.support.site import Site, big_png


@pytest.fixture
def small_budget(lambda_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from labeler.handlers.composition import reset_services

    monkeypatch.setenv("IMAGE_MEMORY_MB", "16")
    monkeypatch.setenv("MAX_WORKERS", "8")
    reset_services()


@pytest.mark.usefixtures("small_budget")
def test_big_images_take_turns_in_a_small_budget_and_all_are_labeled(
    buckets: Buckets, site: Site, lambda_context: FakeLambdaContext
) -> None:
    for index in range(6):  # distinct bytes: no label cache, no shared in-flight call
        site.server.add(f"/big-{index}.png", StaticRoute(big_png() + bytes([index]), "image/png"))
    manifest = [{"id": f"big-{i}", "url": site.url(f"/big-{i}.png")} for i in range(6)]
    manifest += [{"id": f"webp-{i}", "url": site.url(f"/photo.webp?n={i}")} for i in range(6)]
    manifest += [{"id": f"jpeg-{i}", "url": site.url(f"/photo.jpg?n={i}")} for i in range(12)]
    budget = process_budget()
    budget.peak = budget.used  # this run's peak

    answer = manifest_created.handler(buckets.put_manifest("manifests/big.json", manifest), lambda_context)
    budget_capacity, budget_peak = budget.capacity, budget.peak

    assert answer["manifests"][0]["succeeded"] == len(manifest)
    records = buckets.records_by_id()
    assert all(records[f"big-{i}"]["image"]["converted"] for i in range(6))
    assert budget_capacity == 16 * MIB
    # Over the budget only while a conversion larger than all of it runs alone: its ~23-MB decode, beside
    # the bodies (at most a quarter of the budget) and converted images waiting for their request.
    assert 16 * MIB < budget_peak < 40 * MIB
    gc.collect()
    assert budget.used == 0  # every body, converted image and decode was given back
