"""Ticket routes: one module per helpdesk, and the one map that names them.

Adding a helpdesk is one module (its `Route` settings and its `Backend`) and one line here.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Union

from pydantic import Field

from probe.helpdesks import (
    email,
    freshdesk,
    github,
    jira,
    local,
    pagerduty,
    rt,
    servicenow,
    webhook,
    zendesk,
)
from probe.helpdesks.base import Backend, RouteBase, TicketError

HELPDESKS: dict[str, ModuleType] = {
    "local": local,
    "webhook": webhook,
    "email": email,
    "rt": rt,
    "zendesk": zendesk,
    "freshdesk": freshdesk,
    "jira": jira,
    "servicenow": servicenow,
    "github": github,
    "pagerduty": pagerduty,
}

ROUTES: dict[str, type[RouteBase]] = {name: m.Route for name, m in HELPDESKS.items()}

AnyRoute: Any = Annotated[Union[tuple(ROUTES.values())], Field(discriminator="backend")]  # noqa: UP007


def make_backend(name: str, route: RouteBase, *, database: Path) -> Backend[Any]:
    """The backend for route `name`. `database` is the state database (the local backend's)."""
    kind = getattr(route, "backend", "")
    module = HELPDESKS[kind]
    backend_class = getattr(module, "Backend", None)
    if backend_class is None:
        raise TicketError(f"the {kind} backend is not available in this release", permanent=True)
    if module is local:
        return local.Backend(name, route, database=database)  # type: ignore[arg-type]
    instance: Backend[Any] = backend_class(name, route)
    return instance
