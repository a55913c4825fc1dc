"""One process-wide memory budget for images: downloaded bodies, decoded pixels, re-encoded output, request copies.

``MAX_WORKERS`` entries run at once, and an image takes far more memory than its bytes while it is worked
on: a 12-Mpx photo decodes to 48 MB, and a DetectLabels request holds about four copies of the bytes it
sends (base64, JSON, the encoded body). Each big user of memory therefore reserves an estimate first, and a
thread whose reservation does not fit waits instead of allocating. Waiters are served first come, first
served, and there are two kinds of reservation, so that nothing can deadlock:

* a **body** (:meth:`MemoryBudget.hold_body`): a download's bytes, kept until the downloaded image is
  dropped. Asked for by a thread that holds nothing else. Bodies together use at most ``body_share`` of the
  budget (the rest is kept for the work on bodies already downloaded).
* **work** (:meth:`MemoryBudget.reserve`): decoding or converting an image, a request's copies; released when
  the step ends. A thread asks for it while holding at most its body. It is granted when it fits, or, when it
  does not fit, as soon as no other thread holds work: an image larger than the whole budget proceeds alone
  among the working threads (beside the bodies already held, which are bounded by the body share).

A thread waiting for a body holds nothing; a thread waiting for work holds only bodies and waits only for
threads that hold work; a thread that holds work is never made to wait (a second reservation while it holds
one is granted at once). So every wait ends when working threads finish, and they never wait for memory.

The budget is an estimate of what is held, not an allocator: ``used`` may exceed ``capacity`` by an image
larger than the budget (it runs alone), never by the sum of what many threads want.

>>> budget = MemoryBudget(capacity=100 * MIB, body_share=0.25)
>>> body = budget.hold_body(4 * MIB)             # a download's bytes, until body.release()
>>> with budget.reserve(16 * MIB):                # the request's copies, for the length of the call
...     budget.used // MIB
20
>>> body.release(); budget.used
0
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

MIB = 1024 * 1024
# Bodies may use this fraction of the budget; the rest is kept for work on what was downloaded.
DEFAULT_BODY_SHARE = 0.25
DEFAULT_CAPACITY_MB = 96


class MemoryWaitTimeout(Exception):
    """A reservation could not be granted before the caller's deadline."""


