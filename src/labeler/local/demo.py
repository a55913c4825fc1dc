"""``make demo``: the Lambda handler labels real photos on this machine, no AWS account, no Docker.

What happens, in the order a user sees it:

1. An embedded S3/SQS endpoint starts on loopback (moto's server), with an input and an output
   bucket; the input bucket sends its ``ObjectCreated`` events to an SQS queue, as S3 → SQS does in AWS.
2. Real photographs (scikit-image's bundled samples, served as JPEG, PNG, WebP, GIF and BMP) are
   served on loopback; the manifest lists them plus entries that fail on purpose (a 404, an HTML
   page, the cloud metadata address, a duplicate id, an entry without a URL), and two entries naming
   S3 objects: a photo in the demo's source bucket (``SOURCE_BUCKETS``), read from the embedded S3,
   and one in a bucket outside ``SOURCE_BUCKETS`` (``source_not_allowed``, nothing asked of it).
3. The manifest is uploaded with boto3; the event S3 sent for it is taken from the queue and given to
   :func:`labeler.handlers.manifest_created.handler` (the Lambda's own entry point) with a Lambda
   context, ``LABEL_BACKEND=local`` (the offline model) and ``ALLOW_PRIVATE_NETWORKS=true``.
4. A progress bar counts the result objects as they appear until the run's completion event arrives (the
   embedded endpoint's default bus carries the README's rule, with an SQS target); then a table of labels
   or error codes, the report's summary, and ``demo-output/`` (``gallery.html``, ``results/*.json``,
   ``report.json``).
5. One of the template's named queries (``images_with_label``: the photos with Cat or Coffee), run on
   DuckDB over the index object the run wrote.
6. The manifest is under ``watch/``, so the stack re-checks it on its schedule (docs/recheck.md). One
   photo changes on the server; the handler gets the event EventBridge Scheduler sends and re-checks the
   manifest: one DetectLabels call, for that photo, whose result object alone is written again; the
   others are unchanged (a ``304``) or fail as before, and nothing is written for them. It ends with the
   template's ``labels_changed`` query between the upload's run and the re-check's.

Everything is stopped afterwards (servers, ports, environment). Exit status 0 when the run did what it
must: every entry has a record, the report adds up, the photos got the labels expected of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from labeler.local.embedded_aws import EmbeddedAws
from labeler.local.events import CompletionWaiter, create_completion_queue
from labeler.local.runner import (
    HandlerRun,
    LocalLambdaContext,
    OutputReader,
    S3EventQueue,
    add_missing_sequencers,
    event_from_upload,
    follow_progress,
    handler_environment,
    report_adds_up,
    report_line,
    results_table,
)
from labeler.local.samples import (
    BROKEN,
    CHANGED_PHOTO,
    CHANGED_TO,
    PHOTOS,
    S3_SAMPLES,
    changed_photo_bytes,
    check_records,
    photo_bytes,
    s3_entries,
    sample_images,
    sample_manifest,
    sample_routes,
    upload_s3_samples,
)
from labeler.models.records import ManifestRef

INPUT_BUCKET = "s3il-demo-input"
OUTPUT_BUCKET = "s3il-demo-output"
SOURCE_BUCKET = "s3il-demo-photos"  # photos already in S3: the one bucket SOURCE_BUCKETS allows
MANIFEST_KEY = "watch/demo-photos.json"  # under watch/: re-checked on the stack's schedule
# The demo's manifest asks for its own options: labels and image properties (colours, quality), which the
# offline backend computes; the stack lets manifests opt in to IMAGE_PROPERTIES (MANIFEST_FEATURES below).
DEMO_FEATURES = ["GENERAL_LABELS", "IMAGE_PROPERTIES"]
DEFAULT_OUTPUT_DIR = Path("demo-output")
EVENT_WAIT_SECONDS = 10.0
QUERY_MIN_CONFIDENCE = 50  # the demo's photos of a cat and a coffee are labeled far above it


def make_console(stderr: bool = False) -> Any:
    """A rich console that degrades without a terminal (CI): no colours, no live redraw, wide enough lines."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 120
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


