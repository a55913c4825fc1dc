"""``s3-image-labeler estimate``: every manifest form, broken manifests, URL memos on the embedded endpoint."""

from __future__ import annotations

import codecs
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from labeler import cli
from labeler.local.estimate import Estimate, ManifestCount, MemoLookups, count_manifest
from labeler.logic import manifest as manifest_module
from labeler.logic.cache import LabelCache
from tests.conftest import Buckets, FakeLambdaContext
from tests.support.fake_rekognition import FakeRekognition
from tests.support.site import Site

A, B, C = "https://example.com/a.jpg", "https://example.com/b.png", "https://example.com/c.gif"
S3_OBJECT = "s3://photos-bucket/2026/d.jpg"
KEYS = {"entries", "valid_entries", "unique_urls", "s3_objects", "memoized_urls", "max_calls", "min_calls"}
REQUIRED = KEYS | {"max_usd", "min_usd"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main(["estimate", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def estimate_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    status, out, err = run(capsys, *argv, "--json")
    assert status == 0, err
    document: dict[str, Any] = json.loads(out)
    assert set(document) == REQUIRED | {"s3_objects", "price_date", "features", "max_label_calls"}
    return document


def write(tmp_path: Path, name: str, body: bytes | str | Any) -> Path:
    path = tmp_path / name
    if isinstance(body, str):
        body = body.encode("utf-8")
    elif not isinstance(body, bytes):
        body = json.dumps(body).encode("utf-8")
    path.write_bytes(body)
    return path


def one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("s3-image-labeler: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def put_memo(buckets: Buckets, url: str, **document: Any) -> None:
    """A URL memo as the pipeline writes it (LabelCache.put_url_memo), at LabelCache's own key."""
    body = {"url": url, "etag": '"abc"', "last_modified": None, "sha256": "ab" * 32, **document}
    buckets.s3.put_object(Bucket=buckets.output, Key=LabelCache.url_key(url), Body=json.dumps(body).encode())


# --- every form the reader accepts ----------------------------------------------------------------------
FIVE_ENTRIES = [{"url": A, "id": "a"}, {"url": B}, A, {"url": S3_OBJECT, "id": 4}, {"id": "no-url"}]
FORMS: dict[str, bytes] = {
    "list.json": json.dumps(FIVE_ENTRIES).encode(),
    "images.json": json.dumps({"images": FIVE_ENTRIES, "note": "other keys are ignored"}).encode(),
    "lines.jsonl": "\r\n".join(json.dumps(e) for e in FIVE_ENTRIES).encode() + b"\r\n\r\n",
    "bom.json": codecs.BOM_UTF8 + json.dumps(FIVE_ENTRIES).encode(),
    "trailing-commas.json": json.dumps(FIVE_ENTRIES).encode()[:-1] + b",]",
    "javascript.json": (
        b"// hand-written\n[{url: '"
        + A.encode()
        + b"', id: 'a'}, {url: '"
        + B.encode()
        + b"'}, '"
        + A.encode()
        + b"', {url: '"
        + S3_OBJECT.encode()
        + b"', id: 4}, {id: 'no-url'},]"
    ),
}


# Lenient forms (trailing commas, JavaScript style) are accepted only when read whole (test_manifest).
STRICT_FORMS = sorted(set(FORMS) - {"trailing-commas.json", "javascript.json"})
CASES = [(name, False) for name in sorted(FORMS)] + [(name, True) for name in STRICT_FORMS]


@pytest.mark.parametrize(("name", "streamed"), CASES, ids=[f"{n}-{'streamed' if s else 'whole'}" for n, s in CASES])
def test_every_manifest_form_gives_the_same_counts(
    name: str, streamed: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if streamed:
        monkeypatch.setattr(manifest_module, "SMALL_BODY_BYTES", 0)  # the streaming reader, as for > 8 MiB
    document = estimate_json(capsys, str(write(tmp_path, name, FORMS[name])))
    assert {k: document[k] for k in KEYS} == {
        "entries": 5,
        "valid_entries": 4,  # the entry without a url is recorded as invalid_entry, never labeled
        "unique_urls": 3,  # A twice (with and without an id) is one URL: one call at most
        "s3_objects": 1,
        "memoized_urls": None,  # no output bucket given: not looked up
        "max_calls": 3,
        "min_calls": 3,
    }
    assert document["max_usd"] == document["min_usd"] == 0.003
    assert document["price_date"] == "2026-11-30"


def test_one_object_and_plain_url_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = estimate_json(capsys, str(write(tmp_path, "one.json", {"url": A, "id": "cat"})))
    assert (one["entries"], one["unique_urls"], one["max_calls"]) == (1, 1, 1)
    urls = estimate_json(capsys, str(write(tmp_path, "urls.json", [A, B, C, A, B])))
    assert (urls["entries"], urls["valid_entries"], urls["unique_urls"]) == (5, 3, 3)  # repeats: duplicate ids


def test_the_text_output_shows_the_range_and_the_tiers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "m.json", [A, B, C])
    status, out, _ = run(capsys, str(path), "--calls-this-month", "999999")
    assert status == 0
    assert "entries         3 (3 valid; 0 rejected" in out
    assert "not looked up (pass --stack, --output-bucket or --embedded)" in out
    assert "DetectLabels    3 calls" in out
    assert "$0.0026, after 999,999 calls this month" in out  # one call at $0.001, two at $0.0008
    assert "1 × $0.001 = $0.001" in out and "2 × $0.0008 = $0.0016" in out
    assert "first 1 M $0.001, next 4 M $0.0008, next 30 M $0.0006, over 35 M $0.00025" in out
    assert "read 2026-11-30 from https://aws.amazon.com/rekognition/pricing/" in out


# --- broken manifests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "manifest_empty"),
        (b"   \n ", "manifest_empty"),
        (b"[]", "manifest_empty"),
        (b"not json at all", "manifest_invalid"),
        (b'"https://example.com/a.jpg"', "manifest_invalid"),  # a top-level string
        (b'{"images": "nope"}', "manifest_invalid"),
        (b'{"name": "no url, no images"}', "manifest_invalid"),
        (codecs.BOM_UTF16_LE + "[]".encode("utf-16-le"), "manifest_invalid"),
        (b"[\xff]", "manifest_invalid"),
    ],
)
def test_a_manifest_the_stack_would_reject_is_a_one_line_error(
    body: bytes, code: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, str(write(tmp_path, "broken.json", body)), "--json")
    assert status == 2 and out == ""
    one_line_error(err, "the stack would reject this manifest", code)


def test_a_manifest_that_breaks_part_way_is_estimated_up_to_the_break(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "SMALL_BODY_BYTES", 0)  # streamed: entries before a break count
    path = write(tmp_path, "cut.json", json.dumps([A, B, C])[:-1] + ', "https://example.com/d.jpg" oops]')
    status, out, err = run(capsys, str(path), "--json")
    assert status == 2
    assert json.loads(out)["unique_urls"] == 4
    one_line_error(err, "breaks after 4 entries", "manifest_invalid", "partial")


def test_missing_files_keys_and_buckets_are_one_line_errors(
    buckets: Buckets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, str(tmp_path / "nope.json"))
    assert status == 2
    one_line_error(err, "the manifest file", "does not exist")
    status, _, err = run(capsys, f"s3://{buckets.input}/manifests/nope.json")
    assert status == 2
    one_line_error(err, f"the manifest s3://{buckets.input}/manifests/nope.json does not exist")
    status, _, err = run(capsys, "s3://no-such-bucket-here/m.json")
    assert status == 2
    one_line_error(err, "'no-such-bucket-here' does not exist")
    path = write(tmp_path, "m.json", [A])
    status, _, err = run(capsys, str(path), "--output-bucket", "no-such-output-bucket")
    assert status == 2
    one_line_error(err, "the output bucket 'no-such-output-bucket' does not exist")
    status, _, err = run(capsys, str(path), "--concurrency", "0")
    assert status == 2
    one_line_error(err, "--concurrency")


def test_embedded_needs_a_local_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    status, _, err = run(capsys, str(write(tmp_path, "m.json", [A])), "--embedded")
    assert status == 2
    one_line_error(err, "--embedded needs a local endpoint", "AWS_ENDPOINT_URL_S3")


# --- URL memos on the embedded endpoint -------------------------------------------------------------------------
def test_memoized_urls_narrow_the_range(buckets: Buckets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put_memo(buckets, A)
    # The pipeline never writes a URL memo for an S3 object (it caches it by version or ETag): not looked up.
    put_memo(buckets, S3_OBJECT, etag=None, last_modified="Wed, 25 Nov 2026 10:00:00 GMT")
    put_memo(buckets, B, etag=None)  # no validators: the pipeline could not send a conditional request
    put_memo(buckets, "https://example.com/not-in-the-manifest.jpg")
    path = write(tmp_path, "m.json", [{"url": A}, {"url": A, "id": "again"}, B, C, S3_OBJECT, 42])

    for flags in (["--output-bucket", buckets.output], ["--embedded", "--output-bucket", buckets.output]):
        document = estimate_json(capsys, str(path), *flags)
        assert {k: document[k] for k in KEYS} == {
            "entries": 6,
            "valid_entries": 5,
            "unique_urls": 4,
            "s3_objects": 1,
            "memoized_urls": 1,  # A; B's memo has no validators, C has none, the S3 object is not looked up
            "max_calls": 4,
            "min_calls": 3,
        }
        assert (document["min_usd"], document["max_usd"]) == (0.003, 0.004)

    status, out, _ = run(capsys, str(path), "--output-bucket", buckets.output)
    assert status == 0
    assert f"1 of 4 URLs have a URL memo in s3://{buckets.output}/cache/urls/ (3 looked up in" in out
    assert "S3 objects are not looked up (cached by version or ETag" in out
    assert "DetectLabels    3 to 4 calls" in out and "$0.003 to $0.004" in out


def test_an_s3_manifest_is_read_from_the_bucket(
    buckets: Buckets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_memo(buckets, B)
    buckets.put_manifest("manifests/m.jsonl", "\n".join(json.dumps(u) for u in [A, B, C]))
    document = estimate_json(capsys, f"s3://{buckets.input}/manifests/m.jsonl", "--output-bucket", buckets.output)
    assert (document["entries"], document["unique_urls"], document["memoized_urls"]) == (3, 3, 1)
    assert (document["min_calls"], document["max_calls"]) == (2, 3)


def test_the_output_bucket_can_come_from_the_stacks_outputs(
    buckets: Buckets, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--stack reads OutputBucketName as the other commands do (cli.resolve_buckets): moto's CloudFormation here."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDFORMATION", buckets.aws.endpoint_url)
    stack = f"estimate-{buckets.output}"
    template = {
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"OutputBucketName": {"Value": buckets.output}},
    }
    buckets.aws.client("cloudformation").create_stack(StackName=stack, TemplateBody=json.dumps(template))
    put_memo(buckets, A)
    document = estimate_json(capsys, str(write(tmp_path, "m.json", [A, B])), "--stack", stack)
    assert (document["memoized_urls"], document["min_calls"], document["max_calls"]) == (1, 1, 2)
    status, _, err = run(capsys, str(write(tmp_path, "m.json", [A])), "--stack", "no-such-stack")
    assert status == 2
    one_line_error(err, "stack 'no-such-stack' does not exist")


@pytest.mark.usefixtures("lambda_env")
def test_memos_the_pipeline_wrote_are_found_and_the_second_run_stays_in_the_range(
    buckets: Buckets,
    site: Site,
    fake_rekognition: FakeRekognition,
    lambda_context: FakeLambdaContext,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labeler.handlers import manifest_created

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # EMF lines on stdout would mix with the JSON
    manifest_created.handler(
        buckets.put_manifest("first.json", [site.url("/photo.jpg"), site.url("/coffee.jpg")]), lambda_context
    )
    first_calls = fake_rekognition.state.successful_calls

    later = [site.url("/photo.jpg"), site.url("/coffee.jpg"), site.url("/photo.png"), site.url("/photo.webp")]
    document = estimate_json(capsys, str(write(tmp_path, "later.json", later)), "--output-bucket", buckets.output)
    assert (document["memoized_urls"], document["min_calls"], document["max_calls"]) == (2, 2, 4)

    manifest_created.handler(buckets.put_manifest("later.json", later), lambda_context)
    made = fake_rekognition.state.successful_calls - first_calls
    assert document["min_calls"] <= made <= document["max_calls"]


# --- the lookups themselves ---------------------------------------------------------------------------------------
class SlowStore:
    """A JSON store that answers after a pause and records how many reads overlap."""

    def __init__(self, memos: dict[str, dict[str, Any]], fail: set[str] | None = None) -> None:
        self.memos, self.fail = memos, fail or set()
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def get_json(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(0.002)
            if key in self.fail:
                raise ConnectionError("read failed")
            return self.memos.get(key)
        finally:
            with self.lock:
                self.active -= 1


def test_lookups_run_in_parallel_but_bounded() -> None:
    urls = [f"https://example.com/{n}.jpg" for n in range(400)]
    memo = {"etag": '"e"', "last_modified": None, "sha256": "ab" * 32}
    store = SlowStore({LabelCache.url_key(u): memo for u in urls[:100]}, fail={LabelCache.url_key(urls[150])})
    lookups = MemoLookups(store, concurrency=8)
    for url in urls:
        lookups.submit(url)
    lookups.finish()
    assert (lookups.looked_up, lookups.found) == (400, 100)
    assert lookups.reads.failures == 1 and isinstance(lookups.reads.first_error, ConnectionError)
    assert 1 < store.peak <= 8


def test_counting_streams_unique_urls_once_in_order() -> None:
    seen: list[str] = []
    count = count_manifest(json.dumps([A, B, A, {"url": C, "id": "c"}, {"url": A, "id": "a2"}]).encode(), seen.append)
    assert seen == [A, B, C]
    assert count == ManifestCount(entries=5, valid_entries=4, unique_urls=3, s3_objects=0)


def test_the_manifest_s_options_price_image_properties_and_cap_the_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [f"https://example.com/{n}.jpg" for n in range(10)]
    both = {"features": ["GENERAL_LABELS", "IMAGE_PROPERTIES"], "max_label_calls": 4}
    document = estimate_json(capsys, str(write(tmp_path, "opts.json", {"options": both, "images": urls})))
    assert (document["unique_urls"], document["max_calls"], document["min_calls"]) == (10, 4, 4)
    assert document["max_usd"] == 0.007  # 4 calls x ($0.001 labels + $0.00075 image properties)
    assert (document["features"], document["max_label_calls"]) == (both["features"], 4)

    status, out, _ = run(capsys, str(tmp_path / "opts.json"))
    assert status == 0 and "capped at 4 by max_label_calls" in out and "image properties: $0.003" in out
    # a manifest without features: the stack's, as --features says
    plain = estimate_json(capsys, str(write(tmp_path, "plain.json", urls[:2])), "--features", "IMAGE_PROPERTIES")
    assert (plain["features"], plain["max_usd"]) == (["IMAGE_PROPERTIES"], 0.0015)


@pytest.mark.parametrize(
    "options",
    [{"minconfidence": 80}, {"max_labels": "20"}, {"max_dominant_colors": 5}, {"max_label_calls": 0}, [1]],
)
def test_options_no_stack_would_accept_are_the_stack_s_refusal(
    options: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, str(write(tmp_path, "bad.json", {"options": options, "images": [A]})), "--json")
    assert status == 2 and out == ""
    one_line_error(err, "the stack would reject this manifest", "manifest_options_invalid")


def test_the_range_is_priced_across_tiers() -> None:
    count = ManifestCount(entries=3_000_000, valid_entries=3_000_000, unique_urls=3_000_000)
    estimate = Estimate(count=count, memoized_urls=2_500_000)
    assert (estimate.min_calls, estimate.max_calls) == (500_000, 3_000_000)
    assert estimate.to_dict()["max_usd"] == 2600.0  # 1 M x $0.001 + 2 M x $0.0008
    assert estimate.to_dict()["min_usd"] == 500.0
    assert Estimate(count=count, memoized_urls=None, calls_this_month=5_000_000).to_dict()["max_usd"] == 1800.0


def test_s3_entries_are_told_apart_by_their_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        {"url": S3_OBJECT, "versionId": "v1"},
        {"url": S3_OBJECT, "versionId": "v2", "id": "second"},
        {"url": S3_OBJECT, "versionId": "v1", "id": "v1-again"},  # the same image as the first: one call
        {"url": S3_OBJECT},  # the current version: maybe another image
        {"url": A, "versionId": "v1"},  # versionId on an HTTP URL: invalid_entry, never labeled
    ]
    document = estimate_json(capsys, str(write(tmp_path, "m.jsonl", "\n".join(json.dumps(e) for e in lines))))
    assert {k: document[k] for k in ("entries", "valid_entries", "s3_objects", "unique_urls", "max_calls")} == {
        "entries": 5,
        "valid_entries": 4,
        "s3_objects": 4,
        "unique_urls": 3,
        "max_calls": 3,
    }
