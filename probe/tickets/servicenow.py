"""The servicenow backend: ServiceNow incidents, through the Table API."""

from pathlib import Path
from typing import ClassVar, Literal

from probe.secrets import EnvRef
from probe.tickets.base import BaseUrl, PriorityMap, RouteBase


class Route(RouteBase):
    backend: Literal["servicenow"]
    url: BaseUrl
    username: str
    password: EnvRef | None = None
    password_file: Path | None = None
    assignment_group: str | None = None
    caller_id: str | None = None
    close_code: str = "Solved (Permanently)"
    urgency: PriorityMap[int] = {"urgent": 1, "high": 1, "normal": 2, "low": 3}
    impact: PriorityMap[int] = {"urgent": 1, "high": 2, "normal": 2, "low": 3}

    secrets: ClassVar[dict[str, bool]] = {"password": True}
