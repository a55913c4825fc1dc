"""Call slots for one rate quota, handed to threads: evenly spaced, never bunched, deadline-aware.

A *slot* is an instant at which one call may start. A :class:`SlotSource` reserves runs of
consecutive slots (``interval`` apart) for this process: :class:`LocalSlots` in memory, or
``labeler.adapters.quota_table.TableSlots``, one quota shared by every process through DynamoDB.
:class:`SlotLimiter` gives each calling thread one slot and sleeps until it. It books slots for
the threads that are waiting, all at once, shortly before the slots it booked last run out; and
it paces itself on a local fallback source while the shared one fails.

>>> limiter = SlotLimiter(LocalSlots(rate_per_second=49))
>>> waited = limiter.acquire()  # the first slot is now; the next ones follow 1/49 s apart

A caller that prepares its request after taking the slot reserves it first and waits for it just
before sending (``reserve``, then ``wait``): the request then leaves at the slot's moment.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from labeler.models.errors import OutOfTime

# Spacing slots 2 % wider than 1/quota: a quota counted over any one second then tolerates 20 ms
# of jitter between a call and the one a quota later (at exactly 1/quota, every late call pushes
# the next-second's call over the quota: about one call in two under a sliding window).
JITTER_HEADROOM = 0.02
_Leased = TypeVar("_Leased")  # what a lease request gives: a Lease, or None when it may book nothing


# How late after its slot a call may still leave. Slots are 1.02/quota apart, so a quota of calls spans 1.02 s:
# a call up to 20 ms late cannot put a one-second window over the quota. 15 ms leaves 5 ms for the request's way
# to the service. At 10 ms, 3.4 % of a fan-out's calls (5 workers on 2 vCPUs) woke too late and lost their slot
# (fan-out utilisation 0.92-0.94); at 15 ms 1.3-1.9 % (0.96), with 0.3-0.7 % of the calls throttled.
MAX_LATE = 0.75 * JITTER_HEADROOM


def slot_interval(quota_tps: float, headroom: float = JITTER_HEADROOM) -> float:
    """Seconds between two slots so that no one-second window holds more than ``quota_tps`` calls.

    >>> round(slot_interval(50), 4)
    0.0204
    """
    if quota_tps <= 0:
        raise ValueError("quota_tps must be positive")
    return (1.0 + headroom) / quota_tps


@dataclass(frozen=True)
class Lease:
    """``count`` slots: ``first`` (a ``time.monotonic()`` instant), then one every ``interval`` seconds."""

    first: float
    count: int
    interval: float
    # The timeline was idle (its next free slot had passed): nobody else is booking right now.
    resumed: bool = False

    def slots(self) -> list[float]:
        return [self.first + i * self.interval for i in range(self.count)]

    @property
    def last(self) -> float:
        return self.first + (self.count - 1) * self.interval


class SlotSource(Protocol):
    """Reserves runs of consecutive slots, ``interval`` seconds apart."""

    interval: float

    def lease(self, count: int) -> Lease:
        """Reserve ``count`` consecutive slots."""
        ...


@runtime_checkable
class PreparedSource(Protocol):
    """A source that can get ready for its first lease ahead of it (build a client), and lease ahead of need
    when nobody else is booking."""

    def prepare(self) -> None: ...

    def lease_if_idle(self, count: int) -> Lease | None:
        """``count`` slots from ``ready`` if the timeline is idle there; None (nothing booked) if it is busy."""
        ...


class LocalSlots:
    """In-process slots: the pace of one process alone (no shared table, or the table is failing).

    Idle time is not saved up: after a pause the next slot is *now*, never a burst of past slots.
    """

    def __init__(self, rate_per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self.interval = 1.0 / rate_per_second
        self._clock = clock
        self._next = -math.inf
        self._lock = threading.Lock()

    def lease(self, count: int) -> Lease:
        with self._lock:
            now = self._clock()
            resumed = self._next < now
            first = now if resumed else self._next
            self._next = first + count * self.interval
            return Lease(first, count, self.interval, resumed)


@dataclass
class LimiterStats:
    """What the limiter did, for tests, benchmarks and the cost bound (leases per call)."""

    leases: int = 0
    fallback_leases: int = 0
    slots_leased: int = 0
    slots_used: int = 0
    # leased but never used: passed while no thread wanted them, left when the process went idle,
    # or missed by a caller that woke too late to send on time
    slots_expired: int = 0
    table_failures: int = 0


class SlotLimiter:
    """Gives each caller one slot of ``source`` and sleeps until it; thread-safe.

    Booking: one thread at a time leases (no lock held during the request), one slot for every
    thread then waiting, at most ``max_lease`` (about a second of the quota). It books when this
    process has no booked slot left, or ``book_ahead`` seconds before its last one: meanwhile new
    callers gather, so at full load a lease serves many of them at once and no slot is booked for a
    caller that never comes. Only while this process has the timeline to itself (its last lease
    resumed an idle timeline, or followed on its own previous one) is a lease padded to
    ``min_lease`` slots: a slot it then leaves unused is one nobody else was waiting for.

    When ``source`` raises, the limiter leases from ``fallback`` instead, warns once, and tries
    ``source`` again after ``retry_after`` seconds (doubling while it keeps failing, up to
    ``max_retry_after``).
    """

    def __init__(
        self,
        source: SlotSource,
        *,
        fallback: SlotSource | None = None,
        min_lease: int = 5,
        max_lease: int | None = None,
        book_ahead: float = 0.1,
        max_late: float = MAX_LATE,
        retry_after: float = 5.0,
        max_retry_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.fallback = fallback
        self.min_lease = max(1, min_lease)
        self.max_lease = max(self.min_lease, max_lease or math.ceil(1.0 / source.interval))
        self.book_ahead = book_ahead
        self.max_late = max_late
        self.retry_after = retry_after
        self.max_retry_after = max_retry_after
        self.stats = LimiterStats()
        self._clock = clock
        self._sleep = sleep
        self._warn = warn or _log_warning
        self._slots: deque[float] = deque()
        self._booked_until = -math.inf  # this process's last booked slot
        self._alone = True  # nobody else booked around this process's last lease (or there was none yet)
        self._waiting = 0
        self._expected = 0  # threads that announced a call (their image is downloading) and have not reserved yet
        self._expecting = threading.local()
        self._leasing = False
        self._cond = threading.Condition()
        self._source_retry_at = -math.inf
        self._failures_in_a_row = 0
        self._warned = False
        self._prepared = False

    def prepare(self, book: bool = True) -> None:
        """Get ready for the first call in the background (once): called when a call is coming (an image
        is being downloaded). The source builds its client; then, with ``book`` (a call is likely: the image
        is new), the first lease is taken meanwhile, so that its round trip and lead overlap the download
        instead of following it. That lease spans the booking lead: the next one can follow on it."""
        with self._cond:
            if self._prepared:
                return
            self._prepared = True
        if not isinstance(self.source, PreparedSource):  # local slots: nothing to build, no round trip to hide
            return
        threading.Thread(target=self._prepare_source, args=(book,), name="limiter-prepare", daemon=True).start()

    def _prepare_source(self, book: bool) -> None:
        try:
            assert isinstance(self.source, PreparedSource)
            self.source.prepare()
            if book:
                self._book_first()
        except Exception:  # the first lease tries again, and falls back if it must
            return

    def _book_first(self) -> None:
        """The first lease, before any caller waits, if the shared timeline is idle: slots that pass while the
        image still downloads then delay nobody. On a busy timeline (other processes calling, e.g. the fan-out's
        workers starting together) they would push everyone's next slots back: the first caller books then."""
        assert isinstance(self.source, PreparedSource)
        with self._cond:
            if self._slots or self._leasing or self._booked_until > -math.inf:
                return  # a caller came first and booked
            # enough slots that the next lease, booked a lead before the last of them, can follow on them
            count = max(self.min_lease, math.ceil(self._book_ahead() / self.source.interval) + 1)
            lease = self._while_leasing(lambda: self.source.lease_if_idle(count))
            if lease is not None:
                self.stats.leases += 1
                self._take(lease)

    def acquire(self, latest_start: float | None = None) -> float:
        """Wait for this caller's slot; returns the seconds waited.

        ``latest_start`` (a ``time.monotonic()`` instant): raise :class:`OutOfTime` rather than take a
        slot after it; the slot is then left for another caller.
        """
        started = self._clock()
        self.wait(self.reserve(latest_start), latest_start)
        return max(0.0, self._clock() - started)

    def expect(self) -> None:
        """This thread will likely want a slot soon (its image is downloading). Leases count it with the callers
        already waiting, so that the slots for a burst of downloads are booked in one request ahead of them
        rather than a small lease per arrival, each a round trip and a lead late. Undone by this thread's
        :meth:`reserve` or :meth:`unexpect`; a second call before either counts once."""
        with self._cond:
            if not getattr(self._expecting, "on", False):
                self._expecting.on = True
                self._expected += 1

    def unexpect(self) -> None:
        """This thread's announced call will not come (a cached answer, an error, or it was made): stop counting it."""
        if getattr(self._expecting, "on", False):
            with self._cond:
                self._expected_no_more()

    def _expected_no_more(self) -> None:
        """This thread stops counting as a caller to come, if it did (``_cond`` held)."""
        if getattr(self._expecting, "on", False):
            self._expecting.on = False
            self._expected -= 1

    def reserve(self, latest_start: float | None = None) -> float:
        """Take this caller's slot without waiting for it; its ``time.monotonic()`` instant."""
        with self._cond:
            self._expected_no_more()  # waiting now
            self._waiting += 1
            try:
                return self._next_slot(latest_start)
            finally:
                self._waiting -= 1

    def wait(self, slot: float, latest_start: float | None = None, replacements: int = 2) -> float:
        """Sleep until ``slot``; the slot used. One missed by more than ``max_late`` (the process was
        not scheduled in time) is replaced, up to ``replacements`` times: a late call would come too
        close to the next one. A process that always wakes late uses its last slot late anyway."""
        for replaced in range(replacements + 1):
            now = self._clock()
            if slot > now:
                self._sleep(slot - now)
                now = self._clock()
            if now - slot <= self.max_late or replaced == replacements:
                break
            with self._cond:
                self.stats.slots_expired += 1
            slot = self.reserve(latest_start)
        with self._cond:
            self.stats.slots_used += 1
        return slot

    def forfeit(self, slot: float) -> None:
        """A reserved slot that will not be used (its request failed before it was sent)."""
        with self._cond:
            self.stats.slots_expired += 1

    def _next_slot(self, latest_start: float | None) -> float:
        """Pop this caller's slot (``_cond`` held), booking more when it is time."""
        while True:
            now = self._clock()
            if latest_start is not None and now > latest_start:
                raise OutOfTime("no DetectLabels slot before the deadline")
            while self._slots and self._slots[0] < now - self.max_late:
                self._slots.popleft()  # its moment passed unused: calling late would bunch calls
                self.stats.slots_expired += 1
            if self._slots:
                if latest_start is not None and self._slots[0] > latest_start:
                    raise OutOfTime("the next DetectLabels slot is after the deadline")
                return self._slots.popleft()
            book_at = self._booked_until - self._book_ahead()
            if self._leasing or now < book_at:
                until = book_at if not self._leasing else now + 0.5
                if latest_start is not None:
                    until = min(until, latest_start)
                self._cond.wait(max(0.001, until - now))
                continue
            self._book()

    def _book_ahead(self) -> float:
        """How long before its last booked slot this process books again: ``book_ahead``, or the source's lead
        and one slot if that is longer. A lease's first slot comes a lead after its request: booked later than
        that, the new slots could not follow on the booked ones, and the slots between would pass unused."""
        lead = getattr(self.source, "lead", 0.0)
        return max(self.book_ahead, lead + self.source.interval)

    def _book(self) -> None:
        """Lease slots for the waiting and expected callers (``_cond`` held on entry and exit, released meanwhile)."""
        count = min(self.max_lease, self._waiting + self._expected)
        if self._alone:
            count = max(count, self.min_lease)
        self._take(self._while_leasing(lambda: self._lease(count)))

    def _while_leasing(self, lease: Callable[[], _Leased]) -> _Leased:
        """Run ``lease`` as this process's one leasing thread, with ``_cond`` released meanwhile (held on entry and
        exit): callers arriving meanwhile gather instead of leasing too."""
        self._leasing = True
        self._cond.release()
        try:
            return lease()
        finally:
            self._cond.acquire()
            self._leasing = False
            self._cond.notify_all()  # the waiters take the new slots, or one of them leases next

    def _take(self, lease: Lease) -> None:
        """Add a lease's slots to this process's (``_cond`` held)."""
        self._slots.extend(lease.slots())
        follows_ours = abs(lease.first - (self._booked_until + lease.interval)) < lease.interval / 2
        self._alone = lease.resumed or follows_ours
        self._booked_until = lease.last
        self.stats.slots_leased += lease.count

    def _lease(self, count: int) -> Lease:
        """``count`` slots from the source, or from the fallback while the source is failing."""
        now = self._clock()
        if self.fallback is None or now >= self._source_retry_at:
            try:
                lease = self.source.lease(count)
            except Exception as exc:  # whatever the table does, the work goes on at the fallback pace
                if self.fallback is None:
                    raise
                self._source_failed(now, exc)
            else:
                self._failures_in_a_row = 0
                self.stats.leases += 1
                return lease
        assert self.fallback is not None
        self.stats.fallback_leases += 1
        return self.fallback.lease(count)

    def _source_failed(self, now: float, exc: Exception) -> None:
        self.stats.table_failures += 1
        self._failures_in_a_row += 1
        pause = min(self.max_retry_after, self.retry_after * 2 ** (self._failures_in_a_row - 1))
        self._source_retry_at = now + pause
        if not self._warned:  # once per process: a flapping table must not flood the logs
            self._warned = True
            interval = self.fallback.interval if self.fallback is not None else self.source.interval
            self._warn(
                f"shared rate limit unavailable ({type(exc).__name__}: {exc}); pacing locally at one call "
                f"per {interval:.3f} s, retrying the table after {self.retry_after:g} s "
                f"(then up to every {self.max_retry_after:g} s)"
            )


def _log_warning(message: str) -> None:
    from labeler.observability import logger

    logger.warning(message)
