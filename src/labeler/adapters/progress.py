"""Fan-out progress of one manifest run in DynamoDB, counted exactly once per batch.

Each finished batch is recorded in one transaction: a batch item that may exist only once
(``attribute_not_exists``) plus ``ADD`` to the run's counters. A batch delivered twice by SQS
is therefore counted once, and a crash between the two writes cannot happen. Whoever sees
``batches_done == batch_count`` first claims the run (a conditional ``SET finalized``) and
writes the final report, so the report is written exactly once, whatever the fan-out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from labeler.logic.report import Tally

_COUNTERS = ("succeeded", "failed", "labels_from_cache", "not_modified", "already_done")
# Progress items outlive any run by far; the table's TTL (attribute ``expiration``) then removes them.
PROGRESS_TTL_SECONDS = 30 * 24 * 3600


def _expiration() -> dict[str, str]:
    return {"N": str(int(time.time()) + PROGRESS_TTL_SECONDS)}


@dataclass(frozen=True)
class RunProgress:
    batch_count: int | None
    batches_done: int
    tally: Tally
    finalized: bool
    plan: dict[str, Any]


class ProgressTable:
    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table = table_name

    @staticmethod
    def _run_id(run_key: str) -> dict[str, Any]:
        return {"id": {"S": f"run#{run_key}"}}

    def record_batch(self, run_key: str, batch_index: int, tally: Tally) -> bool:
        """Count one finished batch; False when it had been counted already (a redelivery)."""
        names = {f"#{name}": name for name in _COUNTERS}
        values: dict[str, Any] = {f":{name}": {"N": str(getattr(tally, name))} for name in _COUNTERS}
        values[":one"] = {"N": "1"}
        values[":expiration"] = _expiration()
        parts = ["batches_done :one", *(f"#{name} :{name}" for name in _COUNTERS)]
        for number, (code, count) in enumerate(sorted(tally.errors_by_code.items())):
            names[f"#e{number}"] = f"err_{code}"
            values[f":e{number}"] = {"N": str(count)}
            parts.append(f"#e{number} :e{number}")
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": {"id": {"S": f"run#{run_key}#batch#{batch_index}"}, "expiration": _expiration()},
                            "ConditionExpression": "attribute_not_exists(id)",
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": self._run_id(run_key),
                            "UpdateExpression": "ADD " + ", ".join(parts) + " SET expiration = :expiration",
                            "ExpressionAttributeNames": names,
                            "ExpressionAttributeValues": values,
                        }
                    },
                ]
            )
        except self.client.exceptions.TransactionCanceledException as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return False
            raise
        return True

    def set_plan(self, run_key: str, batch_count: int, plan: dict[str, Any]) -> None:
        """Record how many batches the run has (known once every batch is sent) and the splitter's tally."""
        import json

        self.client.update_item(
            TableName=self.table,
            Key=self._run_id(run_key),
            UpdateExpression="SET batch_count = :n, #plan = :plan, expiration = :expiration",
            ExpressionAttributeNames={"#plan": "plan"},
            ExpressionAttributeValues={
                ":n": {"N": str(batch_count)},
                ":plan": {"S": json.dumps(plan)},
                ":expiration": _expiration(),
            },
        )

    def read(self, run_key: str) -> RunProgress:
        import json

        item = self.client.get_item(TableName=self.table, Key=self._run_id(run_key), ConsistentRead=True).get(
            "Item", {}
        )

        def number(name: str) -> int:
            return int(item[name]["N"]) if name in item else 0

        tally = Tally(**{name: number(name) for name in _COUNTERS})
        for name, value in item.items():
            if name.startswith("err_"):
                tally.errors_by_code[name[4:]] = int(value["N"])
        return RunProgress(
            batch_count=number("batch_count") if "batch_count" in item else None,
            batches_done=number("batches_done"),
            tally=tally,
            finalized="finalized" in item,
            plan=json.loads(item["plan"]["S"]) if "plan" in item else {},
        )

    def claim_finalization(self, run_key: str) -> bool:
        """True for exactly one caller once the run is complete."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self._run_id(run_key),
                UpdateExpression="SET finalized = :t",
                ConditionExpression="attribute_not_exists(finalized) AND batches_done = batch_count",
                ExpressionAttributeValues={":t": {"BOOL": True}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True
