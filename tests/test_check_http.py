"""The http check against real servers on loopback: aiohttp for well-behaved ones, raw asyncio
servers for peers that misbehave."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import pytest
from aiohttp import web
from pydantic import ValidationError

from checks.base import Result
from checks.http import PHASES, HttpSpec, run
from tests.harness.certs import CertFactory
from tests.harness.httpserver import replying, serve_app, serve_raw, silent
from tests.harness.ports import closed_port

BIG = b"x" * (10 * 1024 * 1024)


@dataclass
class Site:
    """A running test application: its base URL and the requests it has seen."""

    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)


SEEN = web.AppKey("seen", list)


def make_app(seen: list[dict[str, Any]]) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="all ok")

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(text="all ok")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def see_other(request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/echo")

    async def echo(request: web.Request) -> web.Response:
        request.app[SEEN].append(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": dict(request.headers),
                "body": await request.text(),
            }
        )
        return web.Response(text="echoed")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"first ")
        await response.write(b"second")
        await response.write_eof()
        return response

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="application/octet-stream")

    app = web.Application()
    app[SEEN] = seen
    app.router.add_get("/ok", ok)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/away", away)
    app.router.add_post("/see-other", see_other)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/big", big)
    return app


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    seen: list[dict[str, Any]] = []
    async with serve_app(make_app(seen)) as port:
        yield Site(f"http://127.0.0.1:{port}", seen)


async def check(timeout: float = 5.0, **fields: Any) -> Result:
    return await run(HttpSpec(**fields), timeout=timeout)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- what a healthy service gives ------------------------------------------------------------


async def test_it_reports_up_with_every_phase_and_the_evidence(site: Site) -> None:
    result = await check(url=f"{site.url}/ok")

    assert (result.state, result.reason) == ("up", "")
    assert set(result.phases) == set(PHASES)
    assert result.phases["connect"] > 0
    assert result.phases["processing"] > 0
    assert result.phases["tls"] == 0
    evidence = result.evidence
    assert evidence["url"] == f"{site.url}/ok"
    assert evidence["status_code"] == 200
    assert evidence["http_version"] == "1.1"
    assert evidence["address"] == "127.0.0.1"
    assert evidence["redirects"] == 0
    assert evidence["content_length"] == 6
    assert evidence["body_bytes"] == 6
    assert evidence["body_truncated"] is False
    assert evidence["body_excerpt"] == "all ok"
    assert evidence["headers"]["content-type"].startswith("text/plain")
    assert "server" in evidence["headers"]


async def test_it_accepts_any_status_listed(site: Site) -> None:
    ok = await check(url=f"{site.url}/status/204", expect_status=[200, 204])
    bad = await check(url=f"{site.url}/status/500", expect_status=[200, 204])

    assert ok.state == "up"
    assert ok.evidence["body_bytes"] == 0
    assert (bad.state, bad.reason) == ("down", "HTTP 500 (expected 200, 204)")


async def test_it_reads_a_chunked_body(site: Site) -> None:
    result = await check(url=f"{site.url}/chunked", body_contains="second")

    assert result.state == "up", result.reason
    assert result.evidence["body_excerpt"] == "first second"
    assert "content_length" not in result.evidence


async def test_it_reads_a_body_that_ends_when_the_connection_closes() -> None:
    async with serve_raw(replying(b"HTTP/1.0 200 OK\r\n\r\nuntil close")) as port:
        result = await check(url=f"http://127.0.0.1:{port}/", body_contains="close")

    assert result.state == "up", result.reason
    assert result.evidence["http_version"] == "1.0"
    assert result.evidence["body_excerpt"] == "until close"


async def test_it_sends_the_method_body_headers_and_query_of_the_spec(site: Site) -> None:
    result = await check(
        url=f"{site.url}/echo?q=a%20b&n=1",
        method="POST",
        body='{"ping": true}',
        headers={"Content-Type": "application/json", "X-Probe-Test": "yes"},
    )

    assert result.state == "up", result.reason
    [request] = site.seen
    assert request["method"] == "POST"
    assert request["path_qs"] == "/echo?q=a%20b&n=1"
    assert request["body"] == '{"ping": true}'
    assert request["headers"]["X-Probe-Test"] == "yes"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Content-Length"] == "14"
    assert request["headers"]["Host"] == site.url.removeprefix("http://")
    assert request["headers"]["User-Agent"].startswith("probe")


def test_it_refuses_a_password_in_the_url_without_showing_it() -> None:
    with pytest.raises(ValidationError) as caught:
        HttpSpec(url="http://ops:s3cret@127.0.0.1:8080/echo")
    (error,) = caught.value.errors()
    assert error["msg"] == (
        "Value error, a password in the URL is an inline secret: it is not allowed"
    )


async def test_it_does_not_read_the_body_of_a_head_request(site: Site) -> None:
    result = await check(url=f"{site.url}/big", method="HEAD")

    assert result.state == "up", result.reason
    assert result.evidence["content_length"] == len(BIG)
    assert result.evidence["body_bytes"] == 0


@pytest.mark.skipif(not ipv6_loopback(), reason="::1 is not available here")
async def test_it_checks_an_ipv6_literal_url() -> None:
    seen: list[dict[str, Any]] = []
    async with serve_app(make_app(seen), host="::1") as port:
        result = await check(url=f"http://[::1]:{port}/echo")

    assert result.state == "up", result.reason
    assert result.evidence["address"] == "::1"
    assert seen[0]["headers"]["Host"] == f"[::1]:{port}"


# --- what a sick service gives -----------------------------------------------------------------


async def test_it_reports_an_unexpected_status(site: Site) -> None:
    result = await check(url=f"{site.url}/status/503")

    assert (result.state, result.reason) == ("down", "HTTP 503 (expected 2xx)")
    assert result.evidence["status_code"] == 503
    assert result.evidence["body_excerpt"] == "status 503"


async def test_it_checks_the_body_for_a_string(site: Site) -> None:
    found = await check(url=f"{site.url}/ok", body_contains="ok")
    missing = await check(url=f"{site.url}/ok", body_contains="healthy")

    assert found.state == "up"
    assert (missing.state, missing.reason) == ("down", "body does not contain 'healthy'")


async def test_it_checks_the_body_against_a_regex(site: Site) -> None:
    found = await check(url=f"{site.url}/ok", body_regex=r"^all \w+$")
    missing = await check(url=f"{site.url}/ok", body_regex=r"^status \d+")

    assert found.state == "up"
    assert (missing.state, missing.reason) == ("down", r"body does not match /^status \d+/")


async def test_it_reports_a_response_slower_than_max_latency(site: Site) -> None:
    result = await check(url=f"{site.url}/slow", max_latency="100ms")

    assert result.state == "down"
    assert result.reason.startswith("took ")
    assert result.reason.endswith(" (max 100ms)")
    assert result.evidence["status_code"] == 200


async def test_it_reports_connection_refused() -> None:
    result = await check(url=f"http://127.0.0.1:{closed_port()}/")

    assert (result.state, result.reason) == ("down", "connection refused")
    assert set(result.phases) == set(PHASES)


async def test_it_times_out_naming_the_phase_it_was_in() -> None:
    async with serve_raw(silent) as port:
        result = await check(url=f"http://127.0.0.1:{port}/", timeout=0.5)

    assert (result.state, result.reason) == ("down", "timed out after 500ms during processing")
    assert result.duration < 5
    assert result.evidence["address"] == "127.0.0.1"


async def test_it_reports_a_server_that_closes_without_answering() -> None:
    async with serve_raw(replying(b"")) as port:
        result = await check(url=f"http://127.0.0.1:{port}/")

    assert result.state == "down"
    assert result.reason == "the server closed the connection without a response"


async def test_it_reports_a_malformed_status_line() -> None:
    async with serve_raw(replying(b"SSH-2.0-OpenSSH_9.6\r\n")) as port:
        result = await check(url=f"http://127.0.0.1:{port}/")

    assert result.state == "down"
    assert result.reason == "malformed HTTP response: 'SSH-2.0-OpenSSH_9.6'"


@pytest.mark.parametrize(
    "headers",
    [b"X-Big: " + b"a" * 70_000 + b"\r\n", b"X-Many: aaaaaaaaaaaaaaaaaaaaaaaa\r\n" * 3000],
    ids=["one-long-header", "many-headers"],
)
async def test_it_refuses_headers_larger_than_64_kib(headers: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\nok"
    async with serve_raw(replying(raw)) as port:
        result = await check(url=f"http://127.0.0.1:{port}/")

    assert (result.state, result.reason) == ("down", "response headers larger than 64 KiB")


async def test_it_reports_invalid_chunked_encoding() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    async with serve_raw(replying(raw)) as port:
        result = await check(url=f"http://127.0.0.1:{port}/")

    assert (result.state, result.reason) == ("down", "invalid chunked encoding: chunk size 'zz'")


async def test_it_reports_a_body_shorter_than_its_content_length() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"
    async with serve_raw(replying(raw)) as port:
        result = await check(url=f"http://127.0.0.1:{port}/")

    assert (result.state, result.reason) == ("down", "the response body ended after 5 of 100 bytes")


async def test_it_reads_no_more_than_max_body_bytes(site: Site) -> None:
    result = await check(url=f"{site.url}/big", max_body_bytes=1024)
    needle = await check(url=f"{site.url}/big", max_body_bytes=1024, body_contains="y")

    assert result.state == "up", result.reason
    assert result.duration < 5
    assert result.evidence["body_truncated"] is True
    assert result.evidence["body_bytes"] == 1024
    assert result.evidence["content_length"] == len(BIG)
    assert needle.reason == "body does not contain 'y' (in the first 1024 bytes read)"


# --- redirects -------------------------------------------------------------------------------


async def test_it_follows_a_redirect(site: Site) -> None:
    result = await check(url=f"{site.url}/redirect")

    assert result.state == "up", result.reason
    assert result.evidence["redirects"] == 1
    assert result.evidence["url"] == f"{site.url}/ok"
    assert result.evidence["body_excerpt"] == "all ok"


async def test_it_gives_up_on_a_redirect_loop(site: Site) -> None:
    result = await check(url=f"{site.url}/loop")

    assert (result.state, result.reason) == ("down", "too many redirects (10)")
    assert result.evidence["headers"]["location"] == "/loop"


async def test_it_follows_a_303_after_a_post_with_a_get(site: Site) -> None:
    result = await check(url=f"{site.url}/see-other", method="POST", body="form")

    assert result.state == "up", result.reason
    assert [(r["method"], r["body"]) for r in site.seen] == [("GET", "")]


async def test_it_judges_the_redirect_itself_when_not_following(site: Site) -> None:
    url = f"{site.url}/redirect"
    accepted = await check(url=url, follow_redirects=False, expect_status=["3xx"])
    refused = await check(url=url, follow_redirects=False)

    assert accepted.state == "up", accepted.reason
    assert accepted.evidence["redirects"] == 0
    assert accepted.evidence["headers"]["location"] == "/ok"
    assert (refused.state, refused.reason) == ("down", "HTTP 302 (expected 2xx)")


# --- HTTPS -----------------------------------------------------------------------------------


async def test_it_verifies_https_against_the_ca_file(certs: CertFactory) -> None:
    issued = certs.issue(("localhost", "127.0.0.1"))
    async with serve_app(make_app([]), ssl_context=issued.server_context()) as port:
        result = await check(url=f"https://localhost:{port}/ok", ca_file=str(certs.ca.cert_file))

    assert result.state == "up", result.reason
    assert result.phases["tls"] > 0
    assert result.evidence["tls_version"] == "TLS 1.3"
    assert result.evidence["cert_not_after"] == issued.cert.not_valid_after_utc.isoformat()


async def test_it_refuses_a_self_signed_certificate_unless_told_not_to_verify(
    certs: CertFactory,
) -> None:
    issued = certs.issue(("localhost", "127.0.0.1"), self_signed=True)
    async with serve_app(make_app([]), ssl_context=issued.server_context()) as port:
        verified = await check(url=f"https://127.0.0.1:{port}/ok")
        unverified = await check(url=f"https://127.0.0.1:{port}/ok", tls_verify=False)

    assert verified.state == "down"
    assert verified.reason == "TLS certificate rejected: self-signed certificate"
    assert unverified.state == "up", unverified.reason
    assert unverified.evidence["cert_not_after"] == issued.cert.not_valid_after_utc.isoformat()


async def test_it_refuses_an_expired_certificate(certs: CertFactory) -> None:
    now = dt.datetime.now(dt.UTC)
    issued = certs.issue(
        not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    async with serve_app(make_app([]), ssl_context=issued.server_context()) as port:
        result = await check(url=f"https://127.0.0.1:{port}/ok", ca_file=str(certs.ca.cert_file))

    assert result.state == "down"
    assert result.reason == "TLS certificate rejected: certificate has expired"


async def test_it_refuses_a_certificate_for_another_host(certs: CertFactory) -> None:
    issued = certs.issue(("127.0.0.1",))
    async with serve_app(make_app([]), ssl_context=issued.server_context()) as port:
        result = await check(url=f"https://localhost:{port}/ok", ca_file=str(certs.ca.cert_file))

    assert result.state == "down"
    assert result.reason.startswith("TLS certificate rejected: hostname mismatch")
    assert "'localhost'" in result.reason


async def test_it_reports_a_server_that_does_not_speak_tls(site: Site) -> None:
    result = await check(url=site.url.replace("http://", "https://") + "/ok")

    assert result.state == "down"
    assert result.reason.startswith("TLS handshake failed: ")


# --- what the check cannot judge -------------------------------------------------------------


async def test_it_is_unknown_when_the_address_contradicts_the_ip_family() -> None:
    result = await check(url="http://127.0.0.1:1/", ip_family="ipv6")

    assert result.state == "unknown"
    assert result.reason == "127.0.0.1 is not an ipv6 address"


# --- credentials in headers ------------------------------------------------------------------


async def test_header_values_come_from_the_environment_and_files_read_at_each_check(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_TEST_AUTH", "Bearer from-the-environment")
    key = tmp_path / "api-key"
    key.write_text("first-key\n")
    spec: dict[str, Any] = {
        "url": f"{site.url}/echo",
        "headers": {"Authorization": "env:PROBE_TEST_AUTH", "X-Team": "ops"},
        "headers_file": {"X-Api-Key": key},
    }

    first = await check(**spec)
    key.write_text("rotated-key\n")
    second = await check(**spec)

    assert (first.state, second.state) == ("up", "up")
    sent = [request["headers"] for request in site.seen]
    assert [h["Authorization"] for h in sent] == ["Bearer from-the-environment"] * 2
    assert [h["X-Api-Key"] for h in sent] == ["first-key", "rotated-key"]
    assert [h["X-Team"] for h in sent] == ["ops", "ops"]


async def test_a_header_that_cannot_be_read_makes_the_check_unknown(
    site: Site, tmp_path: Path
) -> None:
    unset = await check(url=f"{site.url}/echo", headers={"Authorization": "env:PROBE_TEST_UNSET"})
    gone = await check(url=f"{site.url}/echo", headers_file={"X-Api-Key": tmp_path / "gone"})

    assert (unset.state, unset.reason) == (
        "unknown", "environment variable PROBE_TEST_UNSET (header Authorization) is not set")
    assert (gone.state, gone.reason) == (
        "unknown",
        f"headers_file: cannot read {tmp_path}/gone (header X-Api-Key): No such file or directory")
    assert site.seen == []  # nothing went out without its credential


def test_its_spec_refuses_an_inline_credential_without_showing_it() -> None:
    for name in ("Authorization", "X-Api-Key", "Cookie", "Private-Token"):
        with pytest.raises(ValidationError) as caught:
            HttpSpec(url="http://127.0.0.1/", headers={name: "s3cretvalue"})
        (error,) = caught.value.errors()
        assert error["loc"] == ("headers",)
        assert error["msg"] == (
            f"Value error, header {name!r} carries a credential, which may not be inline: write "
            f"env:NAME, or put it in a file and set headers_file: {{{name}: PATH}}")
    HttpSpec(url="http://127.0.0.1/", headers={"Accept": "text/plain"})  # not a credential


def test_its_spec_refuses_a_header_set_both_inline_and_from_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="header 'x-team' is set in both headers and"):
        HttpSpec(url="http://127.0.0.1/", headers={"X-Team": "ops"},
                 headers_file={"x-team": tmp_path / "team"})


async def test_credentials_go_to_the_origin_they_were_set_for_only(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_TEST_AUTH", "Bearer for-this-site-only")
    headers = {"Authorization": "env:PROBE_TEST_AUTH", "X-Team": "ops"}
    other_seen: list[dict[str, Any]] = []
    async with serve_app(make_app(other_seen)) as other_port:
        elsewhere = await check(url=f"{site.url}/away?to=http://127.0.0.1:{other_port}/echo",
                                headers=headers)
        here = await check(url=f"{site.url}/away?to=/echo", headers=headers)

    assert (elsewhere.state, here.state) == ("up", "up")
    [other] = other_seen
    assert other["headers"]["X-Team"] == "ops"
    assert "Authorization" not in other["headers"]
    [same] = site.seen
    assert same["headers"]["Authorization"] == "Bearer for-this-site-only"


def test_its_spec_refuses_a_header_that_would_break_the_request() -> None:
    with pytest.raises(pydantic.ValidationError, match="contains a line break"):
        HttpSpec(url="http://127.0.0.1/", headers={"X-Evil": "a\r\nHost: other"})
