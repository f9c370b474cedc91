"""A helpdesk that breaks its API's promises, for every backend to meet: one aiohttp server on
loopback that answers every path and method with the same misbehaviour (an HTML error page, an
empty body, JSON of the wrong types, a stall, a reset), chosen per test.

The wrong types are put where the backends look: every field name some backend reads, at the
top level and nested two and three deep, set to null, {}, [], "42", 42 or true.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

MIB = 1024 * 1024
SLOW = 3.0  # seconds a stalled answer takes: far past any route's timeout in the tests

# Every field some backend reads from an answer, at the top level...
FIELDS = (
    "id", "key", "number", "dedup_key", "status", "Status", "Owner", "Subject", "CustomFields",
    "TicketCustomFields", "ticket", "tickets", "items", "result", "results", "issues", "fields",
    "transitions", "incidents", "user", "labels", "assignees", "assignee_id", "assigned_to",
    "responder_id", "custom_fields", "tags", "deleted", "spam", "external_id", "state",
    "sys_id", "correlation_id", "title", "created_at", "pull_request", "errors",
    "errorMessages", "error", "message", "description", "details", "externalNumber", "closed",
    "completed", "operator", "operatorGroup", "processingStatus", "archivingReason", "owner_id",
    "session_token", "externalid", "is_deleted", "type", "SessionID", "Error", "TicketID", "Ticket",
    "TicketNumber", "issue",
)
# ...and, one level or two further in, the ones read there.
INNER = (
    "id", "key", "name", "status", "statusCategory", "to", "fields", "labels", "assignee",
    "resolution", "allowedValues", "required", "values", "login", "number", "state", "sys_id",
    "correlation_id", "external_id", "tags", "custom_fields", "IncidentKey", "Subject",
    "created_at", "title", "deleted", "spam", "assignee_id", "description", "owner_id",
    "externalid", "is_deleted", "type", "ErrorCode", "ErrorMessage", "TicketID", "StateType",
    "Lock", "Owner", "DynamicField", "Name", "Value", "is_closed", "value", "assigned_to",
)
WRONG: dict[str, Any] = {
    "null": None, "object": {}, "list": [], "string": "42", "number": 42, "true": True,
}


def _shaped(shape: str, value: Any) -> Any:
    if shape == "flat":
        return dict.fromkeys(FIELDS, value)
    if shape == "nested":
        return {f: dict.fromkeys(INNER, value) for f in FIELDS}
    if shape == "deep":
        inner = {g: dict.fromkeys(INNER, value) for g in INNER}
        return {f: inner for f in FIELDS}
    return {f: [dict.fromkeys(INNER, value)] for f in FIELDS}  # listed


Expect = Literal["transient", "any"]


@dataclass(frozen=True)
class Misbehaviour:
    """What the helpdesk answers, and what a call may then raise: "transient" (a TicketError
    to retry) or "any" (a TicketError, permanent or not). Returning is always allowed: some
    calls send nothing (a webhook's find), or read nothing back (a note)."""

    name: str
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    expect: Expect = "transient"
    headers: tuple[tuple[str, str], ...] = ()
    stall: bool = False
    reset: bool = False
    stream: bytes = b""  # sent again and again after `body`, until the client hangs up


HTML = b"<!DOCTYPE html><html><head><title>Oops</title></head><body><h1>Something went " \
    b"wrong</h1><p>Please try again later.</p></body></html>"


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


MISBEHAVIOURS: tuple[Misbehaviour, ...] = (
    Misbehaviour("html-page-with-200", body=HTML, content_type="text/html"),
    Misbehaviour("html-page-with-500", status=500, body=HTML, content_type="text/html"),
    Misbehaviour("html-page-with-404", status=404, body=HTML, content_type="text/html",
                 expect="any"),
    Misbehaviour("html-login-redirect", status=302, body=HTML, content_type="text/html",
                 headers=(("Location", "/login"),), expect="any"),
    Misbehaviour("empty-body-with-200"),
    Misbehaviour("a-list-for-an-object", body=_json([{"id": 42, "key": "PROJ-42"}])),
    Misbehaviour("a-string-for-an-object", body=_json("created")),
    Misbehaviour("truncated-json", body=b'{"ticket": {"id": 4'),
    Misbehaviour("201-without-an-id", status=201, body=_json({"status": "created"}),
                 expect="any"),
    Misbehaviour("json-sent-as-text-html", content_type="text/html", expect="any",
                 body=_json({"id": 42, "key": "PROJ-42", "number": 42, "sys_id": "f" * 32,
                             "ticket": {"id": 42}, "result": {"sys_id": "f" * 32}})),
    Misbehaviour("invalid-utf8", body=b'{"id": "\xff\xfe", "key": "\xc3("}', expect="any"),
    Misbehaviour("a-charset-that-is-no-text-encoding", body=_json({"id": 42}),
                 content_type="application/json; charset=hex", expect="any"),
    Misbehaviour("json-nested-100000-deep", body=b"[" * 100_000 + b"]" * 100_000),
    Misbehaviour("json-nested-100000-deep-with-422", status=422, expect="any",
                 body=b'{"errors": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    Misbehaviour("422-with-10000-errors", status=422, expect="any",
                 body=_json({"message": "Validation Failed", "errors": [
                     {"resource": "Issue", "field": "title", "message": "x" * 50}] * 10_000})),
    Misbehaviour("400-with-wrong-types", status=400, body=_json(_shaped("flat", 42)),
                 expect="any"),
    Misbehaviour("422-with-wrong-types", status=422, body=_json(_shaped("flat", [1])),
                 expect="any"),
    Misbehaviour("stalls-past-the-route-timeout", stall=True),
    Misbehaviour("resets-mid-body", body=b'{"id": 42, "ti', reset=True),
    Misbehaviour("an-endless-body", stream=b'{"id": 42}' * 6000),
    Misbehaviour("a-gzip-bomb", body=gzip.compress(b" " * (64 * MIB)),
                 headers=(("Content-Encoding", "gzip"),)),
    *(
        Misbehaviour(f"{shape}-fields-{label}", body=_json(_shaped(shape, value)), expect="any")
        for shape in ("flat", "nested", "deep", "listed")
        for label, value in WRONG.items()
    ),
)


@dataclass
class Helpdesk:
    """The server: `url` to point routes at, `now` the misbehaviour it answers with."""

    url: str
    now: Misbehaviour = MISBEHAVIOURS[0]


async def _answer(desk: Helpdesk, request: web.Request) -> web.StreamResponse:
    now = desk.now
    await request.read()
    if now.stall:
        await asyncio.sleep(SLOW)
    headers = {"Content-Type": now.content_type, **dict(now.headers)}
    if now.reset:
        response = web.StreamResponse(status=now.status, headers=headers)
        response.content_length = len(now.body) + 1000
        await response.prepare(request)
        await response.write(now.body)
        assert request.transport is not None
        request.transport.abort()  # a connection reset in the middle of the body
        return response
    if now.stream:
        response = web.StreamResponse(status=now.status, headers=headers)
        await response.prepare(request)
        await response.write(now.body)
        while True:  # until the client hangs up, which cancels this handler
            await response.write(now.stream)
    return web.Response(status=now.status, body=now.body, headers=headers)


@asynccontextmanager
async def serve_helpdesk() -> AsyncIterator[Helpdesk]:
    app = web.Application(client_max_size=64 * MIB)
    desk = Helpdesk("")

    async def handle(request: web.Request) -> web.StreamResponse:
        return await _answer(desk, request)

    app.router.add_route("*", "/{tail:.*}", handle)
    # Cancelled when the client hangs up: a stalled answer must not outlive the test.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        desk.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield desk
    finally:
        await runner.cleanup()


def plausible(key: str) -> dict[str, Any]:
    """An answer every backend could take for any of its calls about the ticket of `key`:
    the fields each one reads, with the values its helpdesk would send. Changing one of them
    to a wrong type reaches code that a wholly wrong answer stops short of."""
    from probe.helpdesks import freshdesk, github, jira

    return {
        "id": 42, "key": "PROJ-42", "number": 42, "dedup_key": key, "state": "open",
        "status": "open", "Status": "open", "Owner": {"id": "Nobody"},
        "Subject": f"shop DOWN [probe:{key}]",
        "items": [{"id": 42, "Subject": f"shop DOWN [probe:{key}]",
                   "CustomFields": [{"name": "IncidentKey", "values": [key]}]}],
        "TicketCustomFields": [{"name": "IncidentKey"}],
        "ticket": {"id": 42, "status": "open", "assignee_id": 7},
        "tickets": [{"id": 42, "external_id": key, "status": "open"}],
        "user": {"id": 7},
        "results": [{"id": 42, "tags": [freshdesk.key_tag(key)],
                     "custom_fields": {"cf_incident_key": key}}],
        "custom_fields": {"cf_incident_key": key}, "tags": [freshdesk.key_tag(key)],
        "responder_id": 7, "owner_id": 7,
        "issues": [{"key": "PROJ-42", "fields": {"labels": [jira.key_label(key)]},
                    "id": 42, "custom_fields": [{"id": 1, "value": key}]}],
        "issue": {"id": 42, "status": {"id": 1, "is_closed": False}, "assigned_to": None,
                  "custom_fields": [{"id": 1, "value": key}]},
        "fields": {"status": {"name": "Open", "statusCategory": {"key": "new"}},
                   "assignee": None, "labels": [jira.key_label(key)]},
        "transitions": [
            {"id": "31", "name": "Done", "to": {"name": "Done", "statusCategory": {"key": "done"}},
             "fields": {"resolution": {"required": True, "allowedValues": [{"name": "Done"}]}}},
            {"id": "11", "name": "Reopen",
             "to": {"name": "Open", "statusCategory": {"key": "new"}}},
        ],
        "result": {"sys_id": "0123456789abcdef0123456789abcdef", "state": "1",
                   "correlation_id": key, "number": "INC0010042"},
        "incidents": [{"id": "PABC123", "status": "triggered", "title": "shop DOWN",
                       "created_at": "2026-11-23T01:13:37Z"}],
        "labels": [{"name": github.key_label(key)}], "assignees": [{"login": "probe-bot"}],
        "errors": [{"field": "subject", "message": "is invalid"}], "errorMessages": ["no"],
        "session_token": "83af7e620c83a50a18d3eac2f6ed05a3ca0bea62", "externalid": key,
        "is_deleted": 0, "type": 2,
        "SessionID": "f" * 32, "TicketID": "42", "TicketNumber": "2026120410000042",
        "Ticket": [{"TicketID": "42", "StateType": "new", "Lock": "unlock", "Owner": "probe",
                    "DynamicField": [{"Name": "ProbeIncidentKey", "Value": key}]}],
    }


def paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every place in `value` a wrong type can be put: each key and list item, nested."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def replaced(value: Any, path: tuple[str | int, ...], new: Any) -> Any:
    """A copy of `value` with what is at `path` replaced by `new`."""
    if not path:
        return new
    head, *rest = path
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = replaced(copy[head], tuple(rest), new)
    return copy


KEY = "probe-eu-1/shop/3"  # the incident the tests' calls are about
_PLAUSIBLE = plausible(KEY)
# Plausible answers with one value of a wrong type, deep in Jira's transitions: a wholly
# wrong answer never gets that far.
MISBEHAVIOURS += (
    Misbehaviour("a-transition-to-a-number", expect="any",
                 body=_json(replaced(_PLAUSIBLE, ("transitions", 0, "to"), 42))),
    Misbehaviour("resolutions-allowed-a-number", expect="any",
                 body=_json(replaced(_PLAUSIBLE, ("transitions", 0, "fields", "resolution",
                                                  "allowedValues"), 42))),
)
