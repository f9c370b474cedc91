"""What every helpdesk route shares in the configuration: priority names, the escalation
target, the connection settings, and validation of URLs and priority maps."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator

from checks.base import Duration, ReadableFile
from probe.secrets import Secrets

Priority = Literal["urgent", "high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("urgent", "high", "normal", "low")

V = TypeVar("V")


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("credentials do not belong in the URL: use the route's secret keys")
    return value.rstrip("/")


def _all_priorities(value: dict[Priority, V]) -> dict[Priority, V]:
    missing = [p for p in PRIORITIES if p not in value]
    if missing:
        raise ValueError(f"maps no value for {', '.join(missing)}")
    return value


BaseUrl = Annotated[str, AfterValidator(_base_url)]
PriorityMap = Annotated[dict[Priority, V], AfterValidator(_all_priorities)]


class RouteBase(Secrets):
    """Settings every route takes; each backend module adds its own."""

    escalate_to: str | None = None  # another route, told when nobody acknowledges the ticket
    timeout: Duration = 10.0
    tls_verify: bool = True
    ca_file: ReadableFile | None = None
