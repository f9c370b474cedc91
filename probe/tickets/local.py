"""The local backend: tickets kept in probe's own state database (`probe tickets`)."""

from typing import Literal

from probe.tickets.base import RouteBase


class Route(RouteBase):
    backend: Literal["local"]
