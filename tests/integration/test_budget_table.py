"""The run's shared DetectLabels count on DynamoDB (moto's server on loopback): never past the cap, few requests."""

from __future__ import annotations

import itertools
import math
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from labeler.adapters.budget_table import COUNT_ATTRIBUTE, BudgetTable
from labeler.adapters.progress import ProgressTable
from labeler.local.embedded_aws import EmbeddedAws
from labeler.logic.budget import CallBudget, Grant
from labeler.logic.report import Tally
from labeler.models.errors import OverBudget
from tests.support.sqs_driver import create_state_table

_tables = itertools.count()


class RequestCounter:
    """Counts the DynamoDB requests a client sends (a botocore event hook: the requests still go out)."""

    def __init__(self, client: Any) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        client.meta.events.register("before-call.dynamodb.*", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.calls[model.name] += 1


@pytest.fixture
def dynamodb(embedded_aws: EmbeddedAws) -> Any:
    return embedded_aws.client("dynamodb")


@pytest.fixture
def table(dynamodb: Any) -> BudgetTable:
    return BudgetTable(dynamodb, create_state_table(dynamodb, f"budget-state-{next(_tables)}"))


@pytest.fixture
def atomic_moto(table: BudgetTable) -> Iterator[None]:
    """DynamoDB applies each update to an item atomically; moto checks the condition and adds in plain Python
    without a lock, so these tests take two precautions to exercise our conditions rather than moto's races:

    * the run's item exists before the racers start, as in a fan-out (the splitter's ``set_plan`` writes it
      before any worker runs): two moto updates creating the same item at once can lose one ADD (seen here);
    * a long thread switch interval keeps moto's check-and-add uninterrupted (no I/O in between). Threads
      still interleave at every socket read and write.
    """
    ProgressTable(table.client, table.table).set_plan("run", batch_count=1, plan={})
    previous = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    yield
    sys.setswitchinterval(previous)


def test_calls_are_taken_up_to_the_cap_then_refused(table: BudgetTable) -> None:
    assert table.used("run-a") == 0
    assert table.take("run-a", wanted=16, cap=40) == Grant(granted=16, used=16)
    assert table.take("run-a", wanted=16, cap=40) == Grant(granted=16, used=32)
    assert table.take("run-a", wanted=16, cap=40) == Grant(granted=8, used=40)  # the rest, not a full block
    assert table.take("run-a", wanted=1, cap=40) == Grant(granted=0, used=40)
    table.give_back("run-a", 5)
    assert table.used("run-a") == 35
    assert table.take("run-a", wanted=16, cap=40) == Grant(granted=5, used=40)
    assert table.take("run-b", wanted=3, cap=40) == Grant(granted=3, used=3)  # every run has its own count
    assert table.take("run-c", wanted=3, cap=0) == Grant(granted=0, used=0)


def test_a_partial_grant_at_the_cap_costs_one_extra_request(table: BudgetTable) -> None:
    counter = RequestCounter(table.client)
    table.take("run", wanted=95, cap=100)
    assert table.take("run", wanted=16, cap=100) == Grant(granted=5, used=100)
    assert counter.calls == Counter({"UpdateItem": 3})  # 95; 16 refused (returns the count 95); 5


def test_the_count_lives_on_the_runs_progress_item(table: BudgetTable) -> None:
    progress = ProgressTable(table.client, table.table)
    progress.set_plan("run", batch_count=2, plan={"total": 50})
    table.take("run", wanted=7, cap=100)
    assert progress.record_batch("run", 0, Tally(succeeded=25))
    item = table.client.get_item(TableName=table.table, Key={"id": {"S": "run#run"}})["Item"]
    assert item[COUNT_ATTRIBUTE] == {"N": "7"} and item["batch_count"] == {"N": "2"}
    assert "expiration" in item  # the table's TTL removes the count with the run's progress
    read = progress.read("run")
    assert read.batches_done == 1 and read.tally.succeeded == 25  # progress counters are undisturbed


@pytest.mark.usefixtures("atomic_moto")
def test_concurrent_invocations_never_exceed_the_cap_and_send_few_requests(table: BudgetTable) -> None:
    cap, block, invocations, threads_each = 300, 8, 6, 4
    counter = RequestCounter(table.client)
    made = Counter[int]()
    made_lock = threading.Lock()
    start = threading.Barrier(invocations * threads_each)

    def invocation(number: int) -> CallBudget:
        budget = CallBudget("run", cap=cap, store=table, block=block)

        def worker(thread: int) -> None:
            start.wait()
            for attempt in range(40):  # 24 threads x 40 = 960 wanted calls, 300 allowed
                try:
                    reservation = budget.reserve()
                except OverBudget:
                    return
                with reservation as call:
                    if (thread + attempt) % 7 == 0:
                        call.release()  # a cache hit under the lock: not made, not counted
                        continue
                    with made_lock:
                        made[number] += 1

        with ThreadPoolExecutor(threads_each) as pool:
            list(pool.map(worker, range(threads_each)))
        budget.close()
        return budget

    with ThreadPoolExecutor(invocations) as pool:
        budgets = list(pool.map(invocation, range(invocations)))

    total = sum(made.values())
    assert total == sum(b.made for b in budgets)
    assert total <= cap
    # Stops short only by the blocks other invocations held at that moment (each a share of what remained).
    assert total >= cap - invocations * block
    assert table.used("run") == total  # every unused block was given back
    updates = counter.calls["UpdateItem"]
    # Full blocks, shrinking shares near the cap, one refused attempt per partial grant, one give-back each.
    bound = cap / block + invocations * (block * (1 + math.log(block)) + 2)
    assert updates <= bound, (updates, bound)
    assert updates < total / 2  # far fewer requests than calls
    assert counter.calls["GetItem"] == 1  # table.used() above; reservations never read


@pytest.mark.usefixtures("atomic_moto")
def test_racing_takers_are_granted_exactly_the_cap(table: BudgetTable) -> None:
    grants: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def taker(_: int) -> None:
        start.wait()
        while True:
            grant = table.take("run", wanted=5, cap=101)
            with lock:
                grants.append(grant.granted)
            if grant.granted == 0:
                return

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(taker, range(12)))
    assert sum(grants) == 101 == table.used("run")
