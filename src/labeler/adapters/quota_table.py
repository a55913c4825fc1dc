"""One DetectLabels quota shared by every invocation of the stack, kept in the state table (DynamoDB).

The table holds one item per quota with ``tat``: the instant (µs since the epoch) of the next free
slot, GCRA's "theoretical arrival time". Slots are ``interval`` apart on one timeline shared by
every process, so the calls of all processes together are evenly spaced at the quota, whoever
makes them. A lease of ``k`` slots is one atomic ``UpdateItem`` that moves ``tat`` on by
``k × interval``, so the slots it got are known without a read. No slot of a lease comes before
``ready``: now plus the lead, twice the recent round trips and at least 50 ms (the answer must
arrive, and the waiting thread build and sign its request, before the first slot, or that slot is
lost):

* busy (``tat`` is at ``ready`` or later): ``ADD tat :span`` if ``tat >= :ready`` → slots ``[tat_old, tat_new)``;
* idle (``tat`` before ``ready``, or absent): ``SET tat = :ready + :span`` if it is still before →
  slots from ``ready``. Idle time is never saved up, so a start is never a burst; and a timeline whose
  booked slots end before the answer could arrive is restarted at ``ready`` rather than extended
  with slots that would pass before they are known.

A lease knows it is busy when ``tat`` as last seen is still ahead (it never moves backwards);
otherwise it guesses from its previous lease. A wrong guess costs one conditional request more
(``ConditionalCheckFailed``), never two.

>>> slots = TableSlots(client_factory, "my-state-table", quota_tps=50)  # doctest: +SKIP
>>> SlotLimiter(slots, fallback=LocalSlots(50 / 6)).acquire()           # doctest: +SKIP
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from labeler.adapters.ratelimit import Lease, LocalSlots, SlotLimiter, slot_interval

QUOTA_KEY = "quota#rekognition:DetectLabels"
# Refreshed by every lease: the item disappears (table TTL) only after a day without one.
ITEM_TTL_SECONDS = 24 * 3600


def build_table_client() -> Any:
    """A DynamoDB client for leases: a slow or failing table means the local pace at once, not waiting.

    No retries: a failed lease falls back to the local pace and the table is tried again a few
    seconds later; and a lease is not idempotent (a retried ``ADD`` whose first answer was lost
    would book its slots twice).
    """
    import boto3

    from labeler.adapters.aws_config import client_config

    config = client_config(
        connect_timeout=1,
        read_timeout=1,
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=2,
    )
    return boto3.client("dynamodb", config=config)


class TableSlots:
    """Slots of one quota on the state table's shared timeline (see the module docstring)."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        table_name: str,
        quota_tps: float,
        *,
        key: str = QUOTA_KEY,
        # at least the time a thread needs, after its slot is booked, to build and sign its request (~30 ms for
        # a 5 MB image; more while the interpreter is busy): in a fan-out the first slots of leases made
        # with 20 ms were the ones missed
        min_lead: float = 0.05,
        max_lead: float = 0.25,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # whole microseconds, rounded up: the spacing never drops below the quota's
        self._interval_us = math.ceil(slot_interval(quota_tps) * 1_000_000)
        self.interval = self._interval_us / 1_000_000
        self._client_factory = client_factory
        self._client: Any = None
        self._table = table_name
        self._key = {"id": {"S": key}}
        self._min_lead, self._max_lead = min_lead, max_lead
        self._round_trip = 0.05  # until measured: the first request also opens the connection
        self._measured = False
        self._wall = wall
        self._clock = clock
        self._idle_guess = True
        self._seen_tat_us = 0  # tat as last seen by this process (it only moves forwards)
        self._lock = threading.Lock()
        self.requests = 0  # UpdateItem requests sent (the cost bound counts them)

    @property
    def lead(self) -> float:
        """Seconds from a lease's request to its first slot: no slot before the answer can be in (twice the recent
        round trips, within bounds). ``SlotLimiter`` books at least this long before its last slot passes."""
        return min(self._max_lead, max(self._min_lead, 2 * self._round_trip))

    def prepare(self) -> None:
        """Build the table client now, so that the first lease costs one round trip and nothing more."""
        with self._lock:
            if self._client is None:
                self._client = self._client_factory()

    def lease(self, count: int) -> Lease:
        lease = self._lease(count, only_if_idle=False)
        if lease is None:
            raise RuntimeError("the quota item changed under every conditional lease")  # tat never moves back
        return lease

    def lease_if_idle(self, count: int) -> Lease | None:
        """Resume an idle timeline at ``ready`` with ``count`` slots; None (one request, nothing booked) if busy."""
        return self._lease(count, only_if_idle=True)

    def _lease(self, count: int, *, only_if_idle: bool) -> Lease | None:
        with self._lock:
            if self._client is None:  # built on first use: a run answered from the cache never needs it
                self._client = self._client_factory()
            now_mono, now_us = self._clock(), round(self._wall() * 1_000_000)
            span = count * self._interval_us
            ready_us = now_us + round(self.lead * 1_000_000)
            idle = self._idle_guess and ready_us > self._seen_tat_us
            if only_if_idle:
                steps = [self._resume]
            else:
                steps = [self._resume, self._extend] if idle else [self._extend, self._resume, self._extend]
            for step in steps:
                sent = self._clock()
                answer = step(now_us, ready_us, span)
                self._measure(self._clock() - sent)
                if answer is not None:
                    tat, previous = answer
                    self._idle_guess = step == self._resume
                    # resumed: every booked slot had passed, or the last ones were this process's own
                    resumed = previous is not None and (previous <= now_us or previous == self._seen_tat_us)
                    self._seen_tat_us = tat
                    first = now_mono + (tat - span - now_us) / 1_000_000
                    return Lease(first, count, self.interval, resumed=resumed)
            self._idle_guess = False  # only_if_idle: someone else is booking
            return None

    def _measure(self, round_trip: float) -> None:
        """The round-trip estimate: a slow answer raises it at once, fast ones lower it by 30 % each."""
        self._round_trip = round_trip if not self._measured else max(round_trip, 0.7 * self._round_trip)
        self._measured = True

    def _update(self, expression: str, condition: str, values: dict[str, Any], returns: str) -> dict[str, Any] | None:
        """One conditional ``UpdateItem``; the attributes it returns, or None when the condition failed."""
        self.requests += 1
        values[":expiration"] = {"N": str(round(self._wall()) + ITEM_TTL_SECONDS)}
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=self._key,
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValues=returns,
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return None
        return dict(response.get("Attributes", {}))

    def _extend(self, now_us: int, ready_us: int, span: int) -> tuple[int, int | None] | None:
        """Busy: the next ``span`` after the slots already booked (they reach past ``ready``)."""
        attributes = self._update(
            "ADD tat :span SET expiration = :expiration",
            "tat >= :ready",
            {":span": {"N": str(span)}, ":ready": {"N": str(ready_us)}},
            "UPDATED_NEW",
        )
        return None if attributes is None else (int(attributes["tat"]["N"]), None)

    def _resume(self, now_us: int, ready_us: int, span: int) -> tuple[int, int | None] | None:
        """Idle, or booked only up to before ``ready``: restart the timeline at ``ready``, never in the past."""
        attributes = self._update(
            "SET tat = :start, expiration = :expiration",
            "attribute_not_exists(tat) OR tat < :ready",
            {":start": {"N": str(ready_us + span)}, ":ready": {"N": str(ready_us)}},
            "UPDATED_OLD",
        )
        if attributes is None:
            return None
        # the timeline's end before this lease (0: none yet): it tells whether anyone else booked lately
        return ready_us + span, int(attributes["tat"]["N"]) if "tat" in attributes else 0


