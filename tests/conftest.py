"""Shared fixtures: the embedded S3 endpoint (moto server), the Rekognition stand-in, buckets, events."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import pytest

from labeler.local.embedded_aws import EmbeddedAws
from tests.support.fake_rekognition import FakeRekognition

# Never let a test reach real AWS, whatever the developer's shell has configured.
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_name, None)
# Dummy credentials and a region: nothing here may reach AWS, and boto3 must not go looking.
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "S3ImageLabelerTests")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

_bucket_numbers = itertools.count()
_table_numbers = itertools.count()
_sequencers = itertools.count(0x0A1B2C3D4E5F6789)
_rule_numbers = itertools.count()


@pytest.fixture(scope="session")
def embedded_aws() -> Iterator[EmbeddedAws]:
    with EmbeddedAws() as aws:
        yield aws


@pytest.fixture(scope="session")
def _fake_rekognition_server() -> Iterator[FakeRekognition]:
    with FakeRekognition() as fake:
        yield fake


@pytest.fixture
def fake_rekognition(_fake_rekognition_server: FakeRekognition, monkeypatch: pytest.MonkeyPatch) -> FakeRekognition:
    """The Rekognition stand-in, reset for this test and wired in through AWS_ENDPOINT_URL_REKOGNITION."""
    _fake_rekognition_server.state.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL_REKOGNITION", _fake_rekognition_server.endpoint_url)
    return _fake_rekognition_server


@dataclass
class Buckets:
    aws: EmbeddedAws
    input: str
    output: str

    @property
    def s3(self) -> Any:
        return self.aws.client("s3")

    def put_manifest(self, key: str, body: bytes | str | Any) -> dict[str, Any]:
        """Upload a manifest (bytes, text, or a JSON-able object) and return the S3 event S3 would send."""
        if not isinstance(body, bytes | str):
            body = json.dumps(body)
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.s3.put_object(Bucket=self.input, Key=key, Body=data)
        return s3_put_event(self.s3, self.input, key)

    def output_keys(self, prefix: str = "") -> list[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        return sorted(
            item["Key"]
            for page in paginator.paginate(Bucket=self.output, Prefix=prefix)
            for item in page.get("Contents", [])
        )

    def read_json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=self.output, Key=key)["Body"].read())

    def records(self) -> list[dict[str, Any]]:
        """Every result record in the output bucket, in entry order."""
        records = [self.read_json(key) for key in self.output_keys("results/")]
        return sorted(records, key=lambda record: record["entry_index"])

    def records_by_id(self) -> dict[str, dict[str, Any]]:
        """Result records by image id (duplicate-id records, which share the id, are left out)."""
        return {
            record["image_id"]: record
            for record in self.records()
            if record.get("error", {}).get("code") != "duplicate_id"
        }

    def report(self) -> dict[str, Any]:
        keys = self.output_keys("reports/")
        assert len(keys) == 1, keys
        return self.read_json(keys[0])


def s3_put_event(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """The ObjectCreated:Put event S3 sends for an object that exists (key encoded as S3 encodes it)."""
    head = s3.head_object(Bucket=bucket, Key=key)
    obj: dict[str, Any] = {
        "key": quote_plus(key, safe="/"),
        "size": head["ContentLength"],
        "eTag": head["ETag"].strip('"'),
        "sequencer": f"{next(_sequencers):018X}",  # S3 gives every upload a new, increasing sequencer
    }
    if head.get("VersionId"):
        obj["versionId"] = head["VersionId"]
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-11-25T00:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "EXAMPLE"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-amz-request-id": "EXAMPLE123456789", "x-amz-id-2": "EXAMPLE123/abc"},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "manifest-created",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "EXAMPLE"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": obj,
                },
            }
        ]
    }


@pytest.fixture
def completion_queue(embedded_aws: EmbeddedAws) -> Iterator[str]:
    """The README's completion rule on the embedded endpoint's default bus, with a queue of its own.

    The rule is removed after the test, so that a later test's queue gets only its own events.
    """
    from labeler.local.events import create_completion_queue

    rule = f"completion-{next(_rule_numbers)}"
    url = create_completion_queue(embedded_aws, queue_name=rule, rule_name=rule)
    yield url
    events = embedded_aws.client("events")
    events.remove_targets(Rule=rule, Ids=["queue"])
    events.delete_rule(Name=rule)


@pytest.fixture
def buckets(embedded_aws: EmbeddedAws) -> Buckets:
    """A fresh input and output bucket on the embedded endpoint."""
    number = next(_bucket_numbers)
    found = Buckets(aws=embedded_aws, input=f"test-input-{number}", output=f"test-output-{number}")
    embedded_aws.create_bucket(found.input)
    embedded_aws.create_bucket(found.output)
    return found


@dataclass
class FakeLambdaContext:
    """The attributes of the Lambda context object that the handler and Powertools read."""

    remaining_ms: int = 900_000
    function_name: str = "s3-image-labeler-ManifestFunction"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:s3-image-labeler-ManifestFunction"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture
def lambda_env(
    buckets: Buckets, fake_rekognition: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The function's environment as the template sets it, pointed at the local stand-ins."""
    from labeler.handlers.composition import reset_services

    env = {
        "OUTPUT_BUCKET": buckets.output,
        "ALLOW_PRIVATE_NETWORKS": "true",  # the image server is on loopback
        "DOWNLOAD_TIMEOUT_SECONDS": "2",
        "MAX_WORKERS": "8",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_services()
    yield env
    reset_services()


# --- the test image site (a loopback HTTP server with real images and hostile routes) ---------------
from tests.support.site import Site  # noqa: E402


@pytest.fixture(scope="session")
def _site_server() -> Iterator[Site]:
    with Site() as started:
        yield started


@pytest.fixture
def site(_site_server: Site) -> Site:
    """The image site, with its request counters reset for this test."""
    _site_server.reset_counters()
    _site_server.server.delay_seconds = 0.0
    return _site_server


# --- the state table and the fan-out (DynamoDB and SQS on the embedded endpoint) ------------------------
from tests.support.sqs_driver import QueueInfo, create_state_table, create_work_queues  # noqa: E402


@pytest.fixture
def state_table(lambda_env: dict[str, str], buckets: Buckets, monkeypatch: pytest.MonkeyPatch) -> str:
    """A DynamoDB state table on the embedded endpoint: Powertools idempotency and run progress are on."""
    name = create_state_table(buckets.aws.client("dynamodb"), f"state-{next(_table_numbers)}")
    monkeypatch.setenv("STATE_TABLE", name)
    from labeler.handlers.composition import reset_services

    reset_services()
    return name


@pytest.fixture
def fanout_env(state_table: str, buckets: Buckets, monkeypatch: pytest.MonkeyPatch) -> tuple[QueueInfo, QueueInfo]:
    """The work queue and its dead-letter queue as the template makes them; manifests over 3 entries fan out."""
    queue, dlq = create_work_queues(buckets.aws.client("sqs"), f"work-{state_table}")
    for name, value in {
        "WORK_QUEUE_URL": queue.url,
        "DEAD_LETTER_QUEUE_URL": dlq.url,
        "INLINE_MAX_IMAGES": "3",
        "BATCH_SIZE": "2",
    }.items():
        monkeypatch.setenv(name, value)
    from labeler.handlers.composition import reset_services

    reset_services()
    return queue, dlq


def manifest_of(site: Site, count: int) -> list[dict[str, str]]:
    return [{"id": f"img-{n:03d}", "url": site.url(f"/photo.jpg?n={n}")} for n in range(count)]
