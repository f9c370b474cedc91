"""Ticket routes: one module per helpdesk, and the one map that names them.

Adding a helpdesk is one module (its `Route` settings, and later its backend) and one line here.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from probe.tickets import (
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
from probe.tickets.base import RouteBase

ROUTES: dict[str, type[RouteBase]] = {
    "local": local.Route,
    "webhook": webhook.Route,
    "email": email.Route,
    "rt": rt.Route,
    "zendesk": zendesk.Route,
    "freshdesk": freshdesk.Route,
    "jira": jira.Route,
    "servicenow": servicenow.Route,
    "github": github.Route,
    "pagerduty": pagerduty.Route,
}

AnyRoute: Any = Annotated[Union[tuple(ROUTES.values())], Field(discriminator="backend")]  # noqa: UP007
