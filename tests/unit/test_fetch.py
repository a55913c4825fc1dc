"""The safe fetcher against real loopback servers (never a patched urllib3): SSRF, redirects, limits, deadlines.

``site`` (tests/support/site.py) is the image site on 127.0.0.1. Fetchers that must reach it allow private
networks; the SSRF tests use production's policy and check that the site saw no request at all. Where a
test needs a *public* server that redirects somewhere private, a second site on 127.0.0.2 plays the public
host (:class:`PretendPublic` lets that one address through and judges every other one as production does).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import ipaddress
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from labeler.adapters.fetch import FetchedImage, FetchPolicy, ImageFetcher, NotModified, Validators, check_port
from labeler.adapters.memory import MemoryBudget, Reservation
from labeler.adapters.netguard import AddressPolicy, IPAddress
from labeler.local.http_server import LoopbackServer, StaticRoute
from labeler.models.errors import (
    BlockedAddress,
    ConnectionFailed,
    DnsError,
    DownloadTimeout,
    EmptyBody,
    HttpStatusError,
    ImageTooLarge,
    LabelerError,
    OutOfTime,
    RedirectLoop,
    TooManyRedirects,
    UnsupportedScheme,
)
from tests.support import images
from tests.support.site import Site, big_png, gzip_encoded_jpeg, static_routes

TIMEOUT = 1.5  # the fetch deadline of the timeout tests
SLACK = 3.0  # generous: these tests prove "bounded", not "fast"
PUBLIC_STAND_IN = "127.0.0.2"


# --- helpers and fixtures ---------------------------------------------------------------------------------
def make_fetcher(
    *,
    allow_private_networks: bool = True,
    timeout_seconds: float = 5.0,
    max_bytes: int = 15 * 1024 * 1024,
    max_redirects: int = 5,
    resolver: Callable[[str, int], list[str]] | None = None,
    address_policy: AddressPolicy | None = None,
) -> ImageFetcher:
    policy = FetchPolicy(
        max_bytes=max_bytes,
        timeout_seconds=timeout_seconds,
        max_redirects=max_redirects,
        allow_private_networks=allow_private_networks,
    )
    return ImageFetcher(policy, resolver, address_policy=address_policy)


@pytest.fixture
def fetchers() -> Iterator[Callable[..., ImageFetcher]]:
    """Builds fetchers (see :func:`make_fetcher`) and closes them after the test."""
    made: list[ImageFetcher] = []

    def build(**options: Any) -> ImageFetcher:
        made.append(make_fetcher(**options))
        return made[-1]

    yield build
    for fetcher in made:
        fetcher.close()


@pytest.fixture
def fetcher(fetchers: Callable[..., ImageFetcher]) -> ImageFetcher:
    """Reaches the loopback site (private networks allowed), 5-s deadline."""
    return fetchers()


@pytest.fixture
def strict(fetchers: Callable[..., ImageFetcher]) -> ImageFetcher:
    """Production's policy: only global addresses."""
    return fetchers(allow_private_networks=False)


class CountingResolver:
    """An injected DNS: fixed answers per name; counts the questions."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[str]:
        with self._lock:
            self.calls.append((host, port))
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.answers[host])


class PretendPublic(AddressPolicy):
    """Production's policy, except that 127.0.0.2 counts as a public address (the stand-in public image host)."""

    def check(self, address: str | IPAddress) -> IPAddress:
        if str(address) == PUBLIC_STAND_IN:
            return ipaddress.ip_address(PUBLIC_STAND_IN)
        return super().check(address)


@pytest.fixture(scope="module")
def public_site() -> Iterator[Site]:
    try:
        site = Site(host=PUBLIC_STAND_IN).start()
    except OSError as exc:
        pytest.skip(f"cannot listen on {PUBLIC_STAND_IN}: {exc}")
    yield site
    site.stop()


@pytest.fixture
def public(public_site: Site) -> Site:
    public_site.reset_counters()
    return public_site


@pytest.fixture
def via_public_name(
    public: Site, fetchers: Callable[..., ImageFetcher]
) -> tuple[ImageFetcher, CountingResolver, Callable[[str], str]]:
    """A production-policy fetcher for which ``images.example`` resolves to the stand-in public host."""
    resolver = CountingResolver({"images.example": [PUBLIC_STAND_IN]})
    fetcher = fetchers(allow_private_networks=False, resolver=resolver, address_policy=PretendPublic())
    return fetcher, resolver, lambda path: f"http://images.example:{public.port}{path}"


