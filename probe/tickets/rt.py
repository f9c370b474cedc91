"""The rt backend: Best Practical Request Tracker 5, through REST2."""

from pathlib import Path
from typing import ClassVar, Literal

from probe.secrets import EnvRef
from probe.tickets.base import BaseUrl, Priority, PriorityMap, RouteBase


class Route(RouteBase):
    backend: Literal["rt"]
    url: BaseUrl
    token: EnvRef | None = None
    token_file: Path | None = None
    queue: str = "General"
    key_field: str | None = None  # a ticket custom field that holds the incident key
    priorities: PriorityMap[int] = {"urgent": 99, "high": 75, "normal": 50, "low": 25}

    secrets: ClassVar[dict[str, bool]] = {"token": True}

    def priority(self, name: Priority) -> int:
        return self.priorities[name]
