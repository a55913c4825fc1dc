"""Re-check runs: their order among a manifest's runs, the tick's requests and plans, and what reports count."""

from __future__ import annotations

import doctest
from dataclasses import replace
from datetime import UTC, datetime
from itertools import permutations
from typing import Any

import pytest

from labeler.logic import recheck as recheck_module
from labeler.logic.recheck import (
    ALREADY_RECHECKED,
    LAST_RUN_FAILED,
    NOT_LABELED_YET,
    RECHECKED_LATER,
    UPLOAD_RUNNING,
    UPLOADED_AGAIN,
    InvalidRecheckRequest,
    RecheckRequest,
    plan_recheck,
)
from labeler.logic.report import CHANGED_IDS_MAX, Tally, final_status
from labeler.models.records import ManifestRef, RunStamp, recheck_iso, recheck_time

AT = "20261126T000000.000Z"
LATER = "20261127T000000.000Z"


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(recheck_module).failed == 0


def stamps_in_order(sequencers: bool) -> list[RunStamp]:
    """Runs of one manifest, oldest first: an upload, its re-checks, later uploads and theirs."""
    uploads = [
        ("v1", "0A1B", "20261125T100000Z"),
        ("v10", "0A1C", "20261125T100000Z"),
        ("v2", "00A1D", "20261125T100001Z"),
    ]
    found = []
    for run_id, sequencer, modified in uploads:
        ref = ManifestRef("in", "watch/a.json", version_id=run_id, sequencer=sequencer if sequencers else None)
        ref = replace(ref, last_modified=modified)
        found.append(ref.stamp)
        found.extend(replace(ref, recheck=at).stamp for at in (AT, LATER))
    return found


@pytest.mark.parametrize("sequencers", [True, False])
def test_a_re_check_orders_after_its_upload_and_earlier_re_checks_and_before_any_later_upload(sequencers: bool) -> None:
    ordered = stamps_in_order(sequencers)
    for older_index, newer_index in permutations(range(len(ordered)), 2):
        older, newer = ordered[min(older_index, newer_index)], ordered[max(older_index, newer_index)]
        assert newer.is_newer_than(older) and not older.is_newer_than(newer), (older, newer)
        # the index's run_order sorts them the same way
        assert newer.sort_key() > older.sort_key(), (older.sort_key(), newer.sort_key())


def test_uploads_without_sequencers_in_one_second_order_their_re_checks_with_them() -> None:
    # "v1" is a prefix of "v10": the re-check of v1 must not sort after v10 ("!" sorts below any id character)
    v1 = ManifestRef("in", "a.json", etag="v1", last_modified="20261125T100000Z")
    v10 = replace(v1, etag="v10")
    assert v10.stamp.is_newer_than(replace(v1, recheck=LATER).stamp)
    assert v10.stamp.sort_key() > replace(v1, recheck=LATER).stamp.sort_key()


def test_a_re_check_ref_round_trips_and_names_its_upload() -> None:
    ref = ManifestRef("in", "watch/a.json", etag="e", version_id="v7", sequencer="0A", recheck=AT, event_time="x")
    assert ManifestRef.from_dict(ref.to_dict()) == ref
    assert ref.run_id == "v7!recheck-20261126T000000.000Z" and ref.upload_run_id == "v7"
    assert ref.upload().run_id == "v7" and ref.upload().recheck is None
    assert RunStamp.from_metadata(ref.stamp.to_metadata()) == ref.stamp


def test_re_check_times_are_fixed_width_utc() -> None:
    assert recheck_time(datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=UTC)) == "20261126T010203.456Z"
    assert recheck_time(datetime(2026, 11, 26)) == "20261126T000000.000Z"  # naive: UTC
    assert recheck_iso("20261126T010203.456Z") == "2026-11-26T01:02:03.456Z"


# --- requests -------------------------------------------------------------------------------------
def test_a_scheduler_tick_and_a_one_manifest_request() -> None:
    tick = RecheckRequest.from_event({"bucket": "in", "prefix": "watch/", "at": "2026-11-26T00:00:00+01:00"})
    assert (tick.at, tick.prefix, tick.key) == ("20261125T230000.000Z", "watch/", None)
    one = RecheckRequest.from_event({"bucket": "in", "key": "manifests/a.jsonl"}, now=datetime(2026, 1, 2, tzinfo=UTC))
    assert (one.at, one.key, one.tick_key) == (
        "20260102T000000.000Z",
        "manifests/a.jsonl",
        "in#manifests/a.jsonl#" + one.at,
    )


