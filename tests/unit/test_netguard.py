"""The address policy: every spelling of a forbidden address is refused before any socket is opened."""

from __future__ import annotations

import ipaddress

import pytest

from labeler.adapters.netguard import AddressPolicy, Target, parse_target
from labeler.models.errors import BlockedAddress, InvalidUrl, LabelerError, UnsupportedScheme

# Hosts (as written in a URL) that must never be contacted when private networks are not allowed.
BLOCKED_HOSTS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0x7f.1",
    "0177.0.0.1",
    "017700000001",
    "127.0.0.1.",
    "１２７.０.０.１",  # fullwidth digits: IDNA maps them to ASCII
    "127。0。0。1",  # ideographic full stops are label separators too
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::ffff:0:7f00:1]",  # IPv4-translated
    "[::127.0.0.1]",  # IPv4-compatible
    "0.0.0.0",
    "0",
    "[::]",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "[::ffff:169.254.169.254]",
    "[fd00:ec2::254]",
    "169.254.170.2",
    "[fe80::1]",
    "[FE80::1]",
    "[fe80::1%25eth0]",
    "224.0.0.1",
    "[ff02::1]",
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of the metadata service
    "[fc00::1]",
    "localhost",
    "LOCALHOST",
    "localhost.",
    "foo.localhost",
    "ip6-localhost",
    "metadata.google.internal",
    "198.18.0.1",
    "240.0.0.1",
]

ALLOWED_HOSTS = ["1.1.1.1", "[2606:4700:4700::1111]", "example.com", "images.example.org", "93.184.216.34"]

# Refused even when private networks are allowed (local runs): metadata, link-local, unspecified, multicast.
ALWAYS_BLOCKED_HOSTS = [
    "169.254.169.254",
    "[::ffff:169.254.169.254]",
    "[fd00:ec2::254]",
    "169.254.170.2",
    "[fe80::1]",
    "0.0.0.0",
    "0",
    "[::]",
    "224.0.0.1",
    "[ff02::1]",
    "[64:ff9b::a9fe:a9fe]",
]
PRIVATE_HOSTS = ["127.0.0.1", "2130706433", "[::1]", "[::ffff:127.0.0.1]", "10.0.0.1", "192.168.1.1", "[fc00::1]"]


def verdict(host: str, *, allow_private_networks: bool = False) -> Target:
    """Parse ``http://<host>/x`` and apply the policy the way the fetcher does (no DNS: names are checked by name)."""
    policy = AddressPolicy(allow_private_networks=allow_private_networks)
    target = parse_target(f"http://{host}/x")
    if target.ip is not None:
        policy.check(target.ip)
    else:
        policy.check_name(target.host)
    return target


@pytest.mark.parametrize("host", BLOCKED_HOSTS)
def test_every_spelling_of_a_non_public_address_is_refused(host: str) -> None:
    with pytest.raises(BlockedAddress):
        verdict(host)


@pytest.mark.parametrize("host", ALLOWED_HOSTS)
def test_public_addresses_and_names_pass(host: str) -> None:
    target = verdict(host)
    assert target.scheme == "http"
    assert target.path == "/x"


@pytest.mark.parametrize("host", ALWAYS_BLOCKED_HOSTS)
def test_metadata_link_local_unspecified_and_multicast_are_refused_even_on_private_networks(host: str) -> None:
    with pytest.raises(BlockedAddress):
        verdict(host, allow_private_networks=True)


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_loopback_and_private_addresses_pass_when_private_networks_are_allowed(host: str) -> None:
    verdict(host, allow_private_networks=True)
    with pytest.raises(BlockedAddress):
        verdict(host)


