"""The email backend against a real SMTP server (aiosmtpd) on loopback, with STARTTLS and AUTH."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from probe.helpdesks.base import Ticket, TicketError
from probe.helpdesks.email import Backend, Route
from tests.harness.certs import CertFactory
from tests.harness.httpserver import serve_raw, silent
from tests.harness.ports import closed_port

USER = "probe"
PASSWORD = "correct horse battery staple"
KEY = "probe-eu-1/shop/3"
TICKET = Ticket(
    key=KEY,
    title="shop is down",
    body="shop-443: connection refused since 10:15 UTC",
    body_markdown="**shop-443**: connection refused since 10:15 UTC",
    priority="urgent",
    agent="probe-eu-1",
    group="shop",
)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    authenticated: bool


@dataclass
class Mailbox:
    """What the server accepted, and what it answers to RCPT for some addresses. (No
    properties: aiosmtpd's handler lookup evaluates every attribute of its handler.)"""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes) and envelope.mail_from is not None
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(
            Received(
                envelope.mail_from, list(envelope.rcpt_tos), message, bool(session.authenticated)
            )
        )
        return "250 queued"

    def only(self) -> EmailMessage:
        [received] = self.received
        return received.message


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


@contextlib.asynccontextmanager
async def smtp_server(
    certs: CertFactory, *, implicit_tls: bool = False, starttls: bool = True
) -> AsyncIterator[Mailbox]:
    """An SMTP server on 127.0.0.1 that wants TLS (STARTTLS, or from the first byte) and a
    login before it takes mail."""
    mailbox = Mailbox()
    context = certs.issue(("localhost", "127.0.0.1")).server_context()
    loop = asyncio.get_running_loop()

    def session() -> SMTP:
        return SMTP(
            mailbox,
            hostname="mail.test",
            tls_context=context if starttls and not implicit_tls else None,
            require_starttls=starttls and not implicit_tls,
            auth_required=True,
            # aiosmtpd only counts STARTTLS as TLS; a port-465 session is encrypted already.
            auth_require_tls=not implicit_tls,
            authenticator=authenticator,
            loop=loop,
        )

    server = await loop.create_server(
        session, "127.0.0.1", 0, ssl=context if implicit_tls else None
    )
    mailbox.port = server.sockets[0].getsockname()[1]
    try:
        yield mailbox
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def mailbox(certs: CertFactory) -> AsyncIterator[Mailbox]:
    async with smtp_server(certs) as box:
        yield box


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
def settings(certs: CertFactory, password_file: Path) -> dict[str, Any]:
    return {
        "username": USER,
        "password_file": str(password_file),
        "ca_file": str(certs.ca.cert_file),
        "from": "probe@example.net",
        "to": ["helpdesk@example.net"],
        "cc": ["oncall@example.net"],
    }


def backend(port: int, settings: dict[str, Any], **overrides: Any) -> Backend:
    route = Route.model_validate(
        {"backend": "email", "smtp": f"127.0.0.1:{port}", "timeout": "3s", **settings, **overrides}
    )
    return Backend("mail", route)


async def test_open_sends_a_plain_text_mail_with_the_incident_headers(
    mailbox: Mailbox, settings: dict[str, Any]
) -> None:
    ref = await backend(mailbox.port, settings).open(TICKET)

    [received] = mailbox.received
    assert received.authenticated
    assert received.mail_from == "probe@example.net"
    assert received.rcpt_tos == ["helpdesk@example.net", "oncall@example.net"]
    mail = received.message
    assert mail["From"] == "probe@example.net"
    assert mail["To"] == "helpdesk@example.net"
    assert mail["Cc"] == "oncall@example.net"
    assert mail["Subject"] == "shop is down"
    assert mail["X-Probe-Key"] == KEY
    assert mail["X-Probe-Action"] == "open"
    assert mail["X-Probe-Agent"] == "probe-eu-1"
    assert mail["X-Priority"].startswith("1")
    assert mail["Importance"] == "high"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["In-Reply-To"] is None
    assert mail["Message-ID"].endswith("@example.net>")
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content().strip() == TICKET.body
    assert json.loads(ref) == {
        "message_id": mail["Message-ID"],
        "subject": "shop is down",
        "key": KEY,
    }


async def test_a_retried_open_carries_the_same_message_id_and_another_incident_does_not(
    mailbox: Mailbox, settings: dict[str, Any]
) -> None:
    mail = backend(mailbox.port, settings)
    first = await mail.open(TICKET)
    again = await mail.open(TICKET)
    await mail.open(dataclasses.replace(TICKET, key="probe-eu-1/shop/4"))
    await mail.open(dataclasses.replace(TICKET, follows=first))

    ids = [r.message["Message-ID"] for r in mailbox.received]
    assert first == again
    assert ids[0] == ids[1]
    assert len(set(ids)) == 3


async def test_a_title_and_body_beyond_ascii_arrive_intact(
    mailbox: Mailbox, settings: dict[str, Any]
) -> None:
    ticket = dataclasses.replace(TICKET, title="café-Kasse ausgefallen", body="Prüfung: ✗\n")
    await backend(mailbox.port, settings).open(ticket)

    assert mailbox.only()["Subject"] == "café-Kasse ausgefallen"
    assert mailbox.only().get_content().strip() == "Prüfung: ✗"


async def test_a_normal_priority_ticket_has_no_priority_headers(
    mailbox: Mailbox, settings: dict[str, Any]
) -> None:
    await backend(mailbox.port, settings).open(dataclasses.replace(TICKET, priority="normal"))

    assert mailbox.only()["X-Priority"] is None
    assert mailbox.only()["Importance"] is None


async def test_notes_resolve_and_reopen_reply_in_the_thread_of_the_open_mail(
    mailbox: Mailbox, settings: dict[str, Any]
) -> None:
    mail = backend(mailbox.port, settings)
    ref = await mail.open(TICKET)
    await mail.note(ref, "still down after 1h")
    await mail.note(ref, "still down after 1h")  # a retry
    await mail.note(ref, "still down after 2h")
    await mail.resolve(ref, "recovered after 2h12m")
    await mail.reopen(ref, "down again")

    opening, *replies = [r.message for r in mailbox.received]
    thread = opening["Message-ID"]
    for reply in replies:
        assert reply["In-Reply-To"] == thread
        assert reply["References"] == thread
        assert reply["Subject"] == "Re: shop is down"
        assert reply["X-Probe-Key"] == KEY
    assert [(r["X-Probe-Action"], r.get_content().strip()) for r in replies] == [
        ("note", "still down after 1h"),
        ("note", "still down after 1h"),
        ("note", "still down after 2h"),
        ("resolve", "recovered after 2h12m"),
        ("reopen", "down again"),
    ]
    ids = [r["Message-ID"] for r in replies]
    assert ids[0] == ids[1]
    assert len({thread, *ids}) == 5


# aiosmtpd warns because it only counts STARTTLS as TLS; this session is TLS from the start.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_implicit_tls_delivers(certs: CertFactory, settings: dict[str, Any]) -> None:
    async with smtp_server(certs, implicit_tls=True) as box:
        await backend(box.port, settings, starttls=False, tls=True).open(TICKET)

    assert box.only()["Subject"] == "shop is down"


async def test_a_wrong_password_is_a_permanent_error(
    mailbox: Mailbox, settings: dict[str, Any], tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("guess")
    with pytest.raises(TicketError) as caught:
        await backend(mailbox.port, settings, password_file=str(wrong)).open(TICKET)

    assert caught.value.permanent
    assert caught.value.message.startswith(f"SMTP 127.0.0.1:{mailbox.port}: login as probe")
    assert "535" in caught.value.message
    assert mailbox.received == []


async def test_a_recipient_refused_with_550_is_a_permanent_error_with_the_servers_words(
    mailbox: Mailbox, settings: dict[str, Any]
) -> None:
    mailbox.refuse["helpdesk@example.net"] = "550 5.1.1 no such mailbox"
    with pytest.raises(TicketError) as caught:
        await backend(mailbox.port, settings, cc=[]).open(TICKET)

    assert caught.value.permanent
    assert "helpdesk@example.net: 550 5.1.1 no such mailbox" in caught.value.message


async def test_a_recipient_deferred_with_451_is_a_transient_error(
    mailbox: Mailbox, settings: dict[str, Any]
) -> None:
    mailbox.refuse["helpdesk@example.net"] = "451 4.3.0 try again later"
    with pytest.raises(TicketError) as caught:
        await backend(mailbox.port, settings, cc=[]).open(TICKET)

    assert not caught.value.permanent
    assert "451 4.3.0 try again later" in caught.value.message


async def test_one_refused_recipient_among_several_is_logged_and_the_mail_counts_as_sent(
    mailbox: Mailbox, settings: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    mailbox.refuse["oncall@example.net"] = "550 5.1.1 no such mailbox"
    with caplog.at_level(logging.WARNING):
        await backend(mailbox.port, settings).open(TICKET)

    assert mailbox.received[0].rcpt_tos == ["helpdesk@example.net"]
    assert "oncall@example.net" in caplog.text


async def test_a_server_that_never_answers_is_a_transient_timeout(
    settings: dict[str, Any],
) -> None:
    async with serve_raw(silent) as port:
        started = time.monotonic()
        with pytest.raises(TicketError) as caught:
            await backend(port, settings, timeout="1s").open(TICKET)

    assert time.monotonic() - started < 5
    assert not caught.value.permanent
    assert caught.value.message == f"SMTP 127.0.0.1:{port}: no answer within 1s"


async def test_a_busy_server_greeting_with_421_is_a_transient_error(
    settings: dict[str, Any],
) -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 too busy, come back later\r\n")
        await writer.drain()

    async with serve_raw(busy) as port:
        with pytest.raises(TicketError) as caught:
            await backend(port, settings).open(TICKET)

    assert not caught.value.permanent
    assert "421 4.3.2 too busy" in caught.value.message


async def test_an_untrusted_certificate_is_an_error_that_says_so(
    mailbox: Mailbox, settings: dict[str, Any]
) -> None:
    with pytest.raises(TicketError) as caught:
        await backend(mailbox.port, settings, ca_file=None).open(TICKET)

    assert "TLS certificate not trusted" in caught.value.message
    assert mailbox.received == []


async def test_tls_verify_off_accepts_an_untrusted_certificate(
    mailbox: Mailbox, settings: dict[str, Any]
) -> None:
    await backend(mailbox.port, settings, ca_file=None, tls_verify=False).open(TICKET)

    assert mailbox.only()["Subject"] == "shop is down"


async def test_a_server_without_starttls_is_a_permanent_error(
    certs: CertFactory, settings: dict[str, Any]
) -> None:
    async with smtp_server(certs, starttls=False) as box:
        with pytest.raises(TicketError) as caught:
            await backend(box.port, settings).open(TICKET)

    assert caught.value.permanent
    assert "STARTTLS" in caught.value.message


async def test_a_reference_it_did_not_make_is_a_permanent_error(
    settings: dict[str, Any],
) -> None:
    with pytest.raises(TicketError) as caught:
        await backend(closed_port(), settings).note("12345", "still down")

    assert caught.value.permanent
    assert "not a reference the email backend made" in caught.value.message


async def test_an_email_helpdesk_cannot_be_asked_about_its_tickets(
    settings: dict[str, Any],
) -> None:
    mail = backend(closed_port(), settings)
    assert not mail.tracks_status
    assert await mail.find(KEY) is None
    assert await mail.status("anything") == "open"
