"""The stack-wide quota in DynamoDB (moto server on loopback), on injected clocks."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from labeler.adapters.quota_table import QUOTA_KEY, TableSlots, build_limiter, build_table_client
from labeler.adapters.ratelimit import LocalSlots, SlotLimiter, slot_interval
from labeler.local.embedded_aws import EmbeddedAws
from tests.support.sqs_driver import create_state_table

EPOCH = 1_800_000_000.0  # the wall clock at FakeClock 0
_tables = itertools.count()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class CountingClients:
    """The limiter's own DynamoDB clients (on the embedded endpoint), counting the UpdateItem requests sent."""

    def __init__(self) -> None:
        self.update_items = 0

    def __call__(self) -> Any:
        client = build_table_client()
        client.meta.events.register("before-send.dynamodb.UpdateItem", self._count)
        return client

    def _count(self, **_: Any) -> None:
        self.update_items += 1


@pytest.fixture
def table(embedded_aws: EmbeddedAws) -> str:
    return create_state_table(embedded_aws.client("dynamodb"), f"quota-{next(_tables)}")


@pytest.fixture
def clients(embedded_aws: EmbeddedAws) -> CountingClients:
    return CountingClients()


def slots_of(clock: FakeClock, clients: Any, table: str, quota: float = 50.0) -> TableSlots:
    return TableSlots(clients, table, quota, wall=clock.wall, clock=clock)


def with_fallback(slots: TableSlots, clock: FakeClock, warnings: list[str], rate: float) -> SlotLimiter:
    """A limiter on ``slots`` that falls back to ``rate`` calls/s, its warnings kept in ``warnings``."""
    fallback = LocalSlots(rate, clock=clock)
    return SlotLimiter(slots, fallback=fallback, clock=clock, sleep=clock.sleep, warn=warnings.append)


def test_leases_continue_one_timeline_one_request_each(clients: CountingClients, table: str) -> None:
    clock = FakeClock()
    slots = slots_of(clock, clients, table)
    first = slots.lease(5)
    assert first.resumed
    # now plus the lead: twice the round trip (0.05 s expected for a first request, which opens the
    # connection), so the answer arrives before the first slot
    assert first.first == pytest.approx(0.1)
    assert slots.interval == pytest.approx(slot_interval(50), abs=1e-6)
    second = slots.lease(3)
    assert not second.resumed
    assert second.first == pytest.approx(first.first + 5 * slots.interval)
    assert clients.update_items == 2  # one UpdateItem per lease, no read


def test_processes_sharing_the_table_never_get_the_same_or_bunched_slots(clients: CountingClients, table: str) -> None:
    clock = FakeClock()
    processes = [slots_of(clock, clients, table) for _ in range(3)]
    moments: list[float] = []
    for round_ in range(4):
        for number, process in enumerate(processes):
            moments += process.lease(2 + number + round_).slots()
        clock.now += 0.05
    moments.sort()
    gaps = [b - a for a, b in itertools.pairwise(moments)]
    interval = processes[0].interval
    assert min(gaps) == pytest.approx(interval) and max(gaps) == pytest.approx(interval)
    assert moments[0] >= 0.0
    # each process guessed "idle" once at first (one wrong guess: two requests), then one request per lease
    assert clients.update_items == 12 + 2


def test_an_idle_timeline_restarts_now_not_in_the_past(clients: CountingClients, table: str) -> None:
    clock = FakeClock()
    slots = slots_of(clock, clients, table)
    slots.lease(5)
    slots.lease(5)  # busy now: the next lease guesses "extend"
    clock.now = 3600.0
    lease = slots.lease(5)
    # now plus the minimum lead (the fake clock's round trips take 0 s): time to build the request
    assert lease.resumed and lease.first == pytest.approx(3600.05)
    assert clients.update_items == 4  # the wrong guess cost one conditional request


