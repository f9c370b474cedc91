"""What every helpdesk shares: the route settings (priority names, escalation target,
connection), the ticket a backend is asked to deliver, the one error type, and the interface
each backend implements.

A backend knows nothing of checks or incidents: it is handed a rendered `Ticket` (with the
incident's stable key, which it must store in the helpdesk's own field so that `find` can
recover the ticket after a crash) and the reference it returned for later calls.
"""

from __future__ import annotations

import abc
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Generic, Literal, TypeVar, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, model_validator

from checks.values import Duration, ReadableFile
from probe.helpdesks.proxy import proxy_url
from probe.secrets import EnvRef, SecretError, Secrets, known

Priority = Literal["urgent", "high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("urgent", "high", "normal", "low")

V = TypeVar("V")


def endpoint_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.username or parts.password:  # first: the message must not echo them
        raise ValueError("credentials do not belong in the URL: use the route's secret keys")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def _base_url(value: str) -> str:
    return endpoint_url(value).rstrip("/")


def _all_priorities(value: dict[Priority, V]) -> dict[Priority, V]:
    missing = [p for p in PRIORITIES if p not in value]
    if missing:
        raise ValueError(f"maps no value for {', '.join(missing)}")
    return value


BaseUrl = Annotated[str, AfterValidator(_base_url)]  # an API's base: paths are appended
PriorityMap = Annotated[dict[Priority, V], AfterValidator(_all_priorities)]


class RouteBase(Secrets):
    """Settings every route takes; each backend module adds its own."""

    backend: str  # each helpdesk's module narrows it to its name
    escalate_to: str | None = None  # another route, told when nobody acknowledges the ticket
    timeout: Duration = 10.0
    tls_verify: bool = True
    ca_file: ReadableFile | None = None
    # The proxy its requests go through: a URL, or "direct"; None: the environment's, as curl
    # reads it (probe.helpdesks.proxy). Its credentials, `user:password`, as a secret.
    proxy: Annotated[str, AfterValidator(proxy_url)] | None = None
    proxy_credentials: EnvRef | None = None
    proxy_credentials_file: Path | None = None

    proxied: ClassVar[bool] = True  # its requests are HTTP: a proxy applies

    @model_validator(mode="after")
    def _proxy_credentials(self) -> RouteBase:
        if self.proxy is not None and not self.proxied:
            raise ValueError(f"proxy: a {self.backend} route makes no HTTP requests")
        if self.proxy_credentials is not None and self.proxy_credentials_file is not None:
            raise ValueError("set proxy_credentials or proxy_credentials_file, not both")
        if self.has_secret("proxy_credentials") and self.proxy in (None, "direct"):
            raise ValueError("proxy_credentials are for the route's own proxy: set proxy: URL")
        return self

    def link(self, ref: str) -> str | None:
        """Where a person sees the ticket in the helpdesk, for the pages; None: unknown."""
        return None


R = TypeVar("R", bound=RouteBase)
TicketState = Literal["open", "acknowledged", "closed", "gone"]


MAX_MESSAGE = 1000  # what a TicketError keeps of its message: it is stored, logged and printed


class TicketError(Exception):
    """A helpdesk call failed. `permanent` errors (a 4xx other than 408/429, a missing field)
    will fail again however often they are retried; the others are retried without end,
    not before `retry_after` seconds when the helpdesk said so."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        refused: bool = False,
    ) -> None:
        # What a helpdesk echoes back (a token in a 400's body, say) is stored and printed:
        # the known secrets are taken out here, where every message passes.
        message = known.redact(message)
        if len(message) > MAX_MESSAGE:  # a helpdesk's list of 10,000 errors, say
            message = message[: MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after
        # The helpdesk answered that it did not do it (a 4xx, a 503): nothing was created,
        # so a retried open need not ask find() first.
        self.refused = refused


def reveal(route: RouteBase, secret: str) -> str:
    """The route's `secret` (a setting name: "token"), read now. One that cannot be read is a
    permanent TicketError that names the route's helpdesk and setting: no retry will make a
    missing file appear or an unset variable set."""
    try:
        return route.reveal(secret)
    except SecretError as err:
        raise TicketError(f"{route.backend} {secret}: {err}", permanent=True) from None


@dataclass(frozen=True, slots=True)
class Ticket:
    key: str  # the incident's stable key, e.g. "probe-eu-1/shop/3"
    title: str
    body: str  # plain text
    body_markdown: str
    priority: Priority
    agent: str
    group: str
    follows: str | None = None  # ref of an earlier ticket this one follows (on_human_close: new)


class Backend(abc.ABC, Generic[R]):
    """One helpdesk. Every call either succeeds or raises TicketError for what the helpdesk
    did (refused, failed, timed out, or answered in a shape its API does not promise: the
    answer is read through http.Fields, which checks it); `open` must carry `ticket.key` where
    `find` looks for it. Any other exception is a bug in probe, and is left to propagate: the
    outbox logs it with its traceback, counts it and fails the action after a few attempts,
    rather than retrying it for ever as if the helpdesk were flaky.

    Every backend is made alike, `Backend(name, route, database=path)`: `name` is the route's,
    `database` probe's state database, for a helpdesk that keeps its tickets there (local);
    the others leave it alone."""

    # False where the helpdesk cannot be asked (email, webhook): find() then returns None,
    # status() "open", and escalation / human-close detection do not apply.
    tracks_status: ClassVar[bool] = True

    def __init__(self, name: str, route: R, *, database: Path | None = None) -> None:
        self.name = name
        self.route = route
        self.kind = route.backend  # the helpdesk's name, for messages

    @abc.abstractmethod
    async def find(self, key: str) -> str | None:
        """The reference of the newest ticket carrying `key`, open or not; None if none."""

    @abc.abstractmethod
    async def open(self, ticket: Ticket) -> str:
        """Create the ticket; return its reference (an id, a key, a Message-ID)."""

    @abc.abstractmethod
    async def note(self, ref: str, text: str) -> None:
        """Add an internal note (not seen by a requester where the helpdesk has the idea)."""

    @abc.abstractmethod
    async def resolve(self, ref: str, text: str) -> None:
        """Add `text` as the closing note and resolve the ticket."""

    @abc.abstractmethod
    async def reopen(self, ref: str, text: str) -> None:
        """Reopen a ticket someone closed, with `text` saying why."""

    @abc.abstractmethod
    async def status(self, ref: str) -> TicketState:
        """open (nobody has it yet), acknowledged (someone owns or works it), closed, gone."""

    async def open_tickets(self, prefix: str) -> list[tuple[str, str]] | None:
        """Tickets still open in the helpdesk whose key starts with `prefix` (this agent's),
        as (key, ref) pairs, for reconciling after lost state; None where the helpdesk cannot
        be asked. Every ticket is listed, so that two carrying one key (a duplicate) show."""
        return None

    async def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True, slots=True)
class Helpdesk(Generic[R]):
    """A helpdesk as the rest of probe sees it: the configuration validates a route to it with
    `route`, the outbox makes a `backend` for each such route. Its `name` is the one value
    `route.backend` takes, which a configuration's `backend:` names it by; a route model whose
    `backend` is not one `Literal` string is refused when its module is imported."""

    route: type[R]
    backend: type[Backend[R]]
    name: str = field(init=False)

    def __post_init__(self) -> None:
        names = get_args(self.route.model_fields["backend"].annotation)
        if len(names) != 1 or not isinstance(names[0], str):
            raise TypeError(f"{self.route.__module__}.{self.route.__qualname__}: backend must "
                            'be Literal["<name of the helpdesk>"]')
        object.__setattr__(self, "name", names[0])


def ssl_context(route: RouteBase) -> ssl.SSLContext | bool:
    """What aiohttp takes as `ssl=`: verification on unless the route opts out."""
    if not route.tls_verify:
        return False
    return ssl.create_default_context(cafile=str(route.ca_file) if route.ca_file else None)
