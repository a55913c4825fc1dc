"""Sends work batches to SQS with ``SendMessageBatch`` (10 messages and ≤ 256 KiB per call).

>>> WorkQueue(sqs_client, queue_url).send_all([{"batch_index": 0, "entries": [...]}])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

MAX_MESSAGES_PER_CALL = 10
MAX_CALL_BYTES = 250 * 1024  # SQS allows 256 KiB per message and per batch call; keep a margin


class QueueSendFailed(RuntimeError):
    """Some messages were refused after retries: the caller fails so the event is delivered again."""


class WorkQueue:
    def __init__(self, client: Any, queue_url: str, attempts: int = 4) -> None:
        self.client = client
        self.queue_url = queue_url
        self.attempts = attempts
        self.sent = 0

    def send_all(self, bodies: Iterable[dict[str, Any]], on_sent: Callable[[int], None] | None = None) -> int:
        """Send every body in order; returns how many were sent. Raises :class:`QueueSendFailed`.

        ``on_sent(n)`` is called after each ``SendMessageBatch`` call with the number sent so far, so a
        caller can remember where a retry has to resume.
        """
        pending: list[str] = []
        size = 0
        count = 0
        for body in bodies:
            encoded = json.dumps(body, separators=(",", ":"))
            if pending and (len(pending) == MAX_MESSAGES_PER_CALL or size + len(encoded) > MAX_CALL_BYTES):
                self._send(pending)
                if on_sent is not None:
                    on_sent(count)
                pending, size = [], 0
            pending.append(encoded)
            size += len(encoded)
            count += 1
        if pending:
            self._send(pending)
            if on_sent is not None:
                on_sent(count)
        return count

    def _send(self, encoded: list[str]) -> None:
        entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(encoded)]
        for attempt in range(self.attempts):
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed_ids = {item["Id"] for item in response.get("Failed", [])}
            self.sent += len(entries) - len(failed_ids)
            entries = [entry for entry in entries if entry["Id"] in failed_ids]
            if not entries:
                return
            time.sleep(0.2 * 2**attempt)
        raise QueueSendFailed(f"{len(entries)} work message(s) refused by SQS after {self.attempts} attempts")

    def send_to(self, queue_url: str, body: str, attributes: dict[str, str]) -> None:
        """Send one raw message with string attributes (used to dead-letter a batch with its reason)."""
        self.client.send_message(
            QueueUrl=queue_url,
            MessageBody=body,
            MessageAttributes={k: {"DataType": "String", "StringValue": v[:1024]} for k, v in attributes.items()},
        )