# The interpreter lock's switch interval while a limiter runs (CPython's default: 5 ms). See build_limiter.
GIL_SWITCH_INTERVAL = 0.001


def build_limiter(quota_tps: float, table_name: str = "", concurrent_invocations: int = 1) -> SlotLimiter:
    """The DetectLabels limiter of one process.

    With ``table_name``: the stack-wide quota in that table, falling back while the table fails to
    ``quota_tps / concurrent_invocations``, the pace at which that many invocations together stay
    within the quota. Without a table (local runs, tests): this process alone, at the full quota.

    It also shortens the interpreter lock's switch interval to ``GIL_SWITCH_INTERVAL`` (never lengthens
    it): a thread must send within 15 ms of its slot (``SlotLimiter.max_late``; it was 10 ms when this was
    measured), and at the quota an invocation's threads keep the interpreter busy (~20 ms of Python per
    image, mostly botocore), so at CPython's 5 ms a woken thread waited its turn past 10 ms in 45-49 % of
    wake-ups, and the slot was lost; at 1 ms in 13-19 % (measured: 26 threads keeping one interpreter busy;
    90th percentile 11-13 ms against 31-33 ms: scripts/measure_slot_wakeups.py), for no measurable CPU.
    """
    if sys.getswitchinterval() > GIL_SWITCH_INTERVAL:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    if not table_name:
        return SlotLimiter(LocalSlots(1.0 / slot_interval(quota_tps)))
    shared = TableSlots(build_table_client, table_name, quota_tps)
    fallback = LocalSlots(1.0 / slot_interval(quota_tps / max(1, concurrent_invocations)))
    return SlotLimiter(shared, fallback=fallback)
