"""The test image site: a :class:`LoopbackServer` with real images and hostile routes.

Every static route has a strong ETag and Last-Modified and answers conditional requests with 304.
Routing ignores query strings (``/photo.jpg?n=3`` is ``/photo.jpg``).

================================  ==================================================================
route                             behaviour
================================  ==================================================================
/photo.{jpg,png,webp,gif,bmp,tiff}  scikit-image's ``chelsea`` (a cat) in that format
/photo-copy.jpg                   the same bytes as /photo.jpg
/coffee.jpg                       scikit-image's ``coffee``
/distinct/<n>.png                 n = 0…63: small PNGs, each with bytes of its own (one DetectLabels call each)
/big.png                          a real 2400×2400 noisy PNG larger than 5 MB (built on first request)
/missing                          not a route: 404
/error-500                        500
/page.html, /page-as-jpeg         an HTML page, served as text/html and as image/jpeg
/empty                            200 with an empty body
/huge-declared                    Content-Length 10 GB, then a few bytes
/endless-chunked                  chunked zeros until the client goes away
/trickle                          image/jpeg headers, then one byte every 0.5 s
/trickle-headers                  a header line that grows by one byte every 0.2 s, forever
/slow-404                         a 404 whose 1000-byte body trickles at one byte every 0.5 s
/never-answers                    reads the request, answers nothing until the client goes away
/reset-connection                 reads the request, closes the connection with a TCP reset
/chunked-photo.jpg                /photo.jpg's bytes, sent chunked (no Content-Length)
/gzip-encoded.jpg                 a gzip-compressed JPEG with Content-Encoding: gzip
/redirect-loop                    → /redirect-loop-2 → /redirect-loop
/redirect-chain/<n>               n redirects (relative, 301/302/303/307/308 in turn), then /photo.jpg
/redirect-to-metadata             → http://169.254.169.254/latest/meta-data/
/redirect-to-loopback-spelling    → http://2130706433:<port>/photo.jpg
/redirect-to-ftp                  → ftp://example.com/x
/redirect-without-location        302 without a Location header
/tiny.png, /bomb.png, /truncated.jpg, /corrupt.png, /drawing.svg, /polyglot.gif   hostile images
================================  ==================================================================
"""

from __future__ import annotations

import gzip
import io
import select
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler
from types import TracebackType

from labeler.local.http_server import LoopbackServer, RouteHandler, StaticRoute
from tests.support import images

MAX_REDIRECT_CHAIN = 20
TRICKLE_INTERVAL_SECONDS = 0.5
HUGE_DECLARED_BYTES = 10 * 1024**3
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
DISTINCT_IMAGES = 64


