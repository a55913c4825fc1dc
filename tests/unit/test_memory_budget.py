"""labeler.adapters.memory: one budget for bodies and work, first come first served, never a deadlock."""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable

import pytest

from labeler.adapters.memory import MemoryBudget, MemoryWaitTimeout, Reservation, budget_megabytes

WAIT = 10.0  # generous: a thread that is still blocked after this is deadlocked


def run_threads(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads), "a thread is still waiting: deadlock"


def queued(budget: MemoryBudget, count: int, kind: str = "work") -> bool:
    return len(budget._queues[kind]) == count


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.002)


class Watcher:
    """What the threads hold at once, counted by the threads themselves (not by the budget's own numbers)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held = self.peak = self.working = 0
        self.alone_while_others_worked = 0

    def add(self, amount: int, *, work: bool = False) -> None:
        with self.lock:
            self.held += amount
            self.peak = max(self.peak, self.held)
            self.working += work

    def remove(self, amount: int, *, work: bool = False) -> None:
        with self.lock:
            self.held -= amount
            self.working -= work


def test_many_threads_never_hold_more_than_the_budget() -> None:
    budget = MemoryBudget(capacity=1000, body_share=0.25)
    watcher = Watcher()
    rng = random.Random(7)
    plans = [(rng.randint(1, 250), rng.randint(1, 750)) for _ in range(64)]

    def entry(body_size: int, work_size: int) -> None:
        body = budget.hold_body(body_size)
        watcher.add(body_size)
        with budget.reserve(work_size):
            watcher.add(work_size, work=True)
            time.sleep(0.001)
            watcher.remove(work_size, work=True)
        watcher.remove(body_size)
        body.release()

    run_threads([lambda b=b, w=w: entry(b, w) for b, w in plans])
    assert 0 < watcher.peak <= 1000
    assert budget.peak <= 1000
    assert budget.used == budget.body_used == budget.work_used == 0


def test_bodies_never_take_more_than_their_share() -> None:
    budget = MemoryBudget(capacity=1000, body_share=0.3)
    watcher = Watcher()
    release = threading.Event()

    def download() -> None:
        body = budget.hold_body(100)
        watcher.add(100)
        release.wait(WAIT)
        watcher.remove(100)
        body.release()

    threads = [threading.Thread(target=download, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: watcher.held == 300)
    time.sleep(0.05)  # the other five are waiting, not about to arrive
    assert watcher.held == budget.body_used == 300
    assert budget.try_hold_body(1) is None  # and nobody jumps the queue
    release.set()
    for thread in threads:
        thread.join(WAIT)
    assert budget.used == 0


class Turns:
    """Threads that each take a work reservation and write down when they get in (with the work then held)
    and out; the one started with ``hold=True`` keeps its reservation until :meth:`let_go`."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.log: list[str] = []
        self.threads: list[threading.Thread] = []
        self._holding, self._release = threading.Event(), threading.Event()

    def start(self, name: str, amount: int, *, hold: bool = False) -> None:
        def work() -> None:
            with self.budget.reserve(amount):
                self.log.append(f"{name} in {self.budget.work_used}")
                if hold:
                    self._holding.set()
                    self._release.wait(WAIT)
                self.log.append(f"{name} out")

        self.threads.append(threading.Thread(target=work, daemon=True))
        self.threads[-1].start()
        if hold:
            self._holding.wait(WAIT)
        else:  # queued behind the one holding: wait until it is in line, so the order is the test's
            wait_until(functools.partial(queued, self.budget, len(self.threads) - 1))

    def let_go(self) -> None:
        self._release.set()
        for thread in self.threads:
            thread.join(WAIT)
        assert not any(thread.is_alive() for thread in self.threads), "deadlock"


def test_work_larger_than_the_budget_proceeds_alone() -> None:
    budget = MemoryBudget(capacity=100, body_share=0.25)
    turns = Turns(budget)
    turns.start("first", 60, hold=True)
    turns.start("huge", 500)
    turns.let_go()
    # The huge one waited for the first to finish, then ran with nothing else at work (500 held, alone).
    assert turns.log == ["first in 60", "first out", "huge in 500", "huge out"]
    assert budget.used == 0


