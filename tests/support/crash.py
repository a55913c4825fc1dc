"""Helpers for killed invocations: a stand-in for a kill, and the state a kill leaves in the state table."""

from __future__ import annotations

import time
from typing import Any


class SimulatedKill(BaseException):
    """Raised inside the work to stand in for an OOM kill or a hard timeout.

    A ``BaseException`` passes Powertools' ``except Exception`` (which would delete the in-progress
    record, as for an ordinary failure), so the record stays IN_PROGRESS, as after a real kill.
    """


def delivery_items(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    """The Powertools idempotency records in ``table`` (their ids start with the ``delivery`` prefix)."""
    items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    return [item for item in items if item["id"]["S"].startswith("delivery#")]


def in_progress_expiries_ms(dynamodb: Any, table: str) -> list[int]:
    return [
        int(item["in_progress_expiration"]["N"])
        for item in delivery_items(dynamodb, table)
        if item["status"]["S"] == "INPROGRESS" and "in_progress_expiration" in item
    ]


def wait_until_leases_expire(dynamodb: Any, table: str, lease_seconds: float) -> None:
    """Wait until no delivery is IN_PROGRESS with an unexpired lease; first check every lease is a short one.

    The check reads stored expiry times (it asserts nothing about how long anything took): a record
    that would stay in progress for longer than its lease (say, until the invocation's 900 s timeout)
    fails at once instead of being waited for.
    """
    now_ms = int(time.time() * 1000)
    expiries = in_progress_expiries_ms(dynamodb, table)
    assert expiries, "no delivery is in progress"
    assert max(expiries) <= now_ms + int(lease_seconds * 1000) + 1000, "an in-progress record outlives its lease"
    while max(expiries) >= int(time.time() * 1000):
        time.sleep(max(0.05, (max(expiries) - time.time() * 1000) / 1000 + 0.05))
        expiries = in_progress_expiries_ms(dynamodb, table) or [0]
