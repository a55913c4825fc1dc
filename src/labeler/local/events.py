"""Completion events, local side: the rule that routes them to a queue, and waiting for one.

In AWS a rule on the default bus sends ``Manifest Labeled`` / ``Manifest Failed`` events anywhere
(README: an SQS or e-mail target). Locally, :func:`create_completion_queue` sets up the same rule on
the embedded endpoint with an SQS target, and :func:`wait_for_completion_event` takes the event of
one manifest from that queue: what the demo and ``submit`` wait for instead of polling the report.

>>> queue_url = create_completion_queue(aws)                                        # doctest: +SKIP
>>> sqs = aws.client("sqs")                                                           # doctest: +SKIP
>>> event = wait_for_completion_event(sqs, queue_url, manifest=("in", "m.json"))    # doctest: +SKIP
>>> event["detail-type"], event["detail"]["status"]                                 # doctest: +SKIP
('Manifest Labeled', 'complete')
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from labeler.adapters.events import DETAIL_TYPE_FAILED, DETAIL_TYPE_LABELED, SOURCE

COMPLETION_RULE_NAME = "s3-image-labeler-completion"
COMPLETION_QUEUE_NAME = "s3-image-labeler-completion-events"
# The rule the README shows: both detail types of our source.
COMPLETION_EVENT_PATTERN: dict[str, Any] = {
    "source": [SOURCE],
    "detail-type": [DETAIL_TYPE_LABELED, DETAIL_TYPE_FAILED],
}


def create_completion_queue(
    aws: Any, queue_name: str = COMPLETION_QUEUE_NAME, rule_name: str = COMPLETION_RULE_NAME
) -> str:
    """The completion rule on the embedded endpoint's default bus, targeting a new queue; returns its URL."""
    url: str = aws.route_events_to_queue(rule_name, COMPLETION_EVENT_PATTERN, queue_name)
    return url


# A completion event nobody took this long after it was put is nobody's: a waiter drops it, so that a
# queue shared by several waiters (the stack's CompletionQueue) never fills up with other runs' events.
STALE_AFTER_SECONDS = 600.0
# How much earlier than a waiter's ``not_before`` (S3's clock) a run may have started and still be its run.
CLOCK_SLACK = timedelta(seconds=2)


def _when(text: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class CompletionWaiter:
    """Takes the completion event of one manifest run from a queue the completion rule sends to.

    ``manifest`` (bucket, key) and ``run_id`` (the version id, sequencer or ETag of the upload) say which
    run; ``not_before`` (the upload's time) keeps an earlier run of the same bytes out when the run id is
    an ETag. ``recheck`` (``ManifestRef.recheck``) waits for that re-check of the upload instead of the
    upload's own run (re-checks carry their upload's ids). The matching message is deleted; others are made
    visible again at once for their waiters, or deleted when they are stale (``STALE_AFTER_SECONDS`` old:
    nobody is waiting for them).
    """

    sqs: Any
    queue_url: str
    manifest: tuple[str, str] | None = None
    run_id: str | None = None
    not_before: datetime | None = None
    stale_after_seconds: float = STALE_AFTER_SECONDS
    recheck: str | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        if event.get("source") != SOURCE or event.get("detail-type") not in (DETAIL_TYPE_LABELED, DETAIL_TYPE_FAILED):
            return False
        detail = event.get("detail") or {}
        described = detail.get("manifest") or {}
        if self.manifest is not None and (described.get("bucket"), described.get("key")) != self.manifest:
            return False
        if described.get("recheck") != self.recheck:
            return False
        if self.run_id is not None and self.run_id not in {
            described.get(n) for n in ("version_id", "sequencer", "etag")
        }:
            return False
        if self.not_before is not None:
            started = _when(detail.get("started_at"))
            return started is not None and started >= self.not_before - CLOCK_SLACK
        return True

    def _stale(self, event: dict[str, Any]) -> bool:
        put_at = _when(event.get("time"))
        return put_at is not None and (datetime.now(UTC) - put_at).total_seconds() > self.stale_after_seconds

    def poll(self, wait_seconds: int = 0) -> dict[str, Any] | None:
        """One receive (long-polling up to ``wait_seconds``): the run's event, or None if it has not come yet."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=max(0, min(20, wait_seconds))
        ).get("Messages", [])
        found = None
        for message in messages:
            try:
                event = json.loads(message["Body"])
            except ValueError:
                event = {}
            event = event if isinstance(event, dict) else {}
            handle = message["ReceiptHandle"]
            if found is None and self.matches(event):
                found = event
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=handle)
            elif self._stale(event):
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=handle)
            else:
                self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=handle, VisibilityTimeout=0)
        return found

    def wait(self, timeout_seconds: float = 900.0, poll_seconds: int = 1) -> dict[str, Any] | None:
        """The run's event, or None when it has not come within ``timeout_seconds``."""
        deadline = time.monotonic() + timeout_seconds
        while (remaining := deadline - time.monotonic()) > 0:
            wait = max(0, min(poll_seconds, int(remaining)))
            found = self.poll(wait)
            if found is not None:
                return found
            if wait == 0:
                time.sleep(min(0.1, remaining))
        return None


def wait_for_completion_event(
    sqs: Any,
    queue_url: str,
    *,
    manifest: tuple[str, str] | None = None,
    run_id: str | None = None,
    timeout_seconds: float = 900.0,
    poll_seconds: int = 1,
) -> dict[str, Any] | None:
    """The first completion event for ``manifest`` (bucket, key) and, if given, ``run_id``; None on timeout.

    The matching message is deleted; others are made visible again at once for whoever waits for them.
    """
    waiter = CompletionWaiter(sqs, queue_url, manifest=manifest, run_id=run_id)
    return waiter.wait(timeout_seconds, poll_seconds)
