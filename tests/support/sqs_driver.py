"""Drives a worker handler from a real (moto) SQS queue the way Lambda's event source mapping does.

Receive up to ``batch_size`` messages, build the SQS event Lambda would send, call the handler,
delete the messages it did not report in ``batchItemFailures``, and make the failed ones
visible again at once (instead of after the visibility timeout) so tests stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class QueueInfo:
    url: str
    arn: str


def create_work_queues(sqs: Any, name: str, max_receive_count: int = 4) -> tuple[QueueInfo, QueueInfo]:
    """A work queue with a redrive policy to its dead-letter queue, as template.yaml declares them."""
    import json

    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)})
    url = sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": redrive, "VisibilityTimeout": "30"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return QueueInfo(url, arn), QueueInfo(dlq_url, dlq_arn)


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": {
                    "ApproximateReceiveCount": message["Attributes"]["ApproximateReceiveCount"],
                    "SentTimestamp": message["Attributes"].get("SentTimestamp", "0"),
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "0",
                },
                "messageAttributes": {},
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
            for message in messages
        ]
    }


def drain(
    sqs: Any,
    queue: QueueInfo,
    handler: Callable[[dict[str, Any], Any], dict[str, Any]],
    context: Any,
    *,
    batch_size: int = 5,
    max_rounds: int = 200,
) -> int:
    """Deliver every message until the queue is empty; returns the number of handler invocations."""
    for invocations in range(max_rounds):
        response = sqs.receive_message(
            QueueUrl=queue.url,
            MaxNumberOfMessages=min(10, batch_size),
            AttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        messages = response.get("Messages", [])
        if not messages:
            return invocations
        try:
            result = handler(sqs_event(messages, queue.arn), context)
            failed = {item["itemIdentifier"] for item in result.get("batchItemFailures", [])}
        except Exception:  # Powertools raises when every record failed: Lambda retries them all
            failed = {message["MessageId"] for message in messages}
        for message in messages:
            if message["MessageId"] in failed:
                sqs.change_message_visibility(
                    QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            else:
                sqs.delete_message(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"])
    raise AssertionError(f"queue not drained after {max_rounds} rounds")


def create_state_table(dynamodb: Any, name: str) -> str:
    """The template's StateTable on the embedded endpoint: key ``id`` (idempotency and fan-out progress)."""
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name
