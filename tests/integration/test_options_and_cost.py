"""A manifest's own options (issue 11 §2) and the cost of a run (issue 12), end to end.

The real handlers on real S3 events, against the embedded endpoint, the image site and the
Rekognition stand-in (which answers Features and Settings and counts every call it is paid for).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from labeler.handlers import manifest_created, work_batch
from labeler.handlers.composition import get_services, reset_services
from labeler.local.runner import TERMINAL_STATUSES
from labeler.logic.guard import Verdict
from labeler.logic.keys import report_key
from labeler.logic.pricing import calls_usd, usd
from labeler.logic.report import RunState, Tally, publish_report
from labeler.models.records import ManifestRef
from tests.conftest import Buckets, FakeLambdaContext
from tests.integration.test_runs import emf_values
from tests.support.fake_rekognition import FakeRekognition
from tests.support.site import Site
from tests.support.sqs_driver import QueueInfo, drain

BOTH = ["GENERAL_LABELS", "IMAGE_PROPERTIES"]


def distinct(site: Site, count: int, start: int = 0) -> list[dict[str, str]]:
    """``count`` entries whose images all differ: each needs its own DetectLabels call."""
    return [{"id": f"d{n:02d}", "url": site.url(f"/distinct/{n}.png")} for n in range(start, start + count)]


def with_options(options: dict[str, Any], images: list[Any]) -> dict[str, Any]:
    return {"options": options, "images": images}


def settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_services()


def run_inline(buckets: Buckets, key: str, manifest: Any) -> dict[str, Any]:
    """Upload ``manifest`` at ``key``, run the manifest handler on S3's event; the manifest's report."""
    manifest_created.handler(buckets.put_manifest(key, manifest), FakeLambdaContext())
    report: dict[str, Any] = buckets.read_json(report_key(ManifestRef(buckets.input, key)))
    return report


def codes(buckets: Buckets) -> dict[str, int]:
    found: dict[str, int] = {}
    for record in buckets.records():
        code = record["error"]["code"] if "error" in record else "ok"
        found[code] = found.get(code, 0) + 1
    return found


@pytest.fixture
def manifests_may_ask_both(lambda_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack lets manifests opt in to IMAGE_PROPERTIES (MANIFEST_FEATURES)."""
    settings(monkeypatch, MANIFEST_FEATURES=",".join(BOTH))


# --- options ---------------------------------------------------------------------------------------
def test_a_manifest_s_options_reach_detect_labels_and_its_results_keep_the_response_shape(
    buckets: Buckets, site: Site, manifests_may_ask_both: None, fake_rekognition: FakeRekognition
) -> None:
    options = {
        "min_confidence": 80,
        "max_labels": 20,
        "features": BOTH,
        "exclude_categories": ["Person Description"],
        "max_dominant_colors": 3,
    }
    report = run_inline(buckets, "opts.json", with_options(options, [site.url("/photo.jpg"), site.url("/coffee.jpg")]))

    assert report["status"] == "complete" and report["succeeded"] == 2
    sent = fake_rekognition.state.requests
    assert len(sent) == 2
    assert {(r["MinConfidence"], r["MaxLabels"]) for r in sent} == {(80, 20)}
    assert sent[0]["Features"] == BOTH
    assert sent[0]["Settings"] == {
        "GeneralLabels": {"LabelCategoryExclusionFilters": ["Person Description"]},
        "ImageProperties": {"MaxDominantColors": 3},
    }
    for record in buckets.records():
        assert list(record)[:4] == ["image_id", "url", "labels", "image_properties"]  # the classic top level first
        assert {"Quality", "DominantColors", "Foreground", "Background"} <= set(record["image_properties"])
        assert len(record["image_properties"]["DominantColors"]) <= 3
    assert report["options"] == {**options, "min_confidence": 80.0, "max_label_calls": 1_000_000}
    # both features are billed: labels and image properties, per call
    assert report["cost"] == {
        "detect_labels_calls": 2,
        "detect_labels_saved": 0,
        "estimated_usd": usd(calls_usd(2, image_properties=True)),
    }


