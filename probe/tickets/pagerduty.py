"""The pagerduty backend: PagerDuty incidents through the Events API v2."""

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import model_validator

from probe.secrets import EnvRef
from probe.tickets.base import BaseUrl, PriorityMap, RouteBase

Severity = Literal["critical", "error", "warning", "info"]


class Route(RouteBase):
    backend: Literal["pagerduty"]
    url: BaseUrl = "https://events.pagerduty.com"
    routing_key: EnvRef | None = None
    routing_key_file: Path | None = None
    severities: PriorityMap[Severity] = {
        "urgent": "critical",
        "high": "error",
        "normal": "warning",
        "low": "info",
    }
    # Notes need the REST API, with its own token and the email of a PagerDuty user.
    api_url: BaseUrl = "https://api.pagerduty.com"
    api_token: EnvRef | None = None
    api_token_file: Path | None = None
    from_email: str | None = None

    secrets: ClassVar[dict[str, bool]] = {"routing_key": True, "api_token": False}

    @model_validator(mode="after")
    def _notes(self) -> "Route":
        if self.has_secret("api_token") and not self.from_email:
            raise ValueError("api_token is set: needs from_email, which PagerDuty requires")
        return self
