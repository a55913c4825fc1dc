"""Hostile input, table-driven: every case names the exact error code, and checks that nothing else happened.

Each case runs the real handler on a real S3 event (moto S3 on loopback) with one hostile entry or one
hostile manifest. "Nothing else" means: exactly one record (or, for a broken manifest, none and a
failed report), no DetectLabels call, nothing written but that record and the report, and for
refused addresses, no request reached the loopback server at all.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from labeler.handlers import manifest_created
from labeler.handlers.composition import reset_services
from labeler.logic.index_rows import decode_index_object
from tests.conftest import Buckets, FakeLambdaContext
from tests.support.fake_rekognition import FakeRekognition
from tests.support.site import Site

pytestmark = pytest.mark.usefixtures("lambda_env")

Body = Callable[[Site], Any]


@dataclass(frozen=True)
class Case:
    name: str
    body: Body
    """The manifest (JSON-able object, or bytes) for a given site."""
    code: str
    manifest_level: bool = False
    private_networks: bool = True
    """False for SSRF cases: the loopback server is then a forbidden target and must see no request."""
    env: dict[str, str] = field(default_factory=dict)


def _entry(url_for: Callable[[Site], Any]) -> Body:
    return lambda site: [{"id": "hostile", "url": url_for(site)}]


def _on_site(path: str) -> Body:
    return _entry(lambda site: site.url(path))


def _spelled(host: str, path: str = "/photo.jpg") -> Body:
    """The live loopback server's port, under another spelling of its address."""
    return _entry(lambda site: f"http://{host}:{urlsplit(site.url('/')).port}{path}")


def _own_hostname(site: Site) -> list[dict[str, str]]:
    # A real DNS answer (via /etc/hosts) that points inside: this machine's own name.
    return [{"id": "hostile", "url": f"http://{socket.gethostname()}:{urlsplit(site.url('/')).port}/photo.jpg"}]


MANIFEST_CASES = [
    Case("deep-array-nesting", lambda _: b"[" * 100_000, "manifest_invalid", manifest_level=True),
    Case("deep-object-nesting", lambda _: b'{"a":' * 100_000, "manifest_invalid", manifest_level=True),
    Case("whitespace-only", lambda _: b" \n\t" * 2_000_000, "manifest_empty", manifest_level=True),
    Case("not-utf8", lambda _: b'[{"url": "http://example.com/\xff\xfe.jpg"}]', "manifest_invalid", True),
    Case("utf16", lambda _: '[{"url": "http://a/b.jpg"}]'.encode("utf-16"), "manifest_invalid", True),
    Case("top-level-number", lambda _: b"42", "manifest_invalid", manifest_level=True),
    Case("images-not-a-list", lambda _: {"images": 42}, "manifest_invalid", manifest_level=True),
    Case("empty-list", lambda _: [], "manifest_empty", manifest_level=True),
    Case(
        "too-large",
        lambda site: [{"url": site.url(f"/photo.jpg?n={n}")} for n in range(100)],
        "manifest_too_large",
        manifest_level=True,
        env={"MAX_MANIFEST_BYTES": "1024"},
    ),
    # More entries than MAX_MANIFEST_ENTRIES is a break after the first ones, which are processed (partial):
    # test_manifest_handler.py::test_a_manifest_that_breaks_after_some_entries_is_partial_wherever_the_break_is
]

