"""Lambda entry point: a batch of work messages from the SQS work queue (large manifests).

Powertools' batch processing reports partial failures, so only unfinished messages come back.
On a message's last delivery (``MAX_RECEIVE_COUNT``) its unfinished entries get ``batch_failed``
records, the batch is counted so the manifest report completes, and the message is sent to the
dead-letter queue with its reason as message attributes.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from labeler.handlers.composition import get_fanout, get_once, get_services
from labeler.handlers.idempotency import DuplicateInProgress
from labeler.logic.fanout import FanOut, WorkBatch, run_key
from labeler.logic.pipeline import Deadline
from labeler.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)


def label_batch(fanout: FanOut, batch: WorkBatch, deadline: Deadline, redelivered: bool) -> dict[str, Any]:
    result = fanout.process_batch(batch, deadline, check_existing=redelivered)
    return {"batch": batch.batch_index, **result.tally.to_dict()}


def record_handler(record: SQSRecord, lambda_context: LambdaContext | None = None) -> None:
    services = get_services()
    fanout = get_fanout()
    if fanout is None:
        raise RuntimeError("WORK_QUEUE_URL and STATE_TABLE must be set for the worker")
    batch = WorkBatch.from_message(json.loads(record.body))  # malformed: fails every time, then the DLQ
    remaining = lambda_context.get_remaining_time_in_millis if lambda_context else None
    deadline = Deadline(remaining, services.settings.deadline_margin_ms)
    logger.append_keys(manifest=f"s3://{batch.manifest.bucket}/{batch.manifest.key}", batch=batch.batch_index)
    once = get_once()
    once.register_context(lambda_context)
    delivery = {"run": run_key(batch.manifest), "batch": batch.batch_index}
    deliveries = int(record.attributes.approximate_receive_count or 1)
    # Only a message delivered before can have left records behind: a first delivery skips that check.
    try:
        once.run_once(delivery, partial(label_batch, fanout, batch, deadline, deliveries > 1))
    except DuplicateInProgress:
        raise  # its twin is labeling this batch now; the message comes back and finds it done
    except Exception as exc:
        if deliveries < services.settings.max_receive_count:
            raise  # SQS delivers it again; entries already recorded are skipped then
        reason = f"batch {batch.batch_index} failed {deliveries} deliveries: {type(exc).__name__}: {exc}"
        logger.exception("giving up on a work batch", extra={"deliveries": deliveries})
        fanout.fail_batch(batch, reason)
        if services.settings.dead_letter_queue_url:
            fanout.queue.send_to(
                services.settings.dead_letter_queue_url,
                record.body,
                {"error_code": "batch_failed", "error_message": reason},
            )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
