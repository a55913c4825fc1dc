"""An embedded S3/SQS/DynamoDB/EventBridge-compatible endpoint on loopback (moto's server), for local runs and tests.

boto3 honours ``AWS_ENDPOINT_URL_<SERVICE>``, so the very code that runs in Lambda talks to it
unchanged. Nothing listens beyond 127.0.0.1, and ``stop()`` frees the port.

>>> with EmbeddedAws() as aws:                      # doctest: +SKIP
...     aws.create_bucket("demo-input")
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

SERVICES = ("S3", "SQS", "DYNAMODB", "EVENTBRIDGE")  # service ids: AWS_ENDPOINT_URL_<ID>
DUMMY_SECRET = "local"  # noqa: S105 - moto accepts any credentials


def _atomic_app(app: Any) -> Any:
    """moto's WSGI app with each S3 and DynamoDB request served whole under one lock.

    moto's threaded server runs requests concurrently without locking its state: two conditional
    writes can both pass their condition, and ``TransactWriteItems`` deep-copies a table while another
    thread changes it (a 500). AWS serves each request atomically, so the embedded endpoint does too.
    Other services (SQS long polls in particular) stay concurrent.
    """
    import threading

    lock = threading.Lock()

    def atomic(environ: dict[str, Any], start_response: Any) -> Any:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        credential = environ.get("HTTP_AUTHORIZATION", "")
        if target.startswith("DynamoDB") or "/s3/aws4_request" in credential:
            with lock:
                return list(app(environ, start_response))  # the body is produced inside the lock
        return app(environ, start_response)

    return atomic


def _moto_server(ip_address: str) -> Any:
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.server import DomainDispatcherApplication, ThreadedMotoServer, create_backend_app
    from werkzeug.serving import make_server

    class AtomicMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = _atomic_app(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return AtomicMotoServer(ip_address=ip_address, port=0, verbose=False)


class EmbeddedAws:
    """Starts moto's threaded server on 127.0.0.1 (free port) and points boto3 at it via the environment."""

    def __init__(self, region: str = "us-east-1", set_environment: bool = True) -> None:
        self.region = region
        self.set_environment = set_environment
        self._server: Any = None
        self._saved_env: dict[str, str | None] = {}
        self.endpoint_url = ""

    def start(self) -> EmbeddedAws:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines on the console
        self._server = _moto_server("127.0.0.1")
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        if self.set_environment:
            self._set_env(self.environment())
        return self

    def environment(self) -> dict[str, str]:
        """The variables that point boto3 (and the handler) at this endpoint, with dummy credentials."""
        env = {f"AWS_ENDPOINT_URL_{service}": self.endpoint_url for service in SERVICES}
        env.update(
            {
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region,
            }
        )
        return env

    def _set_env(self, values: dict[str, str]) -> None:
        for name in [*values, "AWS_SESSION_TOKEN", "AWS_PROFILE"]:
            self._saved_env.setdefault(name, os.environ.get(name))
        # A real profile or session token must not leak into calls to the local endpoint.
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)
        os.environ.update(values)

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="local",
            aws_secret_access_key=DUMMY_SECRET,
        )

    def create_bucket(self, name: str, versioning: bool = False) -> None:
        s3 = self.client("s3")
        s3.create_bucket(Bucket=name)
        if versioning:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    def route_events_to_queue(self, rule_name: str, event_pattern: dict[str, Any], queue_name: str) -> str:
        """A rule on the default event bus whose target is a new SQS queue (as in AWS); returns the queue URL.

        moto delivers events matched by the rule to the queue, the message body being the event.
        The queue policy lets EventBridge send to it, as AWS requires.
        """
        import json

        sqs, events = self.client("sqs"), self.client("events")
        queue_url: str = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        rule_arn = events.put_rule(Name=rule_name, EventPattern=json.dumps(event_pattern), State="ENABLED")["RuleArn"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "events.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
                }
            ],
        }
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
        events.put_targets(Rule=rule_name, Targets=[{"Id": "queue", "Arn": queue_arn}])
        return queue_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    def __enter__(self) -> EmbeddedAws:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