ENTRY_CASES = [
    # entry shape
    Case("entry-is-a-number", lambda _: [42], "invalid_entry"),
    Case("entry-is-null", lambda _: [None], "invalid_entry"),
    Case("entry-is-a-list", lambda _: [["http://example.com/a.jpg"]], "invalid_entry"),
    Case("missing-url", lambda _: [{"id": "hostile"}], "invalid_entry"),
    Case("url-not-a-string", lambda _: [{"id": "hostile", "url": 123}], "invalid_entry"),
    Case("id-not-a-string", lambda site: [{"id": {"$gt": ""}, "url": site.url("/photo.jpg")}], "invalid_entry"),
    # URL form
    Case("credentials-in-url", _spelled("user:secret@127.0.0.1"), "invalid_url"),
    Case("port-zero", _entry(lambda _: "http://example.com:0/a.jpg"), "invalid_url"),
    Case("port-out-of-range", _entry(lambda _: "http://example.com:99999/a.jpg"), "invalid_url"),
    Case("privileged-port", _entry(lambda _: "http://127.0.0.1:22/"), "blocked_address"),
    Case("no-scheme", _entry(lambda _: "example.com/a.jpg"), "invalid_url"),
    Case("ftp-scheme", _entry(lambda _: "ftp://example.com/a.jpg"), "unsupported_scheme"),
    Case("file-scheme", _entry(lambda _: "file:///etc/passwd"), "unsupported_scheme"),
    Case("javascript-scheme", _entry(lambda _: "javascript:alert(1)"), "unsupported_scheme"),
    Case("control-characters", _entry(lambda _: "http://example.com/a\r\nHost: evil.jpg"), "invalid_url"),
    # SSRF: every spelling of an inside address, with the loopback server listening behind it
    Case("loopback", _spelled("127.0.0.1"), "blocked_address", private_networks=False),
    Case("loopback-short", _spelled("127.1"), "blocked_address", private_networks=False),
    Case("loopback-decimal", _spelled("2130706433"), "blocked_address", private_networks=False),
    Case("loopback-hex", _spelled("0x7f000001"), "blocked_address", private_networks=False),
    Case("loopback-octal", _spelled("0177.0.0.1"), "blocked_address", private_networks=False),
    Case("loopback-ipv6", _spelled("[::1]"), "blocked_address", private_networks=False),
    Case("loopback-mapped-ipv6", _spelled("[::ffff:127.0.0.1]"), "blocked_address", private_networks=False),
    Case("unspecified", _spelled("0.0.0.0"), "blocked_address", private_networks=False),
    Case("localhost-name", _spelled("localhost"), "blocked_address", private_networks=False),
    Case("localhost-subdomain", _spelled("images.localhost"), "blocked_address", private_networks=False),
    Case("name-resolving-inside", _own_hostname, "blocked_address", private_networks=False),
    Case("ec2-metadata", _entry(lambda _: "http://169.254.169.254/latest/meta-data/"), "blocked_address"),
    Case("ecs-metadata", _entry(lambda _: "http://169.254.170.2/v2/credentials"), "blocked_address"),
    Case("ec2-metadata-ipv6", _entry(lambda _: "http://[fd00:ec2::254]/latest/"), "blocked_address"),
    Case("private-10", _entry(lambda _: "http://10.0.0.1/a.jpg"), "blocked_address", private_networks=False),
    Case("private-192", _entry(lambda _: "http://192.168.1.1/a.jpg"), "blocked_address", private_networks=False),
    Case("cgnat", _entry(lambda _: "http://100.64.0.1/a.jpg"), "blocked_address", private_networks=False),
    Case("link-local-ipv6", _entry(lambda _: "http://[fe80::1]/a.jpg"), "blocked_address"),
    Case("multicast", _entry(lambda _: "http://224.0.0.1/a.jpg"), "blocked_address"),
    # redirects (the server is reachable; where it sends us is not)
    Case("redirect-to-metadata", _on_site("/redirect-to-metadata"), "blocked_address"),
    Case("redirect-loop", _on_site("/redirect-loop"), "redirect_loop"),
    Case("redirect-chain-too-long", _on_site("/redirect-chain/6"), "too_many_redirects"),
    Case("redirect-to-ftp", _on_site("/redirect-to-ftp"), "unsupported_scheme"),
    # bodies and servers
    Case("not-found", _on_site("/missing"), "http_status"),
    Case("server-error", _on_site("/error-500"), "http_status"),
    Case("zero-bytes", _on_site("/empty"), "empty_body"),
    Case("declared-too-large", _on_site("/huge-declared"), "too_large"),
    Case("endless-chunked", _on_site("/endless-chunked"), "too_large"),
    Case("over-limit-image", _on_site("/big.png"), "too_large", env={"MAX_IMAGE_BYTES": "1000000"}),
    Case("trickling-server", _on_site("/trickle"), "timeout"),
    Case("server-never-answers", _on_site("/never-answers"), "timeout"),
    Case("html-page", _on_site("/page.html"), "not_an_image"),
    Case("html-served-as-jpeg", _on_site("/page-as-jpeg"), "not_an_image"),
    Case("gzip-encoded-body", _on_site("/gzip-encoded.jpg"), "not_an_image"),
    Case("svg", _on_site("/drawing.svg"), "unsupported_image"),
    Case("decompression-bomb", _on_site("/bomb.png"), "decompression_bomb"),
    Case("truncated-jpeg", _on_site("/truncated.jpg"), "corrupt_image"),
    Case("corrupt-png", _on_site("/corrupt.png"), "corrupt_image"),
    Case("polyglot-gif-script", _on_site("/polyglot.gif"), "corrupt_image"),
    Case("too-small", _on_site("/tiny.png"), "image_too_small"),
]

