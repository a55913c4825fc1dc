"""Run stamps and guarded writes, against the embedded S3 endpoint (conditional PUTs are real there)."""

from __future__ import annotations

import doctest
from typing import Any

import pytest

from labeler.adapters.store import ObjectHead, PreconditionFailed, S3Store
from labeler.logic.guard import GuardContention, Verdict, guarded_put, judge
from labeler.models import records as records_module
from labeler.models.records import ManifestRef, RunStamp
from tests.conftest import Buckets

OLD = RunStamp("v1", sequencer="0062F3A1B2C3D4E5F6", modified="20261125T100000Z")
NEW = RunStamp("v2", sequencer="0062F3A1B2C3D4E5F7", modified="20261125T100000Z")


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(records_module).failed == 0


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        (NEW, OLD),
        # Sequencers of different lengths compare after left-padding with zeros (AWS's rule).
        (RunStamp("b", sequencer="0A1C"), RunStamp("a", sequencer="A1B")),
        (RunStamp("b", sequencer="00000000000000000000FF"), RunStamp("a", sequencer="FE")),
        # Without a sequencer on either side, LastModified decides (1-second resolution)...
        (RunStamp("b", modified="20261125T100001Z"), RunStamp("a", sequencer="FF", modified="20261125T100000Z")),
        # ... an unknown time is the oldest ...
        (RunStamp("b", modified="20261125T100000Z"), RunStamp("a")),
        # ... and within the same second the run id breaks the tie, the same way everywhere.
        (RunStamp("b", modified="20261125T100000Z"), RunStamp("a", modified="20261125T100000Z")),
    ],
)
def test_runs_are_ordered(newer: RunStamp, older: RunStamp) -> None:
    assert newer.is_newer_than(older)
    assert not older.is_newer_than(newer)


def test_a_sequencer_outranks_the_time_when_both_runs_have_one() -> None:
    # A multipart upload's LastModified is when it started: the later event can carry the earlier time.
    later = RunStamp("b", sequencer="10", modified="20261125T090000Z")
    earlier = RunStamp("a", sequencer="0F", modified="20261125T100000Z")
    assert later.is_newer_than(earlier)


def test_a_stamp_round_trips_through_object_metadata() -> None:
    assert RunStamp.from_metadata(NEW.to_metadata()) == NEW
    assert RunStamp.from_metadata({"status": "ok"}) is None


def test_the_stamp_of_a_manifest_upload() -> None:
    ref = ManifestRef("in", "a.json", etag="e", version_id="v7", sequencer="0abc", last_modified="20261125T100000Z")
    assert ref.stamp == RunStamp("v7", "0ABC", "20261125T100000Z")
    assert ManifestRef.from_dict(ref.to_dict()) == ref


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, None),
        (ObjectHead('"x"', {}), None),  # written without a stamp: older than any run
        (ObjectHead('"x"', OLD.to_metadata()), None),
        (ObjectHead('"x"', NEW.to_metadata()), Verdict.SAME_RUN),
        (ObjectHead('"x"', RunStamp("v3", "0062F3A1B2C3D4E5F8").to_metadata()), Verdict.SUPERSEDED),
    ],
)
def test_judge(existing: ObjectHead | None, expected: Verdict | None) -> None:
    assert judge(existing, NEW) == expected


@pytest.fixture
def store(buckets: Buckets) -> S3Store:
    return S3Store(buckets.s3, buckets.output)


def written_run(buckets: Buckets, key: str) -> tuple[str, dict[str, Any]]:
    head = buckets.s3.head_object(Bucket=buckets.output, Key=key)
    return head["Metadata"]["manifest-run"], buckets.read_json(key)


def test_a_write_over_nothing_then_the_same_run_finds_its_own(store: S3Store, buckets: Buckets) -> None:
    assert guarded_put(store, "k.json", {"n": 1}, {"status": "ok"}, NEW).verdict is Verdict.WRITTEN
    again = guarded_put(store, "k.json", {"n": 2}, {"status": "ok"}, NEW)
    assert again.verdict is Verdict.SAME_RUN and again.existing is not None
    assert written_run(buckets, "k.json") == ("v2", {"n": 1})


def test_an_older_run_never_overwrites_a_newer_one(store: S3Store, buckets: Buckets) -> None:
    guarded_put(store, "k.json", {"run": "new"}, {}, NEW)
    assert guarded_put(store, "k.json", {"run": "old"}, {}, OLD).verdict is Verdict.SUPERSEDED
    assert written_run(buckets, "k.json") == ("v2", {"run": "new"})


def test_a_newer_run_overwrites_an_older_one_and_an_unstamped_object(store: S3Store, buckets: Buckets) -> None:
    guarded_put(store, "k.json", {"run": "old"}, {}, OLD)
    buckets.s3.put_object(Bucket=buckets.output, Key="plain.json", Body=b"{}")
    assert guarded_put(store, "k.json", {"run": "new"}, {}, NEW).verdict is Verdict.WRITTEN
    assert guarded_put(store, "plain.json", {"run": "new"}, {}, NEW).verdict is Verdict.WRITTEN
    assert written_run(buckets, "k.json") == ("v2", {"run": "new"})


def test_a_stale_look_is_corrected_by_the_conditional_write(store: S3Store, buckets: Buckets) -> None:
    # The writer looked (nothing there), then a newer run wrote: If-None-Match fails, it looks again.
    guarded_put(store, "k.json", {"run": "new"}, {}, NEW)
    assert guarded_put(store, "k.json", {"run": "old"}, {}, OLD, head=None).verdict is Verdict.SUPERSEDED
    # It looked (an older record), then the older record changed: If-Match fails, it looks again.
    guarded_put(store, "j.json", {"run": "old"}, {}, OLD)
    stale = store.head("j.json")
    guarded_put(store, "j.json", {"run": "old", "n": 2}, {}, RunStamp("v1b", "0062F3A1B2C3D4E5F6", "x"))
    assert guarded_put(store, "j.json", {"run": "new"}, {}, NEW, head=stale).verdict is Verdict.WRITTEN
    assert written_run(buckets, "j.json") == ("v2", {"run": "new"})


def test_a_same_run_object_can_be_replaced_when_the_caller_says_so(store: S3Store, buckets: Buckets) -> None:
    guarded_put(store, "r.json", {"status": "in_progress"}, {"status": "in_progress"}, NEW)
    final = guarded_put(
        store, "r.json", {"status": "complete"}, {"status": "complete"}, NEW, same_run_stays=lambda head: False
    )
    assert final.verdict is Verdict.WRITTEN
    assert written_run(buckets, "r.json") == ("v2", {"status": "complete"})


def test_writes_that_keep_losing_give_up(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def always_changed(*args: Any, **kwargs: Any) -> None:
        raise PreconditionFailed("someone else wrote")

    monkeypatch.setattr(store, "put_json", always_changed)
    with pytest.raises(GuardContention):
        guarded_put(store, "k.json", {}, {}, NEW)
