"""Several containers share one DetectLabels quota through the state table (moto) against the stand-in.

The stand-in enforces the quota over any one second for all its clients, as the service does.
Asserted: every image is labeled; every request that reached Rekognition, throttled or not,
took a slot of the shared limiter (so retries went back through it); and the limiter's DynamoDB
requests stay within the documented bound of one per five DetectLabels calls. Rates are not
asserted (bench/ measures them).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from labeler.local.embedded_aws import EmbeddedAws
from tests.support.fake_rekognition import FakeRekognition
from tests.support.quota_child import Container
from tests.support.sqs_driver import create_state_table

ROOT = Path(__file__).resolve().parents[2]
COST_BOUND = 1 / 5  # DynamoDB requests per DetectLabels call (docs/scale.md)
_tables = itertools.count()


@pytest.fixture
def table(embedded_aws: EmbeddedAws) -> str:
    return create_state_table(embedded_aws.client("dynamodb"), f"shared-quota-{next(_tables)}")


def test_containers_in_threads_share_one_quota(fake_rekognition: FakeRekognition, table: str) -> None:
    fake_rekognition.state.quota_tps = 40
    fake_rekognition.state.latency_seconds = 0.05  # 32 threads could make 640 calls/s: the quota binds
    # throttles from "another user of the account": absorbed by retries that take slots too
    fake_rekognition.state.fail_next(*(["ThrottlingException"] * 4))
    containers = [Container(table, 40, threads=32) for _ in range(3)]  # MAX_WORKERS' default
    errors: list[list[str]] = []
    runs = [threading.Thread(target=lambda c=c: errors.append(c.label(48))) for c in containers]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)

    state = fake_rekognition.state
    assert errors == [[], [], []]
    assert state.successful_calls == 3 * 48  # nothing lost
    assert state.calls == sum(c.limiter.stats.slots_used for c in containers)  # every attempt took a slot
    assert state.calls >= 3 * 48 + 4  # the planned throttles were retried
    assert sum(c.limiter.stats.fallback_leases for c in containers) == 0
    update_items = sum(c.update_items for c in containers)
    assert update_items / state.calls <= COST_BOUND, (update_items, state.calls)
    # Sanity, not a rate: without the shared limiter, 96 threads against 40 TPS are throttled far more
    # often than they succeed.
    assert state.throttled < state.successful_calls


@pytest.mark.slow
def test_containers_in_processes_share_one_quota(fake_rekognition: FakeRekognition, table: str) -> None:
    fake_rekognition.state.quota_tps = 30
    fake_rekognition.state.latency_seconds = 0.05
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.quota_child", table, "30", "32", "40"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    reports = [json.loads(child.communicate(timeout=180)[0]) for child in children]

    state = fake_rekognition.state
    assert [report["errors"] for report in reports] == [[], [], []]
    assert state.successful_calls == 3 * 40
    assert state.calls == sum(report["slots_used"] for report in reports)
    assert sum(report["fallback_leases"] for report in reports) == 0
    update_items = sum(report["update_items"] for report in reports)
    assert update_items / state.calls <= COST_BOUND, (update_items, state.calls)
    assert state.throttled < state.successful_calls
