"""The DetectLabels cap of a manifest run, as rules the pipeline calls: what the cap is, and who may call.

* :func:`effective_cap`: the stack's cap (``MAX_LABEL_CALLS_PER_MANIFEST``, 0 = none) lowered, never
  raised, by the manifest's own ``max_label_calls``.
* :class:`BudgetStore`: the run's shared count, one for every invocation of the run (inline,
  splitter, workers). In Lambda it is the run's progress item in DynamoDB
  (:class:`labeler.adapters.budget_table.BudgetTable`); :class:`InMemoryBudgetStore` serves local
  runs without a state table, and tests.
* :class:`CallBudget`: one invocation's view. Take a :class:`CallReservation` before each DetectLabels
  call; it counts when the call is made and goes back when it is not (a cache hit found under the
  content lock, a failed request, the deadline). Calls are taken from the store in small blocks, so
  the store sees about one request per block, not one per call.

Only calls that are made count: cache hits and ``304 Not Modified`` never take a reservation.
The run never makes more calls than the cap. It may stop a little short of it: calls other
invocations hold in their blocks at that moment, and the unused blocks of invocations that were
killed, are not handed out again.

>>> budget = CallBudget("run-1", cap=2, store=InMemoryBudgetStore())
>>> with budget.reserve():
...     pass  # backend.detect_labels(...) here: leaving the block normally counts the call
>>> with budget.reserve() as call:
...     call.release()  # the labels were in the cache after all: nothing is counted
>>> budget.made
1
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from labeler.models.errors import OverBudget

# Calls an invocation takes from the shared count at once (fewer near the cap, see CallBudget._wanted).
DEFAULT_BLOCK = 16


def effective_cap(stack_cap: int, manifest_cap: int | None = None) -> int | None:
    """The most DetectLabels calls the run may make; None = no cap.

    ``stack_cap`` is the setting (0 = no cap). A manifest may lower it with ``max_label_calls``
    (0 there means "no call at all": only labels already in the cache are used), never raise it.

    >>> effective_cap(1000, 50), effective_cap(1000, 5000), effective_cap(0, 5000), effective_cap(0)
    (50, 1000, 5000, None)
    """
    if stack_cap < 0:
        raise ValueError("the stack's cap must be 0 (none) or positive")
    if manifest_cap is not None and manifest_cap < 0:
        raise ValueError("max_label_calls must not be negative")
    stack = stack_cap or None
    if manifest_cap is None:
        return stack
    return manifest_cap if stack is None else min(stack, manifest_cap)


@dataclass(frozen=True)
class Grant:
    """The store's answer: ``granted`` calls (0 … wanted) and the run's count ``used`` after the grant."""

    granted: int
    used: int


class BudgetStore(Protocol):
    """The shared count of calls taken by every invocation of a run."""

    def take(self, run_key: str, wanted: int, cap: int) -> Grant:
        """Atomically add up to ``wanted`` to the run's count without passing ``cap``; 0 granted at the cap."""
        ...

    def give_back(self, run_key: str, count: int) -> None:
        """Subtract ``count`` calls taken but not made (an invocation's unused block)."""
        ...


