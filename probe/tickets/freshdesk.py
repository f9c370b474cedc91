"""The freshdesk backend: Freshdesk tickets, through API v2."""

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import model_validator

from probe.secrets import EnvRef
from probe.tickets.base import BaseUrl, PriorityMap, RouteBase


class Route(RouteBase):
    backend: Literal["freshdesk"]
    url: BaseUrl
    api_key: EnvRef | None = None
    api_key_file: Path | None = None
    email: str | None = None  # the requester the tickets are raised for
    requester_id: int | None = None
    group_id: int | None = None
    responder_id: int | None = None
    key_field: str | None = None  # a custom field (cf_...) for the incident key; else a tag
    tags: list[str] = ["probe"]
    priorities: PriorityMap[int] = {"urgent": 4, "high": 3, "normal": 2, "low": 1}

    secrets: ClassVar[dict[str, bool]] = {"api_key": True}

    @model_validator(mode="after")
    def _requester(self) -> "Route":
        if self.email is None and self.requester_id is None:
            raise ValueError("needs email or requester_id: Freshdesk tickets need a requester")
        return self
