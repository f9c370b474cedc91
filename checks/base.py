"""What every check kind shares: the Result it returns, the base of its spec, the `Kind` record
that declares a kind to the rest of probe, and the value types of the configuration (durations,
percentages) that specs are written in.

A check kind is one module with a `Spec` model, `async def run(spec, *, timeout) -> Result`,
the gauges its results add to /metrics and the host and port triage looks at, declared in one
`Kind`. It never raises for a sick target: a target that is down gives `Result.down(...)`, and a
check that could not run at all (no permission for ICMP, say) gives `Result.unknown(...)`, which
must never count as a failure of the target.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, NamedTuple, TypeVar

import re2  # type: ignore[import-untyped]
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

State = Literal["up", "down", "unknown"]
Evidence = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Result:
    """One run of one check: what was seen, how long each phase took, and why it failed."""

    kind: str
    target: str
    state: State
    duration: float
    reason: str = ""
    phases: Mapping[str, float] = field(default_factory=dict)
    evidence: Evidence = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "up"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "state": self.state,
            "ok": self.ok,
            "duration_seconds": round(self.duration, 6),
            "reason": self.reason,
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "evidence": dict(self.evidence),
            "started_at": self.started_at,
        }


class Probe:
    """Times the phases of one check run and builds its Result.

    `with probe.phase("connect"): ...` adds the time spent to that phase; the phase being timed
    when a timeout strikes is named in the reason ("timed out after 5s during connect").
    """

    def __init__(self, kind: str, target: str, phases: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.target = target
        self.started_at = time.time()
        self._t0 = time.perf_counter()
        self.phases: dict[str, float] = dict.fromkeys(phases, 0.0)
        self.evidence: dict[str, Any] = {}
        self.current: str | None = None

    def phase(self, name: str) -> _PhaseTimer:
        return _PhaseTimer(self, name)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def _result(self, state: State, reason: str) -> Result:
        return Result(
            kind=self.kind,
            target=self.target,
            state=state,
            duration=self.elapsed(),
            reason=reason,
            phases=self.phases,
            evidence=self.evidence,
            started_at=self.started_at,
        )

    def up(self) -> Result:
        return self._result("up", "")

    def down(self, reason: str) -> Result:
        return self._result("down", reason)

    def unknown(self, reason: str) -> Result:
        return self._result("unknown", reason)

    def timed_out(self, timeout: float) -> Result:
        during = f" during {self.current}" if self.current else ""
        return self.down(f"timed out after {format_duration(timeout)}{during}")


class _PhaseTimer:
    __slots__ = ("_name", "_probe", "_t0")

    def __init__(self, probe: Probe, name: str) -> None:
        self._probe = probe
        self._name = name
        self._t0 = 0.0

    def __enter__(self) -> None:
        self._probe.current = self._name
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        spent = time.perf_counter() - self._t0
        self._probe.phases[self._name] = self._probe.phases.get(self._name, 0.0) + spent
        # A phase left by an exception (the timeout's cancellation) stays current, so that
        # timed_out() can name it.
        if exc[0] is None:
            self._probe.current = None


# --- configuration value types -------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(value: object) -> float:
    """Prometheus-style durations (`250ms`, `30s`, `1h30m`, `1d`) to seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not a duration (like 250ms, 30s, 5m, 1h, 1d)")
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f"{value!r} has no unit: write it like 30s or 5m")
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration (like 250ms, 30s, 5m, 1h, 1d)")
    if not math.isfinite(total):  # 400 digits make an infinite float, which nothing can wait
        raise ValueError(f"{text[:20]}... is too long a duration")
    return total