class InMemoryBudgetStore:
    """A :class:`BudgetStore` inside one process: local runs without a state table, and tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: Counter[str] = Counter()
        self.requests = 0

    def take(self, run_key: str, wanted: int, cap: int) -> Grant:
        with self._lock:
            self.requests += 1
            granted = max(0, min(wanted, cap - self._used[run_key]))
            self._used[run_key] += granted
            return Grant(granted=granted, used=self._used[run_key])

    def give_back(self, run_key: str, count: int) -> None:
        with self._lock:
            self.requests += 1
            self._used[run_key] -= count

    def used(self, run_key: str) -> int:
        with self._lock:
            return self._used[run_key]


class CallReservation:
    """The right to make one DetectLabels call. Settled once: ``commit`` (made) or ``release`` (not made).

    As a context manager: leaving normally commits, an exception releases (a request that failed,
    was throttled to the end or ran out of time returned no labels and is not billed).
    """

    def __init__(self, budget: CallBudget) -> None:
        self._budget = budget
        self._settled = False

    def commit(self) -> None:
        if not self._settled:
            self._settled = True
            self._budget._settle(made=True)

    def release(self) -> None:
        if not self._settled:
            self._settled = True
            self._budget._settle(made=False)

    def __enter__(self) -> CallReservation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.release()


class CallBudget:
    """The DetectLabels calls one invocation may still make for a run. Thread-safe.

    ``cap`` None: no cap; reservations always succeed, only ``made`` is counted, the store is never
    asked. Otherwise calls are taken from ``store`` in blocks of at most ``block``; :meth:`close`
    gives the unused rest back (call it when the invocation's entries are done, also after a failure).
    """

    def __init__(self, run_key: str, cap: int | None, store: BudgetStore | None = None, *, block: int = DEFAULT_BLOCK):
        if cap is not None and store is None:
            raise ValueError("a capped budget needs a store for the run's shared count")
        if block < 1:
            raise ValueError("block must be at least 1")
        self.run_key = run_key
        self.cap = cap
        self._store = store
        self._block = block
        self._lock = threading.Condition()
        self._prepared = False
        self._refilling = False  # a block is being taken in the background (prepare)
        self._pool = 0  # taken from the store, not reserved yet
        self._outstanding = 0  # reserved, not settled yet
        self._last_used: int | None = None  # the run's count at the store's last answer
        self._exhausted = False
        self.made = 0
        self.refused = 0

    @property
    def exhausted(self) -> bool:
        """True once the store had nothing left for this invocation (every later reserve() fails)."""
        return self._exhausted

    def prepare(self) -> None:
        """A call may follow soon (an image is being downloaded): take the first block in the background, once,
        so that the first reservation finds it instead of waiting for the store's round trip. A run that then
        makes no call gives it back at :meth:`close`, as it gives back any unused rest."""
        with self._lock:
            if self.cap is None or self._prepared or self._pool or self._exhausted:
                return
            self._prepared = self._refilling = True
        threading.Thread(
            target=self._refill_in_background, args=(self.cap,), name="budget-prepare", daemon=True
        ).start()

    def _refill_in_background(self, cap: int) -> None:
        assert self._store is not None
        try:
            grant: Grant | None = self._store.take(self.run_key, self._wanted(cap), cap)
        except Exception:  # the first reservation asks again, and fails as it would have
            grant = None
        with self._lock:
            self._refilling = False
            if grant is not None:
                self._apply(grant)
            self._lock.notify_all()

    def reserve(self) -> CallReservation:
        """A reservation for one call; :class:`OverBudget` when the run's cap is reached."""
        with self._lock:
            if self.cap is not None:
                while self._refilling and self._pool == 0:
                    self._lock.wait()
                if self._pool == 0 and not self._exhausted:
                    # Asked under the lock: threads arriving meanwhile wait for this one request's block.
                    self._refill(self.cap)
                if self._pool == 0:
                    self.refused += 1
                    raise OverBudget(
                        f"the run reached its cap of {self.cap} DetectLabels calls", max_label_calls=self.cap
                    )
                self._pool -= 1
            self._outstanding += 1
        return CallReservation(self)

    def _wanted(self, cap: int) -> int:
        """A full block while much remains; near the cap a share of what remains, so no invocation hoards it."""
        remaining = cap - (self._last_used or 0)
        return max(1, min(self._block, remaining // self._block, cap))

    def _refill(self, cap: int) -> None:
        assert self._store is not None
        self._apply(self._store.take(self.run_key, self._wanted(cap), cap))

    def _apply(self, grant: Grant) -> None:
        self._last_used = grant.used
        self._pool += grant.granted
        if grant.granted == 0:
            self._exhausted = True

    def _settle(self, *, made: bool) -> None:
        with self._lock:
            self._outstanding -= 1
            if made:
                self.made += 1
            elif self.cap is not None:
                self._pool += 1  # not made: the next reservation uses it, no store request needed

    def close(self) -> None:
        """Give the calls taken but never reserved back to the run's count. Idempotent."""
        with self._lock:
            while self._refilling:  # a block still on its way is given back too
                self._lock.wait()
            self._prepared = True  # no block is taken after this
            unused, self._pool = self._pool, 0
        if unused and self._store is not None:
            self._store.give_back(self.run_key, unused)

    def __enter__(self) -> CallBudget:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