@dataclass
class DemoStack:
    """The demo's local stand-ins: the embedded AWS endpoint, two buckets, the photo server, the environment.

    A context manager: everything it started is stopped on exit, ports are free and the
    environment is as it was, also when starting failed half-way.
    """

    max_workers: int = 4
    input_bucket: str = INPUT_BUCKET
    output_bucket: str = OUTPUT_BUCKET
    source_bucket: str = SOURCE_BUCKET
    aws: EmbeddedAws | None = None
    photos: Any = None
    completion_queue: str = ""  # where the completion rule sends the run's event
    _env: Any = None
    started: list[str] = field(default_factory=list)

    def environment(self) -> dict[str, str | None]:
        """The function's settings for this run (the template's variables, pointed at the stand-ins)."""
        return {
            "OUTPUT_BUCKET": self.output_bucket,
            "LABEL_BACKEND": "local",
            # The photos are served on 127.0.0.1: allowed for this run only. 169.254.169.254 stays blocked.
            "ALLOW_PRIVATE_NETWORKS": "true",
            "MAX_WORKERS": str(self.max_workers),
            "MANIFEST_FEATURES": ",".join(DEMO_FEATURES),
            "SOURCE_BUCKETS": self.source_bucket,  # s3:// entries may name this bucket, and no other
            # No fan-out queue and no state table locally: the manifest is labeled inline.
            "WORK_QUEUE_URL": None,
            "STATE_TABLE": None,
            "DEAD_LETTER_QUEUE_URL": None,
        }

    def start(self) -> DemoStack:
        from labeler.local.http_server import LoopbackServer

        try:
            self.aws = EmbeddedAws().start()
            self.started.append("aws")
            self.aws.create_bucket(self.input_bucket)
            self.aws.create_bucket(self.output_bucket)
            self.aws.create_bucket(self.source_bucket)
            upload_s3_samples(self.aws.client("s3"), self.source_bucket)
            self.completion_queue = create_completion_queue(self.aws)
            self.photos = LoopbackServer(sample_routes()).start()
            self.started.append("photos")
            self._env = handler_environment(self.environment())
            self._env.__enter__()
            self.started.append("env")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop in reverse order; every step runs even when an earlier one fails."""
        errors: list[BaseException] = []
        if self._env is not None:
            try:
                self._env.__exit__(None, None, None)
            except Exception as exc:
                errors.append(exc)
            self._env = None
        if self.photos is not None:
            try:
                self.photos.stop()
            except Exception as exc:
                errors.append(exc)
        if self.aws is not None:
            try:
                self.aws.stop()
            except Exception as exc:
                errors.append(exc)
        self.started.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> DemoStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass
class DemoOutcome:
    records: list[dict[str, Any]]
    report: dict[str, Any] | None
    problems: list[str]
    trigger: str
    output_dir: Path

    @property
    def ok(self) -> bool:
        return not self.problems


def deliver_event(stack: DemoStack, manifest: bytes) -> tuple[dict[str, Any], str]:
    """Upload the manifest and return the S3 event for it, and how that event was obtained."""
    assert stack.aws is not None
    s3, sqs = stack.aws.client("s3"), stack.aws.client("sqs")
    queue: S3EventQueue | None = None
    route_problem = ""
    try:
        queue = S3EventQueue(sqs, s3, stack.input_bucket).connect()
    except Exception as exc:  # the notification route is optional: fall back to building the event
        route_problem = f"notification set-up failed: {type(exc).__name__}: {exc}"
    s3.put_object(Bucket=stack.input_bucket, Key=MANIFEST_KEY, Body=manifest, ContentType="application/json")
    if queue is not None:
        try:
            event = queue.wait_for(MANIFEST_KEY, EVENT_WAIT_SECONDS)
        except Exception as exc:
            event, route_problem = None, f"receiving from the queue failed: {type(exc).__name__}: {exc}"
        if event is not None:
            how = "the event S3 sent (S3 → SQS notification on the embedded endpoint)"
            if add_missing_sequencers(event):
                how += ",\n            plus the `sequencer` real S3 sends and moto leaves out"
            return event, how
        route_problem = route_problem or f"no event arrived within {EVENT_WAIT_SECONDS:.0f} s"
    event = event_from_upload(s3, stack.input_bucket, MANIFEST_KEY)
    return event, f"built from the upload (fallback: {route_problem})"


def warm_up() -> None:
    """Build the handler's services and load the model now, before the progress bar (as a cold start would).

    The model's native runtime may print a line while loading: better above the bar than through it.
    """
    from labeler.handlers.composition import get_services

    get_services().backend.detect_labels(photo_bytes(PHOTOS[0]), min_confidence=99.0, max_labels=1)


def write_outputs(
    output_dir: Path, pairs: list[tuple[str, dict[str, Any]]], report: dict[str, Any] | None
) -> tuple[Path, Path]:
    """``gallery.html``, ``report.json`` and ``results/*.json`` under ``output_dir`` (old results removed)."""
    from labeler.local.gallery import render_gallery

    results_dir = output_dir / "results"
    if results_dir.is_dir():
        shutil.rmtree(results_dir)
    results_dir.mkdir(parents=True)
    for key, record in pairs:
        (results_dir / key.rsplit("/", 1)[-1]).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    if report is not None:
        (output_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    gallery = output_dir / "gallery.html"
    records = [record for _, record in pairs]
    gallery.write_text(
        render_gallery(records, report, sample_images(), title="s3-image-labeler demo"), encoding="utf-8"
    )
    return gallery, results_dir


def run_demo(stack: DemoStack, console: Any, output_dir: Path, timeout_seconds: float = 120.0) -> DemoOutcome:
    """Upload the sample manifest, run the handler on S3's event, show and check what it wrote."""
    from rich.text import Text

    assert stack.aws is not None and stack.photos is not None
    manifest = sample_manifest(stack.photos.url) + s3_entries(stack.source_bucket)
    console.print(Text("s3-image-labeler demo: the Lambda handler, run on this machine", style="bold"))
    console.print(f"  embedded S3 + SQS + EventBridge   {stack.aws.endpoint_url}  (moto server)")
    console.print(f"  photo server (loopback)           {stack.photos.base_url}")
    console.print(
        "  ALLOW_PRIVATE_NETWORKS=true       the photos are on 127.0.0.1, so loopback is allowed for this run;"
        "\n                                    169.254.169.254 (cloud metadata) stays blocked even so"
    )
    console.print(
        "  LABEL_BACKEND=local               offline ImageNet model (EfficientNet-Lite0), no Rekognition call"
    )
    console.print(
        f"  SOURCE_BUCKETS={stack.source_bucket}    s3:// entries may name this bucket (on the embedded S3) and"
        " no other"
    )
    console.print(
        f"  manifest  s3://{stack.input_bucket}/{MANIFEST_KEY}: {len(manifest)} entries,"
        f" {len(PHOTOS)} photos and {len(BROKEN)} broken on purpose, {len(S3_SAMPLES)} naming S3 objects"
    )
    console.print(
        f'  options   {{"features": {json.dumps(DEMO_FEATURES)}}}: labels, and colours and quality computed locally',
        markup=False,
    )

    loading = time.perf_counter()
    warm_up()
    console.print(f"  model     loaded in {time.perf_counter() - loading:.1f} s (what a cold start does once)")
    document = {"options": {"features": DEMO_FEATURES}, "images": manifest}  # options first: read before the images
    event, trigger = deliver_event(stack, json.dumps(document, indent=1).encode("utf-8"))
    console.print(f"  trigger   {trigger}", markup=False)
    context = LocalLambdaContext(timeout_seconds=900)
    sequencer = event["Records"][0]["s3"]["object"].get("sequencer")  # the run id of an unversioned upload
    waiter = CompletionWaiter(
        stack.aws.client("sqs"), stack.completion_queue, manifest=(stack.input_bucket, MANIFEST_KEY), run_id=sequencer
    )
    run = HandlerRun(event, context).start()
    ended = RunEnd(run, waiter)
    reader = OutputReader(stack.aws.client("s3"), stack.output_bucket, stack.input_bucket, MANIFEST_KEY)
    follow_progress(console, reader.count, len(manifest), ended.ended, timeout_seconds=timeout_seconds)
    problems: list[str] = []
    if not run.wait(5):
        problems.append(f"the handler did not finish within {timeout_seconds:.0f} s")
    elif run.error is not None:
        problems.append(f"the handler raised {type(run.error).__name__}: {run.error}")
    else:
        summaries = (run.result or {}).get("manifests") or [{}]
        answer = ", ".join(f"{name} {summaries[0].get(name)}" for name in ("status", "total", "succeeded", "failed"))
        console.print(f"handler returned in {run.seconds:.1f} s: {answer}", style="dim", markup=False)
    if ended.event is None:
        problems.append("no completion event arrived (Manifest Labeled / Manifest Failed on the default bus)")
    else:
        detail = ended.event["detail"]
        console.print(
            f"event     {ended.event['detail-type']} ({detail.get('status')}, {detail.get('total')} entries):"
            " the default bus → the completion rule → its SQS queue",
            markup=False,
        )

    pairs = reader.records()
    records = [record for _, record in pairs]
    report = reader.report()
    console.print(results_table(records, title="results"))
    if report is None:
        problems.append("no report was written")
    else:
        console.print(report_line(report))
        problems.extend(report_adds_up(report, records))
        if report.get("status") != "complete":
            problems.append(f"report status {report.get('status')!r}, expected 'complete'")
    problems.extend(check_records(records, s3=True))
    problems.extend(
        f"{record.get('image_id')}: no image_properties, though the manifest asked for IMAGE_PROPERTIES"
        for record in records
        if "labels" in record and not isinstance(record.get("image_properties"), dict)
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    gallery, results_dir = write_outputs(output_dir, pairs, report)
    console.print(f"gallery:  {gallery}  (open it in a browser)", markup=False)
    console.print(f"results:  {results_dir}/ ({len(pairs)} files), report: {output_dir / 'report.json'}", markup=False)
    if report is not None:
        problems.extend(query_the_index(stack, console, report, records))
        problems.extend(recheck_step(stack, console, report, timeout_seconds))
    if problems:
        console.print(Text("the demo did not go as expected:", style="bold red"))
        for problem in problems:
            console.print(Text(f"  ✗ {problem}", style="red"))
    else:
        console.print(
            Text(
                "✓ every entry has a record, the report adds up, the photos got their labels,"
                " the broken entries their error codes",
                style="bold green",
            )
        )
        console.print(
            Text("✓ the re-check relabeled the changed photo alone and wrote nothing else", style="bold green")
        )
    return DemoOutcome(records=records, report=report, problems=problems, trigger=trigger, output_dir=output_dir)


@dataclass
class RunEnd:
    """When the demo's run has ended: its completion event arrived (or the handler failed, or it is long done)."""

    run: HandlerRun
    waiter: CompletionWaiter
    event: dict[str, Any] | None = None
    done_at: float | None = None

    def ended(self) -> bool:
        self.event = self.event or self.waiter.poll()
        if self.event is not None:
            return True
        if not self.run.done:
            return False
        self.done_at = self.done_at or time.monotonic()
        return self.run.error is not None or time.monotonic() - self.done_at > EVENT_WAIT_SECONDS


def query_the_index(stack: DemoStack, console: Any, report: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """The demo's ending: the template's ``images_with_label`` query on DuckDB over the index the run wrote.

    It asks for the photos labeled Cat or Coffee (the first two sample photos' labels); what it must find
    is what their records say. Returns what went wrong (empty: the index answered as the records do).
    """
    from rich.table import Table

    from labeler.local.query import LocalIndex
    from labeler.logic.index_rows import run_date

    assert stack.aws is not None
    since = run_date(ManifestRef.from_dict(report["manifest"])).isoformat()
    wanted = {photo.image_id: _query_label(photo.expected, records, photo.image_id) for photo in PHOTOS[:2]}
    table = Table(title="images_with_label (a named query of template.yaml, on DuckDB over the run's index)")
    for column in ("label", "image id", "confidence", "url"):
        table.add_column(column, overflow="fold")
    problems: list[str] = []
    with LocalIndex.from_bucket(stack.aws.client("s3"), stack.output_bucket) as index:
        rows = index.query("SELECT count(*) FROM image_labels").rows[0][0]
        console.print(
            f"index:    {index.objects} object(s) under s3://{stack.output_bucket}/index/dt={since}/,"
            f" {rows} rows (one per entry)",
            markup=False,
        )
        if (index.objects, rows) != (1, len(records)):
            problems.append(f"the index holds {index.objects} object(s) and {rows} rows, expected 1 and {len(records)}")
        for image_id, label in wanted.items():
            values = {"since": since, "label": label, "min_confidence": QUERY_MIN_CONFIDENCE}
            found = index.run_named("images_with_label", values).records()
            for row in found:
                table.add_row(label, row["image_id"], f"{row['confidence']:.1f}", row["url"])
            if image_id not in {row["image_id"] for row in found}:
                problems.append(f"images_with_label {label} ≥ {QUERY_MIN_CONFIDENCE} did not find {image_id}")
    console.print(table)
    console.print(
        f"  the same query: s3-image-labeler query --named images_with_label --param since={since}"
        f" --param label=Cat --param min_confidence={QUERY_MIN_CONFIDENCE}  (in AWS: Athena, saved query"
        " images_with_label)",
        markup=False,
        style="dim",
    )
    return problems


def recheck_step(stack: DemoStack, console: Any, report: dict[str, Any], timeout_seconds: float) -> list[str]:
    """One photo changes on its server; the scheduled re-check relabels it and writes nothing for the others.

    The handler gets the event the template's schedule sends (every manifest under ``watch/``), as Lambda
    would, and the demo waits for the re-check's completion event. Returns what went wrong (empty: only the
    changed photo was labeled and written again).
    """
    from datetime import UTC, datetime

    from rich.text import Text

    from labeler.local.http_server import StaticRoute
    from labeler.local.recheck_command import recheck_event, recheck_line
    from labeler.models.records import recheck_iso, recheck_time

    assert stack.aws is not None and stack.photos is not None
    s3 = stack.aws.client("s3")
    reader = OutputReader(s3, stack.output_bucket, stack.input_bucket, MANIFEST_KEY)
    before = {item["Key"]: item["ETag"] for item in reader.result_objects()}
    stack.photos.add(CHANGED_PHOTO.path, StaticRoute(changed_photo_bytes(), content_type=CHANGED_PHOTO.content_type))
    upload = ManifestRef.from_dict(report["manifest"])
    at = recheck_time(datetime.now(UTC))
    console.print(
        Text("\nre-check (the manifest is under watch/: the stack re-checks it on RecheckSchedule)", style="bold")
    )
    console.print(f"  changed   {stack.photos.url(CHANGED_PHOTO.path)} now serves {CHANGED_TO}", markup=False)
    console.print(
        f"  trigger   the event EventBridge Scheduler sends: every manifest under s3://{stack.input_bucket}/watch/",
        markup=False,
    )
    waiter = CompletionWaiter(
        stack.aws.client("sqs"),
        stack.completion_queue,
        manifest=(stack.input_bucket, MANIFEST_KEY),
        run_id=upload.upload_run_id,
        recheck=at,
    )
    run = HandlerRun(recheck_event(stack.input_bucket, prefix="watch/", at=recheck_iso(at))).start()
    ended = RunEnd(run, waiter)
    deadline = time.monotonic() + timeout_seconds
    while not ended.ended() and time.monotonic() < deadline:
        time.sleep(0.1)
    problems: list[str] = []
    if run.error is not None:
        problems.append(f"the re-check raised {type(run.error).__name__}: {run.error}")
    if ended.event is None:
        problems.append("no completion event arrived for the re-check")
    rechecked = reader.report() or {}
    found = rechecked.get("recheck") or {}
    after = {item["Key"]: item["ETag"] for item in reader.result_objects()}
    written = sorted(key.rsplit("/", 1)[-1].removesuffix(".json") for key in after if before.get(key) != after[key])
    console.print(recheck_line(rechecked))
    untouched = len(after) - len(written)
    names = ", ".join(written) or "none"
    console.print(
        f"  written   {len(written)} result object(s): {names}; the {untouched} others untouched", markup=False
    )
    calls = (rechecked.get("cost") or {}).get("detect_labels_calls")
    if calls != 1:
        problems.append(f"the re-check made {calls} DetectLabels call(s), expected 1")
    if written != [CHANGED_PHOTO.image_id] or found.get("changed_ids") != [CHANGED_PHOTO.image_id]:
        problems.append(
            f"the re-check wrote {written} and found {found.get('changed_ids')} changed, expected the rocket"
        )
    # every entry labeled by the upload's run (the photos and the one in S3) but the rocket is unchanged
    if found.get("unchanged") != report.get("succeeded", 0) - 1 or rechecked.get("status") != "complete":
        problems.append(f"the re-check found {found}, status {rechecked.get('status')}")
    problems.extend(_labels_changed(stack, console, upload, ManifestRef.from_dict(rechecked.get("manifest") or {})))
    return problems


def _labels_changed(stack: DemoStack, console: Any, upload: ManifestRef, rechecked: ManifestRef) -> list[str]:
    """The template's ``labels_changed`` query between the upload's run and the re-check's, on DuckDB."""
    from rich.table import Table

    from labeler.local.query import LocalIndex

    assert stack.aws is not None
    values = {
        "manifest_bucket": upload.bucket,
        "manifest_key": upload.key,
        "old_run_id": upload.upload_run_id,
        "new_run_id": rechecked.run_id,
    }
    with LocalIndex.from_bucket(stack.aws.client("s3"), stack.output_bucket) as index:
        rows = index.run_named("labels_changed", values).records()
    table = Table(title="labels_changed (a named query of template.yaml): the upload's run → the re-check's")
    for column in ("image id", "labels before", "labels now"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["image_id"], ", ".join(row["old_labels"]), ", ".join(row["new_labels"]))
    console.print(table)
    if [row["image_id"] for row in rows] != [CHANGED_PHOTO.image_id]:
        return [f"labels_changed found {[row['image_id'] for row in rows]}, expected the rocket"]
    return []


def _query_label(expected: tuple[str, ...], records: list[dict[str, Any]], image_id: str) -> str:
    """The first of a photo's expected labels its record has (the one the query will find)."""
    names = {label.get("Name") for r in records if r.get("image_id") == image_id for label in r.get("labels") or []}
    return next((name for name in expected if name in names), expected[0])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m labeler.local.demo",
        description="Label real photos locally with the Lambda handler: embedded S3 (moto), offline model, "
        "HTML gallery. No AWS account, no Docker.",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where gallery.html, report.json and results/ go"
    )
    parser.add_argument("--max-workers", type=int, default=4, help="MAX_WORKERS for the run (default 4)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds (default 120)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = make_console()
    from labeler.adapters.labels.local import ModelFiles, ModelNotAvailable

    try:
        ModelFiles.at().verify()
    except ModelNotAvailable as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 2
    started = time.perf_counter()
    with DemoStack(max_workers=args.max_workers) as stack:
        outcome = run_demo(stack, console, args.output_dir, args.timeout)
    console.print(f"done in {time.perf_counter() - started:.1f} s; embedded S3 and photo server stopped.", style="dim")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
