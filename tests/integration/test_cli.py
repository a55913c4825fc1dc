"""The ``s3-image-labeler`` command against the embedded endpoint (moto's server on loopback), no boto3 mocks.

``submit`` is followed end to end: S3 sends the upload's event to SQS (moto), a thread plays
Lambda (takes the event from the queue, runs the real handler), the command watches the output
bucket. Rekognition is the wire-level stand-in; ``invoke --embedded`` uses the offline model.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from labeler import cli
from labeler.local.http_server import LoopbackServer
from labeler.local.runner import LocalLambdaContext, S3EventQueue, add_missing_sequencers, event_from_upload
from labeler.local.samples import BROKEN, PHOTOS, sample_manifest, sample_routes
from tests.conftest import Buckets
from tests.support.fake_rekognition import SAMPLE_LABELS

ENTRIES = len(PHOTOS) + len(BROKEN)


@pytest.fixture(scope="module")
def photos() -> Iterator[LoopbackServer]:
    with LoopbackServer(sample_routes()) as server:
        yield server


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what came before (the handler's own log lines when a test ran it directly)
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line_error(err: str, *fragments: str) -> None:
    """The error is one line, says what is wrong, and is not a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("s3-image-labeler: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def manifest_file(tmp_path: Path, photos: LoopbackServer, name: str = "photos.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(sample_manifest(photos.url)))
    return path


def run_handler_on_upload(buckets: Buckets, key: str, entries: list[dict[str, Any]]) -> None:
    from labeler.handlers import manifest_created

    event = buckets.put_manifest(key, entries)
    manifest_created.handler(event, LocalLambdaContext())


@pytest.fixture
def quiet_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler prints its metrics (EMF) to stdout: here that would mix with the command's output."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")


class PlayLambda(threading.Thread):
    """Takes the S3 event for ``key`` from the notification queue and runs the handler on it, as Lambda would."""

    def __init__(self, queue: S3EventQueue, key: str) -> None:
        super().__init__(daemon=True)
        self.queue, self.key = queue, key
        self.event: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from labeler.handlers import manifest_created

        try:
            self.event = self.queue.wait_for(self.key, timeout_seconds=30)
            assert self.event is not None, "no S3 event arrived"
            add_missing_sequencers(self.event)
            manifest_created.handler(self.event, LocalLambdaContext())
        except BaseException as exc:
            self.error = exc


