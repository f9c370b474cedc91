"""The http check: one request on a fresh connection, its status, body and phase timings.

It speaks HTTP/1.1 itself on asyncio streams rather than through a client library: each run
needs a fresh connection, its phases timed as blackbox_exporter names them (resolve, connect,
tls, processing, transfer, summed over redirects), every read bounded, and little CPU. Each
hop connects through `checks.net`, as tcp and tls do, so that a failure to connect or a
rejected certificate means and reads the same whichever kind met it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import ClassVar, Literal
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

from cryptography import x509
from pydantic import field_validator

from checks.base import Gauge, Kind, PhaseTimer, Result, Spec
from checks.net import (
    CheckFailed,
    IpFamily,
    client_context,
    describe_os_error,
    describe_ssl_error,
    handshake,
    open_first,
    resolve_host,
    tls_version_name,
)
from checks.values import (
    SENSITIVE_NAME,
    Duration,
    HeaderSettings,
    HeaderUnavailable,
    ReadableFile,
    compile_regex,
    format_duration,
)

PHASES = ("resolve", "connect", "tls", "processing", "transfer")


class HttpSpec(Spec, HeaderSettings):
    kind: ClassVar[str] = "http"

    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    body: str | None = None
    expect_status: list[int | str] = ["2xx"]
    body_contains: str | None = None
    body_regex: str | None = None
    max_body_bytes: int = 1024 * 1024
    max_latency: Duration | None = None
    follow_redirects: bool = True
    max_redirects: int = 10
    tls_verify: bool = True
    ca_file: ReadableFile | None = None
    ip_family: IpFamily = "auto"

    @property
    def target(self) -> str:
        return self.url

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.password is not None:
            # Never echo it: the value is a secret, and the error is printed.
            raise ValueError("a password in the URL is an inline secret: it is not allowed")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError(f"{value!r} has no host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"{value!r} has an invalid port") from None
        return value

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, value: list[int | str]) -> list[int | str]:
        if not value:
            raise ValueError("expects no status at all: list at least one, like 200 or 2xx")
        for status in value:
            if isinstance(status, int):
                if not 100 <= status <= 599:
                    raise ValueError(f"{status} is not an HTTP status")
            elif not re.fullmatch(r"[1-5]xx", status):
                raise ValueError(f"{status!r} is not an HTTP status or a class like 2xx")
        return value

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_regex(value)
        return value

    @field_validator("max_body_bytes", "max_redirects")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value

    def status_expected(self, status: int) -> bool:
        return any(
            status == want if isinstance(want, int) else str(status)[0] == want[0]
            for want in self.expect_status
        )


REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HEADER_LIMIT = 64 * 1024
EXCERPT_BYTES = 512
_INTERESTING_HEADERS = ("content-type", "server", "location")
# Keys that describe one hop; cleared when a redirect starts the next one.
_HOP_EVIDENCE = (
    "address", "status_code", "http_version", "headers", "content_length", "body_bytes",
    "body_truncated", "body_excerpt", "tls_version", "cert_not_after",
)
_ALPN = ("http/1.1",)
_STATUS_LINE = re.compile(rb"HTTP/(\d\.\d) ([1-5]\d\d)(?: [^\r\n]*)?\r?\n")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
# Characters left as they are in the request target: what requests' requote_uri keeps, so a
# URL that is already percent-encoded is sent unchanged and spaces or non-ASCII get escaped.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def _user_agent() -> str:
    try:
        return f"probe/{metadata.version('probe-ticketing')}"
    except metadata.PackageNotFoundError:
        return "probe"


USER_AGENT = _user_agent()


@dataclass(slots=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool


async def run(spec: HttpSpec, *, timeout: float) -> Result:
    timer = PhaseTimer(HttpSpec.kind, spec.target, PHASES)
    try:
        async with asyncio.timeout(timeout):
            response = await _follow(spec, timer)
    except TimeoutError:
        return timer.timed_out(timeout)
    except CheckFailed as failed:
        return failed.result(timer)
    reason = _judge(spec, response, timer.elapsed())
    return timer.down(reason) if reason else timer.up()


def _judge(spec: HttpSpec, response: _Response, elapsed: float) -> str:
    """Why a complete response fails the spec, or "" when it passes."""
    if not spec.status_expected(response.status):
        expected = ", ".join(str(status) for status in spec.expect_status)
        return f"HTTP {response.status} (expected {expected})"
    within = f" (in the first {len(response.body)} bytes read)" if response.truncated else ""
    if spec.body_contains is not None and spec.body_contains.encode() not in response.body:
        return f"body does not contain {spec.body_contains!r}{within}"
    if spec.body_regex is not None and not compile_regex(spec.body_regex).search(response.body):
        return f"body does not match /{spec.body_regex}/{within}"
    if spec.max_latency is not None and elapsed > spec.max_latency:
        return f"took {format_duration(elapsed)} (max {format_duration(spec.max_latency)})"
    return ""


async def _follow(spec: HttpSpec, timer: PhaseTimer) -> _Response:
    """The response at the end of the redirects, phases summed over all of them."""
    url, method, body = spec.url, spec.method, spec.body
    try:
        headers = spec.header_values()
    except HeaderUnavailable as err:
        raise CheckFailed(str(err), "unknown") from None
    origin = _origin(urlsplit(url))
    redirects = 0
    while True:
        timer.evidence["url"] = _redact(url)
        timer.evidence["redirects"] = redirects
        response = await _fetch(spec, timer, url, method, body, headers)
        location = response.headers.get("location")
        if not (spec.follow_redirects and location and response.status in REDIRECT_STATUSES):
            return response
        if redirects >= spec.max_redirects:
            raise CheckFailed(f"too many redirects ({spec.max_redirects})")
        try:
            url = urljoin(url, location)
            parts = urlsplit(url)
        except ValueError:  # "http://[::1", say
            raise CheckFailed(f"redirected to {location!r}, which is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CheckFailed(f"redirected to {location!r}, which is not an http(s) URL")
        try:
            _ascii_host(parts.hostname)
        except CheckFailed:  # the target's doing, not the spec's: down, not unknown
            raise CheckFailed(f"redirected to {location!r}, whose host name is not valid") from None
        redirects += 1
        if _origin(parts) != origin:
            # What curl and browsers do: credentials go to the origin they were set for only.
            headers = {n: v for n, v in headers.items() if not SENSITIVE_NAME.search(n)}
        # What browsers and Go do: a 303, or a 301/302 answering a POST, is followed by a GET.
        if (response.status == 303 and method != "HEAD") or (
            response.status in (301, 302) and method == "POST"
        ):
            method, body = "GET", None


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # _fetch says so
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port


async def _fetch(
    spec: HttpSpec,
    timer: PhaseTimer,
    url: str,
    method: str,
    body: str | None,
    request_headers: dict[str, str],
) -> _Response:
    """One request on a fresh connection: a pooled one would hide an outage."""
    for key in _HOP_EVIDENCE:
        timer.evidence.pop(key, None)
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = _ascii_host(parts.hostname or "")
    try:
        port = parts.port or (443 if https else 80)
    except ValueError:
        raise CheckFailed(f"{_redact(url)!r} has an invalid port") from None

    addresses = await resolve_host(timer, host, spec.ip_family)
    reader, writer = await open_first(timer, addresses, port, limit=HEADER_LIMIT)
    clean, stage = False, "tls"
    try:
        if https:
            await _start_tls(spec, timer, writer, host)
        stage = "processing"
        with timer.phase("processing"):
            writer.write(_request(parts, host, port, method, request_headers, body))
            await writer.drain()
            status, version, headers = await _read_head(reader)
        timer.evidence["status_code"] = status
        timer.evidence["http_version"] = version
        timer.evidence["headers"] = {k: headers[k] for k in _INTERESTING_HEADERS if k in headers}
        length = _content_length(headers)
        if length is not None:
            timer.evidence["content_length"] = length
        stage = "transfer"
        with timer.phase("transfer"):
            data, truncated = await _read_body(reader, method, status, headers, length, spec)
        timer.evidence["body_bytes"] = len(data)
        timer.evidence["body_truncated"] = truncated
        timer.evidence["body_excerpt"] = data[:EXCERPT_BYTES].decode("utf-8", "replace")
        clean = not truncated
        return _Response(status, headers, data, truncated)
    except ssl.SSLError as err:
        raise CheckFailed(f"TLS error during {stage}: {describe_ssl_error(err)}") from err
    except OSError as err:
        raise CheckFailed(f"{describe_os_error(err)} during {stage}") from err
    finally:
        # A connection left mid-response (a capped body, an error) is aborted so that the
        # server stops sending at once. So is a TLS one with the response whole: closing it
        # politely waits for the server's answer to our close_notify, a round trip and a
        # wake-up that cost 8 % of an https check's CPU (the response's length, or the
        # server's close, already said where it ends).
        if clean and not https:
            writer.close()
        else:
            writer.transport.abort()


def _ascii_host(host: str) -> str:
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise CheckFailed(f"{host!r} is not a valid host name", "unknown") from None


async def _start_tls(
    spec: HttpSpec, timer: PhaseTimer, writer: asyncio.StreamWriter, host: str
) -> None:
    context = client_context(spec.ca_file, verify=spec.tls_verify, check_hostname=True,
                             alpn=_ALPN)
    tls = await handshake(timer, writer, context, host)
    if isinstance(tls, ssl.SSLObject):
        version = tls.version()
        if version:
            timer.evidence["tls_version"] = tls_version_name(version)
        der = tls.getpeercert(binary_form=True)
        not_after = _not_after(der) if der else None
        if not_after is not None:
            timer.evidence["cert_not_after"] = not_after


@functools.lru_cache(maxsize=1024)
def _not_after(der: bytes) -> str | None:
    """Parsed once per certificate: a server sends the same one every time."""
    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc.isoformat()
    except ValueError:  # a certificate OpenSSL took but cryptography cannot parse
        return None


def _request(
    parts: SplitResult,
    host: str,
    port: int,
    method: str,
    extra: dict[str, str],
    body: str | None,
) -> bytes:
    target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_URL_SAFE)
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if parts.scheme == "https" else 80):
        authority += f":{port}"
    headers = {
        "host": ("Host", authority),
        "user-agent": ("User-Agent", USER_AGENT),
        "accept": ("Accept", "*/*"),
        "accept-encoding": ("Accept-Encoding", "identity"),
    }
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        basic = base64.b64encode(credentials.encode()).decode()
        headers["authorization"] = ("Authorization", f"Basic {basic}")
    for name, value in extra.items():
        headers[name.lower()] = (name, value)
    # Not the spec's to choose: one request per connection, and the length of what we send.
    headers["connection"] = ("Connection", "close")
    payload = body.encode() if body is not None else b""
    if body is not None or method in ("POST", "PUT", "PATCH"):
        headers["content-length"] = ("Content-Length", str(len(payload)))
    else:
        headers.pop("content-length", None)
    lines = [f"{method} {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers.values())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    """The status, HTTP version and headers (names lowercased), at most 64 KiB of them."""
    budget = HEADER_LIMIT
    while True:
        line = await _header_line(reader, budget)
        budget -= len(line)
        if not line:
            raise CheckFailed("the server closed the connection without a response")
        match = _STATUS_LINE.fullmatch(line)
        if not match:
            raise CheckFailed(f"malformed HTTP response: {_show(line)}")
        headers: dict[str, str] = {}
        name = ""
        while True:
            line = await _header_line(reader, budget)
            budget -= len(line)
            if line in (b"\r\n", b"\n"):
                break
            if not line.endswith(b"\n"):
                raise CheckFailed("the server closed the connection in the middle of the headers")
            if line[:1] in (b" ", b"\t") and name:  # an obsolete folded continuation line
                headers[name] += " " + line.strip().decode("latin-1")
                continue
            raw_name, colon, raw_value = line.partition(b":")
            if not colon or not raw_name or raw_name != raw_name.strip():
                raise CheckFailed(f"malformed HTTP response: header line {_show(line)}")
            name = raw_name.decode("latin-1").lower()
            value = raw_value.strip().decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        status = int(match[2])
        if status >= 200 or status == 101:  # 1xx interim answers (103 Early Hints) come first
            return status, match[1].decode(), headers


async def _header_line(reader: asyncio.StreamReader, budget: int) -> bytes:
    try:
        line = await reader.readline()
    except ValueError:  # one line longer than the stream's limit
        line = b""
        budget = -1
    if len(line) > budget:
        raise CheckFailed("response headers larger than 64 KiB")
    return line


def _show(line: bytes) -> str:
    return repr(line.rstrip(b"\r\n")[:80].decode("latin-1"))


def _content_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None or "transfer-encoding" in headers:
        return None
    values = {v.strip() for v in value.split(",")}
    text = values.pop()
    # More than 19 digits is no length a body has, and past 4300 int() refuses to read them.
    if values or not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise CheckFailed(f"malformed HTTP response: Content-Length {value!r}")
    return int(text)


async def _read_body(
    reader: asyncio.StreamReader,
    method: str,
    status: int,
    headers: dict[str, str],
    length: int | None,
    spec: HttpSpec,
) -> tuple[bytes, bool]:
    """At most max_body_bytes of the body, and whether more was left unread."""
    cap = spec.max_body_bytes
    if method == "HEAD" or status in (101, 204, 304):
        return b"", False
    if headers.get("transfer-encoding", "").lower().rstrip().endswith("chunked"):
        return await _read_chunked(reader, cap)
    if length is not None:
        want = min(length, cap)
        try:
            return await reader.readexactly(want), length > cap
        except asyncio.IncompleteReadError as err:
            got = len(err.partial)
            raise CheckFailed(f"the response body ended after {got} of {length} bytes") from err
    data = bytearray()
    while len(data) < cap:
        chunk = await reader.read(cap - len(data))
        if not chunk:
            return bytes(data), False
        data += chunk
    return bytes(data), bool(await reader.read(1))


async def _read_chunked(reader: asyncio.StreamReader, cap: int) -> tuple[bytes, bool]:
    data = bytearray()
    try:
        while True:
            line = await reader.readline()
            size_text = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not _CHUNK_SIZE.fullmatch(size_text):
                raise CheckFailed(f"invalid chunked encoding: chunk size {_show(line)}")
            size = int(size_text, 16)
            if size == 0:
                while (await reader.readline()).strip():  # trailers: not wanted
                    pass
                return bytes(data), False
            room = cap - len(data)
            if size > room:
                data += await reader.readexactly(room)
                return bytes(data), True
            data += await reader.readexactly(size)
            end = await reader.readline()
            if not end:
                raise asyncio.IncompleteReadError(end, 2)
            if end not in (b"\r\n", b"\n"):
                raise CheckFailed("invalid chunked encoding: a chunk is longer than its size")
    except asyncio.IncompleteReadError as err:
        raise CheckFailed(
            "invalid chunked encoding: the body ended in the middle of a chunk") from err
    except ValueError as err:  # a line longer than the stream's limit
        raise CheckFailed("invalid chunked encoding: a line longer than 64 KiB") from err


def _redact(url: str) -> str:
    """The URL without its password, which must not end up in a ticket."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    hostport = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:xxxxx@{hostport}").geturl()


