"""The webhook backend against a real aiohttp receiver on loopback that checks the signature."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.webhook import Backend, Route
from tests.harness.httpserver import replying, serve_app, serve_raw
from tests.harness.ports import closed_port

SECRET = "s3cret-shared-with-the-receiver"
KEY = "probe-eu-1/shop/3"
TICKET = Ticket(
    key=KEY,
    title="shop is down",
    body="shop-443: connection refused",
    body_markdown="**shop-443**: connection refused",
    priority="urgent",
    agent="probe-eu-1",
    group="shop",
)


@dataclass
class Delivery:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes

    @property
    def payload(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Receiver:
    port: int
    deliveries: list[Delivery] = field(default_factory=list)

    def url(self, path: str = "/hooks/probe") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Verifies X-Probe-Signature-256 like a careful receiver; /status/<code> answers <code>."""
    deliveries: list[Delivery] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        given = request.headers.get("X-Probe-Signature-256")
        if given is not None and not hmac.compare_digest(expected, given):
            return web.json_response({"error": "signature does not match"}, status=401)
        deliveries.append(Delivery(request.path, dict(request.query), dict(request.headers), raw))
        if request.path == "/status/503":
            return web.Response(status=503, text="maintenance")
        if request.path == "/status/429":
            return web.Response(status=429, headers={"Retry-After": "7"}, text="slow down")
        if request.path == "/status/500":
            return web.Response(
                status=500,
                content_type="text/html",
                text="<html><body><h1>500 Internal Server Error</h1><p>oops</p></body></html>",
            )
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    async with serve_app(app) as port:
        yield Receiver(port, deliveries)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "hook-secret"
    path.write_text(SECRET + "\n")
    return path


def backend(url: str | None, **settings: Any) -> Backend:
    route = Route.model_validate({"backend": "webhook", "timeout": "3s", **settings,
                                  **({"url": url} if url is not None else {})})
    return Backend("hook", route)


async def open_fails(hook: Backend) -> TicketError:
    """What opening a ticket raises; the backend is closed after."""
    try:
        with pytest.raises(TicketError) as caught:
            await hook.open(TICKET)
    finally:
        await hook.close()
    return caught.value


async def test_open_posts_the_documented_payload_signed_with_the_secret(
    receiver: Receiver, secret_file: Path
) -> None:
    hook = backend(receiver.url("/hooks/probe?tenant=ops"), secret_file=str(secret_file))
    try:
        ref = await hook.open(TICKET)
    finally:
        await hook.close()

    assert ref == KEY
    [sent] = receiver.deliveries
    assert sent.path == "/hooks/probe"
    assert sent.query == {"tenant": "ops"}
    payload = sent.payload
    assert set(payload) == {
        "version",
        "id",
        "action",
        "key",
        "sent_at",
        "text",
        "title",
        "body_markdown",
        "priority",
        "agent",
        "group",
        "follows",
    }
    assert payload["version"] == 1
    assert payload["action"] == "open"
    assert payload["key"] == KEY
    assert payload["text"] == "shop-443: connection refused"
    assert payload["title"] == "shop is down"
    assert payload["body_markdown"] == "**shop-443**: connection refused"
    assert payload["priority"] == "urgent"
    assert payload["agent"] == "probe-eu-1"
    assert payload["group"] == "shop"
    assert payload["follows"] is None
    assert payload["sent_at"].endswith("Z")
    assert payload["id"].startswith(f"{KEY}:open:")
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["X-Probe-Event"] == "open"
    assert sent.headers["X-Probe-Key"] == KEY
    assert sent.headers["Idempotency-Key"] == payload["id"]
    assert sent.headers["User-Agent"].startswith("probe/")


