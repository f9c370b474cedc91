"""The github backend: GitHub issues (public comments: mind who can read the repository)."""

import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator

from probe.secrets import EnvRef
from probe.tickets.base import BaseUrl, RouteBase


def _repository(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", value):
        raise ValueError(f"{value!r} is not owner/name")
    return value


class Route(RouteBase):
    backend: Literal["github"]
    url: BaseUrl = "https://api.github.com"
    repository: Annotated[str, AfterValidator(_repository)]
    token: EnvRef | None = None
    token_file: Path | None = None
    labels: list[str] = ["probe"]
    assignees: list[str] = []

    secrets: ClassVar[dict[str, bool]] = {"token": True}
