"""SSRF-safe image download: every hop is parsed, checked and connected to by address, under one deadline.

For each hop (the URL, then every redirect):

1. :func:`~labeler.adapters.netguard.parse_target` normalises the URL (every IPv4 spelling, IDNA,
   IPv6 literals) and refuses credentials, odd ports and schemes other than http/https.
2. The port must be 80, 443 or unprivileged (≥ 1024): no talking to SSH, SMTP, ... on port 22, 25.
3. An IP literal is checked by :class:`~labeler.adapters.netguard.AddressPolicy`; a name is checked
   (``localhost`` & co.), resolved **once**, and refused if *any* answer is blocked (a DNS-rebinding
   answer mixes good and bad addresses).
4. urllib3 connects to the **checked address** (never to the name, so nothing resolves it again),
   with the ``Host`` header, TLS SNI and certificate check all using the name from the URL.

The whole fetch (DNS, connect, every redirect, headers, body) shares one deadline of
``timeout_seconds``; each socket wait is bounded by what is left of it. Bodies are streamed in
chunks and never buffered beyond ``max_bytes`` (+ one chunk); they are returned exactly as sent
(``Content-Encoding`` is not undone: we ask for ``identity`` and check the bytes ourselves).

A body's bytes are held in the process-wide image memory budget (:mod:`labeler.adapters.memory`)
from before its first byte is read until the :class:`FetchedImage` is dropped: the declared
``Content-Length``, or 1 MiB and then twice as much each time a body of unknown length outgrows it.
When the budget cannot hold it at once, the response is closed, the fetch waits for the memory (never
past ``memory_wait_until``: :class:`~labeler.models.errors.OutOfTime`) and asks again; the download's
own deadline does not run while it waits.

Every network failure becomes a :class:`~labeler.models.errors.LabelerError` subclass.

>>> fetcher = ImageFetcher(FetchPolicy(timeout_seconds=5))            # doctest: +SKIP
>>> image = fetcher.fetch("https://images.example/cat.jpg")            # doctest: +SKIP
>>> fetcher.fetch(image.final_url, Validators(etag=image.etag))        # doctest: +SKIP
NotModified(final_url='https://images.example/cat.jpg', ...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import http.client
import io
import itertools
import socket
import ssl
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ClosedPoolError,
    NewConnectionError,
    ProtocolError,
    SSLError,
)
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from labeler.adapters.memory import MemoryBudget, MemoryWaitTimeout, Reservation, process_budget
from labeler.adapters.netguard import AddressPolicy, IPAddress, Target, parse_target
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
)

Resolver = Callable[[str, int], list[str]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ALLOWED_LOW_PORTS = frozenset({80, 443})
FIRST_UNPRIVILEGED_PORT = 1024
CHUNK_SIZE = 64 * 1024
# Small bodies of redirects and error answers are read (to keep the connection alive); larger ones are cut off.
MAX_DISCARD_BYTES = 64 * 1024
DISCARD_SECONDS = 1.0  # at most this long reading such a body, then the connection is closed instead
MAX_POOLS = 64  # distinct (scheme, address, port, host) kept alive
POOL_MAXSIZE = 16  # connections kept per pool: one per worker thread
RESOLVER_THREADS = 8
UNKNOWN_LENGTH_HOLD = 1024 * 1024  # budget held first for a body without Content-Length (doubled as it grows)


@dataclass(frozen=True)
class Validators:
    """What a previous download of the URL answered, for a conditional request."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class FetchedImage:
    body: bytes
    """Exactly the bytes sent (no content decoding)."""
    final_url: str
    """The canonical URL that answered with the body (after redirects)."""
    status: int
    content_type: str | None
    etag: str | None
    last_modified: str | None
    redirects: tuple[str, ...] = ()
    """Each URL that answered with a redirect, in order (``redirects + (final_url,)`` is the whole chain)."""
    memory: Reservation | None = field(default=None, repr=False, compare=False)
    """The body's share of the image memory budget, released when this object is dropped."""


