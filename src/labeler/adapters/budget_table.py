"""The run's shared DetectLabels count in DynamoDB: ``label_calls_taken`` on the run's progress item.

One conditional ``UpdateItem`` takes a block of calls: ``ADD label_calls_taken :n`` on condition that the
count stays within the cap (``label_calls_taken <= cap - n``), so concurrent invocations can never take more
than the cap together (DynamoDB applies each update to an item atomically). When the full block no
longer fits, the failed condition returns the current count (``ReturnValuesOnConditionCheckFailure``)
and the rest up to the cap is taken instead: one extra request, only at the cap. Unused calls go
back with an unconditional ``ADD`` of their negative.

The item is the one :class:`labeler.adapters.progress.ProgressTable` counts the run's batches on,
so a run's count lives with its progress and expires with it; a re-upload is a new run (new run
key) and starts from 0.

>>> table = BudgetTable(boto3.client("dynamodb"), "my-state-table")          # doctest: +SKIP
>>> table.take("results-slug#run-id", wanted=16, cap=1000)                     # doctest: +SKIP
Grant(granted=16, used=16)
"""

from __future__ import annotations

from typing import Any

from labeler.adapters.progress import ProgressTable, _expiration
from labeler.logic.budget import Grant

# Calls taken from the cap (made, or held in an invocation's block); the progress tally's `label_calls` counts
# the calls made by counted batches, beside it on the same item.
COUNT_ATTRIBUTE = "label_calls_taken"
# Contended updates at the cap: each failed attempt reads the count and tries the rest again.
MAX_ATTEMPTS = 8


class BudgetTable:
    """:class:`labeler.logic.budget.BudgetStore` on the state table (key ``id``: ``run#<run key>``)."""

    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table = table_name

    def take(self, run_key: str, wanted: int, cap: int) -> Grant:
        """Add up to ``wanted`` calls to the run's count without passing ``cap``; returns what was granted."""
        n = min(wanted, cap)
        for _ in range(MAX_ATTEMPTS):
            if n <= 0:
                return Grant(granted=0, used=max(cap, 0))
            added, count = self._try_add(run_key, n, cap)
            if added:
                return Grant(granted=n, used=count)
            if count >= cap:
                return Grant(granted=0, used=count)
            n = min(wanted, cap - count)  # what is left: others took calls since the block was sized
        return Grant(granted=0, used=cap)  # still contended after every attempt: the caller stops labeling

    def _try_add(self, run_key: str, n: int, cap: int) -> tuple[bool, int]:
        """(True, the new count) when ``n`` was added; (False, the count that refused it) otherwise."""
        try:
            response = self.client.update_item(
                TableName=self.table,
                Key=ProgressTable._run_id(run_key),
                UpdateExpression="ADD #count :n SET expiration = :expiration",
                ConditionExpression="attribute_not_exists(#count) OR #count <= :limit",
                ExpressionAttributeNames={"#count": COUNT_ATTRIBUTE},
                ExpressionAttributeValues={
                    ":n": {"N": str(n)},
                    ":limit": {"N": str(cap - n)},
                    ":expiration": _expiration(),
                },
                ReturnValues="UPDATED_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            item = exc.response.get("Item") or {}
            return False, int(item[COUNT_ATTRIBUTE]["N"]) if COUNT_ATTRIBUTE in item else 0
        return True, int(response["Attributes"][COUNT_ATTRIBUTE]["N"])

    def give_back(self, run_key: str, count: int) -> None:
        if count <= 0:
            return
        self.client.update_item(
            TableName=self.table,
            Key=ProgressTable._run_id(run_key),
            UpdateExpression="ADD #count :n",
            ExpressionAttributeNames={"#count": COUNT_ATTRIBUTE},
            ExpressionAttributeValues={":n": {"N": str(-count)}},
        )

    def used(self, run_key: str) -> int:
        """The run's count now: calls taken (made, or held in a block) by every invocation."""
        item = self.client.get_item(
            TableName=self.table,
            Key=ProgressTable._run_id(run_key),
            ProjectionExpression="#count",
            ExpressionAttributeNames={"#count": COUNT_ATTRIBUTE},
            ConsistentRead=True,
        ).get("Item", {})
        return int(item[COUNT_ATTRIBUTE]["N"]) if COUNT_ATTRIBUTE in item else 0