def format_duration(seconds: float) -> str:
    """The shortest Prometheus-style spelling: 0.25 -> 250ms, 90 -> 1m30s, 86400 -> 1d."""
    if seconds < 0.001:
        return f"{seconds * 1000:.2g}ms"  # loopback round trips: 0.042ms, not 0ms
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:.3g}s"
    rest, parts = int(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def parse_percent(value: object) -> float:
    """`20%` to 0.2."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1])
        except ValueError:
            pass
        else:
            if 0 <= number <= 100:
                return number / 100
            raise ValueError(f"{value!r} is not between 0% and 100%")
    raise ValueError(f"{value!r} is not a percentage (like 20%)")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w|y))+$"}),
]
Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    PlainSerializer(lambda v: f"{v * 100:g}%", return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?%$"}),
]
IpFamily = Literal["auto", "ipv4", "ipv6"]


def _readable_file(value: Path) -> Path:
    try:
        readable = value.is_file()
    except OSError:  # is_file() passes some on, a name too long (ENAMETOOLONG) for one
        readable = False
    if not readable:
        raise ValueError(f"{str(value)!r} is not a readable file")
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a port (1-65535)")
    return value


def host_port(example: str) -> AfterValidator:
    """A `host:port` setting; `example` is what the error shows the user."""

    def check(value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not host:port (like {example})")
        return value

    return AfterValidator(check)


ReadableFile = Annotated[Path, AfterValidator(_readable_file)]
Port = Annotated[int, AfterValidator(_port)]


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not pass silently); loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Spec(StrictModel):
    """The base of every check kind's settings."""

    kind: ClassVar[str]

    @property
    def target(self) -> str:
        raise NotImplementedError


# --- what a kind declares ------------------------------------------------------------------

S = TypeVar("S", bound=Spec)

# The house rules for a metric name (STYLE.md, 7): probe_ prefix, base units.
_PHASE_METRIC = re.compile(r"probe_[a-z0-9_]+_seconds")


class Gauge(NamedTuple):
    """One sample a result adds to /metrics. probe.metrics labels it with the check's `check`,
    `kind` and `service`, then `labels`; samples of one name form one family, in the order the
    kind yields them.

    A NamedTuple rather than a frozen dataclass: a scrape of 10,000 checks makes some 20,000 of
    them, and a frozen dataclass takes 0.9µs to build to a NamedTuple's 0.4µs."""

    name: str
    help: str
    value: float
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Kind(Generic[S]):
    """A check kind as the rest of probe sees it: the configuration takes `spec`, the scheduler
    calls `run`, /metrics shows each of `phases` in `phase_metric` and whatever `gauges` makes
    of a result, and a new ticket's triage looks at the host and port `endpoint` names (None
    where the kind has none). Each field is required, so that a kind that leaves one out fails
    when its module is imported, not at the first scrape."""

    spec: type[S]
    run: Callable[..., Awaitable[Result]]  # (spec, *, timeout) -> Result
    phases: tuple[str, ...]
    phase_metric: str
    gauges: Callable[[Result], Iterable[Gauge]]
    endpoint: Callable[[S], tuple[str | None, int | None]]

    def __post_init__(self) -> None:
        if not _PHASE_METRIC.fullmatch(self.phase_metric):
            raise ValueError(f"{self.spec.kind}: phase_metric {self.phase_metric!r} is not "
                             "a metric name like probe_<kind>_duration_seconds")
        if not (callable(self.run) and callable(self.gauges) and callable(self.endpoint)):
            raise TypeError(f"{self.spec.kind}: run, gauges and endpoint must be functions")


# --- regular expressions from the configuration --------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # its own error goes into our message, not to stderr


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str, *, multiline: bool = False) -> Any:
    """A pattern from the configuration, in RE2's syntax, which blackbox_exporter's Go regexps
    share: matching takes time linear in the text, so no body or banner a target sends can
    hold the daemon in a backtracking pattern. Raises ValueError, in words."""
    try:
        return re2.compile(("(?m)" if multiline else "") + pattern, _RE2_OPTIONS)
    except re2.error as err:
        said = err.args[0] if err.args else err
        why = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        raise ValueError(
            f"{pattern!r} is not a valid regular expression: {why} (RE2 syntax, as in "
            "blackbox_exporter: no backreferences or lookaround)"
        ) from None


# --- request headers that may carry credentials -----------------------------------------

# Names of headers (and query parameters) whose values are credentials.
SENSITIVE_NAME = re.compile(
    r"authorization|cookie|token|secret|key|passw|pwd|credential|signature|^sig$|session|auth",
    re.IGNORECASE,
)
ENV_REF = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class HeaderUnavailable(Exception):
    """A header's value, named by `env:NAME` or `headers_file`, cannot be read now."""


