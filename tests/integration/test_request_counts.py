"""What a run asks of S3, counted request by request on the embedded endpoint (deterministic, no timing).

Each request is CPU in the function (~2 ms of botocore each) and a request S3 bills; the ones here are
those a run needs: a look at each entry's key (none in a manifest key's first run), the two cache reads
of a new image, its three writes, the report's and the run's index object. Nothing is asked twice when
the answer is known.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from labeler.handlers import manifest_created, work_batch
from labeler.handlers.composition import get_services
from tests.conftest import Buckets, FakeLambdaContext, manifest_of
from tests.support.site import Site
from tests.support.sqs_driver import QueueInfo, drain

N = 6  # entries, all /photo.jpg under distinct URLs: one image, six URL memos


class S3Requests:
    """The S3 requests the function's own client sends: by operation, and by operation and key prefix."""

    def __init__(self) -> None:
        self.by_operation: Counter[str] = Counter()
        self.by_prefix: Counter[str] = Counter()
        store = get_services().store
        self.output_bucket = store.output_bucket  # type: ignore[attr-defined]
        store.client.meta.events.register("before-parameter-build.s3.*", self._count)  # type: ignore[attr-defined]

    def _count(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.by_operation[model.name] += 1
        parts = str(params.get("Key", "")).split("/")
        where = "/".join(parts[:2]) if parts[0] == "cache" else parts[0]
        self.by_prefix[f"{model.name} {where if params.get('Bucket') == self.output_bucket else 'manifests'}"] += 1

    def clear(self) -> None:
        self.by_operation.clear()
        self.by_prefix.clear()


@pytest.fixture
def requests(lambda_env: dict[str, str]) -> S3Requests:
    return S3Requests()


def test_a_first_run_looks_at_the_report_once_and_at_no_entry(
    buckets: Buckets, site: Site, requests: S3Requests
) -> None:
    event = buckets.put_manifest("counted.json", manifest_of(site, N))
    manifest_created.handler(event, FakeLambdaContext())
    assert buckets.report()["succeeded"] == N
    assert requests.by_prefix == {
        # no entry's key is looked at: the run's report went where no report was, so no record can be there
        "HeadObject reports": 1,  # at the start only: the final report is written over the one this run wrote
        "GetObject manifests": 1,
        "GetObject cache/urls": N,
        "GetObject cache/labels": 1,  # one image: the other URLs find its labels in memory
        "PutObject reports": 2,  # in_progress, then complete
        "PutObject results": N,
        "PutObject cache/urls": N,
        "PutObject cache/labels": 1,
        "PutObject index": 1,  # the run's index rows, one object for the inline run
    }


def test_a_new_run_of_a_manifest_key_reported_before_looks_at_each_entry(
    buckets: Buckets, site: Site, requests: S3Requests
) -> None:
    manifest_created.handler(buckets.put_manifest("again.json", manifest_of(site, N)), FakeLambdaContext())
    requests.clear()
    manifest_created.handler(buckets.put_manifest("again.json", manifest_of(site, N)), FakeLambdaContext())
    assert buckets.report()["succeeded"] == N
    assert requests.by_prefix["HeadObject results"] == N  # the older run's records: the per-entry check
    assert requests.by_prefix["PutObject results"] == N  # each written once, over the older record (If-Match)


def test_a_first_run_over_records_without_a_report_writes_each_entry_once(
    buckets: Buckets, site: Site, requests: S3Requests
) -> None:
    manifest_created.handler(buckets.put_manifest("orphans.json", manifest_of(site, N)), FakeLambdaContext())
    for key in buckets.output_keys("reports/"):  # the report goes, the records stay
        buckets.s3.delete_object(Bucket=buckets.output, Key=key)
    requests.clear()
    manifest_created.handler(buckets.put_manifest("orphans.json", manifest_of(site, N)), FakeLambdaContext())
    assert buckets.report()["succeeded"] == N
    # not looked at first: each write finds the older record (412), looks, and writes over it
    assert requests.by_prefix["HeadObject results"] == N
    assert requests.by_prefix["PutObject results"] == 2 * N
    assert len(buckets.output_keys("results/")) == N


def test_a_retried_run_reads_nothing_more_for_its_finished_entries(
    buckets: Buckets, site: Site, requests: S3Requests
) -> None:
    event = buckets.put_manifest("retried.json", manifest_of(site, N))
    manifest_created.handler(event, FakeLambdaContext())
    requests.clear()
    manifest_created.handler(event, FakeLambdaContext())  # the same event again: the same run
    assert requests.by_operation["HeadObject"] == N + 2  # each entry's key, and the final report twice
    # no URL memo is read for an entry found done and no record is written; the part's index object is
    # written again from the records found (its rows must cover every entry of the part)
    assert requests.by_prefix == {
        "GetObject manifests": 1,
        "HeadObject results": N,
        "HeadObject reports": 2,
        "GetObject results": N,
        "PutObject index": 1,
    }


def test_a_url_memo_that_says_the_same_is_not_written_again(buckets: Buckets, site: Site, requests: S3Requests) -> None:
    manifest_created.handler(buckets.put_manifest("first.json", manifest_of(site, N)), FakeLambdaContext())
    s3 = buckets.s3
    for key in buckets.output_keys("cache/labels/"):  # the labels expire; the URL memos stay
        s3.delete_object(Bucket=buckets.output, Key=key)
    get_services().cache._recent.clear()  # type: ignore[union-attr]  # a new container
    requests.clear()

    summary = manifest_created.handler(buckets.put_manifest("second.json", manifest_of(site, N)), FakeLambdaContext())
    assert summary["manifests"][0]["succeeded"] == N
    assert requests.by_prefix["PutObject cache/labels"] == 1  # labeled again: its labels are stored again
    assert requests.by_prefix["PutObject cache/urls"] == 0  # same URLs, same validators, same bytes


class ReadyCounting:
    """The container's label backend, counting the ``prepare()`` calls the pipeline makes."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name = backend.name
        self.prepared = 0
        self.likely = 0
        self.released = 0

    def prepare(self, likely: bool = True) -> None:
        self.prepared += 1
        self.likely += likely

    def release(self) -> None:
        self.released += 1

    def detect_labels(self, image: bytes, **options: Any) -> Any:
        return self.backend.detect_labels(image, **options)


def test_the_label_backend_gets_ready_as_downloads_start_not_for_entries_found_done(
    buckets: Buckets, site: Site, lambda_env: dict[str, str]
) -> None:
    services = get_services()
    backend = services.backend = ReadyCounting(services.backend)  # type: ignore[assignment]
    event = buckets.put_manifest("ready.json", manifest_of(site, N))
    manifest_created.handler(event, FakeLambdaContext())
    assert backend.prepared == N  # once per download (the limiter acts on the first: see SlotLimiter.prepare)
    assert backend.likely == N  # new URLs: no memo, no 304 can spare the call
    assert backend.released == N  # each entry's announced call is settled, whatever happened to it
    manifest_created.handler(event, FakeLambdaContext())  # the same run again: every entry is found done
    assert backend.prepared == N


def test_a_first_splits_batches_look_at_no_key_on_their_first_delivery_only(
    buckets: Buckets,
    site: Site,
    fanout_env: tuple[QueueInfo, QueueInfo],
    lambda_context: FakeLambdaContext,
) -> None:
    queue, _ = fanout_env
    sqs = buckets.aws.client("sqs")
    manifest_created.handler(buckets.put_manifest("split.json", manifest_of(site, 6)), lambda_context)  # 3 batches
    # one batch is received and given back untouched: its next delivery is its second
    first = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=1, AttributeNames=["All"])["Messages"][0]
    sqs.change_message_visibility(QueueUrl=queue.url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    requests = S3Requests()

    drain(sqs, queue, work_batch.handler, lambda_context, batch_size=1)

    report = buckets.report()
    assert (report["status"], report["succeeded"]) == ("complete", 6)
    assert requests.by_prefix["PutObject results"] == 6
    assert requests.by_prefix["HeadObject results"] == 2  # the redelivered batch's two entries, no other


def test_the_first_entry_is_looked_at_alone_before_the_others_start(
    buckets: Buckets, site: Site, lambda_env: dict[str, str]
) -> None:
    client = get_services().store.client  # type: ignore[attr-defined]
    memo_reads: list[str] = []
    started_when_first_ended: list[int] = []

    def started(params: dict[str, Any], **_: Any) -> None:
        if str(params.get("Key", "")).startswith("cache/urls/"):
            memo_reads.append(params["Key"])

    def ended(**_: Any) -> None:
        if memo_reads and not started_when_first_ended:
            started_when_first_ended.append(len(memo_reads))

    client.meta.events.register("before-parameter-build.s3.GetObject", started)
    client.meta.events.register("after-call.s3.GetObject", ended)
    manifest_created.handler(buckets.put_manifest("first.json", manifest_of(site, N)), FakeLambdaContext())
    assert len(memo_reads) == N
    assert started_when_first_ended == [1]  # no other entry's look had started when the first one's ended