# --- what /metrics and a ticket's triage see -----------------------------------------------

def gauges(result: Result) -> Iterator[Gauge]:
    """blackbox_exporter's probe_http_* series."""
    ev = result.evidence
    if "status_code" in ev:
        yield Gauge("probe_http_status_code", "Response HTTP status code", ev["status_code"])
    yield Gauge("probe_http_redirects", "The number of redirects", ev.get("redirects", 0))
    yield Gauge("probe_http_ssl", "Indicates if SSL was used for the final redirect",
                str(ev.get("url", "")).startswith("https:"))
    if "content_length" in ev:
        yield Gauge("probe_http_content_length", "Length of http content response",
                    ev["content_length"])
    if "body_bytes" in ev:
        yield Gauge("probe_http_uncompressed_body_length",
                    "Length of uncompressed response body", ev["body_bytes"])
    version = str(ev.get("http_version", "")).removeprefix("HTTP/")
    if version.replace(".", "").isdigit():
        yield Gauge("probe_http_version", "Returns the version of HTTP of the probe response",
                    float(version))


def endpoint(spec: HttpSpec) -> tuple[str | None, int | None]:
    parts = urlsplit(spec.url)
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


KIND = Kind(spec=HttpSpec, run=run, phases=PHASES,
            phase_metric="probe_http_duration_seconds", gauges=gauges, endpoint=endpoint)