def test_no_slot_comes_before_the_answer_even_when_others_booked_until_just_before(
    clients: CountingClients, table: str
) -> None:
    clock = FakeClock()
    other, ours = slots_of(clock, clients, table), slots_of(clock, clients, table)
    booked = other.lease(5)  # the other process's slots end 0.1 + 5 × 20.4 ms from now
    clock.now = booked.last  # ours asks while the other's last slot is now: its answer comes after it
    lease = ours.lease(3)
    assert lease.first == pytest.approx(clock.now + 0.1)  # ours from now plus its lead, none already past
    assert not lease.resumed  # someone booked lately: not an idle timeline (no padding, see SlotLimiter)
    later = other.lease(2)
    assert later.first == pytest.approx(lease.first + 3 * ours.interval)  # one timeline still: no overlap


def test_the_lead_follows_slow_answers_at_once_and_fast_ones_gradually(clients: CountingClients, table: str) -> None:
    clock = FakeClock()
    delays = [0.08, 0.0, 0.0]

    def slow_then_fast_clients() -> Any:
        client = clients()
        client.meta.events.register("before-send.dynamodb.UpdateItem", lambda **_: clock.sleep(delays.pop(0)))
        return client

    slots = slots_of(clock, slow_then_fast_clients, table)
    slots.lease(1)  # answered 80 ms later
    clock.now = 10.0  # idle again
    assert slots.lease(1).first - 10.0 == pytest.approx(2 * 0.08)  # twice the slow round trip
    clock.now = 20.0
    # one fast answer lowers the estimate by 30 %, not to nothing: a DynamoDB latency spike is not a one-off
    assert slots.lease(1).first - 20.0 == pytest.approx(2 * 0.7 * 0.08)


def test_the_item_expires_by_the_table_ttl_a_day_after_its_last_lease(
    embedded_aws: EmbeddedAws, clients: CountingClients, table: str
) -> None:
    clock = FakeClock()
    slots_of(clock, clients, table).lease(1)
    item = embedded_aws.client("dynamodb").get_item(TableName=table, Key={"id": {"S": QUOTA_KEY}})["Item"]
    assert int(item["expiration"]["N"]) == round(EPOCH) + 24 * 3600
    assert int(item["tat"]["N"]) == round((EPOCH + 0.1) * 1_000_000) + slots_of(clock, clients, table)._interval_us


def test_a_limiter_on_the_table_costs_one_request_per_five_calls_when_alone(
    clients: CountingClients, table: str
) -> None:
    clock = FakeClock()
    limiter = SlotLimiter(slots_of(clock, clients, table), clock=clock, sleep=clock.sleep)
    moments = []
    for _ in range(50):
        limiter.acquire()
        moments.append(clock.now)
    assert clients.update_items == 10
    # evenly spaced, never closer: a lone caller that only asks when its last slot has come finds the
    # timeline's end nearer than the lead, and its next lease starts a lead later (a gap, never a burst)
    assert min(b - a for a, b in itertools.pairwise(moments)) == pytest.approx(slot_interval(50), abs=1e-4)


def test_prepare_builds_the_table_client_once_in_the_background_and_the_first_lease_uses_it(
    clients: CountingClients, table: str
) -> None:
    import threading

    built: list[str] = []

    def recorded_clients() -> Any:
        built.append(threading.current_thread().name)
        return clients()

    clock = FakeClock()
    limiter = SlotLimiter(slots_of(clock, recorded_clients, table), clock=clock, sleep=clock.sleep)
    limiter.prepare(book=False)
    limiter.prepare(book=False)  # idempotent: one client, one thread
    for _ in range(500):  # the background thread builds it (a few ms); wait for it, not for a duration
        if built:
            break
        threading.Event().wait(0.01)
    limiter.acquire()
    assert built == ["limiter-prepare"]  # built once, off the caller's thread
    assert clients.update_items == 1  # preparing costs no request