class Site:
    """The image site on loopback (``host``), started by :meth:`start` or ``with``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.server = LoopbackServer(host=host)
        for path, route in static_routes().items():
            self.server.add(path, route)
        handlers = {
            "/big.png": _big_png,
            "/huge-declared": _huge_declared,
            "/endless-chunked": _endless_chunked,
            "/trickle": _trickle,
            "/trickle-headers": _trickle_headers,
            "/slow-404": _slow_404,
            "/never-answers": _never_answers,
            "/reset-connection": _reset_connection,
            "/chunked-photo.jpg": _chunked_photo,
            "/gzip-encoded.jpg": _gzip_encoded,
            "/redirect-loop": _redirect_to("/redirect-loop-2"),
            "/redirect-loop-2": _redirect_to_absolute("/redirect-loop"),
            "/redirect-to-metadata": _redirect_to("http://169.254.169.254/latest/meta-data/"),
            "/redirect-to-loopback-spelling": _redirect_to_loopback_spelling,
            "/redirect-to-ftp": _redirect_to("ftp://example.com/x"),
            "/redirect-without-location": _redirect_without_location,
        }
        for n in range(MAX_REDIRECT_CHAIN + 1):
            handlers[f"/redirect-chain/{n}"] = _redirect_chain(n)
        for path, handler in handlers.items():
            self.server.add(path, handler)

    def start(self) -> Site:
        big_png()  # about a second to build: now, not while a client with a short deadline waits for /big.png
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Site:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def url(self, path: str) -> str:
        return self.server.url(path)

    def hits(self, path: str) -> int:
        return self.server.hits(path)

    def not_modified_count(self, path: str) -> int:
        return self.server.not_modified_count(path)

    def reset_counters(self) -> None:
        self.server.reset_counters()


def static_routes() -> dict[str, StaticRoute]:
    photo = images.jpeg()
    return {
        "/photo.jpg": StaticRoute(photo, "image/jpeg"),
        "/photo-copy.jpg": StaticRoute(photo, "image/jpeg"),
        "/photo.png": StaticRoute(images.png(), "image/png"),
        "/photo.webp": StaticRoute(images.webp(), "image/webp"),
        "/photo.gif": StaticRoute(images.gif(), "image/gif"),
        "/photo.bmp": StaticRoute(images.bmp(), "image/bmp"),
        "/photo.tiff": StaticRoute(images.tiff(), "image/tiff"),
        "/coffee.jpg": StaticRoute(images.jpeg("coffee"), "image/jpeg"),
        "/error-500": StaticRoute(b"internal error\n", "text/plain", status=500, etag=False),
        "/page.html": StaticRoute(images.HTML, "text/html; charset=utf-8"),
        "/page-as-jpeg": StaticRoute(images.HTML, "image/jpeg"),
        "/empty": StaticRoute(b"", "image/jpeg", etag=False),
        "/tiny.png": StaticRoute(images.tiny_png(), "image/png"),
        "/bomb.png": StaticRoute(images.bomb_png(), "image/png"),
        "/truncated.jpg": StaticRoute(images.truncated_jpeg(), "image/jpeg"),
        "/corrupt.png": StaticRoute(images.corrupt_png(), "image/png"),
        "/drawing.svg": StaticRoute(images.SVG, "image/svg+xml"),
        "/polyglot.gif": StaticRoute(images.polyglot_gif_js(), "image/gif"),
        **{f"/distinct/{n}.png": StaticRoute(images.distinct_png(n), "image/png") for n in range(DISTINCT_IMAGES)},
    }


_big_lock = threading.Lock()
_big: list[bytes] = []


def big_png() -> bytes:
    """A 2400×2400 photo with noise (so that it compresses badly): a real PNG of more than 5 MB."""
    with _big_lock:
        if not _big:
            import numpy as np
            from PIL import Image

            pixels = np.asarray(images.photo("chelsea", (2400, 2400)), dtype=np.int16)
            noise = np.random.default_rng(7).integers(-3, 4, pixels.shape, dtype=np.int16)
            noisy = np.clip(pixels + noise, 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(noisy).save(buffer, format="PNG", compress_level=1)
            _big.append(buffer.getvalue())
        return _big[0]


# --- handlers -----------------------------------------------------------------------------------------
def _headers(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Connection", "close")
    handler.end_headers()


def _stopping(handler: BaseHTTPRequestHandler) -> threading.Event:
    return handler.server.stopping  # type: ignore[attr-defined, no-any-return]


def _big_png(handler: BaseHTTPRequestHandler) -> None:
    body = big_png()
    _headers(handler, 200, {"Content-Type": "image/png", "Content-Length": str(len(body))})
    handler.wfile.write(body)


def _huge_declared(handler: BaseHTTPRequestHandler) -> None:
    _headers(handler, 200, {"Content-Type": "image/jpeg", "Content-Length": str(HUGE_DECLARED_BYTES)})
    handler.wfile.write(images.jpeg()[:256])


def _endless_chunked(handler: BaseHTTPRequestHandler) -> None:
    _headers(handler, 200, {"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
    chunk = b"\x00" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    while not _stopping(handler).is_set():
        handler.wfile.write(frame)  # BrokenPipe/ConnectionReset once the client is gone end the handler


def _trickle(handler: BaseHTTPRequestHandler) -> None:
    body = images.jpeg()
    _headers(handler, 200, {"Content-Type": "image/jpeg", "Content-Length": str(len(body))})
    for index in range(len(body)):
        handler.wfile.write(body[index : index + 1])
        if _stopping(handler).wait(TRICKLE_INTERVAL_SECONDS):
            return


def _client_gone(connection: socket.socket) -> bool:
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _never_answers(handler: BaseHTTPRequestHandler) -> None:
    while not _stopping(handler).wait(0.05):
        if _client_gone(handler.connection):
            return


def _reset_connection(handler: BaseHTTPRequestHandler) -> None:
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()  # SO_LINGER 0: the close sends RST, not FIN


def _chunked_photo(handler: BaseHTTPRequestHandler) -> None:
    body = images.jpeg()
    _headers(handler, 200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
    for start in range(0, len(body), 4096):
        piece = body[start : start + 4096]
        handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    handler.wfile.write(b"0\r\n\r\n")


def gzip_encoded_jpeg() -> bytes:
    return gzip.compress(images.jpeg(), mtime=0)


def _gzip_encoded(handler: BaseHTTPRequestHandler) -> None:
    body = gzip_encoded_jpeg()
    _headers(
        handler,
        200,
        {"Content-Type": "image/jpeg", "Content-Encoding": "gzip", "Content-Length": str(len(body))},
    )
    handler.wfile.write(body)


def _redirect(handler: BaseHTTPRequestHandler, location: str, status: int = 302) -> None:
    _headers(handler, status, {"Location": location, "Content-Length": "0"})


def _redirect_to(location: str, status: int = 302) -> RouteHandler:
    def handler(request: BaseHTTPRequestHandler) -> None:
        _redirect(request, location, status)

    return handler


def _redirect_to_absolute(path: str) -> RouteHandler:
    def handler(request: BaseHTTPRequestHandler) -> None:
        host, port = request.server.server_address[:2]
        _redirect(request, f"http://{host}:{port}{path}", 301)

    return handler


def _redirect_to_loopback_spelling(handler: BaseHTTPRequestHandler) -> None:
    port = handler.server.server_address[1]
    _redirect(handler, f"http://2130706433:{port}/photo.jpg")


def _redirect_without_location(handler: BaseHTTPRequestHandler) -> None:
    _headers(handler, 302, {"Content-Length": "0"})


def _redirect_chain(hops: int) -> RouteHandler:
    def handler(request: BaseHTTPRequestHandler) -> None:
        if hops == 0:
            body = images.jpeg()
            _headers(request, 200, {"Content-Type": "image/jpeg", "Content-Length": str(len(body))})
            request.wfile.write(body)
            return
        location = f"/redirect-chain/{hops - 1}" if hops > 1 else "/photo.jpg"
        _redirect(request, location, REDIRECT_STATUSES[hops % len(REDIRECT_STATUSES)])

    return handler


def _trickle_headers(handler: BaseHTTPRequestHandler) -> None:
    """A status line, then one header whose value arrives one byte every 0.2 s: slowloris, from the server."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Slow: ")
    while not _stopping(handler).wait(0.2):
        handler.wfile.write(b"a")


def _slow_404(handler: BaseHTTPRequestHandler) -> None:
    """A 404 whose (declared, small) body arrives one byte every 0.5 s."""
    _headers(handler, 404, {"Content-Type": "text/html", "Content-Length": "1000"})
    for _ in range(1000):
        handler.wfile.write(b"x")
        if _stopping(handler).wait(TRICKLE_INTERVAL_SECONDS):
            return