async def test_notes_resolve_and_reopen_carry_their_text_and_null_ticket_fields(
    receiver: Receiver, secret_file: Path
) -> None:
    hook = backend(receiver.url(), secret_file=str(secret_file))
    try:
        await hook.note(KEY, "still down after 1h")
        await hook.resolve(KEY, "recovered after 1h12m")
        await hook.reopen(KEY, "down again")
    finally:
        await hook.close()

    actions = [
        (d.payload["action"], d.headers["X-Probe-Event"], d.payload["text"])
        for d in receiver.deliveries
    ]
    assert actions == [
        ("note", "note", "still down after 1h"),
        ("resolve", "resolve", "recovered after 1h12m"),
        ("reopen", "reopen", "down again"),
    ]
    for delivery in receiver.deliveries:
        payload = delivery.payload
        assert payload["key"] == KEY
        assert delivery.headers["X-Probe-Key"] == KEY
        assert payload["title"] is None
        assert payload["priority"] is None
        assert payload["follows"] is None
        assert "X-Probe-Signature-256" in delivery.headers


async def test_a_retry_keeps_its_idempotency_key_and_two_notes_get_different_ones(
    receiver: Receiver,
) -> None:
    hook = backend(receiver.url())
    try:
        await hook.open(TICKET)
        await hook.open(TICKET)
        await hook.note(KEY, "still down after 1h")
        await hook.note(KEY, "still down after 2h")
    finally:
        await hook.close()

    ids = [d.headers["Idempotency-Key"] for d in receiver.deliveries]
    assert ids[0] == ids[1]
    assert len(set(ids)) == 3


async def test_a_ticket_that_follows_another_names_it_and_gets_its_own_idempotency_key(
    receiver: Receiver,
) -> None:
    hook = backend(receiver.url())
    try:
        await hook.open(TICKET)
        await hook.open(dataclasses.replace(TICKET, follows=KEY))
    finally:
        await hook.close()

    first, second = receiver.deliveries
    assert second.payload["follows"] == KEY
    assert first.payload["id"] != second.payload["id"]


async def test_without_a_secret_it_sends_no_signature_and_adds_the_routes_headers(
    receiver: Receiver,
) -> None:
    hook = backend(receiver.url(), headers={"X-Tenant": "ops"})
    try:
        await hook.open(TICKET)
    finally:
        await hook.close()

    [sent] = receiver.deliveries
    assert "X-Probe-Signature-256" not in sent.headers
    assert sent.headers["X-Tenant"] == "ops"