@pytest.mark.usefixtures("lambda_env", "quiet_metrics")
def test_submit_uploads_follows_the_run_and_prints_the_table(
    buckets: Buckets, photos: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = S3EventQueue(buckets.aws.client("sqs"), buckets.s3, buckets.input).connect()
    lambda_ = PlayLambda(queue, "manifests/photos.json")
    lambda_.start()

    status, out, err = run(
        capsys,
        "submit",
        str(manifest_file(tmp_path, photos)),
        "--input-bucket",
        buckets.input,
        "--output-bucket",
        buckets.output,
        "--poll",
        "0.2",
        "--timeout",
        "60",
    )

    lambda_.join(10)
    assert lambda_.error is None, lambda_.error
    assert status == 0, err
    assert f"uploaded s3://{buckets.input}/manifests/photos.json ({ENTRIES} entries)" in err
    assert f"{ENTRIES}/{ENTRIES}" in err  # the progress bar reached the end
    for photo in PHOTOS:
        assert photo.image_id in out
    assert "Mobile Phone 100" in out  # the labels of the Rekognition stand-in
    for entry in BROKEN:
        assert entry.expected_code in out
    assert f"report: complete · {ENTRIES} entries · {len(PHOTOS)} succeeded · {len(BROKEN)} failed" in out


@pytest.mark.usefixtures("lambda_env", "quiet_metrics")
def test_submit_json_reports_only_the_new_run(
    buckets: Buckets, photos: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An earlier run of the same key left other records and a report: they must not count as this run's.
    run_handler_on_upload(
        buckets, "manifests/photos.json", [{"id": f"old-{n}", "url": photos.url("/x")} for n in range(20)]
    )
    queue = S3EventQueue(buckets.aws.client("sqs"), buckets.s3, buckets.input).connect()
    lambda_ = PlayLambda(queue, "manifests/photos.json")
    lambda_.start()

    status, out, _ = run(
        capsys,
        "submit",
        str(manifest_file(tmp_path, photos)),
        "--input-bucket",
        buckets.input,
        "--output-bucket",
        buckets.output,
        "--poll",
        "0.2",
        "--timeout",
        "60",
        "--json",
    )

    lambda_.join(10)
    assert status == 0
    document = json.loads(out)
    assert document["report"]["status"] == "complete"
    assert document["report"]["total"] == ENTRIES
    assert [record["image_id"] for record in document["records"]][: len(PHOTOS)] == [p.image_id for p in PHOTOS]
    assert len(document["records"]) == ENTRIES
    assert document["records"][0]["labels"] == SAMPLE_LABELS


def submit_args(buckets: Buckets, manifest: Path, *extra: str) -> list[str]:
    return ["submit", str(manifest), "--input-bucket", buckets.input, "--output-bucket", buckets.output, *extra]


@pytest.mark.usefixtures("lambda_env", "quiet_metrics")
def test_submit_waits_for_the_runs_completion_event_on_the_stacks_completion_queue(
    buckets: Buckets,
    photos: LoopbackServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    completion_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDFORMATION", buckets.aws.endpoint_url)
    stack = f"labeler-events-{buckets.input}"
    outputs = {
        "InputBucketName": buckets.input,
        "OutputBucketName": buckets.output,
        "CompletionQueueUrl": completion_queue,
    }
    template = {
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    buckets.aws.client("cloudformation").create_stack(StackName=stack, TemplateBody=json.dumps(template))
    queue = S3EventQueue(buckets.aws.client("sqs"), buckets.s3, buckets.input).connect()
    lambda_ = PlayLambda(queue, "manifests/photos.json")
    lambda_.start()

    status, out, err = run(capsys, "submit", str(manifest_file(tmp_path, photos)), "--stack", stack)

    lambda_.join(10)
    assert lambda_.error is None, lambda_.error
    assert status == 0, err
    assert f"waiting for the run's completion event on {completion_queue}" in err
    assert "completion event: Manifest Labeled (complete)" in err
    assert f"report: complete · {ENTRIES} entries · {len(PHOTOS)} succeeded · {len(BROKEN)} failed" in out


@pytest.mark.usefixtures("lambda_env", "quiet_metrics")
def test_with_a_completion_queue_submit_ends_on_the_event_not_on_the_report(
    buckets: Buckets, photos: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], completion_queue: str
) -> None:
    from labeler.handlers.composition import get_services

    get_services().on_run_finished = lambda report: None  # the run completes, but puts no event
    queue = S3EventQueue(buckets.aws.client("sqs"), buckets.s3, buckets.input).connect()
    lambda_ = PlayLambda(queue, "manifests/photos.json")
    lambda_.start()

    status, _, err = run(
        capsys,
        *submit_args(
            buckets, manifest_file(tmp_path, photos), "--completion-queue", completion_queue, "--timeout", "3"
        ),
    )

    lambda_.join(10)
    assert buckets.report()["status"] == "complete"
    assert status == 1
    assert "timed out after 3 s waiting for the completion event" in err


@pytest.mark.usefixtures("lambda_env")
def test_submit_times_out_with_status_1_when_nothing_processes_the_upload(
    buckets: Buckets, photos: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(
        capsys,
        "submit",
        str(manifest_file(tmp_path, photos)),
        "--input-bucket",
        buckets.input,
        "--output-bucket",
        buckets.output,
        "--poll",
        "0.1",
        "--timeout",
        "1",
    )

    assert status == 1
    assert "timed out after 1 s: 0 of 11 records (no report yet)" in err


@pytest.mark.usefixtures("lambda_env")
def test_results_and_gallery_of_a_processed_manifest(
    buckets: Buckets, photos: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_handler_on_upload(buckets, "manifests/photos.json", sample_manifest(photos.url))
    target = ["--input-bucket", buckets.input, "--output-bucket", buckets.output]

    status, out, _ = run(capsys, "results", "manifests/photos.json", *target, "--json")
    assert status == 0
    document = json.loads(out)
    assert document["report"]["succeeded"] == len(PHOTOS)
    assert [record["entry_index"] for record in document["records"]] == list(range(ENTRIES))

    status, out, _ = run(
        capsys, "results", f"s3://{buckets.input}/manifests/photos.json", "--output-bucket", buckets.output
    )
    assert status == 0
    assert "chelsea-the-cat" in out and "blocked_address" in out and "report: complete" in out

    gallery = tmp_path / "gallery.html"
    status, _, err = run(capsys, "gallery", "manifests/photos.json", *target, "-o", str(gallery))
    assert status == 0, err
    html = gallery.read_text()
    assert html.count('<article class="card ok"') == len(PHOTOS)
    assert html.count('<article class="card failed"') == len(BROKEN)
    assert html.count('src="data:image/jpeg;base64,') == len(PHOTOS)  # fetched again, safely, from loopback
    assert f"{len(PHOTOS)} of {len(PHOTOS)} thumbnails" in err
    assert 'src="http' not in html


@pytest.mark.usefixtures("lambda_env")
def test_gallery_thumbnails_obey_the_address_policy(
    buckets: Buckets,
    photos: LoopbackServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_handler_on_upload(buckets, "manifests/photos.json", sample_manifest(photos.url)[:2])
    monkeypatch.delenv("ALLOW_PRIVATE_NETWORKS")  # the photos are on loopback: not fetchable by default
    gallery = tmp_path / "gallery.html"
    hits_before = photos.hits(PHOTOS[0].path)

    status, _, err = run(
        capsys,
        "gallery",
        "manifests/photos.json",
        "--input-bucket",
        buckets.input,
        "--output-bucket",
        buckets.output,
        "-o",
        str(gallery),
    )

    assert status == 0
    assert "0 of 2 thumbnails" in err
    assert photos.hits(PHOTOS[0].path) == hits_before  # refused before connecting
    html = gallery.read_text()
    assert "<img" not in html and html.count("no preview") == 2


def test_results_take_the_buckets_from_the_stack_outputs(
    buckets: Buckets, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDFORMATION", buckets.aws.endpoint_url)
    stack = f"labeler-{buckets.input}"
    template = {
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "InputBucketName": {"Value": buckets.input},
            "OutputBucketName": {"Value": buckets.output},
        },
    }
    buckets.aws.client("cloudformation").create_stack(StackName=stack, TemplateBody=json.dumps(template))
    manifest = [{"id": "only", "url": "http://169.254.169.254/latest/meta-data/"}]
    with _handler_env(buckets, monkeypatch):
        run_handler_on_upload(buckets, "manifests/one.json", manifest)

    status, out, err = run(capsys, "results", "manifests/one.json", "--stack", stack, "--json")

    assert status == 0, err
    assert json.loads(out)["records"][0]["error"]["code"] == "blocked_address"


@contextmanager
def _handler_env(buckets: Buckets, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """OUTPUT_BUCKET for the handler, without the Rekognition stand-in (no entry here reaches it)."""
    from labeler.handlers.composition import reset_services

    monkeypatch.setenv("OUTPUT_BUCKET", buckets.output)
    reset_services()
    try:
        yield
    finally:
        reset_services()


# --- invoke --------------------------------------------------------------------------------------
@pytest.mark.usefixtures("lambda_env")
def test_invoke_runs_the_handler_on_an_event_file_against_the_configured_endpoint(
    buckets: Buckets, photos: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "manifests/holiday photos+1.json"  # encoded in the event as S3 does: + for space, %2B for +
    buckets.s3.put_object(
        Bucket=buckets.input, Key=key, Body=json.dumps([*sample_manifest(photos.url)[1:3], {"id": "x"}]).encode()
    )
    event_path = tmp_path / "event.json"
    event = event_from_upload(buckets.s3, buckets.input, key)
    assert event["Records"][0]["s3"]["object"]["key"] == "manifests/holiday+photos%2B1.json"
    event_path.write_text(json.dumps(event))

    status, out, err = run(capsys, "invoke", str(event_path), "--output-bucket", buckets.output)

    assert status == 0, err
    assert '"status": "complete"' in out and '"total": 3' in out  # the handler's answer
    assert "coffee" in out and "Mobile Phone 100" in out and "invalid_entry" in out
    assert "report: complete · 3 entries · 2 succeeded · 1 failed" in out


@pytest.mark.model
def test_invoke_embedded_stages_the_event_and_labels_sample_photos_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LABEL_BACKEND", raising=False)
    monkeypatch.delenv("OUTPUT_BUCKET", raising=False)
    environment_before = dict(os.environ)

    def record(key: str, version_id: str | None) -> dict[str, Any]:
        obj = {"key": key, "size": 1187, "eTag": "9b2cf535f27731c974343645a3985328", "sequencer": "0062A3F0B1C2D3E4F6"}
        if version_id:
            obj["versionId"] = version_id
        return {
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "example-input-bucket"}, "object": obj},
        }

    event = {
        "Records": [
            record("manifests/holiday+photos%2B2024.json", "Ri7m1lTuDLSEqd1rDnjDHgVhXzdO2QWg"),
            record("manifests/more.jsonl", None),
        ]
    }
    event_path = tmp_path / "event.json"
    event_path.write_text(json.dumps(event))

    status, out, err = run(capsys, "invoke", str(event_path), "--embedded", "--json")

    assert status == 0, err
    document = json.loads(out)
    manifest, lines = document["manifests"]
    assert manifest["manifest"] == {"bucket": "example-input-bucket", "key": "manifests/holiday photos+2024.json"}
    assert manifest["report"]["status"] == "complete"
    assert manifest["report"]["manifest"]["version_id"]  # the versioned event names the version really uploaded
    assert (lines["report"]["status"], lines["report"]["total"]) == ("complete", ENTRIES)  # staged as JSON Lines
    records = {record["image_id"]: record for record in manifest["records"] if "labels" in record}
    assert "Cat" in {label["Name"] for label in records["chelsea-the-cat"]["labels"]}
    assert records["chelsea-the-cat"]["label_backend"] == "local"
    assert "staged a sample manifest at s3://example-input-bucket/manifests/holiday photos+2024.json" in err
    assert dict(os.environ) == environment_before  # the embedded endpoint's variables are gone again
    endpoint = err.split("embedded S3 (moto) at ", 1)[1].split(";", 1)[0]
    assert_port_closed(urlsplit(endpoint).port)


def assert_port_closed(port: int | None) -> None:
    assert port
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


# --- one-line errors, exit status 2 --------------------------------------------------------------------
def test_a_missing_manifest_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(
        capsys, "submit", str(tmp_path / "nope.json"), "--input-bucket", "a-in", "--output-bucket", "a-out"
    )
    assert status == 2
    one_line_error(err, "nope.json", "does not exist")


def test_a_manifest_key_the_trigger_ignores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.txt"
    path.write_text("[]")
    status, _, err = run(capsys, "submit", str(path), "--input-bucket", "a-in", "--output-bucket", "a-out")
    assert status == 2
    one_line_error(err, ".json and .jsonl", "--key")


def test_a_missing_input_bucket(
    buckets: Buckets, photos: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--input-bucket", "no-such-input-bucket", "--output-bucket", buckets.output]
    status, _, err = run(capsys, "submit", str(manifest_file(tmp_path, photos)), *args)
    assert status == 2
    one_line_error(err, "input bucket 'no-such-input-bucket' does not exist")


def test_a_missing_output_bucket(buckets: Buckets, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "results", "m.json", "--input-bucket", buckets.input, "--output-bucket", "no-such-out")
    assert status == 2
    one_line_error(err, "output bucket 'no-such-out' does not exist")


def test_a_manifest_key_that_does_not_exist(
    buckets: Buckets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--input-bucket", buckets.input, "--output-bucket", buckets.output]
    status, _, err = run(capsys, "results", "manifests/never-uploaded.json", *target)
    assert status == 2
    one_line_error(err, f"s3://{buckets.input}/manifests/never-uploaded.json does not exist")

    status, _, err = run(capsys, "gallery", "manifests/never-uploaded.json", *target, "-o", str(tmp_path / "g.html"))
    assert status == 2
    one_line_error(err, "does not exist")
    assert not (tmp_path / "g.html").exists()


def test_a_missing_stack(buckets: Buckets, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDFORMATION", buckets.aws.endpoint_url)
    status, _, err = run(capsys, "results", "m.json", "--stack", "no-such-stack")
    assert status == 2
    one_line_error(err, "stack 'no-such-stack' does not exist in us-east-1")


def test_no_credentials(
    buckets: Buckets, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)

    status, _, err = run(
        capsys, "results", "m.json", "--input-bucket", buckets.input, "--output-bucket", buckets.output
    )

    assert status == 2
    one_line_error(err, "no AWS credentials found")


def test_invoke_errors(buckets: Buckets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "invoke", str(tmp_path / "absent.json"), "--output-bucket", buckets.output)
    assert status == 2
    one_line_error(err, "absent.json", "does not exist")

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    status, _, err = run(capsys, "invoke", str(broken), "--output-bucket", buckets.output)
    assert status == 2
    one_line_error(err, "broken.json is not JSON")

    event = tmp_path / "event.json"
    buckets.s3.put_object(Bucket=buckets.input, Key="m.json", Body=b"[]")
    event.write_text(json.dumps(event_from_upload(buckets.s3, buckets.input, "m.json")))
    status, _, err = run(capsys, "invoke", str(event), "--output-bucket", "no-such-output-bucket")
    assert status == 2
    one_line_error(err, "output bucket 'no-such-output-bucket' does not exist")


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ([], ["submit"], ["results"], ["gallery"], ["invoke"]):
        with pytest.raises(SystemExit) as exited:
            cli.main([*command, "--help"])
        assert exited.value.code == 0
        assert "usage: s3-image-labeler" in capsys.readouterr().out
