"""Renews the lease of a Powertools idempotency record while its delivery is being processed.

Powertools marks a delivery IN_PROGRESS with an ``in_progress_expiration`` (milliseconds since the
epoch); once that has passed, the next delivery of the same event may take the record over. The
labeler keeps that expiry a short lease ahead of now while the work runs (:class:`Heartbeat`), so
a killed invocation blocks its retry only for the lease, not until its own timeout.

>>> renewer = LeaseRenewer(dynamodb, "StateTable", key,                        # doctest: +SKIP
...                        expiry_attr="in_progress_expiration", status_attr="status")
>>> renewer.renew(until_ms=int(time.time() * 1000) + 45_000)  # doctest: +SKIP
True
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from labeler.observability import logger


class LeaseRenewer:
    """``UpdateItem`` of one idempotency record's in-progress expiry, only while it is still in progress."""

    def __init__(
        self,
        client: Any,
        table: str,
        key: dict[str, Any],
        *,
        expiry_attr: str,
        status_attr: str,
        in_progress: str = "INPROGRESS",
    ) -> None:
        self.client = client
        self.table = table
        self.key = key
        self.expiry_attr = expiry_attr
        self.status_attr = status_attr
        self.in_progress = in_progress

    def renew(self, until_ms: int) -> bool:
        """Move the expiry to ``until_ms``; False when the record is no longer in progress (or gone)."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self.key,
                UpdateExpression="SET #expiry = :until",
                ConditionExpression="#status = :in_progress",
                ExpressionAttributeNames={"#expiry": self.expiry_attr, "#status": self.status_attr},
                ExpressionAttributeValues={":until": {"N": str(until_ms)}, ":in_progress": {"S": self.in_progress}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True


class Heartbeat:
    """Calls ``beat()`` every ``interval`` seconds in a daemon thread, from entering until leaving the block.

    It stops by itself when ``beat()`` returns False; an exception in ``beat()`` is logged and the
    next beat tries again.
    """

    def __init__(self, beat: Callable[[], bool], interval: float) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._beat():
                    return
            except Exception:
                logger.warning("lease renewal failed; trying again at the next beat", exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
