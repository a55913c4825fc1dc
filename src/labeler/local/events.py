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


def _matches(event: dict[str, Any], manifest: tuple[str, str] | None, run_id: str | None) -> bool:
    if event.get("source") != SOURCE or event.get("detail-type") not in (DETAIL_TYPE_LABELED, DETAIL_TYPE_FAILED):
        return False
    described = (event.get("detail") or {}).get("manifest") or {}
    if manifest is not None and (described.get("bucket"), described.get("key")) != manifest:
        return False
    if run_id is not None:
        runs = {described.get(name) for name in ("version_id", "sequencer", "etag")}
        return run_id in runs
    return True


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
    deadline = time.monotonic() + timeout_seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        wait = max(0, min(poll_seconds, int(remaining)))
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait).get(
            "Messages", []
        )
        found = None
        for message in messages:
            try:
                event = json.loads(message["Body"])
            except ValueError:
                event = {}
            if found is None and isinstance(event, dict) and _matches(event, manifest, run_id):
                found = event
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            else:
                sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
        if found is not None:
            return found
        if not messages and wait == 0:
            time.sleep(min(0.1, max(0.0, remaining)))
