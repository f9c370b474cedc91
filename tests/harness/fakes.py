"""What the fake helpdesks (tests/harness/fake_*.py) share: credentials as a client sends them,
and the answers a test plants in a fake in place of the vendor's — a failure, a rate limit, a
reply that comes too late — each taken by the next request it matches."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def basic(user: str, password: str) -> str:
    """The Authorization value of HTTP Basic (RFC 7617), as a client sends it."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Fault:
    """The next `times` requests whose method (None: any) and path match answer `status`,
    with `headers` and `body` (text as it is, anything else as JSON); with `stall`, the fake
    does the work and then does not answer for that many seconds."""

    method: str | None
    path: str  # a regular expression, matched at the start of the path
    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    stall: float = 0.0

    def response(self) -> web.Response:
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body, headers=self.headers,
                                content_type="text/plain")
        return web.json_response(self.body, status=self.status, headers=self.headers)


class Faults:
    """The faults planted in one fake, first planted first taken."""

    def __init__(self) -> None:
        self._planted: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._planted.append(fault)

    def take(self, request: web.Request) -> Fault | None:
        """The fault this request meets, if any; it counts as one of its `times`."""
        for fault in self._planted:
            if fault.method in (None, request.method) and re.match(fault.path, request.path):
                fault.times -= 1
                if fault.times <= 0:
                    self._planted.remove(fault)
                return fault
        return None
