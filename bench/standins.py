"""The stand-ins every benchmark talks to, all on loopback, started once per `make bench`.

* **S3, SQS, DynamoDB**: the project's embedded moto server (``labeler.local.embedded_aws.EmbeddedAws``),
  one *process per service* (``python -m bench.standins moto``), so that its CPU work (moto is ~2–3 ms
  of Python per request) shares no interpreter with the code being measured, nor one service's
  requests with another's: in AWS each is another fleet of machines.
* **Rekognition**: ``tests.support.fake_rekognition.FakeRekognition`` (a ``ThreadingHTTPServer``:
  concurrent calls overlap) in the orchestrating process, with a thin subclass of its request
  handler that also records when each call arrived (for the quota-utilisation figure).
* **Image hosts**: ``labeler.local.http_server.LoopbackServer`` in the orchestrating process.

The code under test (the handler, the baseline loop) always runs in a separate child process
(``bench.child``), pointed at these endpoints through ``AWS_ENDPOINT_URL_*``, with the environment
template.yaml gives the function (``tests/support/template_env.py``): :meth:`StandIns.new_stack`
stands in the stack's resources (buckets, queues, table) as the template declares them, and
:meth:`StandIns.function_env` resolves the function's variables to their defaults, adding only what
a harness must change.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
MOTO_SERVICES = ("S3", "SQS", "DYNAMODB", "EVENTBRIDGE")  # each in a moto process of its own
# The stand-ins' scheduling priority (nice). They stand for services on other machines, whose latency does not
# depend on how busy the functions' CPUs are; at the default priority the kernel's fair share gave the S3
# stand-in ~1/8 of the CPU among the containers under test, and its queue became everyone's bottleneck.
STAND_IN_NICE = -5


def raise_priority(thread_id: int = 0) -> None:
    """Run this process (``thread_id`` 0) or one thread of it (Linux: a thread id) at ``STAND_IN_NICE``; best
    effort (lowering a nice value needs root or CAP_SYS_NICE: without it the stand-in keeps the default)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, thread_id, STAND_IN_NICE)


DUMMY_KEY = "bench"