@dataclass(frozen=True)
class NotModified:
    """The server answered ``304 Not Modified`` to the validators: the previous download is still current."""

    final_url: str
    etag: str | None
    last_modified: str | None
    redirects: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 15 * 1024 * 1024
    timeout_seconds: float = 10.0
    """One deadline for the whole fetch: DNS, connect, redirects, headers and body."""
    max_redirects: int = 5
    allow_private_networks: bool = False
    """Local runs and tests only: lets loopback/private addresses through (never link-local/metadata)."""
    user_agent: str = "s3-image-labeler/0.1 (+https://github.com/s3-image-labeler/s3-image-labeler)"


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, in the system's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_port(port: int) -> None:
    """Only 80, 443 and unprivileged ports: a URL must not make us talk to SSH, SMTP or the like."""
    if port < FIRST_UNPRIVILEGED_PORT and port not in ALLOWED_LOW_PORTS:
        raise BlockedAddress(f"port {port} is not allowed")


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() >= self.ends

    def remaining(self, doing: str) -> float:
        """Seconds left; raises :class:`DownloadTimeout` when none are."""
        left = self.ends - time.monotonic()
        if left <= 0:
            raise DownloadTimeout(f"the download took longer than {self.seconds:g} s ({doing})")
        return left


# --- the hard deadline ------------------------------------------------------------------------------------
# Socket timeouts bound each wait, not their sum: a server that trickles its status line or headers one
# byte at a time would never trip them. So every fetch also registers a guard with one watchdog thread,
# which shuts down the socket the fetch is using once its deadline has passed (the blocked read then fails
# at once, and the failure is reported as a timeout). A connection leaves the guard when it goes back to
# the pool, so the watchdog never touches a socket another fetch may be using.
_local = threading.local()


class _Guard:
    def __init__(self, ends: float) -> None:
        self.ends = ends
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._done = False
        self.expired = False

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if self._done:
                return
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def finish(self) -> None:
        with self._lock:
            self._done, self._sock = True, None


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread for the whole process: expires guards when their deadline passes."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, _Guard]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, guard: _Guard) -> None:
        with self._condition:
            heapq.heappush(self._heap, (guard.ends, next(self._order), guard))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fetch-deadlines", daemon=True)
                self._thread.start()
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._heap:
                    self._condition.wait()
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._condition.wait(wait)
                    continue
                guard = heapq.heappop(self._heap)[2]
            guard.expire()


_WATCHDOG = _Watchdog()


def _current_guard() -> _Guard | None:
    return getattr(_local, "guard", None)


class _GuardedConnectionMixin:
    """Hands the socket in use to the current fetch's guard (new connections and reused ones)."""

    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        guard = _current_guard()
        if guard is not None:
            guard.attach(sock)  # covers connecting and the TLS handshake
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        guard = _current_guard()
        if guard is not None:
            guard.attach(self.sock)  # the socket (TLS-wrapped if https) that headers and body come through
        super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedPoolMixin:
    def _put_conn(self, conn: Any) -> None:
        guard = _current_guard()
        if guard is not None:
            guard.detach()  # back in the pool: no longer this fetch's to kill
        super()._put_conn(conn)  # type: ignore[misc]


