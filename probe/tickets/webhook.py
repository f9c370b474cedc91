"""The webhook backend: a signed JSON POST for each ticket action."""

from pathlib import Path
from typing import ClassVar, Literal

from probe.secrets import EnvRef
from probe.tickets.base import BaseUrl, RouteBase


class Route(RouteBase):
    backend: Literal["webhook"]
    url: BaseUrl
    secret: EnvRef | None = None  # HMAC-SHA256 signature of each body
    secret_file: Path | None = None
    headers: dict[str, str] = {}

    secrets: ClassVar[dict[str, bool]] = {"secret": False}
