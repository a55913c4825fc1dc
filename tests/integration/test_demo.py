"""``make demo``: its stand-ins start and stop cleanly, and the whole run labels the photos and writes the gallery."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

from labeler.local import demo
from labeler.local.samples import BROKEN, PHOTOS, S3_SAMPLES

ENTRIES = len(PHOTOS) + len(BROKEN) + len(S3_SAMPLES)
LABELED = len(PHOTOS) + sum(sample.photo is not None for sample in S3_SAMPLES)  # the photo read from S3
FAILED = ENTRIES - LABELED  # the broken entries, and the bucket outside SOURCE_BUCKETS


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port
    return port


def accepts_connections(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        try:
            probe.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return False
    return True


def test_the_stack_starts_everything_and_stops_everything() -> None:
    environment_before = dict(os.environ)

    with demo.DemoStack(max_workers=3) as stack:
        assert stack.aws is not None
        ports = [port_of(stack.aws.endpoint_url), stack.photos.port]
        assert all(accepts_connections(port) for port in ports)
        assert os.environ["AWS_ENDPOINT_URL_S3"] == stack.aws.endpoint_url
        assert os.environ["OUTPUT_BUCKET"] == demo.OUTPUT_BUCKET
        assert os.environ["LABEL_BACKEND"] == "local"
        assert os.environ["ALLOW_PRIVATE_NETWORKS"] == "true"
        assert os.environ["MAX_WORKERS"] == "3"
        assert os.environ["SOURCE_BUCKETS"] == demo.SOURCE_BUCKET
        names = {bucket["Name"] for bucket in stack.aws.client("s3").list_buckets()["Buckets"]}
        assert {demo.INPUT_BUCKET, demo.OUTPUT_BUCKET, demo.SOURCE_BUCKET} <= names
        photos = stack.aws.client("s3").list_objects_v2(Bucket=demo.SOURCE_BUCKET)["Contents"]
        assert [item["Key"] for item in photos] == [s.key for s in S3_SAMPLES if s.photo is not None]
        with urllib.request.urlopen(stack.photos.url(PHOTOS[0].path), timeout=5) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
            assert response.read(3) == b"\xff\xd8\xff"

    assert not any(accepts_connections(port) for port in ports)
    assert dict(os.environ) == environment_before
    assert stack.started == []


def test_a_failed_start_stops_what_had_started() -> None:
    environment_before = dict(os.environ)
    stack = demo.DemoStack(input_bucket="x")  # too short a name: S3 refuses the bucket after moto started

    with pytest.raises(ClientError, match="InvalidBucketName"):
        stack.start()

    assert stack.aws is not None
    assert not accepts_connections(port_of(stack.aws.endpoint_url))
    assert stack.photos is None
    assert dict(os.environ) == environment_before


@pytest.mark.model
def test_the_demo_labels_the_photos_and_writes_the_gallery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTPUT_BUCKET", raising=False)
    environment_before = dict(os.environ)
    stale = tmp_path / "results" / "from-an-older-run.json"
    stale.parent.mkdir()
    stale.write_text("{}")

    status = demo.main(["--output-dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert status == 0, out
    assert dict(os.environ) == environment_before
    assert "S3 → SQS notification" in out  # the real event route, not the fallback
    assert "169.254.169.254 (cloud metadata) stays blocked" in out
    assert f"{ENTRIES}/{ENTRIES}" in out
    assert "Cat 92" in out or "Cat 91" in out or "Cat 93" in out
    assert "✓ every entry has a record" in out
    # Told when it was done: the run's completion event came through the rule's queue.
    assert f"event     Manifest Labeled (complete, {ENTRIES} entries): the default bus → the completion rule" in out
    # The ending: a named query of the template on DuckDB over the index the run wrote.
    ending = out[out.index("index:    1 object(s) under s3://") :]
    assert f"{ENTRIES} rows (one per entry)" in ending
    assert "images_with_label (a named query of template.yaml" in ending
    queried = ending[: ending.index("re-check (the manifest is under watch/")]
    found = [line.split("│")[1:3] for line in queried.splitlines() if line.startswith("│")]
    assert [(label.strip(), image_id.strip()) for label, image_id in found] == [
        ("Cat", "chelsea-the-cat"),
        ("Cat", "cat-in-s3"),  # the photo read from the source bucket: in the same index
        ("Coffee", "coffee"),
    ]
    # The re-check: the rocket changed on its server; one call, its result object alone written again.
    rechecked = ending[ending.index("re-check (the manifest is under watch/") :]
    assert "re-check: complete · 13 entries · 6 unchanged · 1 changed (rocket) · 0 gone · 6 failed" in rechecked
    assert "DetectLabels 1 call, 6 saved" in rechecked
    assert "written   1 result object(s): rocket; the 12 others untouched" in rechecked
    changed = [line.split("│")[1:4] for line in rechecked.splitlines() if line.startswith("│")]
    assert [cell.strip() for cell in changed[0][:1]] == ["rocket"] and "Cat" in changed[0][2]
    assert "✓ the re-check relabeled the changed photo alone and wrote nothing else" in out
    for port in {int(p) for p in _ports_in(out)}:
        assert not accepts_connections(port)

    results = sorted((tmp_path / "results").glob("*.json"))
    assert len(results) == ENTRIES and not stale.exists()
    records = [json.loads(path.read_text()) for path in results]
    cat = next(record for record in records if record["image_id"] == "chelsea-the-cat")
    assert cat["label_backend"] == "local" and "Cat" in {label["Name"] for label in cat["labels"]}
    # the demo's manifest asks for IMAGE_PROPERTIES: the offline backend computed them
    assert {"Quality", "DominantColors", "Foreground", "Background"} <= set(cat["image_properties"])
    # Photos already in S3: read from the source bucket (the offline backend has no S3Object), and a bucket
    # outside SOURCE_BUCKETS refused, both in the table.
    from_s3 = next(record for record in records if record["image_id"] == "cat-in-s3")
    assert from_s3["url"] == f"s3://{demo.SOURCE_BUCKET}/photos/chelsea.png"
    assert from_s3["source"]["route"] == "download" and "Cat" in {label["Name"] for label in from_s3["labels"]}
    refused = next(record for record in records if record["image_id"] == "not-our-bucket")
    assert refused["error"]["code"] == "source_not_allowed"
    assert "S3 (download) · PNG 451×300" in out and "source_not_allowed  bucket 'someone-elses-photos'" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["total"], report["succeeded"], report["failed"]) == (ENTRIES, LABELED, FAILED)
    assert report["errors_by_code"] == {
        **{entry.expected_code: 1 for entry in BROKEN},
        **{sample.expected_code: 1 for sample in S3_SAMPLES if sample.expected_code},
    }
    assert report["options"]["features"] == ["GENERAL_LABELS", "IMAGE_PROPERTIES"]
    calls = report["cost"]["detect_labels_calls"]
    assert calls + report["cost"]["detect_labels_saved"] == LABELED
    assert f"DetectLabels {calls} calls" in out  # the summary line shows the cost

    html = (tmp_path / "gallery.html").read_text()
    assert html.count('<article class="card ok"') == LABELED
    assert html.count('<article class="card failed"') == FAILED
    assert html.count('src="data:image/jpeg;base64,') == LABELED
    assert html.count('<ul class="swatches">') == LABELED and html.count('class="quality"') == LABELED
    assert f"DetectLabels {calls} calls" in html


def _ports_in(text: str) -> list[str]:
    return [part.split("/", 1)[0].split()[0] for part in text.split("http://127.0.0.1:")[1:]]


def test_without_the_model_the_demo_says_how_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3IL_MODEL_DIR", str(tmp_path / "no-model-here"))

    status = demo.main(["--output-dir", str(tmp_path / "out")])

    assert status == 2
    assert "make model" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
