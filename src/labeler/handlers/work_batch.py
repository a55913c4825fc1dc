"""Lambda entry point: a batch of work messages from the SQS work queue (large manifests).

Powertools' batch processing reports partial failures, so only unfinished messages come back.
A message's last delivery (``MAX_RECEIVE_COUNT``) labels nothing: its entries without a record of
the run get ``batch_failed`` records, the batch is counted so that the manifest's report
completes, and the message is sent to the dead-letter queue with its reason as message
attributes. A delivery found in progress elsewhere fails (SQS delivers it again).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from labeler.handlers.composition import get_fanout, get_once, get_services
from labeler.logic.fanout import FanOut, WorkBatch
from labeler.logic.keys import run_key
from labeler.logic.pipeline import Deadline, InvocationTally
from labeler.observability import logger, metrics, publish_entry_metrics, publish_label_calls, tracer

processor = BatchProcessor(event_type=EventType.SQS)


def label_batch(
    fanout: FanOut, batch: WorkBatch, deadline: Deadline, counted: InvocationTally, first_delivery: bool = False
) -> dict[str, Any]:
    result = fanout.process_batch(
        batch, deadline, on_outcome=counted.add, on_calls=counted.add_calls, first_delivery=first_delivery
    )
    return {"batch": batch.batch_index, **result.tally.to_dict()}


def record_handler(record: SQSRecord, lambda_context: LambdaContext | None = None, *, counted: InvocationTally) -> None:
    services = get_services()
    fanout = get_fanout()
    if fanout is None:
        raise RuntimeError("WORK_QUEUE_URL and STATE_TABLE must be set for the worker")
    batch = WorkBatch.from_message(json.loads(record.body))  # malformed: fails every time, then the DLQ
    logger.append_keys(manifest=f"s3://{batch.manifest.bucket}/{batch.manifest.key}", batch=batch.batch_index)
    deliveries = int(record.attributes.approximate_receive_count or 1)
    if deliveries >= services.settings.max_receive_count:
        # The last delivery labels nothing, so that nothing (an OOM kill, a timeout) can stop it from
        # counting the batch: the run's report completes, with what is unfinished as batch_failed.
        reason = fanout.give_up(batch, deliveries, on_outcome=counted.add)
        logger.error("gave up on a work batch", extra={"deliveries": deliveries, "reason": reason})
        if services.settings.dead_letter_queue_url:
            fanout.queue.send_to(
                services.settings.dead_letter_queue_url,
                record.body,
                {"error_code": "batch_failed", "error_message": reason},
            )
        return
    remaining = lambda_context.get_remaining_time_in_millis() if lambda_context else None
    deadline = Deadline.for_invocation(remaining)
    once = get_once()
    once.register_context(lambda_context)
    delivery = {"run": run_key(batch.manifest), "batch": batch.batch_index}
    # SQS's own count, never a default: only a message's first delivery may skip its keys' look.
    first_delivery = record.attributes.approximate_receive_count == "1"
    # Any failure (DuplicateInProgress included) leaves the message to SQS: it comes back after the
    # visibility timeout, and entries already recorded are found done then.
    try:
        once.run_once(delivery, partial(label_batch, fanout, batch, deadline, counted, first_delivery))
    except Exception as exc:
        fanout.note_failure(batch, exc)
        raise


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    counted = InvocationTally()
    try:
        return process_partial_response(
            event=event, record_handler=partial(record_handler, counted=counted), processor=processor, context=context
        )
    finally:
        publish_entry_metrics(counted.tally)
        publish_label_calls(calls=counted.label_calls, saved=counted.tally.labels_from_cache)
