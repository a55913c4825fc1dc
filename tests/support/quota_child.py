"""One "container" of the shared-quota test: labels images through its own limiter on the state table.

``python -m tests.support.quota_child TABLE QUOTA THREADS CALLS`` with the endpoints in the
environment (AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_REKOGNITION); prints one JSON line:
the calls it labeled, the slots it used, the UpdateItem requests its limiter sent, its errors.
"""

from __future__ import annotations

import io
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from labeler.adapters.labels.rekognition import RekognitionBackend, RetryPolicy, build_client
from labeler.adapters.quota_table import TableSlots, build_table_client
from labeler.adapters.ratelimit import LocalSlots, SlotLimiter


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (160, 120), (30, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


class Container:
    """A limiter on the shared table and a Rekognition backend, as one Lambda container builds them."""

    def __init__(self, table: str, quota: float, threads: int) -> None:
        self.update_items = 0
        self._lock = threading.Lock()
        self.slots = TableSlots(self._client, table, quota)
        self.limiter = SlotLimiter(self.slots, fallback=LocalSlots(quota / 4))
        # short backoffs: the test retries throttles quickly, the limiter still spaces them
        self.backend = RekognitionBackend(
            build_client(2 * threads), self.limiter, retry=RetryPolicy(max_attempts=20, base_delay=0.05, max_delay=0.5)
        )
        self.threads = threads

    def _client(self) -> Any:
        client = build_table_client()
        client.meta.events.register("before-send.dynamodb.UpdateItem", self._count)
        return client

    def _count(self, **_: Any) -> None:
        with self._lock:
            self.update_items += 1

    def label(self, calls: int) -> list[str]:
        """Label ``calls`` images on ``threads`` threads; the errors, as strings."""
        image = jpeg()

        def one(_: int) -> str | None:
            try:
                self.backend.detect_labels(image, min_confidence=55, max_labels=10)
            except Exception as exc:  # reported to the test, which fails on any
                return f"{type(exc).__name__}: {exc}"
            return None

        with ThreadPoolExecutor(self.threads) as pool:
            return [error for error in pool.map(one, range(calls)) if error]

    def report(self, errors: list[str]) -> dict[str, Any]:
        return {
            "slots_used": self.limiter.stats.slots_used,
            "fallback_leases": self.limiter.stats.fallback_leases,
            "update_items": self.update_items,
            "errors": errors,
        }


def main(argv: list[str]) -> int:
    table, quota, threads, calls = argv[0], float(argv[1]), int(argv[2]), int(argv[3])
    container = Container(table, quota, threads)
    print(json.dumps(container.report(container.label(calls))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
