"""Secrets in the configuration: never inline, only `NAME_file` paths or `env:NAME` references;
and keeping their values out of everything probe prints, logs, serves and sends.

A route declares each secret as two optional fields, `token` (which only takes `env:NAME`) and
`token_file`; `Secrets.reveal("token")` reads it when a backend needs it, never at load time,
so that `probe validate` works without the credentials at hand.

`redact(text, secrets)` replaces every known secret value with `<redacted>`, and credentials
that stand where credentials stand (a URL's password, a sensitive query parameter, an
`Authorization:` or `Cookie:` header, a `Bearer` token) even when probe never knew them.
`known` is the process's set of secret values: every `reveal` adds to it, the daemon adds what
`Config.secret_values()` finds at start and on reload, and it is itself the logging filter that
redacts every log record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import AfterValidator, ValidationInfo, model_validator

from checks.base import Result
from checks.values import ENV_REF, SENSITIVE_NAME, HeaderUnavailable, StrictModel, header_values


def _env_ref(value: str, info: ValidationInfo) -> str:
    if not ENV_REF.fullmatch(value):
        raise ValueError(
            f"inline secrets are not allowed: write env:NAME, or put it in a file and set "
            f"{info.field_name}_file"
        )
    return value


EnvRef = Annotated[str, AfterValidator(_env_ref)]


class SecretError(Exception):
    """A secret named in the configuration cannot be read now."""


class Secrets(StrictModel):
    """Base of models that hold secrets. `secrets` names them, and whether each is required."""

    secrets: ClassVar[dict[str, bool]] = {}

    @model_validator(mode="after")
    def _one_source_each(self) -> Secrets:
        for name, required in self.secrets.items():
            inline, file = getattr(self, name), getattr(self, f"{name}_file")
            if inline is not None and file is not None:
                raise ValueError(f"set {name} or {name}_file, not both")
            if required and inline is None and file is None:
                raise ValueError(f"needs {name}_file (or {name}: env:NAME)")
        return self

    def has_secret(self, name: str) -> bool:
        return getattr(self, name) is not None or getattr(self, f"{name}_file") is not None

    def reveal(self, name: str) -> str:
        ref: str | None = getattr(self, name)
        file: Path | None = getattr(self, f"{name}_file")
        if ref is not None:
            var = ref.removeprefix("env:")
            value = os.environ.get(var)
            if value is None:
                raise SecretError(f"{name}: environment variable {var} is not set")
        elif file is not None:
            try:
                value = file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
                raise SecretError(f"{name}_file: cannot read {file}: {why}") from None
        else:
            raise SecretError(f"{name} is not configured")
        known.add([value])  # a rotated file's new value is redacted from the first use
        return value


# --- redaction ---------------------------------------------------------------------------

REDACTED = "<redacted>"
# Shorter values are not treated as secrets: replacing them everywhere would garble ordinary
# words and numbers, and the patterns below still catch them where credentials stand.
MIN_SECRET_LENGTH = 6

_AUTH_SCHEME = re.compile(r"(?:Bearer|Basic|Token|token|Digest|ApiKey)\s+(\S+)")
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # https://user:password@host
    (re.compile(r"(://[^/\s:@]*):[^/\s@]*@"), rf"\1:{REDACTED}@"),
    # ?token=... &api_key=... &sig=... &code=... (Azure Functions)
    (re.compile(r"([?&;][\w.-]*(?:token|key|secret|passw|pwd|sig|auth|credential|session|code)"
                r"[\w.-]*=)[^&#\s'\"<>]+", re.IGNORECASE), rf"\1{REDACTED}"),
    # Authorization: Bearer ..., "X-Api-Key": "...", as a helpdesk may echo a request
    (re.compile(r"(\b(?:proxy-)?authorization|\bx-(?!probe-)[\w-]*(?:token|key|secret|auth)"
                r"[\w-]*|\bapi[-_]key|\bprivate-token)(\"?\s*:\s*\"?)"
                r"((?:(?:bearer|basic|token|digest|apikey)\s+)?)[^\s\"',;]+", re.IGNORECASE),
     rf"\1\2\3{REDACTED}"),
    (re.compile(r"(\b(?:set-)?cookie\"?\s*:\s*\"?)[^\"\r\n]+", re.IGNORECASE), rf"\1{REDACTED}"),
    # A bare credential after its scheme word (not "Basic authentication": all lowercase)
    (re.compile(r"\b(Bearer|Basic) (?![a-z]+\b)[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {REDACTED}"),
)
# What one of the patterns needs to match: most text has none of it, and is searched once.
_CLUES = re.compile(r"@|=|authoriz|x-|api[-_]key|private-token|cookie|bearer |basic ",
                    re.IGNORECASE)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every value of `secrets` (and their URL-encoded forms) and every credential
    that stands where credentials stand replaced with `<redacted>`."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _CLUES.search(text):
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
    return text


class Redactor(logging.Filter):
    """The secret values this process knows, and the logging filter that keeps them out of
    every record: the message, its arguments, and the traceback of an exception."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()

    def add(self, values: Iterable[str]) -> None:
        new = set()
        for value in values:
            if len(value) >= MIN_SECRET_LENGTH:
                new.add(value)
                new.add(quote(value, safe=""))  # as it stands in a URL
                new.add(json.dumps(value)[1:-1])  # in JSON, and in a log line's quoted value
        if not new.issubset(self._secrets):
            # Longest first, so that a secret containing another is replaced whole.
            self._secrets = tuple(sorted(new.union(self._secrets), key=len, reverse=True))

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def redact_data(self, data: Any) -> Any:
        """A JSON-like value (dicts, lists, strings) with every string redacted; the same
        object when nothing changed."""
        if isinstance(data, str):
            return self.redact(data)
        if isinstance(data, Mapping):
            items = {k: self.redact_data(v) for k, v in data.items()}
            return data if all(items[k] is data[k] for k in data) else items
        if isinstance(data, list | tuple):
            values = [self.redact_data(v) for v in data]
            if all(a is b for a, b in zip(values, data, strict=True)):
                return data
            return tuple(values) if isinstance(data, tuple) else values
        return data

    def redact_result(self, result: Result) -> Result:
        """A check's result without secret values in its target, reason and evidence."""
        if result.state == "up":
            return result  # no reason, and its evidence is kept nowhere
        target, reason = self.redact(result.target), self.redact(result.reason)
        evidence = self.redact_data(result.evidence)
        if target == result.target and reason == result.reason and evidence is result.evidence:
            return result
        return dataclasses.replace(result, target=target, reason=reason, evidence=evidence)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def install(self) -> None:
        """Filter every record the root logger's handlers write (and thus every logger's)."""
        for handler in logging.getLogger().handlers:
            if self not in handler.filters:
                handler.addFilter(self)


known = Redactor()


def from_settings(model: Any) -> Iterator[str]:
    headers = getattr(model, "headers", None) or {}
    files = getattr(model, "headers_file", None) or {}
    for name in (*headers, *files):
        if SENSITIVE_NAME.search(name):
            # One that cannot be read now fails the request that needs it, and says so.
            with contextlib.suppress(HeaderUnavailable):
                one = header_values({name: headers[name]} if name in headers else {},
                                    {name: files[name]} if name in files else {})
                for value in one.values():
                    yield value
                    yield from _AUTH_SCHEME.findall(value)
    for field in ("url", "api_url"):
        url = getattr(model, field, None)
        if isinstance(url, str):
            parts = urlsplit(url)
            if parts.password:
                yield parts.password
            for name, value in parse_qsl(parts.query):
                if SENSITIVE_NAME.search(name):
                    yield value
