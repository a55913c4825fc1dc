"""Powertools idempotency for whole deliveries: a manifest upload, a work batch.

Why Powertools idempotency (DynamoDB) here and S3 conditional writes elsewhere: a duplicate
S3 event can arrive while the first is still running. Powertools records the delivery as
IN_PROGRESS, makes a concurrent twin stop at once, and answers later redeliveries with the saved
summary. Per-entry records need no lock: their writes are guarded (labeler.logic.guard), and the
label cache stops a second DetectLabels call for the same bytes.

A delivery found IN_PROGRESS raises :class:`DuplicateInProgress`, and the handlers let the
invocation fail: at that moment a twin that is really running and a killed one look the same, so
only failing (Lambda retries, SQS redelivers, or the event is dead-lettered) can never lose it.
For the retry after a kill to proceed, the IN_PROGRESS record is a **lease**: its expiry is at
most ``IDEMPOTENCY_LEASE_SECONDS`` ahead (Powertools computes it from the context we register,
whose remaining time is capped at the lease), and a heartbeat pushes it forward every third of
the lease while the work runs. A killed invocation's record thus expires within the lease.

Without ``STATE_TABLE`` (local runs) :func:`run_once` simply runs the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from labeler.models.settings import Settings
from labeler.observability import logger

Work = Callable[[], dict[str, Any]]
ONE_DAY_SECONDS = 24 * 3600


class DuplicateInProgress(Exception):
    """The same delivery is in progress elsewhere (or was killed less than a lease ago): fail and be retried."""


class LeaseContext:
    """The Lambda context as Powertools' idempotency sees it: the remaining time capped at the lease."""

    def __init__(self, context: Any, lease_ms: int) -> None:
        self.context = context
        self.lease_ms = lease_ms

    def get_remaining_time_in_millis(self) -> int:
        return min(int(self.context.get_remaining_time_in_millis()), self.lease_ms)


class OncePerDelivery:
    """Powertools idempotency over the state table, with ``dynamodb`` as its client (the container's shared one).

    Without a client one is built from boto3's default session: Powertools would otherwise start a session
    of its own, which reads every botocore data file again (~0.1 s and ~9 MiB of a cold start).
    """

    def __init__(self, settings: Settings, dynamodb: Any = None) -> None:
        self._runner: Callable[..., dict[str, Any]] | None = None
        self._config: Any = None
        self._persistence: Any = None
        self._context: Any = None
        self.lease_ms = int(settings.idempotency_lease_seconds * 1000)
        if settings.state_table:
            from aws_lambda_powertools.utilities.idempotency import (
                DynamoDBPersistenceLayer,
                IdempotencyConfig,
                idempotent_function,
            )

            if dynamodb is None:
                import boto3

                from labeler.adapters.aws_config import client_config

                dynamodb = boto3.client("dynamodb", config=client_config())
            self._persistence = DynamoDBPersistenceLayer(table_name=settings.state_table, boto3_client=dynamodb)
            self._config = IdempotencyConfig(expires_after_seconds=ONE_DAY_SECONDS)

            @idempotent_function(
                data_keyword_argument="delivery",
                persistence_store=self._persistence,
                config=self._config,
                key_prefix="delivery",
            )
            def run(delivery: dict[str, Any], work: Work) -> dict[str, Any]:
                return work()

            self._runner = run

    def register_context(self, context: Any) -> None:
        """In-progress records expire within the lease, or with this invocation's deadline if sooner."""
        self._context = context
        if self._config is not None and context is not None:
            self._config.register_lambda_context(LeaseContext(context, self.lease_ms))

    def record_key(self, delivery: dict[str, Any]) -> dict[str, Any]:
        """The DynamoDB key of ``delivery``'s idempotency record, derived by the persistence layer itself.

        Uses Powertools' own key derivation (``_get_hashed_idempotency_key``, ``_get_key``; pinned at
        3.37.0, and tests/integration/test_leases.py fails if it drifts). Valid once a delivery ran.
        """
        persistence = self._persistence
        return dict(persistence._get_key(persistence._get_hashed_idempotency_key(delivery)))

    def run_once(self, delivery: dict[str, Any], work: Work) -> dict[str, Any]:
        """Run ``work`` once per ``delivery`` identity; a redelivery gets the first run's result.

        Raises :class:`DuplicateInProgress` when the delivery is in progress elsewhere.
        """
        if self._runner is None:
            return work()
        from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

        try:
            return self._runner(delivery=delivery, work=lambda: self._leased(delivery, work))
        except IdempotencyAlreadyInProgressError as exc:
            logger.warning("this delivery is in progress elsewhere (or was killed): failing, to be retried")
            raise DuplicateInProgress(str(exc)) from exc

    def _leased(self, delivery: dict[str, Any], work: Work) -> dict[str, Any]:
        from labeler.adapters.lease import Heartbeat, LeaseRenewer

        persistence = self._persistence
        renewer = LeaseRenewer(
            persistence.client,
            persistence.table_name,
            self.record_key(delivery),
            expiry_attr=persistence.in_progress_expiry_attr,
            status_attr=persistence.status_attr,
        )

        def beat() -> bool:
            left = self.lease_ms
            if self._context is not None:
                left = min(left, int(self._context.get_remaining_time_in_millis()))
            return renewer.renew(int(time.time() * 1000) + left)

        with Heartbeat(beat, interval=self.lease_ms / 3000):
            return work()
