"""The composition root: builds the pipeline's services once per container from ``Settings``.

Handlers call :func:`get_services`; tests call :func:`reset_services` after changing the environment.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from labeler.adapters.events import CompletionEvents, build_events_client
from labeler.adapters.fetch import FetchPolicy, ImageFetcher
from labeler.adapters.labels import get_backend
from labeler.adapters.labels.base import LabelBackend
from labeler.adapters.s3_source import S3Sources
from labeler.adapters.store import S3Store, build_s3_client
from labeler.handlers.idempotency import OncePerDelivery
from labeler.logic.budget import BudgetStore, InMemoryBudgetStore
from labeler.logic.cache import LabelCache, writer_threads
from labeler.logic.keys import report_key
from labeler.logic.pipeline import Deadline, FanOutSplit, Services
from labeler.models.label_options import LabelOptions
from labeler.models.records import EntryItem, ManifestRef
from labeler.models.settings import Settings
from labeler.observability import logger

if TYPE_CHECKING:  # the fan-out machinery is imported when a manifest first needs it (fast cold starts)
    from labeler.logic.fanout import FanOut

_lock = threading.Lock()
_services: Services | None = None
_fanout: FanOut | None = None
_fanout_built = False
_once: OncePerDelivery | None = None
_frozen: set[str] = set()
# The DetectLabels counts of runs labeled in this process without a state table (local runs): one per
# process, so a Lambda-style retry in the same process shares its run's count.
LOCAL_BUDGETS = InMemoryBudgetStore()


def build_backend(settings: Settings) -> LabelBackend:
    if settings.label_backend == "rekognition":
        from labeler.adapters.labels.rekognition import build_client
        from labeler.adapters.quota_table import build_limiter

        # One quota for the whole stack (STATE_TABLE); while the table fails, a pace at which a full
        # fan-out plus one inline manifest stay within it.
        limiter = build_limiter(
            settings.rekognition_max_tps,
            settings.state_table,
            concurrent_invocations=settings.worker_max_concurrency + 1,
        )
        return get_backend("rekognition", client=build_client(max(10, settings.max_workers * 2)), limiter=limiter)
    return get_backend(settings.label_backend)


def build_services(settings: Settings) -> Services:
    """Wire S3, the safe fetcher, the label backend, the cache and the S3 source reader for ``settings``."""
    from labeler.adapters.images import load_decoders_in_background
    from labeler.adapters.memory import budget_megabytes, set_memory_budget

    set_memory_budget(budget_megabytes(settings.image_memory_mb, settings.aws_lambda_function_memory_size))
    store = S3Store(build_s3_client(max(10, settings.max_workers * 2)), settings.output_bucket)
    fetcher = ImageFetcher(
        FetchPolicy(
            max_bytes=settings.max_image_bytes,
            timeout_seconds=settings.download_timeout_seconds,
            max_redirects=settings.max_redirects,
            allow_private_networks=settings.allow_private_networks,
        )
    )
    backend = build_backend(settings)
    progress = None
    budgets: BudgetStore = LOCAL_BUDGETS  # local runs without a state table: this process counts each run's calls
    if settings.state_table:
        import boto3

        from labeler.adapters.aws_config import client_config
        from labeler.adapters.budget_table import BudgetTable
        from labeler.adapters.progress import ProgressTable

        dynamodb = boto3.client("dynamodb", config=client_config())
        progress = ProgressTable(dynamodb, settings.state_table)
        budgets = BudgetTable(dynamodb, settings.state_table)  # on the run's progress item, for every invocation
    cache = None
    if settings.label_cache:
        cache = LabelCache(
            store,
            backend=backend.name,
            current_model_version=lambda: getattr(backend, "model_version", None),
            writer=ThreadPoolExecutor(
                max_workers=writer_threads(settings.max_workers), thread_name_prefix="cache-write"
            ),
        )
    load_decoders_in_background()  # after the clients (CPU-bound too): while the first requests wait on the network
    return Services(
        settings=settings,
        store=store,
        fetcher=fetcher,
        backend=backend,
        cache=cache,
        progress=progress,
        on_run_finished=RunFinished(settings.output_bucket),
        budgets=budgets,
        sources=S3Sources(store.client),  # s3:// entries: the same client, its timeouts and retries
    )


class RunFinished:
    """The end of a run (``Services.on_run_finished``, called once per run after its final report is stored):
    puts its completion event, ``Manifest Labeled`` or ``Manifest Failed``, on the default bus.

    A refused or failed PutEvents raises: ``pipeline.finish_run`` releases the run's claim and the
    delivery fails, so its retry puts the event. The client is built on the first run's end.
    """

    def __init__(self, output_bucket: str) -> None:
        self.output_bucket = output_bucket
        self._events: CompletionEvents | None = None
        self._lock = threading.Lock()

    def events(self) -> CompletionEvents:
        with self._lock:
            if self._events is None:
                self._events = CompletionEvents(build_events_client(), output_bucket=self.output_bucket)
            return self._events

    def __call__(self, report: dict[str, Any]) -> None:
        key = report_key(ManifestRef.from_dict(report["manifest"]))
        event_id = self.events().publish(report, key)
        logger.info(
            "run finished",
            extra={
                "manifest": report.get("manifest"),
                "status": report.get("status"),
                "total": report.get("total"),
                "event_id": event_id,
            },
        )


def build_fanout(services: Services) -> FanOut | None:
    """The fan-out machinery, when the work queue and the state table are configured."""
    settings = services.settings
    if not settings.fans_out:
        return None
    import boto3

    from labeler.adapters.aws_config import client_config
    from labeler.adapters.progress import ProgressTable
    from labeler.adapters.queue import WorkQueue
    from labeler.logic.fanout import FanOut

    assert isinstance(services.progress, ProgressTable)  # fans_out implies STATE_TABLE
    queue = WorkQueue(boto3.client("sqs", config=client_config()), settings.work_queue_url)
    return FanOut(services=services, queue=queue, progress=services.progress)


def freeze_built(component: str) -> None:
    """Keep what a container just built once (its clients, their service models: ~10^5 objects) out of the
    cyclic garbage collector's full collections, the first time ``component`` is built in this process.

    They live as long as the container, yet every full collection walked them all: 70-85 ms with the
    interpreter lock held, in the middle of the first invocation (measured in the lone-manifest bench), and
    in a process that must send a DetectLabels call every 20 ms that is four slots lost, and the calls
    queued behind them sent late. ``gc.freeze()`` moves them to the permanent generation (CPython's advice
    for long-lived state built at start-up); later collections walk only what the invocations allocate.
    Once per component and process: a test suite that rebuilds the services does not freeze each set.
    """
    if component in _frozen:
        return
    _frozen.add(component)
    gc.freeze()


def get_fanout() -> FanOut | None:
    global _fanout, _fanout_built
    services = get_services()
    with _lock:
        if not _fanout_built:
            _fanout, _fanout_built = build_fanout(services), True
            freeze_built("fanout")
        return _fanout


def fan_out_on_demand(settings: Settings) -> FanOutSplit | None:
    """``FanOut.split`` for :func:`process_manifest`, built only when a manifest is too large to label inline.

    ``None`` when the work queue and the state table are not configured (local runs label inline).
    """
    if not settings.fans_out:
        return None

    def split(
        manifest: ManifestRef,
        entries: Iterator[EntryItem],
        head: list[EntryItem],
        deadline: Deadline,
        options: LabelOptions,
        unseen_keys: bool,
    ) -> dict[str, Any]:
        fanout = get_fanout()
        assert fanout is not None
        return fanout.split(manifest, entries, head, deadline, options, unseen_keys=unseen_keys)

    return split


def get_once() -> OncePerDelivery:
    global _once
    services = get_services()
    with _lock:
        if _once is None:
            # one DynamoDB client for the state table: progress, idempotency records, their leases
            _once = OncePerDelivery(services.settings, dynamodb=getattr(services.progress, "client", None))
            freeze_built("once")
        return _once


def get_services() -> Services:
    """The container's services, built on first use (not at import: cold starts stay fast)."""
    global _services
    with _lock:
        if _services is None:
            _services = build_services(Settings.from_env())
            freeze_built("services")
        return _services


def reset_services(services: Services | None = None) -> None:
    """Forget (or replace) the cached services; for tests and the local runner."""
    global _services, _fanout, _fanout_built, _once
    with _lock:
        _once = None
        if _services is not None and services is None:
            _services.fetcher.close()
            if _services.cache is not None:
                _services.cache.close()
        _services = services
        _fanout, _fanout_built = None, False
