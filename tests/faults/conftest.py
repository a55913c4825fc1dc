"""The crash suite's photo host: distinct images (so "nothing labeled twice" means something) and held ones.

``/distinct/<n>.jpg`` serves a different JPEG for every ``n``; ``/held/<n>.jpg`` serves another set,
but only once ``PhotoHost.gate`` is open: entries pointing there wait, mid-manifest, for as long as a
test needs (to kill the process running them, or to let a newer run overtake them).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler

import pytest

from labeler.local.http_server import LoopbackServer, StaticRoute

IMAGES = 64


@cache
def distinct_jpeg(n: int) -> bytes:
    import random

    from PIL import Image

    rng = random.Random(n)
    image = Image.new("RGB", (160, 120), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(160 * 120)])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


class PhotoHost:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.server = LoopbackServer()
        for n in range(IMAGES):
            self.server.add(f"/distinct/{n}.jpg", StaticRoute(distinct_jpeg(n), "image/jpeg"))
            self.server.add(f"/held/{n}.jpg", self._held(distinct_jpeg(IMAGES + n)))

    def _held(self, body: bytes) -> object:
        def handler(request: BaseHTTPRequestHandler) -> None:
            while not self.gate.wait(0.05):
                if self.server.stopping.is_set():
                    return
            request.send_response(200)
            request.send_header("Content-Type", "image/jpeg")
            request.send_header("Content-Length", str(len(body)))
            request.send_header("Connection", "close")
            request.end_headers()
            request.wfile.write(body)

        return handler

    def distinct(self, n: int) -> str:
        return self.server.url(f"/distinct/{n}.jpg")

    def held(self, n: int) -> str:
        return self.server.url(f"/held/{n}.jpg")

    def held_requests(self) -> int:
        return sum(self.server.hits(f"/held/{n}.jpg") for n in range(IMAGES))


@pytest.fixture(scope="session")
def _photo_host() -> Iterator[PhotoHost]:
    host = PhotoHost()
    host.server.start()
    yield host
    host.gate.set()
    host.server.stop()


@pytest.fixture
def photos(_photo_host: PhotoHost) -> Iterator[PhotoHost]:
    _photo_host.server.reset_counters()
    _photo_host.gate.set()
    yield _photo_host
    _photo_host.gate.set()  # never leave a request of a killed process waiting