def test_prepare_for_a_likely_call_books_the_first_slots_meanwhile_spanning_the_booking_lead(
    clients: CountingClients, table: str
) -> None:
    import threading

    clock = FakeClock()
    slots = slots_of(clock, clients, table)
    limiter = SlotLimiter(slots, min_lease=5, clock=clock, sleep=clock.sleep)
    limiter.prepare()
    for _ in range(500):  # the background thread leases (one request); wait for it, not for a duration
        if limiter.stats.leases:
            break
        threading.Event().wait(0.01)
    assert clients.update_items == 1 and limiter.stats.leases == 1
    # enough slots that the next lease, booked a lead before the last of them, can follow on them
    lead_ahead = max(limiter.book_ahead, slots.lead + slots.interval)
    assert limiter.stats.slots_leased * slots.interval > lead_ahead
    limiter.acquire()  # the caller's slot was booked while it got ready: no request of its own
    assert clients.update_items == 1


def test_prepare_books_nothing_ahead_on_a_busy_timeline(clients: CountingClients, table: str) -> None:
    import threading

    clock = FakeClock()
    busy = SlotLimiter(slots_of(clock, clients, table), min_lease=50, clock=clock, sleep=clock.sleep)
    busy.acquire()  # another process's 50 slots: the timeline is booked for the next second
    limiter = SlotLimiter(slots_of(clock, clients, table), min_lease=5, clock=clock, sleep=clock.sleep)
    limiter.prepare()
    for _ in range(500):  # the background thread's one conditional request; wait for it, not for a duration
        if clients.update_items == 2:
            break
        threading.Event().wait(0.01)
    threading.Event().wait(0.05)
    # slots booked now, while this process's image downloads, would push the other process's next ones back
    assert clients.update_items == 2 and limiter.stats.leases == 0 and limiter.stats.slots_leased == 0
    limiter.acquire()  # the caller books when it is ready, after the other process's slots
    assert limiter.stats.leases == 1 and limiter.stats.slots_expired == 0


def test_a_missing_table_means_the_local_pace_logged_once(embedded_aws: EmbeddedAws, clients: CountingClients) -> None:
    clock = FakeClock()
    name = f"quota-later-{next(_tables)}"
    warnings: list[str] = []
    limiter = with_fallback(slots_of(clock, clients, name), clock, warnings, rate=10)
    for _ in range(20):
        limiter.acquire()
    assert limiter.stats.fallback_leases > 0 and limiter.stats.leases == 0
    assert len(warnings) == 1 and "ResourceNotFoundException" in warnings[0]

    create_state_table(embedded_aws.client("dynamodb"), name)  # the table is back
    clock.now += 60.0
    limiter.acquire()
    assert limiter.stats.leases == 1
    assert len(warnings) == 1


def test_a_slow_table_means_the_local_pace(clients: CountingClients, table: str) -> None:
    from botocore.exceptions import ReadTimeoutError

    def slow_clients() -> Any:
        client = clients()

        def time_out(**_: Any) -> None:
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1")  # what a read timeout of 1 s raises

        client.meta.events.register("before-send.dynamodb.UpdateItem", time_out)
        return client

    clock = FakeClock()
    warnings: list[str] = []
    limiter = with_fallback(slots_of(clock, slow_clients, table), clock, warnings, rate=5)
    for _ in range(10):
        limiter.acquire()
    assert limiter.stats.slots_used == 10
    assert limiter.stats.table_failures == 1 and len(warnings) == 1 and "ReadTimeoutError" in warnings[0]


def test_a_limiter_shortens_the_interpreter_lock_switch_interval_never_lengthens_it() -> None:
    import sys

    from labeler.adapters.quota_table import GIL_SWITCH_INTERVAL

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # CPython's default
        build_limiter(50.0)
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL)  # woken threads send on time
        sys.setswitchinterval(0.0005)
        build_limiter(50.0)
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)


def test_build_limiter_shares_the_quota_only_through_a_table() -> None:
    alone = build_limiter(50.0)
    assert isinstance(alone.source, LocalSlots) and alone.fallback is None
    assert alone.source.interval == pytest.approx(slot_interval(50))
    shared = build_limiter(50.0, "state-table", concurrent_invocations=6)
    assert isinstance(shared.source, TableSlots)
    assert shared.source.interval == pytest.approx(slot_interval(50), abs=1e-6)
    assert shared.fallback is not None and shared.fallback.interval == pytest.approx(slot_interval(50 / 6))
