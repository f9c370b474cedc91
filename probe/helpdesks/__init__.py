"""The helpdesks probe files tickets in: one module per helpdesk, and the one map that names them.

Adding a helpdesk is one module and one line in `HELPDESKS`. The module has a `Route` model (its
settings, `backend: Literal["<name>"]`), a `Backend` that speaks the helpdesk's API, and a
`HELPDESK = Helpdesk(route=Route, backend=Backend)` that pairs them. The configuration takes
`AnyRoute`, the outbox and `probe test-ticket` call `make_backend`.

This package knows nothing of checks, incidents or the configuration that holds its routes: a
backend is handed a validated route and a rendered `Ticket`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from probe.helpdesks import (
    email,
    freshdesk,
    freshservice,
    github,
    glpi,
    jira,
    local,
    pagerduty,
    redmine,
    rt,
    servicenow,
    topdesk,
    webhook,
    zammad,
    zendesk,
    znuny,
)
from probe.helpdesks.base import Backend, Helpdesk, RouteBase

HELPDESKS: dict[str, Helpdesk[Any]] = {helpdesk.name: helpdesk for helpdesk in (
    local.HELPDESK,
    webhook.HELPDESK,
    email.HELPDESK,
    rt.HELPDESK,
    zendesk.HELPDESK,
    freshdesk.HELPDESK,
    freshservice.HELPDESK,
    jira.HELPDESK,
    servicenow.HELPDESK,
    github.HELPDESK,
    pagerduty.HELPDESK,
    topdesk.HELPDESK,
    zammad.HELPDESK,
    glpi.HELPDESK,
    znuny.HELPDESK,
    redmine.HELPDESK,
)}

ROUTES: dict[str, type[RouteBase]] = {name: h.route for name, h in HELPDESKS.items()}

# Any route, told apart by its `backend`. pydantic needs the union of the route models, which
# only the registry knows, so it is built here at run time; a static type checker cannot
# follow that, and sees what every one of them is.
if TYPE_CHECKING:
    AnyRoute = RouteBase
else:
    AnyRoute = Annotated[Union[tuple(ROUTES.values())], Field(discriminator="backend")]  # noqa: UP007


def make_backend(name: str, route: RouteBase, *, database: Path) -> Backend[Any]:
    """The backend of route `name`. `database` is the state database, which the local
    helpdesk keeps its tickets in."""
    return HELPDESKS[route.backend].backend(name, route, database=database)
