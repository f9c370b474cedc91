"""The operator's ticket commands: `probe tickets` (the local backend's tickets, and actions
that could not be delivered) and `probe test-ticket` (prove a route's credentials and mappings
before an outage does)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from probe.config import Config
from probe.helpdesks import make_backend
from probe.helpdesks.base import PRIORITIES, Ticket, TicketError
from probe.helpdesks.local import LocalTickets
from probe.store import Store, StoreError
from probe.tickets.ledger import SqliteLedger


def tickets_command(config: Config, action: str, ticket_id: int | None, owner: str) -> int:
    try:
        store = Store(config.agent.state_dir, history=config.agent.history)
    except StoreError as err:
        print(err)
        return 2
    try:
        return _tickets(store, action, ticket_id, owner)
    finally:
        store.close()


def _tickets(store: Store, action: str, ticket_id: int | None, owner: str) -> int:
    local = LocalTickets(store.path)
    try:
        if action == "list":
            tickets = local.all()
            if not tickets:
                print("no local tickets")
            for t in tickets:
                opened = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created_at))
                print(f"#{t.id:<5} {t.status:<9} {t.priority:<7} {t.owner or '-':<10} {opened}"
                      f"  {t.title}")
            return 0
        ledger = SqliteLedger(store)
        if action == "failed":
            failed = asyncio.run(ledger.failed())
            if not failed:
                print("no failed ticket actions")
            for f in failed:
                print(f"{f.id}  {f.action} {f.incident_key} on {f.route} after {f.attempts}"
                      f" attempts: {f.error}")
            return 1 if failed else 0
        if action == "retry":
            count = asyncio.run(ledger.retry_failed())
            print(f"{count} failed actions queued again: the running daemon delivers them")
            return 0
        if ticket_id is None:
            print(f"probe tickets {action} needs a ticket number")
            return 2
        if not local.exists(ticket_id):
            print(f"no local ticket {ticket_id}")
            return 1
        if action == "show":
            print(local.show(ticket_id))
        elif action == "ack":
            local.take(ticket_id, owner)
            print(f"#{ticket_id} taken by {owner}")
        else:
            local.add_note(ticket_id, "resolve", f"closed by hand ({owner})", "resolved")
            print(f"#{ticket_id} closed")
        return 0
    finally:
        local.close()


async def test_ticket(config: Config, route_name: str) -> int:
    route = config.routes.get(route_name)
    if route is None:
        print(f"no route is named {route_name!r}; routes: {', '.join(config.routes) or 'none'}")
        return 2
    key = f"{config.agent.name}/probe-test-ticket/{uuid.uuid4().hex[:8]}"
    steps: list[tuple[str, Any]] = []
    if route.backend == "local":
        Store(config.agent.state_dir).close()  # the local tickets live in the state database
    try:
        backend = make_backend(route_name, route, database=config.agent.state_dir / Store.FILE)
    except TicketError as err:
        print(f"FAIL  {err.message}")
        return 1
    ticket = Ticket(
        key=key,
        title=f"[probe] TEST ticket from {config.agent.name}: please ignore",
        body=(f"This is a test ticket opened by `probe test-ticket --route {route_name}` to "
              "prove the route's credentials and mappings. probe adds a note and resolves it "
              f"at once.\n\nprobe key: {key}"),
        body_markdown=f"This is a **test ticket** from `probe test-ticket --route {route_name}`.",
        priority=PRIORITIES[-1],
        agent=config.agent.name,
        group="probe-test-ticket",
    )
    ok = True
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("open", lambda: backend.open(ticket)),
        ("find", lambda: backend.find(key)),
        ("note", lambda: backend.note(steps[0][1], "probe test-ticket: a note.")),
        ("status", lambda: backend.status(steps[0][1])),
        ("resolve", lambda: backend.resolve(steps[0][1], "probe test-ticket: resolved.")),
    ]
    try:
        for label, call in calls:
            try:
                started = time.monotonic()
                value = await call()
            except TicketError as err:
                kind = "permanent" if err.permanent else "transient"
                print(f"FAIL  {label:<8} {kind} error: {err.message}")
                ok = False
                break
            steps.append((label, value))
            shown = "" if value is None else f" -> {value}"
            print(f"OK    {label:<8} {1000 * (time.monotonic() - started):.0f}ms{shown}")
    finally:
        await backend.close()
    print(f"route {route_name} ({route.backend}): "
          + ("works" if ok else "does NOT work"))
    return 0 if ok else 1
