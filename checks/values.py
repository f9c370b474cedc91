"""The value types the configuration is written in, shared by the check kinds and the rest of
probe (agent, helpdesk routes, web config): durations and percentages, ports and `host:port`,
files that must be readable, models that refuse unknown keys, regular expressions in RE2's
syntax, and request headers that may carry credentials.

Each type validates at load time and says what is wrong in words ("'5 minutes' is not a
duration (like 250ms, 30s, 5m, 1h, 1d)"): these words are what a user reads, at file:line.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

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

# --- durations and percentages ------------------------------------------------------------

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


# --- ports, files and models -------------------------------------------------------------

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