class _HTTPPool(_GuardedPoolMixin, urllib3.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _HTTPSPool(_GuardedPoolMixin, urllib3.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_PoolKey = tuple[str, str, int, str]


class _CannotConnect(Exception):
    """One address refused the connection (or could not be reached); the next one may be tried."""


class _NeedMemory(Exception):
    """The body needs more of the memory budget than it can have now: wait for it, then ask again."""

    def __init__(self, amount: int) -> None:
        super().__init__(amount)
        self.amount = amount


class BodyMemory:
    """The budget reservation for one fetch's body, kept across the attempts of that fetch (also the whole-object
    read of an ``s3://`` entry: :mod:`labeler.logic.s3_entries`)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.reservation: Reservation | None = None

    @property
    def held(self) -> int:
        return self.reservation.amount if self.reservation is not None else 0

    def take(self, amount: int) -> None:
        """Hold ``amount`` in all, now; raises :class:`_NeedMemory` when the budget cannot give it at once."""
        if self.reservation is None:
            self.reservation = self.budget.try_hold_body(amount)
            granted = self.reservation is not None
        else:
            granted = self.reservation.try_grow_to(amount)
        if not granted:
            raise _NeedMemory(amount)

    def wait_for(self, amount: int, until: float | None) -> None:
        """Let go of what is held, then wait for ``amount`` (at most until the ``time.monotonic()`` instant)."""
        self.release()
        timeout = None if until is None else until - time.monotonic()
        try:
            self.reservation = self.budget.hold_body(amount, timeout=timeout)
        except MemoryWaitTimeout:
            raise OutOfTime("the invocation's deadline came while the download waited for image memory") from None

    def keep(self, fetched: FetchedImage) -> FetchedImage:
        """``fetched`` holding exactly its body's bytes, released when it is dropped."""
        reservation, self.reservation = self.reservation, None
        if reservation is None:
            return fetched
        reservation.shrink_to(len(fetched.body))
        kept = dataclasses.replace(fetched, memory=reservation)
        weakref.finalize(kept, reservation.release)
        return kept

    def release(self) -> None:
        reservation, self.reservation = self.reservation, None
        if reservation is not None:
            reservation.release()


class ImageFetcher:
    """Downloads images under a :class:`FetchPolicy`. Thread-safe: share one instance between workers.

    ``resolver(host, port)`` returns the IP addresses of a name (default: ``socket.getaddrinfo``); it is
    called once per hop. ``address_policy`` replaces the default ``AddressPolicy(allow_private_networks)``.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        resolver: Resolver | None = None,
        *,
        address_policy: AddressPolicy | None = None,
        memory: MemoryBudget | None = None,
    ) -> None:
        self.policy = policy
        self.address_policy = address_policy or AddressPolicy(policy.allow_private_networks)
        self.memory = memory or process_budget()
        self._resolver = resolver or system_resolver
        self._lock = threading.Lock()
        self._pools: OrderedDict[_PoolKey, urllib3.HTTPConnectionPool] = OrderedDict()
        self._executor: ThreadPoolExecutor | None = None
        self._headers = {
            "User-Agent": policy.user_agent,
            "Accept": "image/*",
            "Accept-Encoding": "identity",
        }

    # --- public API ---------------------------------------------------------------------------------
    def fetch(
        self,
        url: str,
        validators: Validators | None = None,
        *,
        timeout_seconds: float | None = None,
        memory_wait_until: float | None = None,
    ) -> FetchedImage | NotModified:
        """Download ``url`` (following redirects by hand); raises :class:`LabelerError` subclasses only.

        ``timeout_seconds`` replaces the policy's deadline for this fetch (the caller's time is shorter).
        ``memory_wait_until`` (a ``time.monotonic()`` instant) is the latest a wait for body memory may last:
        then :class:`~labeler.models.errors.OutOfTime` (the caller's deadline), never a failed download.
        """
        seconds = self.policy.timeout_seconds if timeout_seconds is None else timeout_seconds
        headers = dict(self._headers)
        if validators is not None:
            if validators.etag:
                headers["If-None-Match"] = validators.etag
            if validators.last_modified:
                headers["If-Modified-Since"] = validators.last_modified
        target = self._parse(url)
        memory = BodyMemory(self.memory)
        attempt_seconds = seconds
        try:
            while True:
                try:
                    outcome = self._fetch_within(target, headers, validators is not None, attempt_seconds, memory)
                except _NeedMemory as need:  # the response was closed: wait for the memory, then ask again
                    memory.wait_for(need.amount, memory_wait_until)
                    if memory_wait_until is not None:
                        attempt_seconds = min(seconds, memory_wait_until - time.monotonic())
                    continue
                except DownloadTimeout:
                    if attempt_seconds < seconds:  # cut short by memory_wait_until: the caller's deadline
                        raise OutOfTime("the invocation's deadline came during the download") from None
                    raise
                break
        except BaseException:
            memory.release()
            raise
        if isinstance(outcome, FetchedImage):
            return memory.keep(outcome)
        memory.release()
        return outcome

    def _fetch_within(
        self, target: Target, headers: dict[str, str], conditional: bool, seconds: float, memory: BodyMemory
    ) -> FetchedImage | NotModified:
        """One attempt at the whole chain under one deadline, watched by the watchdog."""
        deadline = _Deadline(seconds)
        guard = _Guard(deadline.ends)
        _WATCHDOG.watch(guard)
        previous, _local.guard = _current_guard(), guard
        try:
            return self._fetch_all(target, headers, conditional, deadline, memory)
        finally:
            guard.finish()
            _local.guard = previous

    def _fetch_all(
        self, target: Target, headers: dict[str, str], conditional: bool, deadline: _Deadline, memory: BodyMemory
    ) -> FetchedImage | NotModified:
        visited = [target.url]
        while True:
            try:
                outcome = self._fetch_hop(target, headers, conditional, deadline, memory)
            except LabelerError as exc:
                if len(visited) > 1:  # say where the redirects led
                    raise type(exc)(f"{exc.message} (redirected to {target.url})", **exc.details) from None
                raise
            if isinstance(outcome, FetchedImage | NotModified):
                return _with_redirects(outcome, tuple(visited[:-1]))
            target = self._follow(target, outcome, visited)

    def close(self) -> None:
        """Close every kept-alive connection. The fetcher stays usable (it reconnects)."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
            executor, self._executor = self._executor, None
        for pool in pools:
            pool.close()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # --- one hop ------------------------------------------------------------------------------------------
    def _parse(self, url: str) -> Target:
        target = parse_target(url)
        check_port(target.port)
        return target

    def _follow(self, current: Target, location: str, visited: list[str]) -> Target:
        """The next hop of a redirect, or :class:`RedirectLoop` / :class:`TooManyRedirects`."""
        next_url = urljoin(current.url, location)
        try:
            target = self._parse(next_url)
        except LabelerError as exc:
            raise type(exc)(f"redirect from {current.url} to {next_url}: {exc.message}", **exc.details) from None
        if target.url in visited:
            raise RedirectLoop(f"redirect loop: {current.url} redirects back to {target.url}")
        if len(visited) > self.policy.max_redirects:
            raise TooManyRedirects(f"more than {self.policy.max_redirects} redirects (next: {target.url})")
        visited.append(target.url)
        return target

    def _fetch_hop(
        self, target: Target, headers: dict[str, str], conditional: bool, deadline: _Deadline, memory: BodyMemory
    ) -> FetchedImage | NotModified | str:
        """The answer of one URL: an image, a 304, or the ``Location`` of a redirect (a string)."""
        addresses = self._addresses(target, deadline)
        response = self._request(target, addresses, headers, deadline)
        try:
            status = response.status
            if status in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                self._discard(response, deadline)
                if not location:
                    raise HttpStatusError(f"HTTP {status} redirect without a Location header", status=status)
                return location.strip()
            etag, last_modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
            if status == 304 and conditional:
                self._discard(response, deadline)
                return NotModified(final_url=target.url, etag=etag, last_modified=last_modified)
            if not 200 <= status < 300:
                self._discard(response, deadline)
                raise HttpStatusError(f"HTTP {status} {response.reason or ''}".strip(), status=status)
            body = self._read_body(response, deadline, memory)
            return FetchedImage(
                body=body,
                final_url=target.url,
                status=status,
                content_type=response.headers.get("Content-Type"),
                etag=etag,
                last_modified=last_modified,
            )
        except BaseException:
            _close(response)
            raise
        finally:
            response.release_conn()

    def _addresses(self, target: Target, deadline: _Deadline) -> list[IPAddress]:
        """The checked addresses to try for ``target``: its IP literal, or every answer for its name."""
        if target.ip is not None:
            return [self.address_policy.check(target.ip)]
        self.address_policy.check_name(target.host)
        answers = self._resolve(target.host, target.port, deadline)
        checked: list[IPAddress] = []
        for answer in answers:
            try:
                ip = self.address_policy.check(answer)
            except BlockedAddress as exc:
                raise BlockedAddress(f"{target.host} resolves to a blocked address: {exc.message}") from None
            if ip not in checked:
                checked.append(ip)
        return checked

    def _resolve(self, host: str, port: int, deadline: _Deadline) -> list[str]:
        """Ask the resolver once, within the deadline (``getaddrinfo`` itself cannot be given a timeout)."""
        try:
            future = self._resolver_pool().submit(self._resolver, host, port)
        except RuntimeError:  # close() shut the pool down between our getting it and submitting
            future = self._resolver_pool().submit(self._resolver, host, port)
        try:
            answers = future.result(timeout=deadline.remaining(f"resolving {host}"))
        except FutureTimeout:
            future.cancel()
            raise DownloadTimeout(f"resolving {host} took longer than {deadline.seconds:g} s") from None
        except (OSError, UnicodeError, ValueError) as exc:
            raise DnsError(f"cannot resolve {host}: {_reason(exc)}") from None
        if not answers:
            raise DnsError(f"{host} has no address")
        return [str(answer) for answer in answers]

    def _resolver_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="resolve")
            return self._executor

    def _request(
        self, target: Target, addresses: list[IPAddress], headers: dict[str, str], deadline: _Deadline
    ) -> urllib3.BaseHTTPResponse:
        """Send the GET to the first address that accepts a connection; return the response (body unread)."""
        request_headers = {**headers, "Host": target.netloc}
        failures: list[str] = []
        for ip in addresses:
            try:
                return self._request_one(target, ip, request_headers, deadline)
            except _CannotConnect as exc:
                failures.append(str(exc))  # this address refused or is unreachable: try the next one
        raise ConnectionFailed(f"cannot connect to {target.netloc}: {'; '.join(failures)}")

    def _request_one(
        self, target: Target, ip: IPAddress, headers: dict[str, str], deadline: _Deadline
    ) -> urllib3.BaseHTTPResponse:
        for attempt in range(2):
            remaining = deadline.remaining(f"connecting to {target.netloc}")
            pool = self._pool(target, ip)
            try:
                return pool.urlopen(
                    "GET",
                    target.path,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    timeout=urllib3.Timeout(total=remaining),  # connect + waiting for headers
                    preload_content=False,
                    decode_content=False,
                    release_conn=False,
                )
            except ClosedPoolError:
                if attempt:  # closed under us twice (close() racing with fetches): give up
                    raise ConnectionFailed(f"{target.netloc}: the fetcher was closed") from None
            except NewConnectionError as exc:
                if deadline.expired():
                    raise _translate(exc, target, deadline) from None
                raise _CannotConnect(f"{ip}: {_reason(exc)}") from None
            except Exception as exc:
                raise _translate(exc, target, deadline) from None
        raise AssertionError("unreachable")

    def _pool(self, target: Target, ip: IPAddress) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, str(ip), target.port, target.host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            pool = _new_pool(target, ip)
            self._pools[key] = pool
            evicted = self._pools.popitem(last=False)[1] if len(self._pools) > MAX_POOLS else None
        if evicted is not None:
            evicted.close()  # idle connections close now, busy ones when they are returned
        return pool

    # --- bodies --------------------------------------------------------------------------------------------
    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: _Deadline, memory: BodyMemory) -> bytes:
        limit = self.policy.max_bytes
        declared = _content_length(response)
        if declared is not None and declared > limit:
            raise ImageTooLarge(f"the server declares {declared} bytes, more than the {limit}-byte limit")
        memory.take(declared if declared is not None else min(limit, UNKNOWN_LENGTH_HOLD))
        body = io.BytesIO()  # getvalue() hands over its buffer: the bytes are never copied
        size = 0
        while True:
            chunk = self._read_chunk(response, min(CHUNK_SIZE, limit + 1 - size), deadline, "reading the body")
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise ImageTooLarge(f"the body is larger than the {limit}-byte limit")
            if size > memory.held:  # no Content-Length (or a wrong one): hold twice as much
                memory.take(min(limit, max(size, 2 * memory.held)))
            body.write(chunk)
        if not size:
            raise EmptyBody("the server sent an empty body")
        return body.getvalue()

    def _read_chunk(self, response: urllib3.BaseHTTPResponse, amount: int, deadline: _Deadline, doing: str) -> bytes:
        remaining = deadline.remaining(doing)
        connection = getattr(response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.settimeout(remaining)  # no single wait may outlast the fetch's deadline
        try:
            chunk = response.read1(amount, decode_content=False)
        except Exception as exc:
            raise _translate(exc, None, deadline) from None
        deadline.remaining(doing)  # a trickle of bytes must not keep the download alive past the deadline
        return chunk

    def _discard(self, response: urllib3.BaseHTTPResponse, deadline: _Deadline) -> None:
        """Read the small body of a redirect or error answer so the connection can be reused, or close it.

        Never raises: a slow or broken body here must not hide the status that was answered.
        """
        declared = _content_length(response)
        if declared is None or declared > MAX_DISCARD_BYTES:
            _close(response)
            return
        budget_ends = min(deadline.ends, time.monotonic() + DISCARD_SECONDS)
        try:
            while True:
                left = budget_ends - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no time left to read the rest of the answer")
                sock = getattr(getattr(response, "connection", None), "sock", None)
                if sock is not None:
                    sock.settimeout(left)
                if not response.read1(CHUNK_SIZE, decode_content=False):
                    return
        except Exception:
            _close(response)


def _new_pool(target: Target, ip: IPAddress) -> urllib3.HTTPConnectionPool:
    common: dict[str, Any] = {"maxsize": POOL_MAXSIZE, "block": False, "retries": False}
    if target.scheme == "https":
        # Connect to the checked address; SNI and the certificate check use the name from the URL.
        return _HTTPSPool(
            str(ip),
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            **common,
        )
    return _HTTPPool(str(ip), target.port, **common)


def _with_redirects(outcome: FetchedImage | NotModified, redirects: tuple[str, ...]) -> FetchedImage | NotModified:
    return dataclasses.replace(outcome, redirects=redirects) if redirects else outcome


def _content_length(response: urllib3.BaseHTTPResponse) -> int | None:
    """The body length the server declared (0 for 204/304), ``None`` when undeclared (chunked, to EOF)."""
    length = getattr(response, "length_remaining", None)
    return length if isinstance(length, int) else None


def _close(response: urllib3.BaseHTTPResponse) -> None:
    """Close the response and its connection (the pool then opens a fresh one)."""
    with contextlib.suppress(Exception):  # closing what is already broken must not hide the real error
        response.close()


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps (``reason``, exception arguments, ``__cause__``/``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        wrapped = reason if isinstance(reason, BaseException) else None
        wrapped = wrapped or next((arg for arg in current.args if isinstance(arg, BaseException)), None)
        current = wrapped or current.__cause__ or current.__context__


def _reason(exc: BaseException) -> str:
    """The innermost non-empty message of a (wrapped) network exception."""
    messages = [str(cause) for cause in _causes(exc) if str(cause)]
    return (messages[-1] if messages else type(exc).__name__)[:300]


def _is_timeout(exc: BaseException) -> bool:
    return any(isinstance(cause, Urllib3Timeout | TimeoutError) for cause in _causes(exc))


def _is_tls(exc: BaseException) -> bool:
    return any(isinstance(cause, SSLError | ssl.SSLError | ssl.CertificateError) for cause in _causes(exc))


def _translate(exc: BaseException, target: Target | None, deadline: _Deadline) -> LabelerError:
    """A network exception from urllib3/the socket as the matching :class:`LabelerError`."""
    if isinstance(exc, LabelerError):
        return exc
    where = f"{target.netloc}: " if target is not None else ""
    if deadline.expired():  # whatever broke, it broke because the deadline passed (the watchdog cut the socket)
        return DownloadTimeout(f"{where}the download took longer than {deadline.seconds:g} s")
    if _is_tls(exc):
        return ConnectionFailed(f"{where}TLS failure: {_reason(exc)}")
    if _is_timeout(exc):
        return DownloadTimeout(f"{where}no answer within the {deadline.seconds:g}-s download deadline")
    if isinstance(exc, ProtocolError | Urllib3Error | http.client.HTTPException | OSError):
        return ConnectionFailed(f"{where}connection failed: {_reason(exc)}")
    if isinstance(exc, ValueError):  # e.g. a header line the parser refuses
        return ConnectionFailed(f"{where}invalid HTTP response: {_reason(exc)}")
    raise exc  # not a network failure but a bug: let it surface (the pipeline records it as internal_error)
