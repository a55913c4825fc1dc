"""The progress of one manifest run in DynamoDB: batches counted exactly once, the split's cursor, the end.

Items (key ``id``), all expiring by the table's TTL attribute ``expiration``:

* ``run#<run key>``: the run's counters (``batches_done``, the tally, ``err_<code>``), the split's
  ``cursor`` (batches sent so far) and ``batch_count`` and ``plan`` (once every batch is sent),
  ``options`` and ``batching`` (the run's options and batch sizes, kept by its first split),
  ``label_calls_taken`` (its DetectLabels cap's count, :mod:`labeler.adapters.budget_table`), and
  ``finished`` (set once, after the final report is stored: the run's end hook is called once).
* ``run#<run key>#batch#<n>``: written once when batch ``n`` is counted.
* ``run#<run key>#batch#<n>#failure``: why the last failed delivery of batch ``n`` failed (the
  delivery that gives up on the batch names it; a killed delivery leaves none).
* ``tick#<bucket>#<prefix>#<time>``: how far a scheduled re-check of watched manifests got (``after``:
  the last manifest key it is done with), so that a tick that runs out of time resumes there.

A re-check run's counters add ``unchanged``/``changed``/``gone``/``recheck_failed``, ``rf_<code>`` (why
re-checks failed) and ``changed_ids`` (up to ``CHANGED_IDS_MAX`` of the changed image ids, appended in the
batch's transaction).

Each finished batch is recorded in one transaction: the batch item, which may exist only once
(``attribute_not_exists``), plus ``ADD`` to the run's counters. A batch delivered twice by SQS is
therefore counted once, and a crash between the two writes cannot happen.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from labeler.logic.report import CHANGED_IDS_MAX, Tally

_COUNTERS = (
    "succeeded",
    "failed",
    "labels_from_cache",
    "not_modified",
    "already_done",
    "superseded",
    "label_calls",
    # a re-check run's findings (docs/recheck.md)
    "unchanged",
    "changed",
    "gone",
    "recheck_failed",
)
_SUMS = ("download_ms", "label_ms")
# Progress items outlive any run by far; the table's TTL (attribute ``expiration``) then removes them.
PROGRESS_TTL_SECONDS = 30 * 24 * 3600


def _expiration() -> dict[str, str]:
    return {"N": str(int(time.time()) + PROGRESS_TTL_SECONDS)}


@dataclass(frozen=True)
class RunProgress:
    batch_count: int | None  # known once every batch is sent
    batches_done: int
    tally: Tally
    finished: bool
    plan: dict[str, Any]
    cursor: int  # batches sent so far (a retried split sends from here)


class ProgressTable:
    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table = table_name

    @staticmethod
    def _run_id(run_key: str) -> dict[str, Any]:
        return {"id": {"S": f"run#{run_key}"}}

    def record_batch(self, run_key: str, batch_index: int, tally: Tally) -> bool:
        """Count one finished batch; False when it had been counted already (a redelivery)."""
        names = {f"#{name}": name for name in (*_COUNTERS, *_SUMS)}
        values: dict[str, Any] = {f":{name}": {"N": str(getattr(tally, name))} for name in _COUNTERS}
        values.update({f":{name}": {"N": str(round(getattr(tally, name), 1))} for name in _SUMS})
        values[":one"] = {"N": "1"}
        values[":expiration"] = _expiration()
        parts = ["batches_done :one", *(f"#{name} :{name}" for name in (*_COUNTERS, *_SUMS))]
        codes = [("err", tally.errors_by_code), ("rf", tally.recheck_errors_by_code)]
        for prefix, counts in codes:
            for number, (code, count) in enumerate(sorted(counts.items())):
                names[f"#{prefix}{number}"] = f"{prefix}_{code}"
                values[f":{prefix}{number}"] = {"N": str(count)}
                parts.append(f"#{prefix}{number} :{prefix}{number}")
        update = "ADD " + ", ".join(parts) + " SET expiration = :expiration"
        room = CHANGED_IDS_MAX - len(self.read(run_key).tally.changed_ids) if tally.changed_ids else 0
        if room > 0:  # a sample, read before: concurrent batches may add a few more (the report keeps 100)
            names["#changed_ids"] = "changed_ids"
            values[":changed_ids"] = {"L": [{"S": image_id} for image_id in tally.changed_ids[:room]]}
            values[":empty"] = {"L": []}
            update += ", #changed_ids = list_append(if_not_exists(#changed_ids, :empty), :changed_ids)"
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
                            "UpdateExpression": update,
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

    def keep_options(
        self, run_key: str, options: dict[str, Any], batching: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The run's options and how its entries are cut into batches: the given ones if none are kept yet (a first
        split), else the ones kept then. A retried split cuts exactly as the first one did, whatever the stack's
        settings say now: its cursor counts batches, so a different cut would skip or repeat entries.

        A run whose first split kept options but no cut (it ran before cuts were kept) cut every batch at
        ``batching["size"]`` with no ramp: that is the cut kept for it.
        """
        names = {"#options": "options", "#batching": "batching"}
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self._run_id(run_key),
                UpdateExpression="SET #options = :options, #batching = :batching, expiration = :expiration",
                ConditionExpression="attribute_not_exists(#options)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={
                    ":options": {"S": json.dumps(options)},
                    ":batching": {"S": json.dumps(batching)},
                    ":expiration": _expiration(),
                },
            )
            return options, batching  # the run's first split: what it proposed is kept
        except self.client.exceptions.ConditionalCheckFailedException:
            pass
        uniform = {"size": int(batching["size"]), "staggered": 0}
        response = self.client.update_item(
            TableName=self.table,
            Key=self._run_id(run_key),
            UpdateExpression="SET #batching = if_not_exists(#batching, :uniform), expiration = :expiration",
            ExpressionAttributeNames={"#batching": "batching"},
            ExpressionAttributeValues={":uniform": {"S": json.dumps(uniform)}, ":expiration": _expiration()},
            ReturnValues="ALL_NEW",  # the kept values
        )
        attributes = response["Attributes"]
        return json.loads(attributes["options"]["S"]), json.loads(attributes["batching"]["S"])

    def save_cursor(self, run_key: str, cursor: int) -> None:
        """Remember that batches ``0 … cursor-1`` are sent (never moves back)."""
        # A twin that got further already wins (the condition fails): the cursor never moves back.
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table,
                Key=self._run_id(run_key),
                UpdateExpression="SET #cursor = :cursor, expiration = :expiration",
                ConditionExpression="attribute_not_exists(#cursor) OR #cursor < :cursor",
                ExpressionAttributeNames={"#cursor": "cursor"},
                ExpressionAttributeValues={":cursor": {"N": str(cursor)}, ":expiration": _expiration()},
            )

    def set_plan(self, run_key: str, batch_count: int, plan: dict[str, Any]) -> None:
        """Record how many batches the run has (known once every batch is sent) and what the split found."""
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
        item = self.client.get_item(TableName=self.table, Key=self._run_id(run_key), ConsistentRead=True).get(
            "Item", {}
        )

        def number(name: str) -> float:
            return float(item[name]["N"]) if name in item else 0

        tally = Tally(**{name: int(number(name)) for name in _COUNTERS}, **{name: number(name) for name in _SUMS})
        for name, value in item.items():
            if name.startswith("err_"):
                tally.errors_by_code[name[4:]] = int(value["N"])
            elif name.startswith("rf_"):
                tally.recheck_errors_by_code[name[3:]] = int(value["N"])
        tally.changed_ids = [str(value["S"]) for value in item.get("changed_ids", {}).get("L", [])]
        return RunProgress(
            batch_count=int(number("batch_count")) if "batch_count" in item else None,
            batches_done=int(number("batches_done")),
            tally=tally,
            finished="finished" in item,
            plan=json.loads(item["plan"]["S"]) if "plan" in item else {},
            cursor=int(number("cursor")),
        )

    def claim_finished(self, run_key: str) -> bool:
        """True for exactly one caller: the run's final report is stored, its end is to be announced once."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self._run_id(run_key),
                UpdateExpression="SET finished = :t, expiration = :expiration",
                ConditionExpression="attribute_not_exists(finished)",
                ExpressionAttributeValues={":t": {"BOOL": True}, ":expiration": _expiration()},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def note_failure(self, run_key: str, batch_index: int, reason: str) -> None:
        """Remember why a delivery of a batch failed (for the reason of its last delivery)."""
        self.client.put_item(
            TableName=self.table,
            Item={
                "id": {"S": f"run#{run_key}#batch#{batch_index}#failure"},
                "reason": {"S": reason[:1000]},
                "expiration": _expiration(),
            },
        )

    def last_failure(self, run_key: str, batch_index: int) -> str | None:
        item = self.client.get_item(
            TableName=self.table, Key={"id": {"S": f"run#{run_key}#batch#{batch_index}#failure"}}, ConsistentRead=True
        ).get("Item")
        return str(item["reason"]["S"]) if item else None

    def release_finished(self, run_key: str) -> None:
        """Undo :meth:`claim_finished` (the end hook failed: the retry claims and calls it again)."""
        self.client.update_item(TableName=self.table, Key=self._run_id(run_key), UpdateExpression="REMOVE finished")

    # --- scheduled re-checks -------------------------------------------------------------------------
    def tick_cursor(self, tick_key: str) -> str:
        """The last manifest key the tick ``tick_key`` is done with ("": none yet)."""
        item = self.client.get_item(
            TableName=self.table, Key={"id": {"S": f"tick#{tick_key}"}}, ConsistentRead=True
        ).get("Item", {})
        return str(item["after"]["S"]) if "after" in item else ""

    def advance_tick_cursor(self, tick_key: str, after: str) -> None:
        """Remember that the tick is done with every manifest key up to ``after`` (never moves back)."""
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table,
                Key={"id": {"S": f"tick#{tick_key}"}},
                UpdateExpression="SET #after = :after, expiration = :expiration",
                ConditionExpression="attribute_not_exists(#after) OR #after < :after",
                ExpressionAttributeNames={"#after": "after"},
                ExpressionAttributeValues={":after": {"S": after}, ":expiration": _expiration()},
            )
