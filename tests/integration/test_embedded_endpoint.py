"""The embedded endpoint serves each S3 and DynamoDB request atomically, as AWS does.

moto's threaded server alone does not lock its state: ``TransactWriteItems`` deep-copies the table
while other requests change it, and answers 500 ("dictionary changed size during iteration"), so
transactions are lost. The product's guarantees (batches counted once, the budget's conditional
ADD, write-once records) are tested against this endpoint, so it must not be weaker than AWS.
"""

from __future__ import annotations

import threading

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from labeler.local.embedded_aws import EmbeddedAws
from tests.support.sqs_driver import create_state_table


def test_transactions_racing_other_writes_all_apply(embedded_aws: EmbeddedAws) -> None:
    # No retries: a 500 must show, not be hidden by botocore.
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=embedded_aws.endpoint_url,
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    table = create_state_table(dynamodb, "atomic-transactions")
    for number in range(300):  # a table big enough that copying it takes a while
        dynamodb.put_item(TableName=table, Item={"id": {"S": f"item-{number}"}, "n": {"N": "0"}})
    errors: list[str] = []

    def transactions(worker: int) -> None:
        for number in range(20):
            try:
                dynamodb.transact_write_items(
                    TransactItems=[
                        {
                            "Put": {
                                "TableName": table,
                                "Item": {"id": {"S": f"tx-{worker}-{number}"}},
                                "ConditionExpression": "attribute_not_exists(id)",
                            }
                        },
                        {
                            "Update": {
                                "TableName": table,
                                "Key": {"id": {"S": "item-0"}},
                                "UpdateExpression": "ADD n :one",
                                "ExpressionAttributeValues": {":one": {"N": "1"}},
                            }
                        },
                    ]
                )
            except ClientError as exc:
                errors.append(exc.response["Error"]["Code"])

    def writes(worker: int) -> None:
        for number in range(60):
            try:
                dynamodb.put_item(TableName=table, Item={"id": {"S": f"write-{worker}-{number}"}})
            except ClientError as exc:
                errors.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=transactions, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=writes, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    counted = dynamodb.get_item(TableName=table, Key={"id": {"S": "item-0"}})["Item"]["n"]["N"]
    assert counted == "80"  # every transaction applied once