def test_first_come_first_served_even_when_a_later_one_would_fit() -> None:
    budget = MemoryBudget(capacity=100, body_share=0.25)
    turns = Turns(budget)
    turns.start("first", 60, hold=True)
    for name, amount in (("second", 60), ("huge", 500), ("third", 30)):  # queued in this order
        turns.start(name, amount)
    assert turns.log == ["first in 60"]  # 60 + 60 > 100; "third" would fit beside "first" but waits its turn
    turns.let_go()
    assert turns.log[1:] == [
        "first out",
        "second in 60",
        "second out",
        "huge in 500",
        "huge out",
        "third in 30",
        "third out",
    ]
    assert budget.used == 0


def test_threads_holding_bodies_all_get_their_work_done() -> None:
    """Every thread holds a body and then wants more work than is left: the classic deadlock, avoided."""
    budget = MemoryBudget(capacity=100, body_share=0.5)
    bodies_held = threading.Barrier(5, timeout=WAIT)
    done: list[int] = []

    def entry(index: int) -> None:
        body = budget.hold_body(10)
        bodies_held.wait()  # 50 held in bodies by five threads, before any asks for work
        with budget.reserve(80):  # 50 + 80 > 100: each must wait for the others' work, never for their bodies
            done.append(index)
        body.release()

    run_threads([lambda i=i: entry(i) for i in range(5)])
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert budget.peak <= 130  # the bodies (50) and one work (80) at a time
    assert budget.used == 0


def test_a_thread_holding_work_is_never_made_to_wait() -> None:
    budget = MemoryBudget(capacity=100, body_share=0.25)
    with budget.reserve(90):
        with budget.reserve(90):  # nested: granted at once (the thread may be what others wait for)
            assert budget.used == 180
        body = budget.hold_body(50)  # a body while working: at once too
        body.release()
    assert budget.used == 0


def held_elsewhere(budget: MemoryBudget, amount: int) -> Reservation:
    """A body held by another thread (a thread's own second body would be granted at once)."""
    found: list[Reservation] = []
    thread = threading.Thread(target=lambda: found.append(budget.hold_body(amount)), daemon=True)
    thread.start()
    thread.join(WAIT)
    return found[0]


def test_a_wait_with_a_timeout_gives_up_and_leaves_the_queue() -> None:
    budget = MemoryBudget(capacity=100, body_share=0.25)
    blocker = held_elsewhere(budget, 25)
    with pytest.raises(MemoryWaitTimeout):
        budget.hold_body(10, timeout=0.05)
    assert not budget._queues["body"]
    blocker.release()
    assert budget.hold_body(10, timeout=0.05).amount == 10


def test_reservations_shrink_grow_and_release_once() -> None:
    budget = MemoryBudget(capacity=100, body_share=0.5)
    body = budget.hold_body(10)
    assert body.try_grow_to(40) and budget.body_used == 40
    assert not body.try_grow_to(60)  # over the body share (50)
    body.shrink_to(5)
    assert budget.used == 5
    body.release()
    body.release()
    assert budget.used == budget.body_used == 0


@pytest.mark.parametrize(
    ("held", "wanted"),
    [
        (25, 20),  # the body share (25) is full: the next body waits for one to be released
        (10, 60),  # larger than the whole share: it waits until no other body is held, then proceeds
    ],
)
def test_a_body_that_does_not_fit_waits_until_one_is_released(held: int, wanted: int) -> None:
    budget = MemoryBudget(capacity=100, body_share=0.25)
    first = held_elsewhere(budget, held)
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(budget.hold_body(wanted).amount), daemon=True)
    waiter.start()
    wait_until(lambda: len(budget._queues["body"]) == 1)
    time.sleep(0.02)
    assert result == []
    first.release()
    waiter.join(WAIT)
    assert result == [wanted] and budget.body_used == wanted


@pytest.mark.parametrize(
    ("setting", "function_mb", "expected"),
    [(96, 1769, 96), (96, 512, 96), (96, 256, 64), (96, 128, 16), (300, 0, 300), (8, 0, 16)],
)
def test_the_budget_fits_the_function(setting: int, function_mb: int, expected: int) -> None:
    assert budget_megabytes(setting, function_mb) == expected
