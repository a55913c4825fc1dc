"""A small HTTP server on loopback for tests, the demo and the benchmarks.

Static routes answer with fixed bytes (with a strong ``ETag`` and a ``Last-Modified`` date, and
``304 Not Modified`` to conditional requests); handler routes write their own response, which is
how tests build hostile servers (trickling, endless, never answering). Each connection runs in its
own daemon thread; HTTP/1.1 keep-alive is supported for static routes.

``stop()`` really stops: the listening socket is closed (the port is free again), open connections
are shut down, and long-running handlers end because :attr:`LoopbackServer.stopping` is set (they
poll it) or because their socket is gone.

>>> with LoopbackServer({"/hello.txt": StaticRoute(b"hi", "text/plain")}) as server:   # doctest: +SKIP
...     urllib.request.urlopen(server.url("/hello.txt")).read()
b'hi'
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# How long an idle keep-alive connection (or a stalled write) may hold a handler thread.
IDLE_CONNECTION_SECONDS = 30.0
# How long stop() waits for handler threads to notice that the server is stopping.
STOP_GRACE_SECONDS = 3.0


@dataclass(frozen=True)
class StaticRoute:
    """Fixed response bytes for one path."""

    body: bytes
    content_type: str = "application/octet-stream"
    status: int = 200
    etag: bool = True
    """Send a strong ETag (from the body's sha256) and Last-Modified; answer conditional requests with 304."""


RouteHandler = Callable[[BaseHTTPRequestHandler], None]
"""Writes its own response. ``handler.server.stopping`` (a :class:`threading.Event`) is set when the server stops;
the connection is closed after the handler returns."""

Route = StaticRoute | RouteHandler


@dataclass(frozen=True)
class _Static:
    route: StaticRoute
    etag: str | None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's default of 5 drops SYNs under 16 parallel clients (1-s retransmits)

    def __init__(self, address: tuple[str, int], owner: LoopbackServer) -> None:
        self.owner = owner
        self.stopping = owner.stopping
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)
            self._handler_threads.add(threading.current_thread())

    def untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)
            self._handler_threads.discard(threading.current_thread())

    def close_connections(self, grace_seconds: float) -> None:
        """Shut down every open connection and wait (a little) for their threads to end."""
        with self._lock:
            connections, threads = list(self._connections), list(self._handler_threads)
        for connection in connections:
            with contextlib.suppress(OSError):  # already gone
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + grace_seconds
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that go away (which hostile-route tests do on purpose) are not errors worth printing.
        log.debug("error while serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    timeout = IDLE_CONNECTION_SECONDS
    server_version = "LoopbackServer/1.0"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40-ms Nagle/delayed-ACK stalls
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # silent

    @property
    def stopping(self) -> threading.Event:
        return self.server.stopping

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, *, head: bool) -> None:
        owner = self.server.owner
        path = _route_path(self.path)
        route = owner._lookup_and_count(path)
        delay = owner.delay_seconds
        if delay > 0 and self.stopping.wait(delay):
            self.close_connection = True
            return
        try:
            if route is None:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", head=head)
            elif isinstance(route, _Static):
                self._static(route, path, head=head)
            else:
                self.close_connection = True
                route(self)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True  # the client went away: nothing more to do

    def _static(self, static: _Static, path: str, *, head: bool) -> None:
        route = static.route
        extra: dict[str, str] = {}
        if static.etag is not None:
            extra = {"ETag": static.etag, "Last-Modified": self.server.owner.last_modified}
            if self._not_modified(static.etag):
                self.server.owner._count_not_modified(path)
                self.send_response(304)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                return
        self._send(route.status, route.body, route.content_type, head=head, headers=extra)

    def _not_modified(self, etag: str) -> bool:
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:  # takes precedence over If-Modified-Since (RFC 9110, 13.2.2)
            tags = [tag.strip() for tag in if_none_match.split(",")]
            return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since is None:
            return False
        try:
            since = email.utils.parsedate_to_datetime(if_modified_since).timestamp()
        except (TypeError, ValueError, IndexError):
            return False
        return self.server.owner.last_modified_timestamp <= since

    def _send(
        self, status: int, body: bytes, content_type: str, *, head: bool, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)


def _route_path(request_target: str) -> str:
    return urlsplit(request_target).path or "/"


class LoopbackServer:
    """A threaded HTTP/1.1 server on ``host`` (loopback by default) serving ``routes``.

    ``port=0`` picks a free port; :attr:`port` and :attr:`base_url` are known once started.
    ``delay_seconds`` (settable at any time) is added before every response.
    """

    def __init__(
        self,
        routes: Mapping[str, Route] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delay_seconds: float = 0.0,
    ) -> None:
        self.host = host
        self.delay_seconds = delay_seconds
        self.stopping = threading.Event()
        self._requested_port = port
        self._lock = threading.Lock()
        self._routes: dict[str, _Static | RouteHandler] = {}
        self._hits: Counter[str] = Counter()
        self._not_modified: Counter[str] = Counter()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None
        now = int(time.time()) - 60  # a whole second, safely in the past
        self.last_modified_timestamp = float(now)
        self.last_modified = email.utils.formatdate(now, usegmt=True)
        for path, route in (routes or {}).items():
            self.add(path, route)

    # --- routes and counters --------------------------------------------------------------------
    def add(self, path: str, route: Route) -> None:
        """Serve ``route`` at ``path`` (an exact path; the query string of requests is ignored)."""
        if not path.startswith("/"):
            raise ValueError(f"route paths start with '/': {path!r}")
        entry: _Static | RouteHandler
        if isinstance(route, StaticRoute):
            etag = f'"{hashlib.sha256(route.body).hexdigest()[:32]}"' if route.etag else None
            entry = _Static(route, etag)
        elif callable(route):
            entry = route
        else:
            raise TypeError(f"a route is a StaticRoute or a callable, not {type(route).__name__}")
        with self._lock:
            self._routes[_route_path(path)] = entry

    def hits(self, path: str) -> int:
        """Requests received for ``path`` (any query string, any answer, 304s included)."""
        with self._lock:
            return self._hits[_route_path(path)]

    def not_modified_count(self, path: str) -> int:
        """How many of those were answered ``304 Not Modified``."""
        with self._lock:
            return self._not_modified[_route_path(path)]

    def reset_counters(self) -> None:
        with self._lock:
            self._hits.clear()
            self._not_modified.clear()

    def _lookup_and_count(self, path: str) -> _Static | RouteHandler | None:
        with self._lock:
            self._hits[path] += 1
            return self._routes.get(path)

    def _count_not_modified(self, path: str) -> None:
        with self._lock:
            self._not_modified[path] += 1

    # --- addresses --------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._bound_port is not None:
            return self._bound_port
        if self._requested_port:
            return self._requested_port
        raise RuntimeError("the server picks its port when started: call start() first")

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url(self, path: str) -> str:
        if not path.startswith("/"):
            path = "/" + path
        return self.base_url + path

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> LoopbackServer:
        if self._httpd is not None:
            return self
        self.stopping.clear()
        httpd = _HTTPServer((self.host, self._requested_port), self)
        self._httpd = httpd
        self._bound_port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"loopback-http-{self._bound_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self.stopping.set()
        httpd.shutdown()  # the accept loop ends
        httpd.server_close()  # the listening socket is closed: the port is free
        httpd.close_connections(STOP_GRACE_SECONDS)
        if thread is not None:
            thread.join(STOP_GRACE_SECONDS)
        self._httpd, self._thread = None, None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
