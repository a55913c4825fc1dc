"""How a fan-out cuts its entries into work batches: the first ones ramp up, so workers' batch ends do not coincide."""

from __future__ import annotations

from dataclasses import replace

from labeler.logic.fanout import Batching
from labeler.models.settings import Settings


def test_the_first_batches_ramp_up_one_step_per_worker() -> None:
    batching = Batching(size=50, staggered=5)
    assert [batching.size_of(index) for index in range(8)] == [10, 20, 30, 40, 50, 50, 50, 50]


def test_the_defaults_stagger_one_batch_per_worker_and_small_batches_do_not() -> None:
    settings = Settings(output_bucket="out")
    assert Batching.of(settings) == Batching(settings.batch_size, settings.worker_max_concurrency)
    assert Batching.of(replace(settings, batch_size=2)) == Batching(2, 0)  # steps of less than two entries
    assert Batching.of(replace(settings, worker_max_concurrency=1)) == Batching(settings.batch_size, 0)


def test_steps_are_rounded_up_and_never_empty() -> None:
    batching = Batching(size=7, staggered=3)
    assert [batching.size_of(index) for index in range(4)] == [3, 5, 7, 7]


def test_the_cut_kept_on_the_progress_item_reads_back_the_same() -> None:
    batching = Batching(size=50, staggered=5)
    assert Batching.from_dict(batching.to_dict()) == batching
    assert Batching.from_dict({"size": 25}) == Batching(25, 0)