@pytest.mark.parametrize(
    "body",
    [
        "watch/",
        {"prefix": "watch/"},
        {"bucket": "in"},
        {"bucket": "in", "prefix": "watch/", "key": "watch/a.json"},
        {"bucket": "in", "prefix": ""},  # the whole bucket is not watched
        {"bucket": "in", "prefix": "manifests/"},
        {"bucket": "in", "key": "watch/notes.txt"},
        {"bucket": "in", "prefix": "watch/", "at": "tomorrow"},
    ],
)
def test_requests_that_can_never_succeed_are_refused(body: Any) -> None:
    with pytest.raises(InvalidRecheckRequest):
        RecheckRequest.from_event(body)


# --- plans ------------------------------------------------------------------------------------------
def report(status: str = "complete", **manifest: Any) -> dict[str, Any]:
    return {
        "status": status,
        "manifest": {"bucket": "in", "key": "watch/a.json", "etag": "e1", "version_id": "v1", **manifest},
    }


def test_a_re_check_starts_from_the_upload_the_report_names() -> None:
    plan = plan_recheck(report(sequencer="0A", last_modified="20261125T100000Z", event_time="t"), "e1", AT)
    assert plan.reason == "started" and plan.ref is not None
    assert (plan.ref.version_id, plan.ref.sequencer, plan.ref.recheck) == ("v1", "0A", AT)
    assert plan.ref.event_time == "2026-11-26T00:00:00.000Z"  # the re-check's date in the index
    # after an earlier re-check: the same upload, a new re-check
    again = plan_recheck(report(recheck="20261120T000000.000Z"), "e1", AT)
    assert again.ref is not None and again.ref.run_id == "v1!recheck-" + AT


@pytest.mark.parametrize(
    ("found", "etag", "reason"),
    [
        (None, "e1", NOT_LABELED_YET),
        (report("in_progress"), "e1", UPLOAD_RUNNING),
        (report("incomplete"), "e1", UPLOAD_RUNNING),
        (report("failed"), "e1", LAST_RUN_FAILED),
        (report(), "e2", UPLOADED_AGAIN),
        (report(recheck=AT), "e1", ALREADY_RECHECKED),
        (report(recheck=LATER), "e1", RECHECKED_LATER),
    ],
)
def test_manifests_a_tick_leaves_alone(found: dict[str, Any] | None, etag: str, reason: str) -> None:
    assert plan_recheck(found, etag, AT) == recheck_module.Plan(None, reason)


def test_a_re_check_of_this_tick_resumes_and_an_earlier_tick_s_unfinished_one_is_taken_over() -> None:
    resumed = plan_recheck(report("in_progress", recheck=AT), "e1", AT)
    assert resumed.reason == "resumed" and resumed.ref is not None and resumed.ref.recheck == AT
    taken_over = plan_recheck(report("in_progress", recheck="20261120T000000.000Z"), "e1", AT)
    assert taken_over.reason == "started" and taken_over.ref is not None and taken_over.ref.recheck == AT


# --- counts -----------------------------------------------------------------------------------------------
def test_a_tally_counts_findings_and_keeps_a_bounded_sample_of_changed_ids() -> None:
    first, second = Tally(), Tally()
    for n in range(CHANGED_IDS_MAX):
        first.add_outcome(ok=True, code=None, recheck="changed", image_id=f"a{n}")
    second.add_outcome(ok=True, code=None, recheck="changed", image_id="b")
    second.add_outcome(ok=True, code=None, recheck="unchanged")
    second.add_outcome(ok=True, code=None, recheck="gone")
    second.add_outcome(ok=True, code=None, recheck="failed", recheck_code="timeout")
    first.merge(second)

    summary = first.recheck_summary()
    assert (summary["changed"], summary["unchanged"], summary["gone"], summary["failed"]) == (101, 1, 1, 1)
    assert len(summary["changed_ids"]) == CHANGED_IDS_MAX and summary["changed_ids_truncated"]
    assert summary["failed_by_code"] == {"timeout": 1}
    assert Tally.from_dict(first.to_dict()).recheck_summary() == summary
    assert (first.succeeded, first.failed) == (104, 0)  # a kept record with labels still counts as succeeded


def test_a_re_check_that_kept_records_at_its_cap_is_capped() -> None:
    tally = Tally()
    tally.add_outcome(ok=True, code=None, recheck="failed", recheck_code="over_budget")
    assert final_status(tally, None) == "capped"
