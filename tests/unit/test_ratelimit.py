"""The slot limiter on an injected clock: spacing, lease sizes, expiry, deadlines, the fallback."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from labeler.adapters.ratelimit import Lease, LocalSlots, SlotLimiter, slot_interval
from labeler.models.errors import OutOfTime


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ScriptedSource:
    """A slot source that records each lease and fails while ``failing`` is set."""

    def __init__(self, clock: FakeClock, interval: float = 0.1) -> None:
        self.interval = interval
        self.inner = LocalSlots(1 / interval, clock=clock)
        self.counts: list[int] = []
        self.failing = False

    def lease(self, count: int) -> Lease:
        self.counts.append(count)
        if self.failing:
            raise ConnectionError("table unreachable")
        return self.inner.lease(count)


def test_a_quota_of_calls_spans_more_than_one_second() -> None:
    # Any one-second window then holds at most the quota, with 20 ms to spare for jitter.
    for quota in (1, 5, 25, 50, 500):
        interval = slot_interval(quota)
        assert quota * interval == pytest.approx(1.02)


def test_local_slots_are_contiguous_and_never_saved_up() -> None:
    clock = FakeClock()
    slots = LocalSlots(10, clock=clock)
    first = slots.lease(3)
    assert (first.first, first.resumed) == (1000.0, True)
    second = slots.lease(2)
    assert (second.first, second.resumed) == (pytest.approx(1000.3), False)
    clock.now = 2000.0  # a long pause: the next slot is now, not a burst of the slots that passed
    assert slots.lease(1).first == 2000.0


def test_calls_are_evenly_spaced_from_the_first_one() -> None:
    clock = FakeClock()
    limiter = SlotLimiter(LocalSlots(10, clock=clock), clock=clock, sleep=clock.sleep)
    moments = []
    for _ in range(12):
        limiter.acquire()
        moments.append(clock.now)
    assert moments[0] == 1000.0  # no burst at the start, and no wait either
    gaps = [b - a for a, b in itertools.pairwise(moments)]
    assert gaps == pytest.approx([0.1] * 11)


def test_a_lease_is_padded_only_while_the_process_has_the_timeline_to_itself() -> None:
    clock = FakeClock()
    timeline = ScriptedSource(clock)  # one timeline, two processes
    first = SlotLimiter(timeline, min_lease=5, clock=clock, sleep=clock.sleep)
    second = SlotLimiter(timeline, min_lease=5, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        first.acquire()
    second.acquire()  # books the next five slots
    for _ in range(5):
        first.acquire()  # alone so far: five more, after the second's
    assert timeline.counts == [5, 5, 5]
    # Its lease did not follow its own: someone else books too. Now one slot per waiting caller
    # (here one), so it never holds slots that another process waits for...
    first.acquire()
    assert timeline.counts == [5, 5, 5, 1]
    # ... until its leases follow each other again: nobody else is booking.
    first.acquire()
    assert timeline.counts == [5, 5, 5, 1, 5]
    assert first.stats.slots_expired == 0


def test_a_lease_takes_one_slot_per_waiting_caller() -> None:
    """While one caller leases, the others gather; the next lease books exactly their number."""
    gate = threading.Event()
    counts: list[int] = []

    class GatedSource:
        interval = 1e-6

        def lease(self, count: int) -> Lease:
            counts.append(count)
            if len(counts) == 1:
                gate.wait(10)
            return Lease(time.monotonic(), count, self.interval)  # others booked before it: not alone

    limiter = SlotLimiter(GatedSource(), min_lease=5, sleep=lambda _: None)
    callers = [threading.Thread(target=limiter.acquire) for _ in range(8)]
    callers[0].start()
    while not counts:
        time.sleep(0.001)
    for caller in callers[1:]:
        caller.start()
    while limiter._waiting < 8:  # every caller is in: one leasing, seven waiting for it
        time.sleep(0.001)
    gate.set()
    for caller in callers:
        caller.join(10)
    # 5 (padded: nothing was known yet), then one slot for each of the 3 callers left without one
    assert counts == [5, 3]
    assert limiter.stats.slots_used == 8


def test_slots_whose_moment_passed_are_dropped_not_bunched() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock)
    limiter = SlotLimiter(source, min_lease=5, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    clock.now += 60.0  # the process sat idle (a frozen Lambda container): 4 booked slots went by
    limiter.acquire()
    assert limiter.stats.slots_expired == 4
    assert clock.slept == [] and clock.now == 1060.0  # the new slot is now, not one of the old ones
    assert source.counts == [5, 5]


def test_a_slot_missed_by_a_late_wake_up_is_replaced_not_used_late() -> None:
    clock = FakeClock()
    limiter = SlotLimiter(LocalSlots(10, clock=clock), max_late=0.01, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    slot = limiter.reserve()  # 1000.1
    clock.now += 0.15  # the process was descheduled past its slot
    used = limiter.wait(slot)
    assert used == pytest.approx(1000.2) and clock.now == pytest.approx(1000.2)  # the next one, on time
    assert limiter.stats.slots_expired == 1

    def oversleep(seconds: float) -> None:
        clock.now += seconds + 0.05  # a process that always wakes 50 ms late

    late = SlotLimiter(LocalSlots(10, clock=clock), max_late=0.01, clock=clock, sleep=oversleep)
    late.acquire()
    late.acquire()  # replaced twice, then used late rather than never
    assert late.stats.slots_used == 2 and late.stats.slots_expired == 2


def test_no_slot_is_taken_after_the_latest_start() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock)
    limiter = SlotLimiter(source, min_lease=5, clock=clock, sleep=clock.sleep)
    limiter.acquire()  # slots at 1000.0 ... 1000.4; the next is 1000.1
    with pytest.raises(OutOfTime):
        limiter.acquire(latest_start=1000.05)
    assert limiter.stats.slots_used == 1  # the slot stays for a caller with more time
    limiter.acquire()
    assert clock.now == pytest.approx(1000.1)


def test_a_caller_already_out_of_time_leases_nothing() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock)
    limiter = SlotLimiter(source, clock=clock, sleep=clock.sleep)
    with pytest.raises(OutOfTime):
        limiter.acquire(latest_start=999.0)
    assert source.counts == []


def test_a_failing_source_falls_back_warns_once_and_is_retried_later() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock, interval=0.1)
    warnings: list[str] = []
    limiter = SlotLimiter(
        source,
        fallback=LocalSlots(2, clock=clock),
        min_lease=1,
        retry_after=5.0,
        max_retry_after=20.0,
        clock=clock,
        sleep=clock.sleep,
        warn=warnings.append,
    )
    source.failing = True
    for _ in range(30):  # 15 s at the fallback's 2 calls/s
        limiter.acquire()
    assert limiter.stats.fallback_leases == 30
    assert len(warnings) == 1 and "pacing locally" in warnings[0]
    # tried at 1000 and 1005; the next try is 10 s later (doubling): the work never waited for it
    assert limiter.stats.table_failures == 2
    assert clock.now == pytest.approx(1014.5)

    source.failing = False
    clock.now += 20.0
    limiter.acquire()
    assert limiter.stats.leases == 1  # back on the shared source
    source.failing = True
    clock.now += 100.0
    limiter.acquire()
    assert len(warnings) == 1  # a second outage is not logged again


class LeadSource:
    """A shared timeline as TableSlots keeps it: no slot before ``lead`` after the request, and idle time not
    saved up (a lease asked too late to follow on the booked slots restarts at ``ready``: a gap)."""

    def __init__(self, interval: float, lead: float) -> None:
        self.interval, self.lead = interval, lead
        self.tat = -1.0
        self.leases: list[Lease] = []

    def lease(self, count: int) -> Lease:
        ready = time.monotonic() + self.lead
        first = max(self.tat, ready)
        self.tat = first + count * self.interval
        self.leases.append(Lease(first, count, self.interval, resumed=first == ready))
        return self.leases[-1]


def test_the_next_lease_is_booked_a_lead_ahead_so_that_its_slots_follow_on() -> None:
    source = LeadSource(interval=0.05, lead=0.25)
    limiter = SlotLimiter(source, min_lease=5, book_ahead=0.1)
    for _ in range(6):  # five slots of the first lease, then the sixth caller books the next lease
        limiter.reserve()
    first, second = source.leases
    # booked while the first lease still had more than a lead to run: no slot between the two passes unused
    assert second.first == pytest.approx(first.last + source.interval)


def test_a_lease_counts_the_callers_whose_images_are_downloading_and_each_once() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock, interval=0.02)
    limiter = SlotLimiter(source, min_lease=1, clock=clock, sleep=clock.sleep)
    downloading = [threading.Thread(target=limiter.expect) for _ in range(9)]
    for thread in downloading:
        thread.start()
        thread.join()
    limiter.expect()
    limiter.expect()  # twice from one thread: one caller to come
    limiter.acquire()  # this thread was expected: it is waiting now, and counted once
    assert source.counts == [10]  # its slot and one for each of the nine threads still downloading


def test_an_announced_call_that_does_not_come_is_expected_no_more() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock, interval=0.02)
    limiter = SlotLimiter(source, min_lease=1, clock=clock, sleep=clock.sleep)

    def cached_answer() -> None:  # announced while downloading; the content cache answered: no call
        limiter.expect()
        limiter.unexpect()
        limiter.unexpect()  # settled twice: counted down once

    for _ in range(5):
        thread = threading.Thread(target=cached_answer)
        thread.start()
        thread.join()
    limiter.acquire()
    assert source.counts == [1]
