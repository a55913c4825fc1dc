"""Guarded writes: a run writes an object only over nothing, or over an older run's object.

Records and reports have stable keys (one per manifest and id, one per manifest), so two runs of
the same manifest key (a re-upload while the first run is still going, a late retry) meet there.
Every such object carries its run's :class:`~labeler.models.records.RunStamp` in its S3 user
metadata, and every writer:

1. looks at the key (``HEAD``), or starts from "nothing there" when it has not looked;
2. decides: a record of **the same run** → it is there already; of **a newer run** → this run is
   superseded for that key, nothing is written; **nothing**, or an **older run's** → write;
3. writes conditionally, ``If-None-Match: *`` over nothing, ``If-Match: <ETag>`` over the older
   object; when S3 answers 412 (someone wrote in between), it looks again and decides again.

So an older run never overwrites a newer one's object, whatever the timing, and a run's own
retries find what it already wrote.

>>> guarded_put(store, "results/m/a.json", {"image_id": "a"}, {"status": "ok"}, ref.stamp)  # doctest: +SKIP
Guarded(verdict=<Verdict.WRITTEN: 'written'>, existing=None)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

from labeler.adapters.store import ObjectHead, PreconditionFailed
from labeler.models.records import RunStamp

# Each 412 means another writer got in first; a handful in a row means something is wrong.
MAX_ATTEMPTS = 6


class GuardedStore(Protocol):
    def head(self, key: str) -> ObjectHead | None: ...

    def put_json(
        self,
        key: str,
        document: dict[str, Any],
        metadata: dict[str, str] | None = None,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str | None: ...


class Verdict(StrEnum):
    WRITTEN = "written"
    SAME_RUN = "same_run"  # this run's object is there already (and stays)
    SUPERSEDED = "superseded"  # a newer run's object is there: nothing was written


@dataclass(frozen=True)
class Guarded:
    verdict: Verdict
    existing: ObjectHead | None = None  # the object that stands at the key when nothing was written
    # what this writer put there (its ETag and metadata, as a HEAD would answer), when the store told the ETag:
    # the writer's next write of the key can start from it instead of looking again
    written: ObjectHead | None = None
    # written with If-None-Match and S3 took it: there was no object at the key at that moment
    over_nothing: bool = False


class GuardContention(RuntimeError):
    """Conditional writes kept failing: the caller fails so that its delivery is retried."""


class NotLooked:
    """The key was not looked at: write as if nothing were there (a 412 makes the writer look)."""


NOT_LOOKED: Final = NotLooked()
# What a writer knows of a key: what a HEAD found (None: nothing), or that it did not look.
Head = ObjectHead | None | NotLooked


def judge(existing: ObjectHead | None, ours: RunStamp) -> Verdict | None:
    """What stands at a key, seen by run ``ours``: ``None`` means write (nothing, or an older run's object)."""
    if existing is None:
        return None
    theirs = RunStamp.from_metadata(existing.metadata)
    if theirs is None:  # written without a stamp (before runs were stamped): older than any run
        return None
    if theirs.run_id == ours.run_id:
        return Verdict.SAME_RUN
    return Verdict.SUPERSEDED if theirs.is_newer_than(ours) else None


def guarded_put(
    store: GuardedStore,
    key: str,
    document: dict[str, Any],
    metadata: dict[str, str],
    stamp: RunStamp,
    *,
    head: Head = NOT_LOOKED,
    same_run_stays: Callable[[ObjectHead], bool] = lambda existing: True,
) -> Guarded:
    """Write ``document`` at ``key`` for the run ``stamp`` unless a newer or the same run's object is there.

    ``head``: what a ``HEAD`` of the key found, when the caller looked already. ``same_run_stays``:
    whether an object of the same run stays as it is (records: always; a report: unless it is
    not final yet and this one is). Raises :class:`GuardContention` after ``MAX_ATTEMPTS``.
    """
    metadata = {**metadata, **stamp.to_metadata()}
    current = head
    for _ in range(MAX_ATTEMPTS):
        if isinstance(current, NotLooked):
            condition: dict[str, Any] = {"if_none_match": True}
        else:
            verdict = judge(current, stamp)
            stays = verdict is Verdict.SUPERSEDED or (verdict is Verdict.SAME_RUN and same_run_stays(current))
            if current is not None and stays:
                return Guarded(verdict, current)
            condition = {"if_match": current.etag} if current is not None else {"if_none_match": True}
        try:
            etag = store.put_json(key, document, metadata, **condition)
        except PreconditionFailed:
            current = store.head(key)
            continue
        # S3 answers user metadata keys in lower case
        written = ObjectHead(etag, {name.lower(): value for name, value in metadata.items()}) if etag else None
        return Guarded(Verdict.WRITTEN, written=written, over_nothing="if_none_match" in condition)
    raise GuardContention(f"{key}: still changing after {MAX_ATTEMPTS} conditional writes")
