"""The email backend: one mail thread per incident, for email-to-ticket helpdesks.

`open` sends a text/plain mail whose Message-ID is derived from the incident key, so a retry
after a timeout carries the same Message-ID and the helpdesk (or a mail client) drops the copy.
Every later action is a reply in that thread: `In-Reply-To` and `References` name the open
mail, the subject is `Re: <title>`, and its own Message-ID is derived from the action and text.
The reference `open` returns is a small JSON object (`message_id`, `subject`, `key`) that the
replies need; callers store it as an opaque string.

Message-IDs use the domain of the route's `from` address: RFC 5322 asks for a right-hand side
the sender controls, mail filters distrust the reserved `.invalid`, and two organisations'
probes with the same incident key never collide.

Delivery is aiosmtplib rather than smtplib in a thread: a blocked thread cannot be cancelled,
so a silent server would hold up shutdown, while a coroutine stops at once and lets one
`asyncio.timeout(route.timeout)` bound the whole exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import email.utils
import hashlib
import json
import logging
import re
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import aiosmtplib
from pydantic import AfterValidator, Field, model_validator

from checks.net import describe_os_error
from checks.values import host_port
from probe.helpdesks import base
from probe.helpdesks.base import Priority, RouteBase, Ticket, TicketError, TicketState
from probe.secrets import EnvRef, SecretError

log = logging.getLogger(__name__)

Action = Literal["open", "note", "resolve", "reopen"]

# What Outlook, Thunderbird and most helpdesks read as the mail's priority; normal sends none.
PRIORITY_HEADERS: dict[Priority, dict[str, str]] = {
    "urgent": {"X-Priority": "1 (Highest)", "Importance": "high", "Priority": "urgent"},
    "high": {"X-Priority": "2 (High)", "Importance": "high"},
    "normal": {},
    "low": {"X-Priority": "5 (Lowest)", "Importance": "low", "Priority": "non-urgent"},
}


def _address(value: str) -> str:
    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", value):
        raise ValueError(f"{value!r} is not an email address")
    return value


Address = Annotated[str, AfterValidator(_address)]


class Route(RouteBase):
    backend: Literal["email"]
    proxied: ClassVar[bool] = False
    smtp: Annotated[str, host_port("smtp.example.net:587")]
    starttls: bool = True
    tls: bool = False  # implicit TLS from the first byte (port 465)
    username: str | None = None
    password: EnvRef | None = None
    password_file: Path | None = None
    from_: Address = Field(alias="from")
    to: list[Address] = Field(min_length=1)
    cc: list[Address] = []

    secrets: ClassVar[dict[str, bool]] = {"password": False}

    @model_validator(mode="after")
    def _auth(self) -> Route:
        if self.username and not self.has_secret("password"):
            raise ValueError("username is set: needs password_file (or password: env:NAME)")
        if self.tls and self.starttls:
            raise ValueError("set tls (implicit, port 465) or starttls, not both")
        return self


class Backend(base.Backend[Route]):
    tracks_status = False

    async def find(self, key: str) -> str | None:
        return None

    async def open(self, ticket: Ticket) -> str:
        # `follows` is part of the id: a ticket that follows a closed one is a new thread.
        message_id = self._message_id("open", ticket.key, ticket.follows or "")
        mail = self._mail("open", ticket.key, ticket.title, ticket.body, message_id)
        mail["X-Probe-Agent"] = ticket.agent
        mail["X-Probe-Group"] = ticket.group
        for name, value in PRIORITY_HEADERS[ticket.priority].items():
            mail[name] = value
        await self._send(mail)
        return json.dumps({"message_id": message_id, "subject": ticket.title, "key": ticket.key})

    async def note(self, ref: str, text: str) -> None:
        await self._reply("note", ref, text)

    async def resolve(self, ref: str, text: str) -> None:
        await self._reply("resolve", ref, text)

    async def reopen(self, ref: str, text: str) -> None:
        await self._reply("reopen", ref, text)

    async def status(self, ref: str) -> TicketState:
        return "open"

    async def _reply(self, action: Action, ref: str, text: str) -> None:
        thread, subject, key = _thread(ref)
        subject = subject if subject.lower().startswith("re:") else f"Re: {subject}"
        mail = self._mail(action, key, subject, text, self._message_id(action, thread, text))
        mail["In-Reply-To"] = thread
        mail["References"] = thread
        await self._send(mail)

    def _message_id(self, *parts: str) -> str:
        digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
        return f"<probe.{digest}@{self.route.from_.rpartition('@')[2]}>"

    def _mail(self, action: Action, key: str, subject: str, text: str, mid: str) -> EmailMessage:
        mail = EmailMessage(policy=email.policy.SMTP)
        mail["From"] = self.route.from_
        mail["To"] = ", ".join(self.route.to)
        if self.route.cc:
            mail["Cc"] = ", ".join(self.route.cc)
        mail["Subject"] = subject
        mail["Date"] = email.utils.formatdate(usegmt=True)
        mail["Message-ID"] = mid
        # RFC 3834: keeps helpdesk auto-replies ("we got your request") from answering a robot.
        mail["Auto-Submitted"] = "auto-generated"
        mail["X-Probe-Key"] = key
        mail["X-Probe-Action"] = action
        mail.set_content(text)
        return mail

    async def _send(self, mail: EmailMessage) -> None:
        route = self.route
        host, _, port = route.smtp.rpartition(":")
        host = host.strip("[]")
        try:
            password = route.reveal("password") if route.username else None
        except SecretError as err:
            raise TicketError(f"SMTP password: {err}", permanent=True) from None
        client = aiosmtplib.SMTP(
            hostname=host,
            port=int(port),
            username=route.username,
            password=password,
            use_tls=route.tls,
            start_tls=route.starttls,
            tls_context=tls_context(route),
            timeout=route.timeout,
        )
        try:
            async with asyncio.timeout(route.timeout):
                await client.connect()
                refused, _ = await client.send_message(
                    mail, sender=route.from_, recipients=[*route.to, *route.cc]
                )
            # The mail is accepted: a failed QUIT must not make the caller send it again.
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit(timeout=1.0)
        except TimeoutError:  # aiosmtplib's own timeouts are TimeoutErrors too
            raise TicketError(f"SMTP {route.smtp}: no answer within {route.timeout:g}s") from None
        except (aiosmtplib.SMTPException, OSError) as err:
            raise _error(route, err) from err
        finally:
            client.close()
        for address, reply in refused.items():
            log.warning("route %s: %s refused %s: %s", self.name, route.smtp, address, reply)


def tls_context(route: RouteBase) -> ssl.SSLContext:
    """The route's TLS settings as an SSLContext (aiosmtplib wants one, not aiohttp's False)."""
    context = ssl.create_default_context(cafile=str(route.ca_file) if route.ca_file else None)
    if not route.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _thread(ref: str) -> tuple[str, str, str]:
    try:
        data = json.loads(ref)
        return str(data["message_id"]), str(data["subject"]), str(data["key"])
    except (ValueError, TypeError, KeyError):
        raise TicketError(
            f"{ref!r} is not a reference the email backend made", permanent=True
        ) from None


def _error(route: Route, err: BaseException) -> TicketError:
    """Transient unless the server said 5xx or the route asks for something it cannot do."""
    where = f"SMTP {route.smtp}"
    if isinstance(err, aiosmtplib.SMTPRecipientsRefused):
        refusals = [f"{r.recipient}: {r.code} {_flat(r.message)}" for r in err.recipients]
        return TicketError(
            f"{where}: recipient refused: {'; '.join(refusals)}",
            permanent=all(r.code >= 500 for r in err.recipients),
        )
    if isinstance(err, aiosmtplib.SMTPResponseException):
        what = {
            aiosmtplib.SMTPAuthenticationError: f"login as {route.username} refused",
            aiosmtplib.SMTPSenderRefused: f"sender {route.from_} refused",
            aiosmtplib.SMTPDataError: "message refused",
            aiosmtplib.SMTPConnectResponseError: "server refused the session",
        }.get(type(err), "server said")
        return TicketError(
            f"{where}: {what}: {err.code} {_flat(err.message)}", permanent=err.code >= 500
        )
    cause = err.__cause__ if isinstance(err, aiosmtplib.SMTPConnectError) else err
    if isinstance(cause, ssl.SSLCertVerificationError):
        return TicketError(f"{where}: TLS certificate not trusted: {cause.verify_message}")
    if isinstance(cause, ssl.SSLError):
        return TicketError(f"{where}: TLS failed: {cause.reason or cause}")
    if isinstance(cause, OSError) and not isinstance(cause, aiosmtplib.SMTPException):
        return TicketError(f"{where}: cannot connect: {describe_os_error(cause)}")
    if isinstance(err, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError):
        return TicketError(f"{where}: {_flat(str(err))}")
    # What is left: the server lacks STARTTLS or AUTH the route asks for. Retrying cannot help.
    return TicketError(f"{where}: {_flat(str(err))}", permanent=True)


def _flat(text: str) -> str:
    return " ".join(text.split())


HELPDESK = base.Helpdesk(route=Route, backend=Backend)