class HeaderSettings(StrictModel):
    """`headers` to send, and `headers_file` for values kept in files. A value may be
    `env:NAME`; a credential (a header with a sensitive name, Authorization or X-Api-Key say)
    must come from the environment or a file, as every other secret does."""

    headers: dict[str, str] = {}
    headers_file: dict[str, Path] = {}  # header name: the file that holds its value

    @field_validator("headers")
    @classmethod
    def _inline(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _header_name(name)
            if "\r" in text or "\n" in text:
                raise ValueError(f"the value of header {name!r} contains a line break")
            if SENSITIVE_NAME.search(name) and not ENV_REF.fullmatch(text):
                raise ValueError(
                    f"header {name!r} carries a credential, which may not be inline: write "
                    f"env:NAME, or put it in a file and set headers_file: {{{name}: PATH}}"
                )
        return value

    @field_validator("headers_file")
    @classmethod
    def _files(cls, value: dict[str, Path], info: ValidationInfo) -> dict[str, Path]:
        inline = {name.lower() for name in info.data.get("headers") or {}}
        for name in value:
            _header_name(name)
            if name.lower() in inline:
                raise ValueError(f"header {name!r} is set in both headers and headers_file")
        return value

    def header_values(self) -> dict[str, str]:
        return header_values(self.headers, self.headers_file)


def _header_name(name: str) -> None:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid header name")


def header_values(headers: Mapping[str, str], files: Mapping[str, Path]) -> dict[str, str]:
    """The headers to send, `env:NAME` values and files read now (a rotated credential is
    used from the next request on). Raises `HeaderUnavailable`, never echoing a value."""
    values: dict[str, str] = {}
    for name, text in headers.items():
        ref = ENV_REF.fullmatch(text)
        if ref is None:
            values[name] = text
        elif (value := os.environ.get(ref[1])) is not None:
            values[name] = value
        else:
            raise HeaderUnavailable(f"environment variable {ref[1]} (header {name}) is not set")
    for name, path in files.items():
        try:
            values[name] = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise HeaderUnavailable(
                f"headers_file: cannot read {path} (header {name}): {why}") from None
    for name, value in values.items():
        if "\r" in value or "\n" in value or "\0" in value:
            raise HeaderUnavailable(f"the value of header {name} contains a line break")
    return values


# --- helpers the kinds share ---------------------------------------------------------------

_FAMILIES = {"auto": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


@functools.lru_cache(maxsize=16384)
def _literal(host: str) -> tuple[str, int] | None:
    """An address literal in its canonical form, and its IP version; None for a name.
    Cached: parsing an address costs more than the rest of a tcp check's Python."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return str(address), address.version


def is_address(host: str) -> bool:
    """Whether `resolve` takes `host` as it is, without a lookup."""
    return _literal(host) is not None


async def resolve(host: str, family: IpFamily = "auto") -> list[str]:
    """The addresses of `host`, IPv6 first where both exist (as blackbox_exporter prefers).

    An address literal is returned as it is, without a lookup. Raises `OSError` (a
    `socket.gaierror`) when the name does not resolve.
    """
    literal = _literal(host)
    if literal is not None:
        address, version = literal
        if (family, version) in (("ipv4", 6), ("ipv6", 4)):
            raise OSError(f"{host} is not an {family} address")
        return [address]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, None, family=_FAMILIES[family], type=socket.SOCK_STREAM
    )
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return sorted(addresses, key=lambda a: ":" not in a)


def describe_os_error(err: OSError) -> str:
    """A short reason a human understands, from a socket-level error."""
    if isinstance(err, socket.gaierror):
        if err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return "name does not resolve"
        return f"name lookup failed: {err.strerror or err}"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ConnectionResetError):
        return "connection reset by peer"
    if err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    text = str(err)
    return text or type(err).__name__


def tls_version_name(version: str | None) -> str | None:
    """Python's `TLSv1.3` as blackbox_exporter and people write it: `TLS 1.3`."""
    return version.replace("TLSv", "TLS ") if version else None