def test_without_options_the_request_and_the_record_are_as_before(
    buckets: Buckets, site: Site, lambda_env: dict[str, str], fake_rekognition: FakeRekognition
) -> None:
    report = run_inline(buckets, "plain.json", [site.url("/photo.jpg")])

    (sent,) = fake_rekognition.state.requests
    assert (sent["Features"], sent["Settings"], sent["MinConfidence"], sent["MaxLabels"]) == (
        ["GENERAL_LABELS"],
        None,
        55,
        50,
    )
    (record,) = buckets.records()
    assert "image_properties" not in record and record["labels"]
    assert report["cost"] == {"detect_labels_calls": 1, "detect_labels_saved": 0, "estimated_usd": 0.001}


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"min_confidence": 40}, "min_confidence"),  # looser than the stack's 55: refused, never clamped
        ({"max_labels": 51}, "max_labels"),
        ({"features": BOTH}, "features"),  # IMAGE_PROPERTIES is opt-in for the stack (MANIFEST_FEATURES)
        ({"minconfidence": 80}, "minconfidence"),  # a typo is an unknown option
        ({"max_label_calls": 1_000_001}, "max_label_calls"),  # more than the stack's cap: a cap is never raised
        ("80", "options"),
    ],
)
def test_options_outside_the_stack_s_bounds_refuse_the_manifest_before_anything_is_paid(
    buckets: Buckets,
    site: Site,
    lambda_env: dict[str, str],
    fake_rekognition: FakeRekognition,
    options: Any,
    option: str,
) -> None:
    report = run_inline(buckets, "bad-options.json", with_options(options, [site.url("/photo.jpg")]))

    assert (report["status"], report["total"], report["error"]["code"]) == ("failed", 0, "manifest_options_invalid")
    assert report["error"]["option"] == option
    assert buckets.records() == [] and fake_rekognition.state.calls == 0 and site.hits("/photo.jpg") == 0
    assert report["cost"] == {"detect_labels_calls": 0, "detect_labels_saved": 0, "estimated_usd": 0.0}


def test_json_lines_take_their_options_from_a_first_line_holding_only_them(
    buckets: Buckets, site: Site, lambda_env: dict[str, str], fake_rekognition: FakeRekognition
) -> None:
    lines = [{"options": {"max_labels": 2}}, {"url": site.url("/photo.jpg"), "id": "a"}, site.url("/coffee.jpg")]
    body = "\n".join(json.dumps(line) for line in lines) + "\n"
    manifest_created.handler(buckets.put_manifest("opts.jsonl", body), FakeLambdaContext())

    report = buckets.report()
    assert (report["status"], report["total"]) == ("complete", 2)  # the options line is not an entry
    assert {r["MaxLabels"] for r in fake_rekognition.state.requests} == {2}
    assert sorted(r["entry_index"] for r in buckets.records()) == [0, 1]


def test_options_after_the_images_are_refused_not_ignored(
    buckets: Buckets, site: Site, lambda_env: dict[str, str], fake_rekognition: FakeRekognition
) -> None:
    body = json.dumps({"images": [site.url("/photo.jpg")], "options": {"max_labels": 2}})  # keys in this order
    report = run_inline(buckets, "late-options.json", body)

    assert (report["status"], report["error"]["code"]) == ("failed", "manifest_options_invalid")
    assert "must come before" in report["error"]["message"] and fake_rekognition.state.calls == 0


# --- the label cache and options ---------------------------------------------------------------------
def test_the_same_options_share_cached_answers_and_different_options_never_do(
    buckets: Buckets, site: Site, manifests_may_ask_both: None, fake_rekognition: FakeRekognition
) -> None:
    images = [site.url("/photo.jpg"), site.url("/coffee.jpg")]
    state = fake_rekognition.state

    run_inline(buckets, "a.json", with_options({"exclude_labels": ["Dog", "Cat"], "features": BOTH}, images))
    assert state.successful_calls == 2
    # the same options in another order, another manifest: every answer from the cache
    report = run_inline(
        buckets, "b.json", with_options({"features": BOTH[::-1], "exclude_labels": ["Cat", "Dog"]}, images)
    )
    assert state.successful_calls == 2 and report["cost"]["detect_labels_saved"] == 2
    assert all("image_properties" in record for record in buckets.records())
    # other options: labels alone, a stricter confidence: never the answers cached above
    report = run_inline(buckets, "c.json", with_options({"exclude_labels": ["Cat", "Dog"]}, images))
    assert state.successful_calls == 4 and report["cost"]["detect_labels_calls"] == 2
    report = run_inline(
        buckets, "d.json", with_options({"exclude_labels": ["Cat", "Dog"], "min_confidence": 90}, images)
    )
    assert state.successful_calls == 6 and report["cost"]["detect_labels_calls"] == 2


def test_labels_cached_before_options_existed_are_still_used(
    buckets: Buckets, site: Site, lambda_env: dict[str, str], fake_rekognition: FakeRekognition
) -> None:
    run_inline(buckets, "old.json", [site.url("/photo.jpg")])
    keys = buckets.output_keys("cache/labels/")
    assert keys and all("/c55-n50/" in key for key in keys)  # the key the cache always had for these settings
    report = run_inline(buckets, "new.json", with_options({"max_labels": 50}, [site.url("/photo-copy.jpg")]))
    assert fake_rekognition.state.successful_calls == 1 and report["cost"]["detect_labels_saved"] == 1