class Recorder:
    """A route that records each request's headers and answers with a JPEG (or a fixed status)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict[str, str]] = []

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append({name.lower(): value for name, value in handler.headers.items()})
        body = images.jpeg() if self.status == 200 else b""
        handler.send_response(self.status)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture
def echo() -> Iterator[tuple[LoopbackServer, Recorder, Recorder]]:
    recorder, always_304 = Recorder(), Recorder(status=304)
    with LoopbackServer({"/echo.jpg": recorder, "/always-304": always_304}) as server:
        yield server, recorder, always_304


def elapsed(function: Callable[[], Any]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        function()
    except BaseException as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


# --- the happy path -----------------------------------------------------------------------------------------
def test_an_image_is_downloaded_byte_for_byte_with_its_metadata(site: Site, fetcher: ImageFetcher) -> None:
    result = fetcher.fetch(site.url("/photo.jpg"))

    assert isinstance(result, FetchedImage)
    assert result.body == images.jpeg()
    assert result.status == 200
    assert result.content_type == "image/jpeg"
    assert result.final_url == site.url("/photo.jpg")
    assert result.redirects == ()
    assert result.etag is not None and result.etag.startswith('"')
    assert result.last_modified is not None and result.last_modified.endswith("GMT")
    assert site.hits("/photo.jpg") == 1


@pytest.mark.parametrize(
    "path",
    ["/photo.png", "/photo.webp", "/photo.gif", "/photo.bmp", "/photo.tiff", "/coffee.jpg", "/photo-copy.jpg"],
)
def test_every_format_arrives_unchanged(path: str, site: Site, fetcher: ImageFetcher) -> None:
    result = fetcher.fetch(site.url(path))
    assert isinstance(result, FetchedImage)
    assert result.body == static_routes()[path].body


@pytest.mark.parametrize(
    "path",
    ["/page.html", "/page-as-jpeg", "/tiny.png", "/bomb.png", "/truncated.jpg", "/drawing.svg", "/polyglot.gif"],
)
def test_content_is_not_judged_here_it_is_returned_as_sent(path: str, site: Site, fetcher: ImageFetcher) -> None:
    result = fetcher.fetch(site.url(path))
    assert isinstance(result, FetchedImage)
    assert result.body == static_routes()[path].body
    assert result.content_type == static_routes()[path].content_type


def test_a_chunked_body_without_length_is_read_whole(site: Site, fetcher: ImageFetcher) -> None:
    result = fetcher.fetch(site.url("/chunked-photo.jpg"))
    assert isinstance(result, FetchedImage)
    assert result.body == images.jpeg()


def test_a_large_png_is_read_whole(site: Site, fetchers: Callable[..., ImageFetcher]) -> None:
    result = fetchers(timeout_seconds=30.0).fetch(site.url("/big.png"))
    assert isinstance(result, FetchedImage)
    assert len(result.body) > 5 * 1024 * 1024
    assert result.body == big_png()


def test_a_gzip_encoded_body_is_returned_exactly_as_sent(site: Site, fetcher: ImageFetcher) -> None:
    result = fetcher.fetch(site.url("/gzip-encoded.jpg"))
    assert isinstance(result, FetchedImage)
    assert result.body == gzip_encoded_jpeg()
    assert result.body[:2] == b"\x1f\x8b"  # not decompressed (a gzip bomb would stay 15 MB at most)


def test_the_request_asks_for_images_without_compression_and_names_itself(
    echo: tuple[LoopbackServer, Recorder, Recorder], fetcher: ImageFetcher
) -> None:
    server, recorder, _ = echo
    fetcher.fetch(server.url("/echo.jpg"))
    headers = recorder.requests[0]
    assert headers["accept"] == "image/*"
    assert headers["accept-encoding"] == "identity"
    assert headers["user-agent"] == FetchPolicy().user_agent
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert "if-none-match" not in headers and "if-modified-since" not in headers
    assert "authorization" not in headers and "cookie" not in headers


# --- conditional requests -------------------------------------------------------------------------------
def test_an_unchanged_image_is_answered_not_modified_without_a_body(site: Site, fetcher: ImageFetcher) -> None:
    first = fetcher.fetch(site.url("/photo.jpg"))
    assert isinstance(first, FetchedImage)

    second = fetcher.fetch(site.url("/photo.jpg"), Validators(etag=first.etag, last_modified=first.last_modified))

    assert second == NotModified(
        final_url=site.url("/photo.jpg"), etag=first.etag, last_modified=first.last_modified, redirects=()
    )
    assert site.not_modified_count("/photo.jpg") == 1
    assert site.hits("/photo.jpg") == 2


def test_if_modified_since_alone_is_enough(site: Site, fetcher: ImageFetcher) -> None:
    first = fetcher.fetch(site.url("/photo.png"))
    assert isinstance(first, FetchedImage)
    assert isinstance(fetcher.fetch(site.url("/photo.png"), Validators(last_modified=first.last_modified)), NotModified)


def test_a_stale_etag_gets_the_full_image(site: Site, fetcher: ImageFetcher) -> None:
    result = fetcher.fetch(site.url("/photo.jpg"), Validators(etag='"an-older-version"'))
    assert isinstance(result, FetchedImage)
    assert result.body == images.jpeg()
    assert site.not_modified_count("/photo.jpg") == 0


def test_validators_are_sent_as_conditional_headers(
    echo: tuple[LoopbackServer, Recorder, Recorder], fetcher: ImageFetcher
) -> None:
    server, recorder, _ = echo
    fetcher.fetch(server.url("/echo.jpg"), Validators(etag='"v1"', last_modified="Tue, 01 Jan 2030 00:00:00 GMT"))
    assert recorder.requests[0]["if-none-match"] == '"v1"'
    assert recorder.requests[0]["if-modified-since"] == "Tue, 01 Jan 2030 00:00:00 GMT"


def test_a_304_to_an_unconditional_request_is_an_http_error(
    echo: tuple[LoopbackServer, Recorder, Recorder], fetcher: ImageFetcher
) -> None:
    server, _, _ = echo
    with pytest.raises(HttpStatusError) as caught:
        fetcher.fetch(server.url("/always-304"))
    assert caught.value.details["status"] == 304


# --- hostile answers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "error", "status"),
    [
        ("/missing", HttpStatusError, 404),
        ("/error-500", HttpStatusError, 500),
        ("/redirect-without-location", HttpStatusError, 302),
        ("/empty", EmptyBody, None),
        ("/huge-declared", ImageTooLarge, None),
        ("/endless-chunked", ImageTooLarge, None),
        ("/redirect-loop", RedirectLoop, None),
        ("/redirect-to-metadata", BlockedAddress, None),
        ("/redirect-to-ftp", UnsupportedScheme, None),
        ("/reset-connection", ConnectionFailed, None),
    ],
)
def test_each_hostile_route_fails_with_its_own_error(
    path: str, error: type[LabelerError], status: int | None, site: Site, fetcher: ImageFetcher
) -> None:
    with pytest.raises(error) as caught:
        fetcher.fetch(site.url(path))
    assert type(caught.value) is error
    if status is not None:
        assert caught.value.details == {"status": status}
        assert caught.value.to_dict()["status"] == status


def test_a_declared_length_over_the_limit_is_refused_before_reading(site: Site, fetcher: ImageFetcher) -> None:
    with pytest.raises(ImageTooLarge, match="declares 10737418240 bytes"):
        fetcher.fetch(site.url("/huge-declared"))


def test_an_undeclared_body_is_cut_off_as_soon_as_it_passes_the_limit(
    site: Site, fetchers: Callable[..., ImageFetcher]
) -> None:
    photo = images.jpeg()
    assert isinstance(fetchers(max_bytes=len(photo)).fetch(site.url("/chunked-photo.jpg")), FetchedImage)
    with pytest.raises(ImageTooLarge, match=f"larger than the {len(photo) - 1}-byte limit"):
        fetchers(max_bytes=len(photo) - 1).fetch(site.url("/chunked-photo.jpg"))
    with pytest.raises(ImageTooLarge, match="larger than the 100000-byte limit"):
        fetchers(max_bytes=100_000).fetch(site.url("/endless-chunked"))


def test_the_size_limit_is_inclusive(site: Site, fetchers: Callable[..., ImageFetcher]) -> None:
    photo = images.jpeg()
    assert isinstance(fetchers(max_bytes=len(photo)).fetch(site.url("/photo.jpg")), FetchedImage)
    with pytest.raises(ImageTooLarge, match="declares"):
        fetchers(max_bytes=len(photo) - 1).fetch(site.url("/photo.jpg"))


# --- redirects --------------------------------------------------------------------------------------------------
def test_redirects_within_the_limit_are_followed_and_recorded(site: Site, fetcher: ImageFetcher) -> None:
    result = fetcher.fetch(site.url("/redirect-chain/5"))  # relative Locations; 301, 302, 303, 307, 308

    assert isinstance(result, FetchedImage)
    assert result.body == images.jpeg()
    assert result.final_url == site.url("/photo.jpg")
    assert result.redirects == tuple(site.url(f"/redirect-chain/{n}") for n in (5, 4, 3, 2, 1))


def test_one_redirect_more_than_allowed_fails_before_it_is_followed(site: Site, fetcher: ImageFetcher) -> None:
    with pytest.raises(TooManyRedirects):
        fetcher.fetch(site.url("/redirect-chain/6"))
    assert site.hits("/redirect-chain/1") == 1
    assert site.hits("/photo.jpg") == 0


def test_no_redirects_at_all_when_the_limit_is_zero(site: Site, fetchers: Callable[..., ImageFetcher]) -> None:
    assert isinstance(fetchers(max_redirects=0).fetch(site.url("/redirect-chain/0")), FetchedImage)
    with pytest.raises(TooManyRedirects):
        fetchers(max_redirects=0).fetch(site.url("/redirect-chain/1"))


def test_a_redirect_back_to_a_visited_url_is_a_loop(site: Site, fetcher: ImageFetcher) -> None:
    with pytest.raises(RedirectLoop, match="redirect-loop"):
        fetcher.fetch(site.url("/redirect-loop"))  # the second hop spells the first URL absolutely
    assert site.hits("/redirect-loop") == 1


def test_a_not_modified_after_redirects_carries_them(site: Site, fetcher: ImageFetcher) -> None:
    first = fetcher.fetch(site.url("/redirect-chain/2"))
    assert isinstance(first, FetchedImage)
    again = fetcher.fetch(site.url("/redirect-chain/2"), Validators(etag=first.etag))
    assert isinstance(again, NotModified)
    assert again.final_url == site.url("/photo.jpg")
    assert len(again.redirects) == 2


def test_a_public_host_redirecting_to_a_loopback_spelling_is_refused_before_connecting(
    via_public_name: tuple[ImageFetcher, CountingResolver, Callable[[str], str]], public: Site
) -> None:
    fetcher, _, url = via_public_name
    assert isinstance(fetcher.fetch(url("/photo.jpg")), FetchedImage)  # the stand-in public host is reachable

    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1 is a loopback address.*redirected to http://127\.0\.0\.1"):
        fetcher.fetch(url("/redirect-to-loopback-spelling"))  # → http://2130706433:<port>/photo.jpg
    assert public.hits("/redirect-to-loopback-spelling") == 1


@pytest.mark.parametrize("allow_private_networks", [False, True])
def test_a_redirect_to_the_metadata_service_is_refused_whatever_the_policy(
    allow_private_networks: bool, public: Site, fetchers: Callable[..., ImageFetcher]
) -> None:
    policy = PretendPublic(allow_private_networks=allow_private_networks)
    fetcher = fetchers(allow_private_networks=allow_private_networks, address_policy=policy)
    with pytest.raises(BlockedAddress, match="metadata"):
        fetcher.fetch(public.url("/redirect-to-metadata"))


# --- SSRF: nothing is contacted --------------------------------------------------------------------------------
LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "0177.0.0.1",
    "017700000001",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "0.0.0.0",  # Linux delivers connections to 0.0.0.0 to loopback
    "0",
    "localhost",
    "foo.localhost",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_loopback_spelling_is_refused_and_the_server_sees_nothing(
    host: str, site: Site, strict: ImageFetcher
) -> None:
    with pytest.raises(BlockedAddress):
        strict.fetch(f"http://{host}:{site.port}/photo.jpg")
    assert site.hits("/photo.jpg") == 0


@pytest.mark.parametrize(
    "answers",
    [
        ["127.0.0.1"],
        ["93.184.216.34", "127.0.0.1"],  # DNS rebinding: a good answer mixed with a bad one
        ["::ffff:127.0.0.1"],
        ["10.0.0.7"],
        ["169.254.169.254"],
    ],
)
def test_a_name_resolving_to_a_blocked_address_is_refused_and_asked_once(
    answers: list[str], site: Site, fetchers: Callable[..., ImageFetcher]
) -> None:
    resolver = CountingResolver({"images.example": answers})
    fetcher = fetchers(allow_private_networks=False, resolver=resolver)
    with pytest.raises(BlockedAddress, match=r"images\.example resolves to a blocked address"):
        fetcher.fetch(f"http://images.example:{site.port}/photo.jpg")
    assert site.hits("/photo.jpg") == 0
    assert resolver.calls == [("images.example", site.port)]


def test_local_names_are_refused_without_asking_dns(fetchers: Callable[..., ImageFetcher]) -> None:
    resolver = CountingResolver({"localhost": ["127.0.0.1"]})
    with pytest.raises(BlockedAddress, match="local host name"):
        fetchers(allow_private_networks=False, resolver=resolver).fetch("http://localhost:8080/x.jpg")
    assert resolver.calls == []


def test_the_resolved_address_is_used_with_the_original_host_header(
    echo: tuple[LoopbackServer, Recorder, Recorder], fetchers: Callable[..., ImageFetcher]
) -> None:
    server, recorder, _ = echo
    resolver = CountingResolver({"images.example": ["127.0.0.1"]})
    result = fetchers(resolver=resolver).fetch(f"http://Images.Example:{server.port}/echo.jpg")
    assert isinstance(result, FetchedImage)
    assert result.final_url == f"http://images.example:{server.port}/echo.jpg"
    assert recorder.requests[0]["host"] == f"images.example:{server.port}"
    assert resolver.calls == [("images.example", server.port)]


def test_the_resolver_is_asked_once_per_hop(site: Site, fetchers: Callable[..., ImageFetcher]) -> None:
    resolver = CountingResolver({"images.example": ["127.0.0.1"]})
    result = fetchers(resolver=resolver).fetch(f"http://images.example:{site.port}/redirect-chain/3")
    assert isinstance(result, FetchedImage)
    assert result.final_url == f"http://images.example:{site.port}/photo.jpg"
    assert resolver.calls == [("images.example", site.port)] * 4


def test_an_unresolvable_name_is_a_dns_error(fetchers: Callable[..., ImageFetcher]) -> None:
    with pytest.raises(DnsError, match=r"cannot resolve nowhere\.example"):
        fetchers(resolver=CountingResolver({})).fetch("http://nowhere.example/x.jpg")
    with pytest.raises(DnsError, match="has no address"):
        fetchers(resolver=CountingResolver({"empty.example": []})).fetch("http://empty.example/x.jpg")


def test_the_default_resolver_is_getaddrinfo() -> None:
    from labeler.adapters.fetch import system_resolver

    assert system_resolver("127.0.0.1", 80) == ["127.0.0.1"]


@pytest.mark.parametrize("port", [1, 22, 25, 111, 445, 1023])
def test_privileged_ports_other_than_80_and_443_are_refused(port: int, fetchers: Callable[..., ImageFetcher]) -> None:
    resolver = CountingResolver({"images.example": ["93.184.216.34"]})
    with pytest.raises(BlockedAddress, match=f"port {port} is not allowed"):
        fetchers(allow_private_networks=False, resolver=resolver).fetch(f"http://images.example:{port}/x.jpg")
    assert resolver.calls == []


@pytest.mark.parametrize("port", [80, 443, 1024, 8080, 65535])
def test_web_ports_and_unprivileged_ports_are_allowed(port: int) -> None:
    check_port(port)


# --- deadlines ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/trickle", "/trickle-headers", "/never-answers"])
def test_slow_servers_fail_within_the_deadline(path: str, site: Site, fetchers: Callable[..., ImageFetcher]) -> None:
    fetcher = fetchers(timeout_seconds=TIMEOUT)
    error, seconds = elapsed(lambda: fetcher.fetch(site.url(path)))
    assert isinstance(error, DownloadTimeout), error
    assert seconds < TIMEOUT + SLACK


def test_a_fetch_can_be_given_less_time_than_the_policy(site: Site, fetchers: Callable[..., ImageFetcher]) -> None:
    # The pipeline passes what is left before the invocation's deadline when that is shorter.
    fetcher = fetchers(timeout_seconds=600.0)
    with pytest.raises(DownloadTimeout, match=r"longer than 0\.3 s"):
        fetcher.fetch(site.url("/never-answers"), timeout_seconds=0.3)


def test_a_slow_error_body_does_not_hide_the_status(site: Site, fetchers: Callable[..., ImageFetcher]) -> None:
    fetcher = fetchers(timeout_seconds=10.0)
    error, seconds = elapsed(lambda: fetcher.fetch(site.url("/slow-404")))
    assert isinstance(error, HttpStatusError) and error.details == {"status": 404}, error
    assert seconds < 10.0  # the rest of the body was given up on, not waited for until the deadline


def test_one_deadline_covers_every_redirect(site: Site, fetchers: Callable[..., ImageFetcher]) -> None:
    site.server.delay_seconds = 0.4  # each answer is quick, six of them are not
    fetcher = fetchers(timeout_seconds=TIMEOUT)
    error, seconds = elapsed(lambda: fetcher.fetch(site.url("/redirect-chain/5")))
    assert isinstance(error, DownloadTimeout), error
    assert seconds < TIMEOUT + SLACK


def test_a_hanging_resolver_counts_against_the_deadline(fetchers: Callable[..., ImageFetcher]) -> None:
    release = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        release.wait(30)
        return ["93.184.216.34"]

    fetcher = fetchers(timeout_seconds=1.0, resolver=hanging)
    try:
        error, seconds = elapsed(lambda: fetcher.fetch("http://slow-dns.example/x.jpg"))
    finally:
        release.set()
    assert isinstance(error, DownloadTimeout), error
    assert seconds < 1.0 + SLACK


# --- connections ------------------------------------------------------------------------------------------------------
def test_a_stopped_server_frees_its_port_and_refuses_connections(fetcher: ImageFetcher) -> None:
    server = LoopbackServer({"/a.jpg": StaticRoute(images.jpeg(), "image/jpeg")}).start()
    port = server.port
    assert isinstance(fetcher.fetch(server.url("/a.jpg")), FetchedImage)
    server.stop()

    with pytest.raises(ConnectionFailed, match="cannot connect"):
        fetcher.fetch(f"http://127.0.0.1:{port}/a.jpg")
    with LoopbackServer({"/b.jpg": StaticRoute(images.png(), "image/png")}, port=port) as again:
        assert again.port == port
        result = fetcher.fetch(again.url("/b.jpg"))
        assert isinstance(result, FetchedImage) and result.body == images.png()


def test_tls_to_a_plain_http_server_is_a_connection_error_naming_tls(site: Site, fetcher: ImageFetcher) -> None:
    with pytest.raises(ConnectionFailed, match="TLS"):
        fetcher.fetch(f"https://127.0.0.1:{site.port}/photo.jpg")


def test_a_closed_fetcher_reconnects(site: Site, fetcher: ImageFetcher) -> None:
    assert isinstance(fetcher.fetch(site.url("/photo.jpg")), FetchedImage)
    fetcher.close()
    assert isinstance(fetcher.fetch(site.url("/photo.jpg")), FetchedImage)


def test_one_fetcher_serves_sixteen_threads_at_once(site: Site, fetcher: ImageFetcher) -> None:
    jobs = [(site.url(f"/photo.jpg?n={n}"), images.jpeg()) for n in range(40)]
    jobs += [(site.url("/photo.png"), images.png())] * 8
    jobs += [(site.url("/redirect-chain/2"), images.jpeg())] * 8
    jobs += [(site.url("/missing"), None)] * 8
    start = threading.Barrier(16)

    def run(job: tuple[str, bytes | None]) -> bytes | str:
        try:
            result = fetcher.fetch(job[0])
        except HttpStatusError as exc:
            return f"http {exc.details['status']}"
        assert isinstance(result, FetchedImage)
        return result.body

    def first(job: tuple[str, bytes | None]) -> bytes | str:
        start.wait(30)  # all sixteen threads start together
        return run(job)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(first, jobs[:16])) + list(pool.map(run, jobs[16:]))

    for (_, expected), result in zip(jobs, results, strict=True):
        assert result == (expected if expected is not None else "http 404")
    assert site.hits("/photo.jpg") == 40 + 8
    assert site.hits("/missing") == 8


def test_no_socket_is_leaked_on_any_path(site: Site) -> None:
    paths = [
        "/photo.jpg",
        "/missing",
        "/empty",
        "/huge-declared",
        "/endless-chunked",
        "/trickle",
        "/redirect-loop",
        "/redirect-chain/7",
        "/redirect-to-metadata",
        "/reset-connection",
        "/gzip-encoded.jpg",
    ]
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fetcher = make_fetcher(timeout_seconds=0.8, max_bytes=200_000)
        for path in paths:
            with contextlib.suppress(LabelerError):
                fetcher.fetch(site.url(path))
        fetcher.close()
        del fetcher
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


# --- TLS: connect to the address, verify the name ----------------------------------------------------------------
class TlsImageServer:
    """A one-connection-at-a-time HTTPS server on 127.0.0.1 with a certificate for ``images.test``."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.context.sni_callback = self._sni
        self.server_names: list[str | None] = []
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _sni(self, sock: Any, server_name: str | None, context: Any) -> None:
        self.server_names.append(server_name)

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with raw:
                raw.settimeout(5)
                try:
                    with self.context.wrap_socket(raw, server_side=True) as tls:
                        request = b""
                        while b"\r\n\r\n" not in request:
                            data = tls.recv(4096)
                            if not data:
                                break
                            request += data
                        self.requests.append(request)
                        body = images.jpeg()
                        tls.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
                            + f"Content-Length: {len(body)}\r\n\r\n".encode()
                            + body
                        )
                except (ssl.SSLError, OSError):
                    pass  # the client refused the certificate

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TlsImageServer]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("images.test")]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("Test CA", ca_key, "Test CA", ca_key, ca=True)
    leaf = certificate("images.test", leaf_key, "Test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the default trust store, for this test only
    server = TlsImageServer(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    yield server
    server.close()


def test_https_connects_to_the_checked_address_and_verifies_the_name(
    tls_server: TlsImageServer, fetchers: Callable[..., ImageFetcher]
) -> None:
    resolver = CountingResolver({"images.test": ["127.0.0.1"]})
    result = fetchers(resolver=resolver).fetch(f"https://images.test:{tls_server.port}/cat.jpg")

    assert isinstance(result, FetchedImage)
    assert result.body == images.jpeg()
    assert tls_server.server_names == ["images.test"]  # SNI carries the name, not the address
    assert f"\r\nHost: images.test:{tls_server.port}\r\n".encode() in tls_server.requests[0]


def test_https_refuses_a_certificate_for_another_name(
    tls_server: TlsImageServer, fetchers: Callable[..., ImageFetcher]
) -> None:
    resolver = CountingResolver({"other.test": ["127.0.0.1"]})
    with pytest.raises(ConnectionFailed, match="TLS"):
        fetchers(resolver=resolver).fetch(f"https://other.test:{tls_server.port}/cat.jpg")
    assert tls_server.server_names == ["other.test"]
    assert all(request == b"" for request in tls_server.requests)  # no request over an unverified connection


# --- the loopback server itself ------------------------------------------------------------------------------------
def test_the_server_routes_without_the_query_and_counts_hits(site: Site, fetcher: ImageFetcher) -> None:
    for n in range(3):
        fetcher.fetch(site.url(f"/photo.jpg?n={n}"))
    assert site.hits("/photo.jpg") == 3
    assert site.hits("/photo.jpg?n=99") == 3
    site.reset_counters()
    assert site.hits("/photo.jpg") == 0


def test_the_server_adds_routes_while_running_and_delays_on_request(fetcher: ImageFetcher) -> None:
    with LoopbackServer() as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        with pytest.raises(HttpStatusError):
            fetcher.fetch(server.url("/late.png"))
        server.add("/late.png", StaticRoute(images.png(), "image/png", etag=False))
        result = fetcher.fetch(server.url("late.png"))
        assert isinstance(result, FetchedImage)
        assert result.etag is None and result.last_modified is None
        server.delay_seconds = 0.3
        error, seconds = elapsed(lambda: fetcher.fetch(server.url("/late.png")))
        assert error is None and seconds >= 0.3


@pytest.mark.parametrize("path", ["/trickle", "/never-answers", "/endless-chunked"])
def test_stopping_the_server_ends_long_running_handlers_promptly(
    path: str, fetchers: Callable[..., ImageFetcher]
) -> None:
    site = Site().start()
    outcome: list[BaseException | None] = []
    fetcher = fetchers(timeout_seconds=30.0, max_bytes=10**12)
    worker = threading.Thread(target=lambda: outcome.append(elapsed(lambda: fetcher.fetch(site.url(path)))[0]))
    worker.start()
    time.sleep(0.3)
    error, seconds = elapsed(site.stop)
    worker.join(10)

    assert error is None and seconds < SLACK
    assert not worker.is_alive()
    assert isinstance(outcome[0], ConnectionFailed)  # the answer ended early, long before the 30-s deadline


def test_the_server_answers_head_404_and_conditional_requests_over_one_kept_alive_connection() -> None:
    import http.client

    body = images.png()
    with LoopbackServer({"/a.png": StaticRoute(body, "image/png")}) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            connection.request("GET", "/a.png?x=1")
            first = connection.getresponse()
            assert (first.status, first.read(), first.getheader("Content-Type")) == (200, body, "image/png")
            etag = first.getheader("ETag")

            connection.request("HEAD", "/a.png")
            head = connection.getresponse()
            assert (head.status, head.read(), head.getheader("Content-Length")) == (200, b"", str(len(body)))

            for conditional in ({"If-None-Match": f'"other", W/{etag}'}, {"If-None-Match": "*"}):
                connection.request("GET", "/a.png", headers=conditional)
                answer = connection.getresponse()
                assert (answer.status, answer.read(), answer.getheader("ETag")) == (304, b"", etag)

            connection.request("GET", "/a.png", headers={"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})
            modified = connection.getresponse()
            assert (modified.status, modified.read()) == (200, body)

            connection.request("GET", "/nothing-here")
            missing = connection.getresponse()
            assert (missing.status, missing.getheader("Content-Type")) == (404, "text/plain; charset=utf-8")
            missing.read()
        finally:
            connection.close()
        assert server.hits("/a.png") == 5
        assert server.not_modified_count("/a.png") == 2
        assert server.hits("/nothing-here") == 1


def test_stopping_the_server_closes_idle_kept_alive_connections() -> None:
    server = LoopbackServer({"/a.png": StaticRoute(images.png(), "image/png")}).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
        client.sendall(b"GET /a.png HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while len(received) < len(images.png()):  # headers and body; the connection stays open
            received += client.recv(65536)
        error, seconds = elapsed(server.stop)
        assert error is None and seconds < SLACK
        client.settimeout(SLACK)  # if the server kept its end open, recv() below would time out and fail the test
        while client.recv(65536):
            pass  # the rest of the body, then EOF: the server closed its end


def test_the_server_knows_its_port_only_once_started() -> None:
    server = LoopbackServer()
    with pytest.raises(RuntimeError, match="start"):
        _ = server.port
    server.stop()  # stopping a server that never started is harmless
    with server:
        assert server.start() is server  # starting twice is harmless too
        assert server.url("/x") == f"http://127.0.0.1:{server.port}/x"


# --- the body's share of the image memory budget -------------------------------------------------------
def budgeted_fetcher(budget: MemoryBudget) -> ImageFetcher:
    return ImageFetcher(FetchPolicy(timeout_seconds=5.0, allow_private_networks=True), memory=budget)


def test_a_body_holds_its_bytes_in_the_budget_until_the_image_is_dropped(site: Site) -> None:
    budget = MemoryBudget(capacity=64 * 1024 * 1024)
    fetcher = budgeted_fetcher(budget)
    try:
        fetched = fetcher.fetch(site.url("/photo.jpg"))
        assert isinstance(fetched, FetchedImage)
        assert budget.body_used == len(fetched.body) == len(images.jpeg())
        del fetched
        gc.collect()
        assert budget.used == 0
        assert isinstance(fetcher.fetch(site.url("/photo.jpg"), Validators(etag=site_etag(site))), NotModified)
        assert budget.used == 0  # a 304 holds nothing
    finally:
        fetcher.close()


def site_etag(site: Site) -> str | None:
    probe = make_fetcher()
    try:
        first = probe.fetch(site.url("/photo.jpg"))
        assert isinstance(first, FetchedImage)
        return first.etag
    finally:
        probe.close()


def test_a_body_of_unknown_length_holds_what_it_turns_out_to_be(site: Site) -> None:
    budget = MemoryBudget(capacity=64 * 1024 * 1024)
    fetcher = budgeted_fetcher(budget)
    try:
        fetched = fetcher.fetch(site.url("/chunked-photo.jpg"))
        assert isinstance(fetched, FetchedImage) and budget.body_used == len(fetched.body)
    finally:
        fetcher.close()


def test_a_body_that_does_not_fit_waits_for_memory_then_asks_again(site: Site) -> None:
    """The first answer is closed unread, the fetch waits (its deadline not running), then asks again."""
    size = len(images.jpeg())
    budget = MemoryBudget(capacity=4 * size, body_share=0.25)  # room for one photo's body
    blocker: list[Reservation] = []
    holder = threading.Thread(target=lambda: blocker.append(budget.hold_body(size)), daemon=True)
    holder.start()
    holder.join(5)
    fetcher = ImageFetcher(FetchPolicy(timeout_seconds=0.5, allow_private_networks=True), memory=budget)
    try:
        got: list[object] = []
        waiting = threading.Thread(target=lambda: got.append(fetcher.fetch(site.url("/photo.jpg"))), daemon=True)
        waiting.start()
        deadline = time.monotonic() + 5
        while not budget._queues["body"] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.8)  # longer than the fetch's own deadline: waiting for memory is not downloading
        assert got == [] and site.hits("/photo.jpg") == 1
        blocker[0].release()
        waiting.join(5)
        assert isinstance(got[0], FetchedImage) and got[0].body == images.jpeg()
        assert site.hits("/photo.jpg") == 2
    finally:
        fetcher.close()


def test_a_wait_for_memory_ends_at_the_callers_deadline(site: Site) -> None:
    budget = MemoryBudget(capacity=1024, body_share=0.5)
    holder = threading.Thread(target=lambda: budget.hold_body(512), daemon=True)  # never released
    holder.start()
    holder.join(5)
    fetcher = budgeted_fetcher(budget)
    try:
        error, took = elapsed(lambda: fetcher.fetch(site.url("/photo.jpg"), memory_wait_until=time.monotonic() + 0.3))
        assert isinstance(error, OutOfTime)
        assert 0.2 < took < SLACK
        assert budget.used == 512 and not budget._queues["body"]
    finally:
        fetcher.close()
