"""``make demo``: the Lambda handler labels real photos on this machine, no AWS account, no Docker.

What happens, in the order a user sees it:

1. An embedded S3/SQS endpoint starts on loopback (moto's server), with an input and an output
   bucket; the input bucket sends its ``ObjectCreated`` events to an SQS queue, as S3 → SQS does in AWS.
2. Real photographs (scikit-image's bundled samples, served as JPEG, PNG, WebP, GIF and BMP) are
   served on loopback; the manifest lists them plus entries that fail on purpose (a 404, an HTML
   page, the cloud metadata address, a duplicate id, an entry without a URL).
3. The manifest is uploaded with boto3; the event S3 sent for it is taken from the queue and given to
   :func:`labeler.handlers.manifest_created.handler` (the Lambda's own entry point) with a Lambda
   context, ``LABEL_BACKEND=local`` (the offline model) and ``ALLOW_PRIVATE_NETWORKS=true``.
4. A progress bar counts the result objects as they appear; then a table of labels or error codes,
   the report's summary, and ``demo-output/`` (``gallery.html``, ``results/*.json``, ``report.json``).

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
    PHOTOS,
    check_records,
    photo_bytes,
    sample_images,
    sample_manifest,
    sample_routes,
)

INPUT_BUCKET = "s3il-demo-input"
OUTPUT_BUCKET = "s3il-demo-output"
MANIFEST_KEY = "manifests/demo-photos.json"
# The demo's manifest asks for its own options: labels and image properties (colours, quality), which the
# offline backend computes; the stack lets manifests opt in to IMAGE_PROPERTIES (MANIFEST_FEATURES below).
DEMO_FEATURES = ["GENERAL_LABELS", "IMAGE_PROPERTIES"]
DEFAULT_OUTPUT_DIR = Path("demo-output")
EVENT_WAIT_SECONDS = 10.0


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
    aws: EmbeddedAws | None = None
    photos: Any = None
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
    manifest = sample_manifest(stack.photos.url)
    console.print(Text("s3-image-labeler demo: the Lambda handler, run on this machine", style="bold"))
    console.print(f"  embedded S3 + SQS (moto server)   {stack.aws.endpoint_url}")
    console.print(f"  photo server (loopback)           {stack.photos.base_url}")
    console.print(
        "  ALLOW_PRIVATE_NETWORKS=true       the photos are on 127.0.0.1, so loopback is allowed for this run;"
        "\n                                    169.254.169.254 (cloud metadata) stays blocked even so"
    )
    console.print(
        "  LABEL_BACKEND=local               offline ImageNet model (EfficientNet-Lite0), no Rekognition call"
    )
    console.print(
        f"  manifest  s3://{stack.input_bucket}/{MANIFEST_KEY}: {len(manifest)} entries,"
        f" {len(PHOTOS)} photos and {len(BROKEN)} broken on purpose"
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
    run = HandlerRun(event, context).start()
    reader = OutputReader(stack.aws.client("s3"), stack.output_bucket, stack.input_bucket, MANIFEST_KEY)
    follow_progress(console, reader.count, len(manifest), lambda: run.done, timeout_seconds=timeout_seconds)
    problems: list[str] = []
    if not run.wait(5):
        problems.append(f"the handler did not finish within {timeout_seconds:.0f} s")
    elif run.error is not None:
        problems.append(f"the handler raised {type(run.error).__name__}: {run.error}")
    else:
        summaries = (run.result or {}).get("manifests") or [{}]
        answer = ", ".join(f"{name} {summaries[0].get(name)}" for name in ("status", "total", "succeeded", "failed"))
        console.print(f"handler returned in {run.seconds:.1f} s: {answer}", style="dim", markup=False)

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
    problems.extend(check_records(records))
    problems.extend(
        f"{record.get('image_id')}: no image_properties, though the manifest asked for IMAGE_PROPERTIES"
        for record in records
        if "labels" in record and not isinstance(record.get("image_properties"), dict)
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    gallery, results_dir = write_outputs(output_dir, pairs, report)
    console.print(f"gallery:  {gallery}  (open it in a browser)", markup=False)
    console.print(f"results:  {results_dir}/ ({len(pairs)} files), report: {output_dir / 'report.json'}", markup=False)
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
    return DemoOutcome(records=records, report=report, problems=problems, trigger=trigger, output_dir=output_dir)


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