class MotoProcess:
    """moto's threaded server (the project's ``EmbeddedAws``) in a child process; ``endpoint_url``."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self.endpoint_url = ""

    def start(self) -> MotoProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.standins", "moto"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            # no CORS headers on every answer: no browser talks to these stand-ins
            env=child_base_env() | {"MOTO_DISABLE_GLOBAL_CORS": "true"},
            preexec_fn=raise_priority,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the moto process did not start (said {line!r})")
        self.endpoint_url = line
        return self

    def cpu_seconds(self) -> float:
        """User + system CPU time the moto process has used so far (Linux ``/proc``; 0 elsewhere)."""
        if self._proc is None:
            return 0.0
        try:
            with open(f"/proc/{self._proc.pid}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the child stops its server when stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _without_per_request_rebuilds() -> None:
    """Two things moto's server rebuilds on every request, costs of the stand-in that S3 and DynamoDB do not
    have (~30 % of its CPU per S3 request here, measured): its package directory listing (``os.listdir`` +
    ``isdir`` of ~200 entries, to ask whether the Host names a service), and, for every error answer (a 404 of
    a HEAD or GET that finds nothing), a lookup table of the service's error shapes, kept in a cache that
    ``get_error_model`` throws away with a new ``ErrorLookupFactory()`` each time. Both depend on nothing that
    changes while the server runs: build each once. Answers are unchanged."""
    import moto.backends
    import moto.core.errors

    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: iter(modules)

    tables: dict[Any, Any] = {}
    build = moto.core.errors.ErrorLookupFactory._create_error_lut

    def for_service(self: Any, service_model: Any) -> Any:
        service_id = service_model.metadata.get("serviceId")
        if service_id is None:
            return build(service_model)
        if service_id not in tables:
            tables[service_id] = build(service_model)
        return tables[service_id]

    moto.core.errors.ErrorLookupFactory.for_service = for_service  # type: ignore[method-assign]


def _keep_connections_alive() -> None:
    """Let clients reuse their connections, as S3 and DynamoDB do. Werkzeug's development server (moto's)
    closes every connection after one answer, because it cannot tell whether the application read the whole
    request body; so every request paid a new TCP connection on both sides and a new server thread. Here the
    body (``Content-Length``; a chunked one keeps werkzeug's way) is read whole before the application runs,
    so the next request on the connection always starts cleanly, and the connection stays open."""
    import io
    import selectors
    import types

    import werkzeug.serving
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    make_environ, send_header = MotoRequestHandler.make_environ, MotoRequestHandler.send_header

    class _NothingLeft(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
        """Werkzeug drains the socket after each answer, up to EOF: on a kept connection that would swallow the
        next request. The body was read whole, so there is nothing of this request left to drain."""

        def select(self, timeout: float | None = None) -> list[Any]:
            return []

    # werkzeug.serving uses ``selectors`` only for that drain
    werkzeug.serving.selectors = types.SimpleNamespace(DefaultSelector=_NothingLeft, EVENT_READ=selectors.EVENT_READ)

    def make_environ_read_whole(self: Any) -> dict[str, Any]:
        environ = make_environ(self)
        self.body_read_whole = not environ.get("wsgi.input_terminated")  # chunked: werkzeug's own way
        if self.body_read_whole:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            environ["wsgi.input"] = io.BytesIO(self.rfile.read(length) if length > 0 else b"")
        return environ

    def send_header_keep_alive(self: Any, keyword: str, value: str) -> None:
        if keyword.lower() == "connection" and value.lower() == "close" and getattr(self, "body_read_whole", False):
            return
        send_header(self, keyword, value)

    # An answer is written in pieces (headers, then body): on a kept connection Nagle's algorithm would hold
    # the body back for the client's delayed ACK (~40 ms).
    MotoRequestHandler.disable_nagle_algorithm = True
    MotoRequestHandler.make_environ = make_environ_read_whole  # type: ignore[method-assign]
    MotoRequestHandler.send_header = send_header_keep_alive  # type: ignore[method-assign]


def _without_debug_mode() -> None:
    """moto builds each service's Flask application in debug mode, which wraps every request body's form data
    in a diagnostic helper (``attach_enctype_error_multidict``): ~10 % of an S3 PUT's CPU here. Debug mode
    only changes how Flask reports errors in development; moto's answers are the same without it."""
    import moto.server

    create = moto.server.create_backend_app

    def create_without_debug(service: Any) -> Any:
        app = create(service)
        app.debug = False
        return app

    moto.server.create_backend_app = create_without_debug


def _serve_moto_until_stdin_closes() -> None:
    from labeler.local.embedded_aws import EmbeddedAws

    _without_per_request_rebuilds()
    _keep_connections_alive()
    _without_debug_mode()
    aws = EmbeddedAws(region=REGION, set_environment=False).start()
    try:
        print(aws.endpoint_url, flush=True)
        sys.stdin.read()  # returns at EOF: the parent is done (or gone)
    finally:
        aws.stop()


def child_base_env() -> dict[str, str]:
    """The environment of every child: the parent's, minus anything that could reach real AWS or configure
    the function (every setting the product reads: a developer's ``MAX_WORKERS`` must not leak into a run)."""
    from dataclasses import fields

    from labeler.models.settings import Settings

    settings = {spec.name.upper() for spec in fields(Settings)}
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "POWERTOOLS_", "LAMBDA_", "_X_AMZN")) and name not in settings
    }
    env.update(
        {
            "AWS_ACCESS_KEY_ID": DUMMY_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        }
    )
    return env


def function_child_env(function_env: Any) -> dict[str, str]:
    """A child's environment for running the function: the base above plus the function's variables."""
    return child_base_env() | function_env.variables


