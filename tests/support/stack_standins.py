"""Local stand-ins for a template's resources, created on an embedded S3/SQS/DynamoDB endpoint on demand.

A :class:`StackStandIns` is the :class:`~tests.support.template_env.ResourceLookup` the template
reader asks when it meets ``!Ref WorkQueue`` or ``!GetAtt WorkDeadLetterQueue.Arn``: the first
time a resource is named, it is created from the template's own properties (a bucket versioned
when the template versions it; a queue with its visibility timeout and redrive policy, the
dead-letter queue created first; a table with its key schema, billing mode and TTL), and its
name/URL/ARN is answered from then on. So a resource the template adds or changes is stood in
as declared, and one this module cannot create fails loudly, naming it.

>>> stack = StackStandIns(template, client_factory, prefix="bench-7")      # doctest: +SKIP
>>> template.function("WorkerFunction", stack).environment["WORK_QUEUE_URL"]  # doctest: +SKIP
'http://127.0.0.1:5000/123456789012/bench-7-workqueue'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from tests.support.template_env import ACCOUNT_ID, REGION, Template, TemplateError

ClientFactory = Callable[[str], Any]  # "s3" | "sqs" | "dynamodb" → a boto3 client for the endpoint


class StackStandIns:
    """Creates and names the stand-in of each template resource the first time it is asked for."""

    def __init__(self, template: Template, client: ClientFactory, *, prefix: str) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", prefix):
            raise ValueError(f"prefix {prefix!r}: lower-case letters, digits and hyphens, at most 31 characters")
        self.template = template
        self.client = client
        self.prefix = prefix
        self.created: dict[str, dict[str, str]] = {}  # logical id → {"Ref": ..., attribute: ...}
        self._creating: set[str] = set()

    # --- ResourceLookup ---------------------------------------------------------------------------
    def ref(self, logical_id: str) -> str:
        return self._ensure(logical_id)["Ref"]

    def attribute(self, logical_id: str, name: str) -> str:
        values = self._ensure(logical_id)
        if name not in values:
            raise TemplateError(f"!GetAtt {logical_id}.{name}: the stand-in has {sorted(set(values) - {'Ref'})}")
        return values[name]

    # --- creation -------------------------------------------------------------------------------------
    def _ensure(self, logical_id: str) -> dict[str, str]:
        if logical_id in self.created:
            return self.created[logical_id]
        if logical_id in self._creating:
            raise TemplateError(f"{logical_id} depends on itself")
        kind = self.template.resource(logical_id).get("Type")
        create = {
            "AWS::S3::Bucket": self._bucket,
            "AWS::SQS::Queue": self._queue,
            "AWS::DynamoDB::Table": self._table,
        }.get(kind)
        if create is None:
            raise TemplateError(f"{logical_id} is a {kind}: no local stand-in for that resource type")
        self._creating.add(logical_id)
        try:
            self.created[logical_id] = create(logical_id, self._name(logical_id))
        finally:
            self._creating.discard(logical_id)
        return self.created[logical_id]

    def _name(self, logical_id: str) -> str:
        return f"{self.prefix}-{logical_id.lower()}"[:63]

    def _property(self, logical_id: str, path: str, default: Any = None) -> Any:
        return self.template.property(logical_id, path, self, default)

    def _bucket(self, logical_id: str, name: str) -> dict[str, str]:
        s3 = self.client("s3")
        s3.create_bucket(Bucket=name)
        if self._property(logical_id, "VersioningConfiguration.Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return {"Ref": name, "Arn": f"arn:aws:s3:::{name}", "DomainName": f"{name}.s3.amazonaws.com"}

    def _queue(self, logical_id: str, name: str) -> dict[str, str]:
        attributes: dict[str, str] = {}
        for prop in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds"):
            value = self._property(logical_id, prop)
            if value is not None:
                attributes[prop] = str(value)
        redrive = self._property(logical_id, "RedrivePolicy")  # names the dead-letter queue: created first
        if redrive:
            attributes["RedrivePolicy"] = json.dumps(
                {
                    "deadLetterTargetArn": redrive["deadLetterTargetArn"],
                    "maxReceiveCount": str(redrive["maxReceiveCount"]),
                }
            )
        sqs = self.client("sqs")
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return {"Ref": url, "Arn": arn, "QueueName": name, "QueueUrl": url}

    def _table(self, logical_id: str, name: str) -> dict[str, str]:
        request: dict[str, Any] = {"TableName": name}
        for prop in ("KeySchema", "AttributeDefinitions", "GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            value = self._property(logical_id, prop)
            if value is not None:
                request[prop] = value
        request["BillingMode"] = self._property(logical_id, "BillingMode", "PROVISIONED")
        if request["BillingMode"] == "PROVISIONED":
            request["ProvisionedThroughput"] = self._property(
                logical_id, "ProvisionedThroughput", {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
            )
        dynamodb = self.client("dynamodb")
        dynamodb.create_table(**request)
        ttl = self._property(logical_id, "TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
        return {"Ref": name, "Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}"}

    def describe(self) -> dict[str, str]:
        """Logical id → the stand-in's name or URL (for results and logs)."""
        return {logical_id: values["Ref"] for logical_id, values in self.created.items()}