def test_local_names_pass_when_private_networks_are_allowed() -> None:
    assert verdict("localhost", allow_private_networks=True).host == "localhost"


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("[::FFFF:7f00:1]", "::ffff:7f00:1"),
        ("Example.COM.", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_hosts_are_normalised_the_way_the_network_stack_reads_them(spelling: str, canonical: str) -> None:
    assert parse_target(f"http://{spelling}/").host == canonical


@pytest.mark.parametrize(
    "address",
    ["::ffff:127.0.0.1", "::ffff:7f00:1", "::127.0.0.1", "::ffff:0:7f00:1"],
)
def test_ipv4_wrapped_in_ipv6_is_unwrapped_to_the_address_actually_contacted(address: str) -> None:
    assert AddressPolicy(allow_private_networks=True).check(address) == ipaddress.IPv4Address("127.0.0.1")


def test_check_accepts_resolver_answers_as_strings_and_refuses_garbage() -> None:
    assert AddressPolicy().check("93.184.216.34") == ipaddress.IPv4Address("93.184.216.34")
    with pytest.raises(BlockedAddress):
        AddressPolicy().check("not-an-address")
    with pytest.raises(BlockedAddress):
        AddressPolicy().check("fe80::1%eth0")  # a scoped answer from getaddrinfo


def test_refusal_messages_name_the_address_and_the_reason() -> None:
    with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254 is a cloud metadata service address"):
        verdict("169.254.169.254")
    with pytest.raises(BlockedAddress, match=r"2002:7f00:1:: is an address that embeds 127\.0\.0\.1, a loopback"):
        verdict("[2002:7f00:1::]")
    with pytest.raises(BlockedAddress) as caught:
        verdict("10.0.0.1")
    assert caught.value.to_dict() == {"code": "blocked_address", "message": "10.0.0.1 is a private address"}


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@example.com/",
        "http://user@example.com/",
        "http://example.com:0/",
        "http://example.com:65536/",
        "http://example.com:abc/",
        "http://example.com:-1/",
        "http:///x",
        "http://",
        "http://exa mple.com/",
        "http://example.com :8080/",
        "http ://example.com/",
        " http://example.com/\x00",
        "http://example.com/\r\nHost: evil",
        "http://example.com/a\tb",
        "http://[::1",
        "http://[::1]x/",
        "http://[1::%2525]/",  # zone id on a non-link-local address
        "http://1.2.3.4.5/",
        "http://999.1.1.1/",
        "http://4294967296/",
        "http://exa_mple-.com/",
        "http://evil.com\\@127.0.0.1/",
        "//example.com/x",
        "example.com/x",
        "",
        "http://" + "a" * 9000 + ".com/",
    ],
)
def test_invalid_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidUrl):
        parse_target(url)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com:70/_GET",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "HTTPX://example.com/",
    ],
)
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(UnsupportedScheme):
        parse_target(url)


def test_non_string_urls_are_invalid() -> None:
    with pytest.raises(InvalidUrl):
        parse_target(None)  # type: ignore[arg-type]


def test_spaces_in_the_path_and_query_are_percent_encoded_as_browsers_do() -> None:
    assert parse_target("http://example.com/my photo.jpg?q=a b").path == "/my%20photo.jpg?q=a%20b"


def test_target_keeps_port_path_and_query_and_drops_the_fragment() -> None:
    target = parse_target("HTTPS://Images.Example:8443/a b/c.jpg?size=large&x=1#top")
    assert (target.scheme, target.host, target.port) == ("https", "images.example", 8443)
    assert target.path == "/a%20b/c.jpg?size=large&x=1"
    assert target.netloc == "images.example:8443"
    assert target.url == "https://images.example:8443/a%20b/c.jpg?size=large&x=1"
    assert target.ip is None


def test_default_ports_are_left_out_of_the_host_header_and_ipv6_is_bracketed() -> None:
    assert parse_target("http://example.com:80/").netloc == "example.com"
    assert parse_target("https://example.com:/").port == 443
    assert parse_target("http://[2606:4700:4700::1111]:8080/").netloc == "[2606:4700:4700::1111]:8080"


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda: verdict("127.0.0.1"), "blocked_address"),
        (lambda: parse_target("ftp://example.com/"), "unsupported_scheme"),
        (lambda: parse_target("http://[::1/"), "invalid_url"),
    ],
)
def test_every_refusal_is_a_labeler_error_with_a_stable_code(call: object, code: str) -> None:
    with pytest.raises(LabelerError) as caught:
        call()  # type: ignore[operator]
    assert str(caught.value.code) == code