# --- the cap ----------------------------------------------------------------------------------------------
def test_an_inline_run_capped_at_n_makes_n_calls_and_a_re_upload_without_a_cap_finishes_the_job(
    buckets: Buckets,
    site: Site,
    lambda_env: dict[str, str],
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings(monkeypatch, MAX_LABEL_CALLS_PER_MANIFEST="4")
    entries: list[Any] = [*distinct(site, 10), {"id": "copy", "url": site.url("/distinct/0.png?copy")}]
    state = fake_rekognition.state

    report = run_inline(buckets, "capped.json", entries)

    assert state.successful_calls == 4
    assert report["status"] == "capped" and report["total"] == 11
    found = codes(buckets)
    # every entry has its record; an entry whose bytes were labeled before the cap needs no call
    assert found["over_budget"] + found["ok"] == 11 and found["ok"] >= 4 and len(buckets.records()) == 11
    assert report["errors_by_code"] == {"over_budget": found["over_budget"]}
    over = next(r for r in buckets.records() if "error" in r)["error"]
    assert over["max_label_calls"] == 4 and "cap of 4" in over["message"]
    assert report["cost"]["detect_labels_calls"] == 4

    settings(monkeypatch, MAX_LABEL_CALLS_PER_MANIFEST="0")  # no cap
    report = run_inline(buckets, "capped.json", entries)  # the same manifest uploaded again: a new run

    assert report["status"] == "complete" and report["succeeded"] == 11
    assert state.successful_calls == 10  # as many calls in total as there are distinct images
    assert report["cost"]["detect_labels_calls"] == 6 and report["cost"]["detect_labels_saved"] == 5


def test_capped_is_a_final_status_of_the_run(
    buckets: Buckets, site: Site, lambda_env: dict[str, str], fake_rekognition: FakeRekognition
) -> None:
    report = run_inline(buckets, "final.json", with_options({"max_label_calls": 1}, distinct(site, 2)))
    assert report["status"] == "capped"
    manifest = ManifestRef.from_dict(report["manifest"])
    again = publish_report(get_services().store, manifest, RunState(Tally(), "in_progress", "inline"))
    assert again.verdict is Verdict.SAME_RUN and buckets.read_json(report_key(manifest))["status"] == "capped"
    assert "capped" in TERMINAL_STATUSES  # `submit` stops following a capped run


def test_a_manifest_may_lower_the_cap_for_itself(
    buckets: Buckets, site: Site, lambda_env: dict[str, str], fake_rekognition: FakeRekognition
) -> None:
    report = run_inline(buckets, "lowered.json", with_options({"max_label_calls": 3}, distinct(site, 6)))

    assert fake_rekognition.state.successful_calls == 3
    assert (report["status"], report["errors_by_code"]) == ("capped", {"over_budget": 3})
    assert report["options"]["max_label_calls"] == 3


def test_a_fanned_out_run_capped_at_n_makes_n_calls_across_its_workers(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    fake_rekognition: FakeRekognition,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    state = fake_rekognition.state
    entries = distinct(site, 12)
    event = buckets.put_manifest("fan.json", with_options({"max_label_calls": 5}, entries))
    manifest_created.handler(event, FakeLambdaContext())
    message = json.loads(sqs.receive_message(QueueUrl=queue.url, VisibilityTimeout=0)["Messages"][0]["Body"])
    assert message["options"]["max_label_calls"] == 5  # every worker of the run gets the run's cap
    # the stack's setting changes mid-run: the run keeps the cap it started with
    settings(monkeypatch, MAX_LABEL_CALLS_PER_MANIFEST="0")

    invocations = drain(sqs, queue, work_batch.handler, FakeLambdaContext(), batch_size=1)

    assert invocations == 6 and state.successful_calls == 5
    report = buckets.report()
    assert (report["status"], report["mode"], report["total"]) == ("capped", "fanout", 12)
    assert report["errors_by_code"] == {"over_budget": 7} and len(buckets.records()) == 12
    assert report["cost"] == {"detect_labels_calls": 5, "detect_labels_saved": 0, "estimated_usd": 0.005}

    # uploaded again without a cap: the five labeled images come from the cache
    manifest_created.handler(buckets.put_manifest("fan.json", entries), FakeLambdaContext())
    drain(sqs, queue, work_batch.handler, FakeLambdaContext(), batch_size=1)

    report = buckets.report()
    assert (report["status"], report["succeeded"]) == ("complete", 12)
    assert state.successful_calls == 12  # in total, one call per distinct image
    assert report["cost"] == {"detect_labels_calls": 7, "detect_labels_saved": 5, "estimated_usd": 0.007}


def test_every_call_is_one_metric_value_whichever_function_made_it(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    fake_rekognition: FakeRekognition,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue, _ = fanout_env
    manifest_created.handler(buckets.put_manifest("small.json", distinct(site, 2)), FakeLambdaContext())  # inline
    big = [*distinct(site, 5, start=2), *distinct(site, 3)]  # fanned out; three repeat the inline run's bytes
    manifest_created.handler(
        buckets.put_manifest("big.json", [{**e, "id": f"b{i}"} for i, e in enumerate(big)]), FakeLambdaContext()
    )
    drain(buckets.aws.client("sqs"), queue, work_batch.handler, FakeLambdaContext())

    output = capsys.readouterr().out
    assert fake_rekognition.state.successful_calls == 7
    assert sum(emf_values(output, "DetectLabelsCalls")) == 7
    assert sum(emf_values(output, "DetectLabelsSaved")) == 3
