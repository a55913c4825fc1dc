"""A loopback stand-in for Lambda's ``Invoke`` API that runs a real handler in this process.

It speaks the wire protocol boto3's Lambda client uses (``POST /2015-03-31/functions/<name>/invocations``,
``X-Amz-Invocation-Type``), so production CLI code reaches it through ``AWS_ENDPOINT_URL_LAMBDA`` unchanged.
An ``Event`` invocation is answered ``202`` at once and the handler runs in a thread afterwards, as Lambda
runs an asynchronous invocation; ``RequestResponse`` waits and answers the handler's result. Every
invocation is recorded (``invocations``: function name, type, payload).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class FakeLambda:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.invocations: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        owner = self

        class Requests(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                parts = self.path.split("/")
                if len(parts) < 5 or parts[1] != "2015-03-31" or parts[4] != "invocations":
                    self.send_response(404)
                    self.end_headers()
                    return
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
                owner.invocations.append({"function": unquote(parts[3]), "type": kind, "payload": payload})
                if kind == "Event":
                    thread = threading.Thread(target=owner._run, args=(payload,), daemon=True)
                    owner._threads.append(thread)
                    self.send_response(202)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    thread.start()
                    return
                body = json.dumps(owner.handler(payload)).encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Requests)
        self._serving = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _run(self, payload: dict[str, Any]) -> None:
        try:
            self.handler(payload)
        except BaseException as exc:  # Lambda would retry it; the test looks at what failed
            self.errors.append(exc)

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def wait(self, timeout: float = 60.0) -> None:
        """Wait for the asynchronous invocations to end."""
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> FakeLambda:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait()
        self._server.shutdown()
        self._server.server_close()
