"""Address policy for downloads: parse a URL the way the network stack will, then decide who may be contacted.

Two steps, both before any socket is opened:

* :func:`parse_target` turns a URL into a :class:`Target` with a normalised host: IDNA names become
  ASCII, every spelling of an IPv4 address the OS would accept (``127.1``, ``2130706433``,
  ``0x7f000001``, ``0177.0.0.1``) becomes its dotted-quad form, IPv6 literals lose their brackets
  and zone ids. Credentials in the URL, odd ports and garbage are refused (:class:`InvalidUrl`),
  schemes other than http/https too (:class:`UnsupportedScheme`).
* :class:`AddressPolicy` decides whether an IP address may be contacted. Only global unicast
  addresses pass; IPv4-mapped/compatible/translated IPv6 are unwrapped first, and addresses that
  carry an IPv4 address inside (6to4, Teredo, NAT64) must pass for both. With
  ``allow_private_networks`` (local runs and tests) loopback and private ranges pass too, but
  link-local (which holds the cloud metadata services), unspecified and multicast never do.

>>> target = parse_target("http://0x7f000001/latest/meta-data")
>>> target.host, target.ip
('127.0.0.1', IPv4Address('127.0.0.1'))
>>> AddressPolicy().check(target.ip)
Traceback (most recent call last):
labeler.models.errors.BlockedAddress: 127.0.0.1 is a loopback address
>>> AddressPolicy().check("::ffff:1.1.1.1")   # the address to connect to
IPv4Address('1.1.1.1')
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from labeler.models.errors import BlockedAddress, InvalidUrl, UnsupportedScheme

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SUPPORTED_SCHEMES = {"http": 80, "https": 443}
MAX_URL_LENGTH = 8192
MAX_HOST_LENGTH = 253

# Names that mean "this machine" (RFC 6761 and common /etc/hosts entries) and metadata service names:
# refused without asking DNS unless private networks are allowed.
LOCAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.google.internal",
    }
)
LOCAL_NAME_SUFFIXES = (".localhost",)

_net = ipaddress.ip_network

# Never contacted, whatever the policy: the cloud metadata and credential services.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23")
)

# Contacted only with allow_private_networks: loopback, RFC 1918, shared address space (CGNAT), ULA.
PRIVATE_NETWORKS = tuple(
    _net(n)
    for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "::1/128", "fc00::/7")
)

# Not globally reachable although Python 3.11's ``is_global`` may say otherwise (IANA special-purpose registries).
NON_GLOBAL_NETWORKS = tuple(
    _net(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
    )
)
GLOBAL_UNICAST_V6 = _net("2000::/3")
NAT64_WELL_KNOWN = _net("64:ff9b::/96")
IPV4_TRANSLATED = _net("::ffff:0:0:0/96")

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
# Control characters (CR/LF header injection, NUL, tabs) are refused anywhere; a space is refused in the scheme and
# host (no valid host has one) and percent-encoded in the path and query, as browsers do ("my photo.jpg").
_FORBIDDEN_URL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]+\Z")
_HEX = re.compile(r"0[xX][0-9a-fA-F]*\Z")
# Characters left as they are in a request target; everything else (spaces, non-ASCII) is percent-encoded.
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = _PATH_SAFE + "?[]"


@dataclass(frozen=True)
class Target:
    """A URL that passed parsing: what to connect to (after the address check) and what to send.

    >>> parse_target("HTTPS://Bücher.Example./a b?q=1#frag").url
    'https://xn--bcher-kva.example/a%20b?q=1'
    """

    scheme: str
    host: str
    """Lower-case ASCII name, dotted-quad IPv4, or IPv6 without brackets; never a trailing dot."""
    port: int
    path: str
    """The request target: path and query, percent-encoded, always starting with ``/``."""
    ip: IPAddress | None = None
    """The address when the host is an IP literal (in whatever spelling); ``None`` for names."""

    @property
    def netloc(self) -> str:
        """``host[:port]`` as sent in the ``Host`` header (port only when not the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == SUPPORTED_SCHEMES[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The canonical URL (no fragment): what redirects are compared on and what is reported."""
        return f"{self.scheme}://{self.netloc}{self.path}"


def parse_target(url: str) -> Target:
    """Parse and normalise an http(s) URL; raise :class:`InvalidUrl` or :class:`UnsupportedScheme`.

    >>> parse_target("http://2130706433:8080/x").url
    'http://127.0.0.1:8080/x'
    """
    if not isinstance(url, str):
        raise InvalidUrl(f"the URL must be a string, not {type(url).__name__}")
    url = url.strip()
    if not url:
        raise InvalidUrl("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if _FORBIDDEN_URL_CHARS.search(url):
        raise InvalidUrl("the URL contains control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidUrl(f"not a valid URL: {exc}") from None
    if " " in parts.netloc:
        raise InvalidUrl("the URL's host contains a space")
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidUrl("the URL has no scheme (expected http:// or https://)")
    if scheme not in SUPPORTED_SCHEMES:
        raise UnsupportedScheme(f"unsupported scheme {scheme!r}: only http and https are fetched")
    host, port = _split_netloc(parts.netloc, SUPPORTED_SCHEMES[scheme])
    host, ip = normalize_host(host)
    path = quote(parts.path, safe=_PATH_SAFE) or "/"
    if not path.startswith("/"):
        raise InvalidUrl("the URL path must be absolute")
    if parts.query:
        path += "?" + quote(parts.query, safe=_QUERY_SAFE)
    return Target(scheme=scheme, host=host, port=port, path=path, ip=ip)


def _split_netloc(netloc: str, default_port: int) -> tuple[str, int]:
    if not netloc:
        raise InvalidUrl("the URL has no host")
    if "@" in netloc:
        raise InvalidUrl("URLs with credentials (user:password@host) are refused: they would be sent to a third party")
    if "\\" in netloc:
        raise InvalidUrl("backslash in the URL's host")
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise InvalidUrl("unterminated IPv6 literal in the URL's host")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidUrl("unexpected characters after the IPv6 literal")
        port_text = rest[1:] if rest else None
    elif ":" in netloc:
        host, _, port_text = netloc.partition(":")
        if ":" in port_text:
            raise InvalidUrl("IPv6 addresses must be written in brackets: http://[::1]/")
    else:
        host, port_text = netloc, None
    if not port_text:  # "host:" means the default port, as in browsers
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise InvalidUrl(f"invalid port {port_text!r}")
    return host, int(port_text)


def normalize_host(host: str) -> tuple[str, IPAddress | None]:
    """The host as the network stack will see it, and its IP address when it is an IP literal.

    Brackets mark IPv6; anything else goes through IDNA, then is read as IPv4 in every form the
    OS resolver accepts (``getaddrinfo`` treats ``127.1`` as an address, not a name).

    >>> normalize_host("0177.1")
    ('127.0.0.1', IPv4Address('127.0.0.1'))
    >>> normalize_host("[::FFFF:7f00:1]")
    ('::ffff:7f00:1', IPv6Address('::ffff:7f00:1'))
    """
    if host.startswith("[") and host.endswith("]"):
        ip6 = _parse_ipv6_literal(host[1:-1])
        return str(ip6), ip6
    if "%" in host:
        raise InvalidUrl("percent-encoded characters in the URL's host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidUrl(f"the host is not a valid internationalised domain name: {exc}") from None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise InvalidUrl("the URL has an empty host")
    ip4 = parse_ipv4(host)
    if ip4 is not None:
        return str(ip4), ip4
    if len(host) > MAX_HOST_LENGTH or not all(_LABEL.match(label) for label in host.split(".")):
        raise InvalidUrl(f"invalid host name {host!r}")
    return host, None


def _parse_ipv6_literal(text: str) -> ipaddress.IPv6Address:
    literal, _, zone = unquote(text).partition("%")  # RFC 6874 writes the zone id as %25
    try:
        ip6 = ipaddress.IPv6Address(literal)
    except ValueError:
        raise InvalidUrl(f"invalid IPv6 address [{text}]") from None
    if zone:
        # Zone ids only make sense for link-local addresses, which are blocked: say so rather than "invalid".
        if ip6.is_link_local or ip6.is_multicast:
            raise BlockedAddress(f"{ip6} is a link-local address")
        raise InvalidUrl(f"zone id in a non-link-local IPv6 address [{text}]")
    return ip6


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Read ``host`` as an IPv4 address in any spelling the OS accepts; ``None`` when it is a name.

    Follows the WHATWG URL IPv4 parser (what browsers do, and what ``inet_aton`` accepts): one to
    four parts, each decimal, octal (leading ``0``) or hex (``0x``), the last filling the
    remaining bytes. A host whose last label is numeric but does not parse is :class:`InvalidUrl`.

    >>> [str(parse_ipv4(h)) for h in ("127.1", "2130706433", "0x7f.0.0.1", "017700000001")]
    ['127.0.0.1', '127.0.0.1', '127.0.0.1', '127.0.0.1']
    >>> parse_ipv4("images.example") is None
    True
    """
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if not (_DIGITS.match(parts[-1]) or _HEX.match(parts[-1])):
        return _inet_aton(host)
    if len(parts) > 4:
        raise InvalidUrl(f"invalid IPv4 address {host!r}: more than four parts")
    numbers = [_ipv4_number(part, host) for part in parts]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise InvalidUrl(f"invalid IPv4 address {host!r}: a part is out of range")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ipv4_number(part: str, host: str) -> int:
    try:
        if part[:2] in ("0x", "0X"):
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        if part.isascii() and part.isdigit():
            return int(part)
    except ValueError:
        pass
    raise InvalidUrl(f"invalid IPv4 address {host!r}")


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    # Belt and braces: whatever the C library calls an IPv4 address is one, even if the parser above disagreed.
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def is_local_name(host: str) -> bool:
    """True for names that mean this machine or a metadata service (``localhost``, ``*.localhost``, ...)."""
    host = host.lower().rstrip(".")
    return host in LOCAL_NAMES or host.endswith(LOCAL_NAME_SUFFIXES)


class AddressPolicy:
    """Decides which addresses a download may connect to.

    >>> AddressPolicy(allow_private_networks=True).is_allowed("127.0.0.1")
    True
    >>> AddressPolicy(allow_private_networks=True).is_allowed("169.254.169.254")
    False
    """

    def __init__(self, allow_private_networks: bool = False) -> None:
        self.allow_private_networks = allow_private_networks

    def check_name(self, host: str) -> None:
        """Refuse ``localhost``-style names before any DNS lookup (unless private networks are allowed)."""
        if not self.allow_private_networks and is_local_name(host):
            raise BlockedAddress(f"{host} is a local host name")

    def check(self, address: str | IPAddress) -> IPAddress:
        """Return the address to connect to, or raise :class:`BlockedAddress`.

        IPv4-mapped, -compatible and -translated IPv6 addresses come back as the IPv4 address they mean.
        """
        ip = _as_ip(address)
        inner = unwrap_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        if inner is not None:
            ip = inner
        reason = self._refusal(ip)
        if reason is None and isinstance(ip, ipaddress.IPv6Address):
            for embedded in embedded_ipv4(ip):
                inner_reason = self._refusal(embedded)
                if inner_reason is not None:
                    reason = f"an address that embeds {embedded}, {inner_reason}"
                    break
        if reason is not None:
            shown = f"{address} ({ip})" if str(address) != str(ip) else str(ip)
            raise BlockedAddress(f"{shown} is {reason}")
        return ip

    def is_allowed(self, address: str | IPAddress) -> bool:
        try:
            self.check(address)
        except BlockedAddress:
            return False
        return True

    def _refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` (already unwrapped) may not be contacted, or ``None``."""
        if ip in METADATA_ADDRESSES:
            return "a cloud metadata service address"
        if ip.is_unspecified:
            return "the unspecified address"
        if ip.is_multicast:
            return "a multicast address"
        if ip.is_link_local:
            return "a link-local address"
        if _is_global(ip):
            return None
        if self.allow_private_networks and any(ip in net for net in PRIVATE_NETWORKS if net.version == ip.version):
            return None
        return _describe(ip)


def _as_ip(address: str | IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return address
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise BlockedAddress(f"{address!r} is not an IP address") from None


def _is_global(ip: IPAddress) -> bool:
    if any(ip in net for net in NON_GLOBAL_NETWORKS if net.version == ip.version):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in NAT64_WELL_KNOWN:
            return True  # reaches the IPv4 address inside, which is checked on its own
        return ip in GLOBAL_UNICAST_V6 and ip.is_global
    return ip.is_global


def _describe(ip: IPAddress) -> str:
    if ip.is_loopback:
        return "a loopback address"
    if any(ip in net for net in PRIVATE_NETWORKS if net.version == ip.version):
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    return "not a global address"


def unwrap_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for on the wire: mapped, compatible or translated forms.

    >>> unwrap_ipv4(ipaddress.IPv6Address("::ffff:127.0.0.1")), unwrap_ipv4(ipaddress.IPv6Address("::127.0.0.1"))
    (IPv4Address('127.0.0.1'), IPv4Address('127.0.0.1'))
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    value = int(ip)
    if 1 < value < 2**32:  # IPv4-compatible ::a.b.c.d (deprecated); :: and ::1 are themselves
        return ipaddress.IPv4Address(value)
    if ip in IPV4_TRANSLATED:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses a tunnel or translator would forward to: 6to4, Teredo (server and client), NAT64."""
    found: list[ipaddress.IPv4Address] = []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in NAT64_WELL_KNOWN:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found
