"""The jira backend: Jira Cloud or Data Center issues, and Jira Service Management requests."""

from pathlib import Path
from typing import ClassVar, Literal

from probe.secrets import EnvRef
from probe.tickets.base import BaseUrl, PriorityMap, RouteBase


class Route(RouteBase):
    backend: Literal["jira"]
    url: BaseUrl
    email: str
    token: EnvRef | None = None
    token_file: Path | None = None
    project: str
    issue_type: str = "Task"
    service_desk: bool = False  # JSM: notes as internal comments
    labels: list[str] = ["probe"]
    priorities: PriorityMap[str] = {
        "urgent": "Highest",
        "high": "High",
        "normal": "Medium",
        "low": "Low",
    }

    secrets: ClassVar[dict[str, bool]] = {"token": True}