class TimedRekognition:
    """``FakeRekognition`` plus the moment the quota admitted each successful DetectLabels call.

    The moment is the one the stand-in's quota counts (``state.admit``), recorded only for a call
    answered 200: a throttled or refused call is not an arrival. Connections are kept alive
    (HTTP/1.1, every answer has a ``Content-Length``), as the service's are: the product's client
    then reuses them instead of connecting for every call.
    """

    def __init__(self) -> None:
        from tests.support.fake_rekognition import FakeRekognition, _Handler

        arrivals: list[float] = []
        lock = threading.Lock()
        local = threading.local()

        class _TimedHandler(_Handler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall between them

            def setup(self) -> None:
                raise_priority(threading.get_native_id())  # this connection's thread (see STAND_IN_NICE)
                super().setup()

            def do_POST(self) -> None:
                local.admitted, local.status = None, None
                super().do_POST()
                if local.status == 200 and local.admitted is not None:
                    with lock:
                        arrivals.append(local.admitted)

            def _reply(self, status: int, document: dict[str, Any]) -> None:
                local.status = status
                super()._reply(status, document)

        self.fake = FakeRekognition()
        self.fake._server.RequestHandlerClass = _TimedHandler
        admit = self.fake.state.admit

        def admit_and_note(now: float) -> bool:
            admitted = admit(now)
            local.admitted = now if admitted else None
            return admitted

        self.fake.state.admit = admit_and_note  # type: ignore[method-assign]
        self.arrivals = arrivals
        self.endpoint_url = self.fake.endpoint_url

    @property
    def state(self) -> Any:
        return self.fake.state

    def reset(self, latency_seconds: float = 0.0, quota_tps: float | None = None) -> None:
        """A fresh count; ``quota_tps``: the account quota the stand-in enforces (None: none)."""
        self.fake.state.reset()
        self.fake.state.latency_seconds = latency_seconds
        self.fake.state.quota_tps = quota_tps
        self.arrivals.clear()

    @property
    def quota_tps(self) -> float | None:
        return self.fake.state.quota_tps  # type: ignore[no-any-return]

    @property
    def throttled(self) -> int:
        return int(self.fake.state.throttled)

    @property
    def successful_calls(self) -> int:
        return int(self.fake.state.successful_calls)

    def start(self) -> TimedRekognition:
        self.fake.start()
        return self

    def stop(self) -> None:
        self.fake.stop()


class StandIns:
    """S3 (moto process), Rekognition (stand-in) and an image host; buckets, manifests and S3 events."""

    _numbers = itertools.count()

    def __init__(self) -> None:
        from tests.support.template_env import Template

        from labeler.local.http_server import LoopbackServer

        # One moto process per service: S3, SQS and DynamoDB are separate services, with latencies of their own.
        # In one process they would queue behind each other (one interpreter; each request served whole):
        # a limiter lease waiting behind a burst of S3 reads, which AWS never makes it do.
        self.aws = {service: MotoProcess() for service in MOTO_SERVICES}
        self.rekognition = TimedRekognition()
        self.site = LoopbackServer()
        self.template = Template.load()
        self._clients: dict[str, Any] = {}

    def start(self) -> StandIns:
        for process in self.aws.values():
            process.start()
        self.rekognition.start()
        self.site.start()
        self.warm_up()
        return self

    # One cheap request per service, answered by the backend moto builds on a process's first request for it
    # (its region's state). The first run measured paid that instead: the first PutEvents of a bench took
    # 92-132 ms against ~4 ms later, in the lone manifest's tail. AWS's services are up before a function calls.
    WARM_UP: ClassVar[dict[str, tuple[str, str]]] = {
        "S3": ("s3", "list_buckets"),
        "SQS": ("sqs", "list_queues"),
        "DYNAMODB": ("dynamodb", "list_tables"),
        "EVENTBRIDGE": ("events", "list_event_buses"),
    }

    def warm_up(self) -> None:
        for service in self.aws:
            name, operation = self.WARM_UP[service]
            getattr(self.client(name, service), operation)()

    def stop(self) -> None:
        for stop in (self.site.stop, self.rekognition.stop, *(process.stop for process in self.aws.values())):
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"warning: stopping a stand-in failed: {exc}", file=sys.stderr)

    def __enter__(self) -> StandIns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, service: str, process: str | None = None) -> Any:
        """A boto3 client for the service's moto process (``s3``, ``sqs``, ``dynamodb``; ``process`` names it when
        it is not the service's name in capitals: ``EVENTBRIDGE`` for ``events``), made once."""
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            self._clients[service] = boto3.client(
                service,
                endpoint_url=self.aws[process or service.upper()].endpoint_url,
                region_name=REGION,
                aws_access_key_id=DUMMY_KEY,
                aws_secret_access_key=DUMMY_KEY,
                config=Config(max_pool_connections=32),
            )
        return self._clients[service]

    @property
    def s3(self) -> Any:
        return self.client("s3")

    # --- the stack, as the template declares it ------------------------------------------------------
    def new_stack(self, name: str) -> Any:
        """Fresh stand-ins for the stack's resources (created when the template first names them): new
        buckets, hence an empty label cache; a new work queue and state table."""
        from tests.support.stack_standins import StackStandIns

        prefix = f"b{os.getpid() % 10000}-{next(self._numbers)}-{name}"[:31].rstrip("-")
        return StackStandIns(self.template, self.client, prefix=prefix)

    def function(self, stack: Any, function: str) -> Any:
        """The function's ``FunctionConfig`` (handler, timeout, memory, environment) with ``stack``'s resources."""
        return self.template.function(function, stack)

    def function_env(self, stack: Any, function: str, *, quota: float, diagnostic: dict[str, str] | None = None) -> Any:
        """The function's ``FunctionEnvironment``: the template's, pointed at the stand-ins, told the quota."""
        from tests.support.template_env import deployed_environment

        return deployed_environment(
            self.function(stack, function),
            endpoints=self.aws_endpoints(),
            rekognition_max_tps=quota,
            diagnostic=diagnostic,
        )

    def input_bucket(self, stack: Any) -> str:
        """The bucket whose uploads trigger ManifestFunction (its S3 event source in the template)."""
        return str(stack.ref(self.template.s3_event_buckets("ManifestFunction")[0]))

    def aws_endpoints(self) -> dict[str, str]:
        return {
            **{service: process.endpoint_url for service, process in self.aws.items()},
            "REKOGNITION": self.rekognition.endpoint_url,
        }

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds the stand-ins have used so far: each moto process, and this process (the Rekognition
        stand-in and the image host, with the little the orchestration itself does)."""
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            **{f"moto {service}": process.cpu_seconds() for service, process in self.aws.items()},
            "Rekognition stand-in + image host": usage.ru_utime + usage.ru_stime,
        }

    def aws_env(self) -> dict[str, str]:
        """What points boto3 (the baseline loops) at the stand-ins."""
        return {f"AWS_ENDPOINT_URL_{service}": url for service, url in self.aws_endpoints().items()}

    def new_bucket(self, kind: str) -> str:
        name = f"bench-{kind}-{os.getpid()}-{next(self._numbers)}"
        self.s3.create_bucket(Bucket=name)
        return name

    def upload_manifest(self, bucket: str, key: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Upload a manifest and return the S3 ObjectCreated event for it (as the tests build it)."""
        from tests.conftest import s3_put_event

        self.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(entries).encode())
        return s3_put_event(self.s3, bucket, key)

    def reports(self, bucket: str) -> dict[str, dict[str, Any]]:
        """Every report in ``bucket`` by manifest key."""
        found: dict[str, dict[str, Any]] = {}
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix="reports/"):
            for item in page.get("Contents", []):
                report = json.loads(self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
                found[report["manifest"]["key"]] = report
        return found

    def count_objects(self, bucket: str, prefix: str) -> int:
        paginator = self.s3.get_paginator("list_objects_v2")
        return sum(page.get("KeyCount", 0) for page in paginator.paginate(Bucket=bucket, Prefix=prefix))


if __name__ == "__main__":
    if sys.argv[1:] == ["moto"]:
        _serve_moto_until_stdin_closes()
    else:
        sys.exit("usage: python -m bench.standins moto")
