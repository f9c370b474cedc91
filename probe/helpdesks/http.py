"""The one HTTP path every web helpdesk takes: a session per route with its TLS settings and
timeout, the route's credentials on each request, and the translation of whatever comes back
into a response or a TicketError.

- the Authorization header (or the helpdesk's own credential header: Redmine's) is made from
  the route's secret as each request is sent (a rotated secret file takes effect at once, the
  value is kept nowhere); a secret that cannot be read is a permanent error, since no retry
  makes the file appear;
- network errors, timeouts, 408, 429 and 5xx are transient, and so is a 403 that is a rate limit
  (X-RateLimit-Remaining: 0, or a Retry-After), and any status the helpdesk documents as "try
  again" (`transient`: Zendesk's 409); so is a 2xx whose body is not the JSON the API promises,
  which the backends read through `Fields`, whose getters check each value's type;
- other 4xx are permanent, with the helpdesk's own message (`words` reads it where the
  helpdesk's error body says more than a `message` field);
- `Retry-After` (seconds or an HTTP date) and rate-limit reset headers (epoch seconds, ISO
  8601, or seconds to wait) become `retry_after`;
- through the route's proxy, or the environment's as curl reads it (probe.helpdesks.proxy):
  a proxy that cannot be reached is transient; one that refuses (403, 407) is permanent, and
  says it was the proxy.

A body is read up to MAX_BODY bytes (decompressed) and decoded leniently whatever its charset
says. JSON nested deeper than Python's parser can follow is a TicketError from
`Response.json()`; an error body the backend reads itself (a status in `ok`) that nests deeper
than MAX_DEPTH is answered as if it were not in `ok`.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from checks.net import describe_os_error
from probe import __version__
from probe.helpdesks import proxy
from probe.helpdesks.base import RouteBase, TicketError, reveal, ssl_context
from probe.secrets import known

T = TypeVar("T")
TRANSIENT = {408, 425, 429}
MAX_ERROR_TEXT = 300
MAX_BODY = 16 * 1024 * 1024  # a hundred GitHub issues of 65536 characters fit, with room
MAX_DEPTH = 100  # no helpdesk's JSON nests a tenth as deep
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


@dataclass(frozen=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    text: str
    what: str  # "POST /api/v2/tickets.json", for messages

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
            raise TicketError(
                f"{self.what}: HTTP {self.status} with a body that is not JSON: "
                f"{_excerpt(self.text)!r}"
            ) from None

    def fields(self) -> Fields:
        """The body, which the API promises is a JSON object."""
        return Fields.of(self.json(), self.what)

    def items(self) -> list[Fields]:
        """The body, which the API promises is a JSON list of objects."""
        data = self.json()
        if not isinstance(data, list):
            raise shape_error(self.what, "", "a list", data)
        return [Fields.of(item, self.what, f"[{i}]") for i, item in enumerate(data)]


SHAPE = "the helpdesk's answer is not of the shape its API promises"


def shape_error(what: str, where: str, expected: str, value: Any) -> TicketError:
    """An answer of the wrong shape: transient, as the helpdesk's next answer may be right
    (a proxy's page, a half-deployed release), and never a crash of the backend reading it."""
    place = f"{where}: " if where else ""
    return TicketError(f"{what}: {SHAPE} ({place}expected {expected}, got {_json_type(value)})")


class Fields:
    """A JSON object in a helpdesk's answer, read through getters that check the type its API
    promises. A value of another type is `shape_error`, naming the request and the place in
    the answer ("tickets[2].id"); a key that is missing or null reads as None (an empty list
    for `objects` and `texts`), and whether that will do is the backend's to judge. `get`
    returns a value unchecked, for a comparison that needs no type (`== "closed"`)."""

    __slots__ = ("_data", "_what", "_where")

    def __init__(self, data: dict[str, Any], what: str, where: str = "") -> None:
        self._data = data
        self._what = what  # "GET /tickets/42.json"
        self._where = where  # this object's place in the answer: "", "ticket", "issues[0]"

    @classmethod
    def of(cls, value: Any, what: str, where: str = "") -> Fields:
        if not isinstance(value, dict):
            raise shape_error(what, where, "an object", value)
        return cls(value, what, where)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def object(self, key: str) -> Fields | None:
        value = self._data.get(key)
        return None if value is None else Fields.of(value, self._what, self._path(key))

    def objects(self, key: str) -> list[Fields]:
        where = self._path(key)
        return [Fields.of(item, self._what, f"{where}[{i}]")
                for i, item in enumerate(self._list(key, "a list of objects"))]

    def text(self, key: str) -> str | None:
        return self._typed(key, str, "a string")

    def texts(self, key: str) -> list[str]:
        values = self._list(key, "a list of strings")
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise shape_error(self._what, f"{self._path(key)}[{i}]", "a string", value)
        return values

    def flag(self, key: str) -> bool | None:
        return self._typed(key, bool, "true or false")

    def number(self, key: str) -> int | None:
        value = self._data.get(key)
        if isinstance(value, bool):  # JSON's true is no id
            raise shape_error(self._what, self._path(key), "a whole number", value)
        return self._typed(key, int, "a whole number")

    def ref(self, key: str) -> str | None:
        """An id, which helpdesks send as a number or a string, as text."""
        value = self._data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self._typed(key, str, "an id (a number or a string)")

    def _list(self, key: str, expected: str) -> list[Any]:
        value = self._data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise shape_error(self._what, self._path(key), expected, value)
        return value

    def _typed(self, key: str, kind: type[T], expected: str) -> T | None:
        value = self._data.get(key)
        if value is None or isinstance(value, kind):
            return value
        raise shape_error(self._what, self._path(key), expected, value)

    def _path(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


@dataclass(frozen=True, slots=True)
class Authorization:
    """The credential header of a route's requests (`header`: Authorization, unless the
    helpdesk names its own, as Redmine's X-Redmine-API-Key): `scheme` makes its value from the
    route's `secret` (a setting name: "token", "api_key"), read as each request is sent."""

    secret: str
    scheme: Callable[[str], str]
    header: str = "Authorization"

    def value(self, route: RouteBase) -> str:
        return self.scheme(reveal(route, self.secret))


def basic(user: str, password: str) -> str:
    """An Authorization value for HTTP Basic (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# A helpdesk's reasons, read from its JSON error body where a `message` field is not where it
# says them; "" when the body holds none, and then helpdesk_message() looks.
Words = Callable[[dict[str, Any]], str]


class Http:
    """A route's client: `authorization` goes on every request, `headers` too; `words` reads
    the helpdesk's error bodies; a status in `transient` is retried as a 503 would be."""

    def __init__(
        self,
        route: RouteBase,
        base_url: str,
        *,
        authorization: Authorization | None = None,
        headers: Mapping[str, str] | None = None,
        words: Words | None = None,
        transient: tuple[int, ...] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._route = route
        self._authorization = authorization
        self._headers = {"User-Agent": f"probe/{__version__}", **(headers or {})}
        self._words = words
        self._transient = transient
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._route.timeout),
                connector=aiohttp.TCPConnector(ssl=ssl_context(self._route)),
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (),
    ) -> Response:
        """Send one request. A status in `ok` is returned even if it is not 2xx (a 404 that
        means "gone", say); any other non-2xx raises TicketError."""
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        what = f"{method} {path.split('?')[0]}"
        if self._authorization is not None:
            credential = {self._authorization.header: self._authorization.value(self._route)}
            headers = {**credential, **(headers or {})}
        through, proxy_headers = self._proxy(url, what)
        if proxy_headers is not None and url.startswith("http://"):
            # Plain HTTP goes to the proxy as it is (no CONNECT): its credentials with it.
            headers, proxy_headers = {**(headers or {}), **proxy_headers}, None
        try:
            async with self._client().request(
                method, url, json=json_body, data=data, params=params, headers=headers,
                allow_redirects=False, proxy=through, proxy_headers=proxy_headers,
            ) as response:
                text = _decode(await _read(response, what), response.charset)
                result = Response(response.status, response.headers, text, what)
        except TimeoutError:  # first: a TimeoutError is an OSError too
            raise TicketError(f"{what}: no answer within {self._route.timeout:g}s") from None
        except aiohttp.ClientHttpProxyError as err:  # the proxy answered CONNECT with a no
            refused = f"{what}: the proxy {known.redact(through or '')} refused: HTTP {err.status}"
            raise TicketError(f"{refused} {err.message}".rstrip(),
                              permanent=400 <= err.status < 500 and err.status not in TRANSIENT
                              ) from err
        except aiohttp.ClientProxyConnectionError as err:
            raise TicketError(f"{what}: the proxy {known.redact(through or '')}: "
                              f"{_describe(err)}") from err
        except (aiohttp.ClientError, OSError) as err:
            raise TicketError(f"{what}: {_describe(err)}") from err
        if 200 <= result.status < 300:
            return result  # Response.json() refuses a body nested too deep
        if result.status in ok and _depth(text) <= MAX_DEPTH:
            return result  # the backend reads the helpdesk's reasons from it
        raise self._error(result)

    def _proxy(self, url: str, what: str) -> tuple[str | None, dict[str, str] | None]:
        """The proxy for `url` and the credentials it takes: the route's own, or those in the
        environment's proxy URL (taken out of it: aiohttp is given them as a header)."""
        try:
            chosen = proxy.choose(url, self._route.proxy, os.environ)
        except ValueError as err:
            raise TicketError(f"{what}: {err}", permanent=True) from None
        if chosen is None:
            return None, None
        credentials = None
        if self._route.proxy == chosen and self._route.has_secret("proxy_credentials"):
            credentials = reveal(self._route, "proxy_credentials")
        parts = urlsplit(chosen)
        if parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")
            credentials = credentials or f"{user}:{password}"
            chosen = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
        if credentials is None:
            return chosen, None
        token = base64.b64encode(credentials.encode()).decode()
        return chosen, {"Proxy-Authorization": f"Basic {token}"}

    def _error(self, response: Response) -> TicketError:
        status = response.status
        message = f"{response.what}: HTTP {status}"
        detail = self._detail(response.text)
        if detail:
            message += f": {detail}"
        wait = retry_after(response.headers)
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            return TicketError(f"{message} (redirected to {location}: check the route's url)",
                               permanent=True, refused=True)
        # A 403 is a rate limit when the quota is spent or the server says when to retry
        # (GitHub's primary and secondary limits); any other 403 is a refusal.
        limited = response.headers.get("X-RateLimit-Remaining") == "0" or bool(
            response.headers.get("Retry-After"))
        again = status in TRANSIENT or status in self._transient
        if again or status >= 500 or (status == 403 and limited):
            # A 503, a 429, a 408, a rate-limit 403 or a status the helpdesk documents as "try
            # again" says the work was not done; a 500, 502 or 504 may come after it was.
            refused = again or status in (403, 503)
            return TicketError(message, retry_after=wait, refused=refused)
        return TicketError(message, permanent=True, refused=True)

    def _detail(self, text: str) -> str:
        """The helpdesk's own words from an error body."""
        if self._words is not None:
            data = error_object(text)
            said = self._words(data) if data is not None else ""
            if said:
                return said
        return helpdesk_message(text)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _read(response: aiohttp.ClientResponse, what: str) -> bytes:
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            raise TicketError(f"{what}: HTTP {response.status} with a body larger than "
                              f"{MAX_BODY // (1024 * 1024)} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except (LookupError, ValueError):  # no such codec, or one that is no text encoding ("hex")
        return body.decode("utf-8", errors="replace")


def _depth(text: str) -> int:
    """How deep the JSON in `text` nests (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0  # cannot be deeper than its brackets; the common case, at C speed
    depth = deepest = 0
    for bracket in _NOT_BRACKETS.sub("", _STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _describe(err: BaseException) -> str:
    if isinstance(err, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted: {err.certificate_error}"
    if isinstance(err, aiohttp.ClientConnectorError):
        return f"cannot connect: {describe_os_error(err.os_error)}"
    return str(err) or type(err).__name__


def error_object(text: str) -> dict[str, Any] | None:
    """An error body as the JSON object helpdesks send; None when it is not one."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
        return None
    return data if isinstance(data, dict) else None


def helpdesk_message(text: str) -> str:
    """The helpdesk's own words from an error body: a JSON message field if there is one, the
    words of a JSON list of them (GLPI's ["ERROR_CODE", "message"], TOPdesk's [{"message"}]),
    else the start of the text."""
    data = error_object(text)
    if data is not None:
        for key in ("message", "error", "description", "errorMessages", "errors", "details"):
            value = data.get(key)
            if value:
                return _excerpt(value if isinstance(value, str) else json.dumps(value))
    said = _listed(text)
    return _excerpt(said or text)


def _listed(text: str) -> str:
    """The words of an error body that is a JSON list of strings or of {"message"} objects;
    "" for any other body."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(data, list):
        return ""
    words = [item if isinstance(item, str) else item.get("message") if isinstance(item, dict)
             else None for item in data[:10]]
    if not words or not all(isinstance(w, str) and w for w in words):
        return ""
    return ("; " if any(isinstance(item, dict) for item in data) else ": ").join(
        str(w) for w in words)


def _excerpt(text: str) -> str:
    flat = " ".join(re.sub(r"<[^>]*>", " ", text).split())  # an HTML error page, as words
    return flat if len(flat) <= MAX_ERROR_TEXT else flat[: MAX_ERROR_TEXT - 3] + "..."


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from Retry-After (seconds or an HTTP date) or a rate-limit reset header
    (epoch seconds, ISO 8601 time, or seconds to wait)."""
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            pass
    for name in ("X-RateLimit-Reset", "RateLimit-Reset", "X-Rate-Limit-Reset"):
        value = headers.get(name)
        if not value:
            continue
        value = value.strip()
        try:
            number = float(value)
        except ValueError:
            try:
                moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return max(0.0, moment.timestamp() - now)
        # An epoch (GitHub, ServiceNow) is a large number; a small one is seconds to wait.
        return max(0.0, number - now) if number > 1_000_000_000 else number
    return None
