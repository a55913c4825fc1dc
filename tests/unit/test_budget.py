"""The cap's rules: lower-only, 0 = none, reservations that count only calls made, under threads."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from labeler.logic.budget import CallBudget, Grant, InMemoryBudgetStore, effective_cap
from labeler.models.errors import ErrorCode, LabelerError, OverBudget


# --- the effective cap --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stack", "manifest", "cap"),
    [
        (0, None, None),  # 0 = no cap
        (1000, None, 1000),
        (1000, 10, 10),  # a manifest may lower it
        (1000, 5000, 1000),  # never raise it
        (1000, 1000, 1000),
        (0, 5000, 5000),  # no stack cap: the manifest's own
        (1000, 0, 0),  # 0 in a manifest: no call at all (lowering to "none" would raise the cap)
        (0, 0, 0),
    ],
)
def test_the_manifest_may_lower_the_stack_cap_never_raise_it(stack: int, manifest: int | None, cap: int | None) -> None:
    assert effective_cap(stack, manifest) == cap


def test_negative_caps_are_refused() -> None:
    with pytest.raises(ValueError, match="stack"):
        effective_cap(-1)
    with pytest.raises(ValueError, match="max_label_calls"):
        effective_cap(10, -1)


def test_over_budget_is_an_error_record_with_a_stable_code() -> None:
    error = OverBudget("the run reached its cap of 3 DetectLabels calls", max_label_calls=3)
    assert isinstance(error, LabelerError)
    assert ErrorCode.OVER_BUDGET == "over_budget"
    assert error.to_dict() == {
        "code": "over_budget",
        "message": "the run reached its cap of 3 DetectLabels calls",
        "max_label_calls": 3,
    }


# --- reservations -----------------------------------------------------------------------------------
def test_calls_made_count_calls_not_made_go_back() -> None:
    store = InMemoryBudgetStore()
    budget = CallBudget("run", cap=2, store=store)
    with budget.reserve() as call:
        call.release()  # a cache hit found under the content lock
    with pytest.raises(RuntimeError), budget.reserve():
        raise RuntimeError("the request failed: no labels, not billed")
    with budget.reserve():
        pass  # the call
    with budget.reserve():
        pass
    assert budget.made == 2
    with pytest.raises(OverBudget) as raised:
        budget.reserve()
    assert raised.value.details == {"max_label_calls": 2}
    assert budget.exhausted and budget.refused == 1
    budget.close()
    assert store.used("run") == 2


def test_explicit_commit_and_release_settle_once() -> None:
    budget = CallBudget("run", cap=1, store=InMemoryBudgetStore())
    call = budget.reserve()
    call.commit()
    call.release()  # too late: the call was made
    call.commit()
    assert budget.made == 1
    with pytest.raises(OverBudget):
        budget.reserve()


def test_no_cap_never_refuses_and_never_asks_the_store() -> None:
    store = InMemoryBudgetStore()
    budget = CallBudget("run", cap=None, store=store)
    for _ in range(100):
        with budget.reserve():
            pass
    budget.close()
    assert budget.made == 100 and store.requests == 0
    assert CallBudget("run", cap=None).reserve() is not None  # no store needed without a cap


def test_a_cap_needs_a_store_and_a_block_of_at_least_one() -> None:
    with pytest.raises(ValueError, match="store"):
        CallBudget("run", cap=5)
    with pytest.raises(ValueError, match="block"):
        CallBudget("run", cap=5, store=InMemoryBudgetStore(), block=0)


def test_a_cap_of_zero_makes_no_call() -> None:
    budget = CallBudget("run", cap=0, store=InMemoryBudgetStore())
    with pytest.raises(OverBudget):
        budget.reserve()


def test_calls_are_taken_in_blocks_and_the_unused_rest_is_given_back() -> None:
    store = InMemoryBudgetStore()
    with CallBudget("run", cap=10_000, store=store, block=16) as budget:
        for _ in range(40):
            with budget.reserve():
                pass
        assert store.requests == 3  # 16 + 16 + 16 taken, not 40 requests
        assert store.used("run") == 48
    assert store.used("run") == 40  # close() gave 8 back
    assert store.requests == 4


def test_blocks_shrink_near_the_cap_so_no_invocation_hoards_the_rest() -> None:
    store = InMemoryBudgetStore()
    first = CallBudget("run", cap=100, store=store, block=16)
    with first.reserve():
        pass
    assert store.used("run") == 6  # 100 // 16: a share of what remains, not a full block
    second = CallBudget("run", cap=100, store=store, block=16)
    for _ in range(94):
        with second.reserve():
            pass
    with pytest.raises(OverBudget):
        second.reserve()  # the first invocation still holds 5
    for _ in range(5):
        with first.reserve():
            pass
    assert first.made + second.made == 100 == store.used("run")


def test_the_cap_holds_across_invocations_sharing_a_store() -> None:
    store = InMemoryBudgetStore()
    budgets = [CallBudget("run", cap=50, store=store, block=4) for _ in range(3)]
    made = 0
    for _ in range(40):
        for budget in budgets:
            try:
                with budget.reserve():
                    made += 1
            except OverBudget:
                pass
    for budget in budgets:
        budget.close()
    assert made == 50 == store.used("run")
    assert sum(b.made for b in budgets) == 50
    assert CallBudget("other-run", cap=50, store=store).reserve() is not None  # every run has its own count


def test_threads_never_make_more_calls_than_the_cap() -> None:
    store = InMemoryBudgetStore()
    budget = CallBudget("run", cap=137, store=store, block=8)
    made = 0
    made_lock = threading.Lock()
    start = threading.Barrier(16)

    def worker(number: int) -> None:
        nonlocal made
        start.wait()
        for attempt in range(40):
            try:
                reservation = budget.reserve()
            except OverBudget:
                continue
            with reservation as call:
                if (number + attempt) % 5 == 0:
                    call.release()  # labels found in the cache under the lock: nothing made
                    continue
                with made_lock:
                    made += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(worker, range(16)))
    budget.close()
    assert made == budget.made == 137 == store.used("run")
    # Full blocks, then shares shrinking near the cap (about block x (1 + ln block) requests), one give-back.
    assert store.requests <= 137 / 8 + 8 * (1 + math.log(8)) + 1


class _SlowStore(InMemoryBudgetStore):
    """A store whose ``take`` waits until it is let go: the first block is still on its way."""

    def __init__(self) -> None:
        super().__init__()
        self.let_go = threading.Event()
        self.takes = 0

    def take(self, run_key: str, wanted: int, cap: int) -> Grant:
        self.takes += 1
        self.let_go.wait(timeout=10)
        return super().take(run_key, wanted, cap)


def test_prepare_takes_the_first_block_ahead_and_a_reservation_waits_for_it_not_for_a_second() -> None:
    store = _SlowStore()
    budget = CallBudget("run", cap=100, store=store, block=4)
    budget.prepare()
    budget.prepare()  # once
    reserved = threading.Event()

    def reserve() -> None:
        with budget.reserve():
            reserved.set()

    waiter = threading.Thread(target=reserve)
    waiter.start()
    assert not reserved.wait(0.05)  # the block is on its way: the reservation waits for it
    store.let_go.set()
    waiter.join(timeout=5)
    assert reserved.is_set() and store.takes == 1  # the prepared block served it: no second request
    budget.close()
    assert (budget.made, store.used("run")) == (1, 1)  # the rest of the block went back


def test_a_prepared_block_no_call_used_goes_back_at_close() -> None:
    store = _SlowStore()
    store.let_go.set()
    budget = CallBudget("run", cap=100, store=store, block=4)
    budget.prepare()
    budget.close()  # waits for the block on its way, then gives it back
    assert store.used("run") == 0
    budget.prepare()  # after close: nothing is taken
    assert store.takes == 1


def test_no_cap_prepares_nothing() -> None:
    store = _SlowStore()
    CallBudget("run", cap=None, store=store).prepare()
    assert store.takes == 0