SITE_PATHS = ("/photo.jpg", "/photo.png", "/redirect-to-metadata", "/redirect-loop")


def _run(case: Case, buckets: Buckets, site: Site, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("ALLOW_PRIVATE_NETWORKS", "true" if case.private_networks else "false")
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    reset_services()
    body = case.body(site)
    event = buckets.put_manifest(f"hostile/{case.name}.json", body if isinstance(body, bytes) else json.dumps(body))
    return manifest_created.handler(event, FakeLambdaContext())


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=lambda case: case.name)
def test_a_hostile_manifest_gets_a_failed_report_and_nothing_else(
    case: Case, buckets: Buckets, site: Site, fake_rekognition: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = _run(case, buckets, site, monkeypatch)

    report = buckets.report()
    assert report["error"]["code"] == case.code, report["error"]
    assert report["error"]["message"]
    assert (report["status"], report["total"], report["succeeded"], report["failed"]) == ("failed", 0, 0, 0)
    assert response["manifests"][0]["status"] == "failed"
    assert buckets.output_keys("results/") == []
    assert fake_rekognition.state.successful_calls == 0
    assert site.hits("/photo.jpg") == 0


@pytest.mark.parametrize("case", ENTRY_CASES, ids=lambda case: case.name)
def test_a_hostile_entry_gets_exactly_one_error_record_and_nothing_else(
    case: Case, buckets: Buckets, site: Site, fake_rekognition: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(case, buckets, site, monkeypatch)

    records = buckets.records()
    assert len(records) == 1, records
    error = records[0].get("error")
    assert error is not None and error["code"] == case.code, records[0]
    assert error["message"]
    assert "labels" not in records[0]
    report = buckets.report()
    assert (report["total"], report["succeeded"], report["failed"]) == (1, 0, 1)
    assert report["errors_by_code"] == {case.code: 1}
    assert fake_rekognition.state.successful_calls == 0
    assert [key for key in buckets.output_keys() if not key.startswith(("results/", "reports/", "index/"))] == []
    [index] = buckets.output_keys("index/")  # the run's one index object: the entry's error row
    rows = decode_index_object(buckets.s3.get_object(Bucket=buckets.output, Key=index)["Body"].read())
    assert [(row["status"], row["error_code"]) for row in rows] == [("error", case.code)]
    if not case.private_networks:
        assert all(site.hits(path) == 0 for path in SITE_PATHS), "a refused address was contacted"


def test_the_table_covers_at_least_thirty_cases() -> None:
    assert len(MANIFEST_CASES) + len(ENTRY_CASES) >= 30


def test_the_pixel_limit_is_a_setting(
    buckets: Buckets, site: Site, fake_rekognition: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = Case("pixel-limit", _on_site("/photo.jpg"), "decompression_bomb", env={"MAX_IMAGE_PIXELS": "10000"})

    _run(case, buckets, site, monkeypatch)

    assert buckets.records()[0]["error"]["code"] == "decompression_bomb"
    assert fake_rekognition.state.successful_calls == 0
