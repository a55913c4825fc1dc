"""Powertools idempotency for whole deliveries: a manifest upload, a work batch.

Why Powertools idempotency (DynamoDB) here and S3 conditional writes elsewhere: a duplicate
S3 event can arrive while the first is still running. Powertools records the delivery as
IN_PROGRESS (expiring with the Lambda deadline, so a killed invocation does not block its
retry), makes the concurrent twin stop at once, and answers later redeliveries with the saved
summary. Per-entry records need no lock: their keys are deterministic, an earlier delivery's
records are skipped, and the label cache stops a second DetectLabels for the same bytes.

Without ``STATE_TABLE`` (local runs) :func:`run_once` simply runs the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labeler.models.settings import Settings
from labeler.observability import logger

Work = Callable[[], dict[str, Any]]
ONE_DAY_SECONDS = 24 * 3600


class DuplicateInProgress(Exception):
    """The same delivery is being processed by another invocation right now."""


class OncePerDelivery:
    def __init__(self, settings: Settings) -> None:
        self._runner: Callable[..., dict[str, Any]] | None = None
        self._config: Any = None
        if settings.state_table:
            from aws_lambda_powertools.utilities.idempotency import (
                DynamoDBPersistenceLayer,
                IdempotencyConfig,
                idempotent_function,
            )

            persistence = DynamoDBPersistenceLayer(table_name=settings.state_table)
            self._config = IdempotencyConfig(expires_after_seconds=ONE_DAY_SECONDS)

            @idempotent_function(
                data_keyword_argument="delivery",
                persistence_store=persistence,
                config=self._config,
                key_prefix="delivery",
            )
            def run(delivery: dict[str, Any], work: Work) -> dict[str, Any]:
                return work()

            self._runner = run

    def register_context(self, context: Any) -> None:
        """In-progress records expire with this invocation's deadline (a killed run frees its retry)."""
        if self._config is not None and context is not None:
            self._config.register_lambda_context(context)

    def run_once(self, delivery: dict[str, Any], work: Work) -> dict[str, Any]:
        """Run ``work`` once per ``delivery`` identity; a redelivery gets the first run's result.

        Raises :class:`DuplicateInProgress` when a twin is running now.
        """
        if self._runner is None:
            return work()
        from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

        try:
            return self._runner(delivery=delivery, work=work)
        except IdempotencyAlreadyInProgressError as exc:
            logger.info("a twin of this delivery is in progress elsewhere", extra={"delivery": delivery})
            raise DuplicateInProgress(str(exc)) from exc