async def test_a_credential_header_comes_from_a_file_read_for_each_request(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "hook-token"
    token.write_text("Bearer first-token\n")
    monkeypatch.setenv("PROBE_TEST_TENANT_KEY", "tenant-key-from-env")
    hook = backend(receiver.url(), headers={"X-Tenant-Key": "env:PROBE_TEST_TENANT_KEY"},
                   headers_file={"Authorization": str(token)})
    try:
        await hook.open(TICKET)
        token.write_text("Bearer rotated-token\n")
        await hook.note(KEY, "still down")
    finally:
        await hook.close()

    assert [d.headers["Authorization"] for d in receiver.deliveries] == [
        "Bearer first-token", "Bearer rotated-token"]
    assert {d.headers["X-Tenant-Key"] for d in receiver.deliveries} == {"tenant-key-from-env"}


async def test_a_credential_header_that_cannot_be_read_is_a_permanent_error_that_names_it(
    receiver: Receiver, tmp_path: Path
) -> None:
    hook = backend(receiver.url(), headers_file={"Authorization": str(tmp_path / "missing")})
    error = await open_fails(hook)

    assert error.permanent
    assert error.message == (
        f"webhook headers_file: cannot read {tmp_path}/missing (header Authorization): "
        "No such file or directory")
    assert receiver.deliveries == []


def test_a_credential_header_may_not_be_inline() -> None:
    with pytest.raises(ValueError, match="header 'Authorization' carries a credential"):
        backend("http://127.0.0.1:9/hook", headers={"Authorization": "Bearer s3cretvalue"})


async def test_a_wrong_secret_is_a_permanent_error_with_the_receivers_words(
    receiver: Receiver, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret")
    hook = backend(receiver.url(), secret_file=str(wrong))
    error = await open_fails(hook)

    assert error.permanent
    assert "HTTP 401" in error.message
    assert "signature does not match" in error.message
    assert receiver.deliveries == []


async def test_an_unreadable_secret_file_is_a_permanent_error_that_names_it(
    receiver: Receiver, tmp_path: Path
) -> None:
    hook = backend(receiver.url(), secret_file=str(tmp_path / "missing"))
    error = await open_fails(hook)

    assert error.permanent
    assert "secret_file: cannot read" in error.message


@pytest.mark.parametrize(
    ("status", "retry_after"), [(503, None), (429, 7.0)], ids=["503", "429-retry-after-7"]
)
async def test_an_overloaded_receiver_is_a_transient_error(
    receiver: Receiver, status: int, retry_after: float | None
) -> None:
    hook = backend(receiver.url(f"/status/{status}"))
    try:
        with pytest.raises(TicketError) as caught:
            await hook.note(KEY, "still down")
    finally:
        await hook.close()

    assert not caught.value.permanent
    assert caught.value.retry_after == retry_after
    assert f"HTTP {status}" in caught.value.message


async def test_an_html_500_page_is_a_transient_error_with_a_short_message(
    receiver: Receiver,
) -> None:
    hook = backend(receiver.url("/status/500"))
    error = await open_fails(hook)

    assert not error.permanent
    assert error.message.startswith("POST /status/500: HTTP 500")
    assert "\n" not in error.message


async def test_a_receiver_that_closes_the_connection_is_a_transient_error() -> None:
    async with serve_raw(replying(b"")) as port:
        hook = backend(f"http://127.0.0.1:{port}/hooks/probe")
        try:
            with pytest.raises(TicketError) as caught:
                await hook.open(TICKET)
        finally:
            await hook.close()

    assert not caught.value.permanent
    assert caught.value.message.startswith("POST /hooks/probe: ")


async def test_a_url_that_holds_a_secret_comes_from_a_file_or_the_environment(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url_file = tmp_path / "hook-url"
    url_file.write_text(receiver.url("/services/T0/B0/first-token") + "\n")
    monkeypatch.setenv("PROBE_TEST_HOOK_URL", receiver.url("/services/T0/B0/env-token"))
    from_file = backend(None, url_file=str(url_file))
    from_env = backend("env:PROBE_TEST_HOOK_URL")
    try:
        await from_file.open(TICKET)
        url_file.write_text(receiver.url("/services/T0/B0/rotated-token"))
        await from_file.note(KEY, "still down")
        await from_env.open(TICKET)
    finally:
        await from_file.close()
        await from_env.close()

    assert [d.path for d in receiver.deliveries] == [
        "/services/T0/B0/first-token", "/services/T0/B0/rotated-token",
        "/services/T0/B0/env-token"]


async def test_what_is_said_of_a_secret_url_does_not_show_it(tmp_path: Path) -> None:
    url_file = tmp_path / "hook-url"
    url_file.write_text(f"http://127.0.0.1:{closed_port()}/services/T0/B0/s3cretpathtoken")
    hook = backend(None, url_file=str(url_file))
    error = await open_fails(hook)

    assert not error.permanent
    assert error.message.startswith("POST <redacted>: cannot connect")
    assert "s3cret" not in error.message


@pytest.mark.parametrize(("content", "message"), [
    (None, "webhook url_file: cannot read {file}: No such file or directory"),
    ("not a url s3cretvalue", "webhook url_file {file} does not hold an http:// or https:// URL"),
])
async def test_a_url_file_without_a_url_is_a_permanent_error_that_does_not_echo_it(
    tmp_path: Path, content: str | None, message: str
) -> None:
    url_file = tmp_path / "hook-url"
    if content is not None:
        url_file.write_text(content)
    hook = backend(None, url_file=str(url_file))
    error = await open_fails(hook)

    assert error.permanent
    assert error.message == message.format(file=url_file)


@pytest.mark.parametrize(("settings", "message"), [
    ({}, "needs url (or url_file, or url: env:NAME)"),
    ({"url": "https://hooks.example.net/x", "url_file": "/run/x"},
     "set url or url_file, not both"),
    ({"url": "env:not a name"}, "'env:not a name' is not an http:// or https:// URL"),
])
def test_a_route_needs_exactly_one_url(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Route.model_validate({"backend": "webhook", **settings})


async def test_a_webhook_cannot_be_asked_about_its_tickets() -> None:
    hook = backend("http://127.0.0.1:9/hooks/probe")
    assert not hook.tracks_status
    assert await hook.find(KEY) is None
    assert await hook.status(KEY) == "open"
    await hook.close()