@dataclass
class Reservation:
    """Bytes held in a :class:`MemoryBudget` until :meth:`release` (idempotent; also a context manager)."""

    budget: MemoryBudget = field(repr=False)
    amount: int
    kind: str  # "body" | "work"
    owner: threading.Thread = field(repr=False)  # the thread that asked for it (not its ident: those are reused)
    released: bool = field(default=False)

    def release(self) -> None:
        self.budget._release(self)

    def shrink_to(self, amount: int) -> None:
        """Give back what is held beyond ``amount`` (never waits)."""
        self.budget._shrink(self, amount)

    def try_grow_to(self, amount: int) -> bool:
        """Hold ``amount`` in all if that fits now (never waits); False when it does not."""
        return self.budget._try_grow(self, amount)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class MemoryBudget:
    """See the module docstring. ``capacity`` in bytes; ``body_share`` of it may hold bodies."""

    def __init__(self, capacity: int, body_share: float = DEFAULT_BODY_SHARE) -> None:
        if capacity <= 0 or not 0 < body_share <= 1:
            raise ValueError("capacity must be positive and body_share in (0, 1]")
        self.capacity = capacity
        self.body_share = body_share
        self.used = 0
        self.body_used = 0
        self.work_used = 0
        self.peak = 0  # the most ever held at once (diagnostics, tests)
        self._condition = threading.Condition()
        self._queues: dict[str, deque[object]] = {"body": deque(), "work": deque()}
        self._held: dict[threading.Thread, list[int]] = {}  # thread -> [body bytes, work bytes]

    @property
    def body_capacity(self) -> int:
        return max(1, int(self.capacity * self.body_share))

    def resize(self, capacity: int, body_share: float | None = None) -> None:
        with self._condition:
            self.capacity = capacity
            if body_share is not None:
                self.body_share = body_share
            self._condition.notify_all()  # a larger budget may let waiters in

    # --- asking ---------------------------------------------------------------------------------------
    def hold_body(self, nbytes: int, *, timeout: float | None = None) -> Reservation:
        """Hold ``nbytes`` for a downloaded body until the returned reservation is released.

        Raises :class:`MemoryWaitTimeout` if it is not granted within ``timeout`` seconds.
        """
        return self._acquire("body", nbytes, timeout)

    def try_hold_body(self, nbytes: int) -> Reservation | None:
        """:meth:`hold_body` if it is granted at once (nobody waiting before it, and it fits), else ``None``."""
        try:
            return self._acquire("body", nbytes, 0.0)
        except MemoryWaitTimeout:
            return None

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[Reservation]:
        """Hold ``nbytes`` of work memory for the ``with`` block."""
        reservation = self._acquire("work", nbytes, None)
        try:
            yield reservation
        finally:
            reservation.release()

    # --- bookkeeping (under the condition's lock) -----------------------------------------------------
    def _acquire(self, kind: str, nbytes: int, timeout: float | None) -> Reservation:
        amount = max(0, int(nbytes))
        me = threading.current_thread()
        ends = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            held = self._held.get(me, [0, 0])
            # Never make a thread wait while others may be waiting for it: one holding work, or (for a
            # body) one holding anything at all.
            if held[1] or (kind == "body" and held[0]):
                return self._grant(kind, amount, me)
            queue = self._queues[kind]
            ticket = object()
            queue.append(ticket)
            try:
                while queue[0] is not ticket or not self._fits(kind, amount, me):
                    left = None if ends is None else ends - time.monotonic()
                    if left is not None and left <= 0:
                        raise MemoryWaitTimeout(f"{amount} bytes of image memory not granted within {timeout:g} s")
                    self._condition.wait(left)
            finally:
                if ticket in queue:
                    queue.remove(ticket)
                    self._condition.notify_all()  # the next in line may fit now
            return self._grant(kind, amount, me)

    def _fits(self, kind: str, amount: int, me: threading.Thread) -> bool:
        if kind == "body":
            # A body larger than the whole body share waits until no other body is held.
            share = self.body_capacity
            return self.body_used + min(amount, share) <= share and self.used + min(amount, share) <= self.capacity
        if self.used + amount <= self.capacity:
            return True
        return self.work_used == self._held.get(me, [0, 0])[1]  # nobody else is working: proceed alone

    def _grant(self, kind: str, amount: int, me: threading.Thread) -> Reservation:
        held = self._held.setdefault(me, [0, 0])
        held[0 if kind == "body" else 1] += amount
        self._add(kind, amount)
        return Reservation(self, amount, kind, me)

    def _add(self, kind: str, amount: int) -> None:
        self.used += amount
        if kind == "body":
            self.body_used += amount
        else:
            self.work_used += amount
        self.peak = max(self.peak, self.used)

    def _release(self, reservation: Reservation) -> None:
        with self._condition:
            if reservation.released:
                return
            reservation.released = True
            self._take_back(reservation, reservation.amount)
            reservation.amount = 0

    def _shrink(self, reservation: Reservation, amount: int) -> None:
        with self._condition:
            if reservation.released or amount >= reservation.amount:
                return
            self._take_back(reservation, reservation.amount - max(0, amount))
            reservation.amount = max(0, amount)

    def _try_grow(self, reservation: Reservation, amount: int) -> bool:
        with self._condition:
            extra = amount - reservation.amount
            if reservation.released:
                return False
            if extra <= 0:
                return True
            body = reservation.kind == "body"
            if self.used + extra > self.capacity or (body and self.body_used + extra > self.body_capacity):
                return False
            self._held.setdefault(reservation.owner, [0, 0])[0 if body else 1] += extra
            self._add(reservation.kind, extra)
            reservation.amount = amount
            return True

    def _take_back(self, reservation: Reservation, amount: int) -> None:
        index = 0 if reservation.kind == "body" else 1
        held = self._held.get(reservation.owner)
        if held is not None:
            held[index] -= amount
            if held == [0, 0]:
                del self._held[reservation.owner]
        self.used -= amount
        if index == 0:
            self.body_used -= amount
        else:
            self.work_used -= amount
        self._condition.notify_all()


# What a container holds besides images (interpreter, libraries, clients, threads): measured ~75 MiB at
# 32 workers; the budget never takes more than half of what the function has beyond it.
BASE_MB = 128
MIN_CAPACITY_MB = 16


def budget_megabytes(image_memory_mb: int, function_memory_mb: int = 0) -> int:
    """The budget for ``IMAGE_MEMORY_MB`` in a function of ``function_memory_mb`` (0: unknown, no cap).

    >>> budget_megabytes(96, 1769), budget_megabytes(96, 256), budget_megabytes(96, 128), budget_megabytes(96)
    (96, 64, 16, 96)
    """
    if function_memory_mb > 0:
        image_memory_mb = min(image_memory_mb, (function_memory_mb - BASE_MB) // 2)
    return max(MIN_CAPACITY_MB, image_memory_mb)


_BUDGET = MemoryBudget(DEFAULT_CAPACITY_MB * MIB)


def process_budget() -> MemoryBudget:
    """The budget every image of this process shares."""
    return _BUDGET


def reserve_memory(nbytes: int) -> AbstractContextManager[Reservation]:
    """Hold ``nbytes`` of work memory of the process-wide budget for a ``with`` block."""
    return _BUDGET.reserve(nbytes)


def set_memory_budget(megabytes: int, body_share: float | None = None) -> None:
    """Set the process-wide budget (``IMAGE_MEMORY_MB``; the composition root calls this once)."""
    _BUDGET.resize(max(16, megabytes) * MIB, body_share)
