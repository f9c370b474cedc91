"""Helpdesk requests through an outbound proxy: which proxy curl's rules choose (a table), and a
real one, Debian's tinyproxy on loopback, in front of a webhook receiver: plain HTTP (the
receiver sees tinyproxy's Via header), HTTPS through CONNECT (tinyproxy logs the tunnel, the
receiver's certificate is still verified), the proxy's own credentials, a proxy that refuses,
one that is gone, the environment's HTTPS_PROXY and NO_PROXY, and the daemon delivering a
ticket through it."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from probe.helpdesks import proxy
from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.webhook import Backend, Route
from tests.harness.certs import CertFactory
from tests.harness.daemon import ProbeProcess
from tests.harness.desks import WEBHOOK_SECRET, Receiver
from tests.harness.httpserver import serve_app
from tests.harness.ports import closed_port, free_port
from tests.harness.tinyproxy import Tinyproxy

TICKET = Ticket(key="probe-eu-1/shop/3", title="shop is down", body="refused",
                body_markdown="refused", priority="urgent", agent="probe-eu-1", group="shop")
CREDENTIALS = "probe:proxy-pass-0123"


@pytest.mark.parametrize(("url", "setting", "env", "chosen"), [
    ("https://desk.example/api", None, {}, None),
    ("https://desk.example/api", None, {"HTTPS_PROXY": "p:3128"}, "http://p:3128"),
    ("https://desk.example/api", None, {"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:2"},
     "http://a:1"),
    # http:// takes the lower-case variable only (httpoxy), then all_proxy
    ("http://desk.example/api", None, {"HTTP_PROXY": "http://p:1"}, None),
    ("http://desk.example/api", None, {"http_proxy": "http://p:1"}, "http://p:1"),
    ("http://desk.example/api", None, {"ALL_PROXY": "http://all:9"}, "http://all:9"),
    # the route's own wins, and "direct" is none at all
    ("https://desk.example/api", "http://own:8080", {"HTTPS_PROXY": "http://p:1"},
     "http://own:8080"),
    ("https://desk.example/api", "direct", {"HTTPS_PROXY": "http://p:1"}, None),
    # NO_PROXY: names and their subdomains, addresses, CIDR, *, a port ignored
    ("https://api.example.com/x", None, {"HTTPS_PROXY": "p:1", "NO_PROXY": "example.com"},
     None),
    ("https://api.example.com/x", None, {"HTTPS_PROXY": "p:1", "NO_PROXY": ".example.com"},
     None),
    ("https://example.community/x", None, {"HTTPS_PROXY": "p:1", "NO_PROXY": "example.com"},
     "http://p:1"),
    ("https://10.1.2.3/x", None, {"HTTPS_PROXY": "p:1", "no_proxy": "10.0.0.0/8"}, None),
    ("https://[::1]:8443/x", None, {"HTTPS_PROXY": "p:1", "NO_PROXY": "::1"}, None),
    ("https://desk.example/x", None, {"HTTPS_PROXY": "p:1", "NO_PROXY": "desk.example:443"},
     None),
    ("https://desk.example/x", "http://own:1", {"NO_PROXY": "*"}, None),
    ("https://other.example/x", None, {"HTTPS_PROXY": "p:1", "NO_PROXY": "a.example, b"},
     "http://p:1"),
])
def test_which_proxy_curl_would_choose(url: str, setting: str | None, env: dict[str, str],
                                       chosen: str | None) -> None:
    assert proxy.choose(url, setting, env) == chosen


def test_a_proxy_probe_cannot_use_is_refused_in_words() -> None:
    with pytest.raises(ValueError, match=r"a socks5:// proxy is not supported"):
        proxy.choose("https://d.example/", None, {"HTTPS_PROXY": "socks5://p:1080"})
    for bad, words in [("socks5://p:1080", "is not an http:// or https:// proxy URL"),
                       ("http://user:pw@p:3128", "credentials do not belong in the URL"),
                       ("http://p:3128/path", "scheme, host and port only")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            Route.model_validate({"backend": "webhook", "url": "http://d.example/",
                                  "proxy": bad})
    with pytest.raises(ValueError, match="a email route makes no HTTP requests"):
        from probe.helpdesks.email import Route as EmailRoute
        EmailRoute.model_validate({"backend": "email", "smtp": "mail.example:587",
                                   "from": "p@example.net", "to": ["ops@example.net"],
                                   "proxy": "http://p:3128"})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/probe", got.handle)
    async with serve_app(app) as port:
        yield got, port


@pytest.fixture
def tinyproxy() -> Iterator[Tinyproxy]:
    server = Tinyproxy().start()
    yield server
    server.stop()


def hook(tmp_path: Path, url: str, **settings: Any) -> Backend:
    secret = tmp_path / "hook-secret"
    secret.write_text(WEBHOOK_SECRET + "\n")
    return Backend("hook", Route.model_validate({
        "backend": "webhook", "url": url, "secret_file": str(secret), "timeout": "3s",
        **settings}))


async def test_plain_http_goes_through_the_proxy(tmp_path: Path, tinyproxy: Tinyproxy,
                                                 receiver: tuple[Receiver, int]) -> None:
    got, port = receiver
    desk = hook(tmp_path, f"http://127.0.0.1:{port}/hooks/probe", proxy=tinyproxy.url)
    try:
        await desk.open(TICKET)
    finally:
        await desk.close()
    (delivery,) = got.deliveries
    assert "tinyproxy" in delivery.headers.get("Via", "")


async def test_https_goes_through_connect_and_the_certificate_is_still_checked(
        tmp_path: Path, tinyproxy: Tinyproxy, certs: CertFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/probe", got.handle)
    async with serve_app(app, ssl_context=certs.issue().server_context()) as port:
        url = f"https://127.0.0.1:{port}/hooks/probe"
        # From the environment, as curl reads it.
        monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url)
        desk = hook(tmp_path, url, ca_file=str(certs.ca.cert_file))
        untrusting = hook(tmp_path, url)
        try:
            await desk.open(TICKET)
            assert f"CONNECT 127.0.0.1:{port}" in tinyproxy.log()
            refused = await _fails(untrusting.open(TICKET))
            assert "TLS certificate not trusted" in refused.message
            # NO_PROXY: straight to the receiver, past the proxy.
            monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.0/8")
            before = tinyproxy.log().count("CONNECT ")
            await desk.note("ref", "a note")
            assert tinyproxy.log().count("CONNECT ") == before
        finally:
            await desk.close()
            await untrusting.close()
    assert len(got.deliveries) == 2


async def test_the_proxys_own_credentials(tmp_path: Path, receiver: tuple[Receiver, int]
                                          ) -> None:
    got, port = receiver
    server = Tinyproxy(credentials=CREDENTIALS).start()
    credentials = tmp_path / "proxy-credentials"
    credentials.write_text(CREDENTIALS + "\n")
    url = f"http://127.0.0.1:{port}/hooks/probe"
    without = hook(tmp_path, url, proxy=server.url)
    signed_in = hook(tmp_path, url, proxy=server.url,
                     proxy_credentials_file=str(credentials))
    try:
        refused = await _fails(without.open(TICKET))
        assert "HTTP 407" in refused.message and refused.permanent
        await signed_in.open(TICKET)
    finally:
        await without.close()
        await signed_in.close()
        server.stop()
    (delivery,) = got.deliveries
    assert "Proxy-Authorization" not in delivery.headers  # the proxy's, not the receiver's
    assert CREDENTIALS.split(":")[1] not in refused.message


async def test_a_proxy_that_refuses_or_is_gone_says_so(tmp_path: Path, certs: CertFactory
                                                       ) -> None:
    server = Tinyproxy(connect_ports=(443,)).start()
    app = web.Application()
    async with serve_app(app, ssl_context=certs.issue().server_context()) as port:
        url = f"https://127.0.0.1:{port}/hooks/probe"
        refusing = hook(tmp_path, url, proxy=server.url, ca_file=str(certs.ca.cert_file))
        gone = hook(tmp_path, url, proxy=f"http://127.0.0.1:{closed_port()}")
        try:
            refused = await _fails(refusing.open(TICKET))
            assert refused.message.startswith(
                f"POST /hooks/probe: the proxy {server.url} refused: HTTP 403"), refused.message
            assert refused.permanent
            unreachable = await _fails(gone.open(TICKET))
            assert "the proxy http://127.0.0.1:" in unreachable.message
            assert "cannot connect" in unreachable.message and not unreachable.permanent
        finally:
            await refusing.close()
            await gone.close()
            server.stop()


async def _fails(call: Any) -> TicketError:
    with pytest.raises(TicketError) as failed:
        await call
    return failed.value


async def test_the_daemon_delivers_a_ticket_through_the_proxy(
        tmp_path: Path, tinyproxy: Tinyproxy, receiver: tuple[Receiver, int]) -> None:
    got, port = receiver
    secret = tmp_path / "hook-secret"
    secret.write_text(WEBHOOK_SECRET + "\n")
    listen = free_port()
    config = tmp_path / "probe.yaml"
    config.write_text(json.dumps({
        "agent": {"name": "proxied", "state_dir": str(tmp_path / "state"),
                  "listen": f"127.0.0.1:{listen}"},
        "defaults": {"interval": "1s", "retry_interval": "1s", "timeout": "900ms",
                     "failure_threshold": 1},
        "ticketing": {"routes": {"hook": {
            "backend": "webhook", "url": f"http://127.0.0.1:{port}/hooks/probe",
            "secret_file": str(secret), "proxy": tinyproxy.url}}},
        "checks": [{"name": "db", "tcp": {"host": "127.0.0.1", "port": closed_port()}}],
    }))
    probe = ProbeProcess(config, listen, tmp_path / "state").start()
    try:
        opened = await probe.wait("the ticket", lambda: [
            d for d in got.deliveries if d.payload["action"] == "open"], timeout=30)
        assert "tinyproxy" in opened[0].headers.get("Via", "")
    finally:
        probe.stop()
