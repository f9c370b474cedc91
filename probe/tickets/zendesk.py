"""The zendesk backend: Zendesk Support tickets, through API v2."""

from pathlib import Path
from typing import ClassVar, Literal

from probe.secrets import EnvRef
from probe.tickets.base import BaseUrl, RouteBase


class Route(RouteBase):
    backend: Literal["zendesk"]
    url: BaseUrl
    email: str
    token: EnvRef | None = None
    token_file: Path | None = None
    group_id: int | None = None
    assignee_id: int | None = None
    tags: list[str] = ["probe"]

    secrets: ClassVar[dict[str, bool]] = {"token": True}
