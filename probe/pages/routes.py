"""The pages on the daemon's endpoint: `/` (the dashboard), `/checks/{name}`,
`/services/{name}`, `/incidents/{key}`, `/status` and the badges under `/badges/`.

Everything is behind web_config like /metrics, except, with `status_page.public: true`, the
status page and the badges of the services it lists (`public`): what the people the services
serve may see. TLS client certificates, when web_config requires them, are asked of every
connection before any path is known: they protect the public page too."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import unquote

from aiohttp import web

from probe.config import Config, Maintenance
from probe.pages import badges, render
from probe.pages.build import SECONDS, STATES, Pages
from probe.pages.model import LATENCY_WINDOWS, WINDOWS
from probe.secrets import known

HTML = "text/html; charset=utf-8"
SVG = "image/svg+xml"
# Browsers and proxies may keep a badge a minute: shields.io and README pages fetch often.
BADGE_HEADERS = {"Cache-Control": "max-age=60"}


class Site(Protocol):
    """What the pages ask of the running daemon (probe.daemon.Daemon)."""

    config: Config

    @property
    def pages(self) -> Pages: ...

    async def snapshot(self) -> dict[str, Any]: ...

    async def recent_results(self, name: str, limit: int) -> list[dict[str, Any]]: ...

    def maintenance_windows(self) -> list[tuple[int | None, Maintenance]]: ...


SITE: web.AppKey[Site] = web.AppKey("site")


def add(app: web.Application, site: Site) -> None:
    app[SITE] = site
    app.router.add_get("/", dashboard)
    app.router.add_get("/checks/{name}", check)
    app.router.add_get("/services/{name}", service)
    app.router.add_get("/incidents/{key:.+}", incident)
    app.router.add_get("/status", status)
    app.router.add_get("/badges/{kind:checks|services}/{name}/health.{ext:svg|json}", health)
    app.router.add_get("/badges/{kind:checks|services}/{name}/uptime/{window}.{ext:svg|json}",
                       uptime)
    app.router.add_get("/badges/{kind:checks|services}/{name}/latency/{window}.{ext:svg|json}",
                       latency)


def public(config: Config, path: str) -> bool:
    """May `path` be served without credentials? Only the public status page and the badges of
    the services it lists."""
    page = config.status_page
    if not page.public:
        return False
    if path == "/status":
        return True
    parts = path.split("/")
    if len(parts) >= 5 and parts[1] == "badges" and parts[2] == "services":
        return unquote(parts[3]) in listed(config)
    return False


def listed(config: Config) -> list[str]:
    """The groups the status page lists: those configured, else every service, else every
    check."""
    checks = config.effective_checks()
    return (config.status_page.services or sorted({c.service for c in checks if c.service})
            or sorted({c.group for c in checks}))


def _html(text: str, status: int = 200) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html",
                            charset="utf-8")
    # A thousand checks' dashboard is 1.6 MB of HTML, a tenth of it compressed.
    response.enable_compression()
    return response


def _missing(what: str) -> web.Response:
    return web.Response(status=404, text=f"{what}\n")


async def _doc(site: Site) -> dict[str, Any]:
    # Failed ticket actions carry the helpdesk's words, which may echo a credential.
    doc: dict[str, Any] = known.redact_data(await site.snapshot())
    return doc


async def dashboard(request: web.Request) -> web.Response:
    site = request.app[SITE]
    state = request.query.get("state") or None
    service = request.query.get("service") or None
    if state is not None and state not in STATES:
        state = None
    model = await site.pages.dashboard(await _doc(site), site.maintenance_windows(),
                                       time.time(), state=state, service=service)
    return _html(render.dashboard(model))


async def check(request: web.Request) -> web.Response:
    return await _detail(request, "check")


async def service(request: web.Request) -> web.Response:
    return await _detail(request, "service")


async def _detail(request: web.Request, kind: str) -> web.Response:
    site, name = request.app[SITE], request.match_info["name"]
    recent = (known.redact_data(await site.recent_results(name, 20))
              if kind == "check" and name in site.pages.checks else [])
    model = await site.pages.detail(kind, name, await _doc(site), recent, time.time())
    if model is None:
        return _missing(f"no {kind} is named {name!r}")
    return _html(render.detail(model))


async def incident(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    model = await request.app[SITE].pages.incident(key, time.time())
    if model is None:
        return _missing(f"no incident has the key {key!r}")
    return _html(known.redact(render.incident(model)))


async def status(request: web.Request) -> web.Response:
    site = request.app[SITE]
    return _html(render.status(await site.pages.status(await _doc(site), time.time())))


# --- badges ------------------------------------------------------------------------------------

async def _names(request: web.Request) -> tuple[str, list[str]] | web.Response:
    site, kind = request.app[SITE], request.match_info["kind"]
    name = request.match_info["name"]
    pages = site.pages
    names = [name] if kind == "checks" and name in pages.checks else (
        pages.members(name) if kind == "services" and name in pages.services() else [])
    if not names:
        return web.Response(status=404, text=f"no {kind[:-1]} is named {name!r}\n")
    return name, names


def _badge(request: web.Request, svg: str, shields: dict[str, Any]) -> web.Response:
    """The SVG, or what shields.io's endpoint badge reads (`.json`)."""
    if request.match_info["ext"] == "json":
        return web.json_response(shields, headers=BADGE_HEADERS)
    return web.Response(text=svg, content_type=SVG, headers=BADGE_HEADERS)


async def health(request: web.Request) -> web.Response:
    found = await _names(request)
    if isinstance(found, web.Response):
        return found
    name, names = found
    doc = await _doc(request.app[SITE])
    state = _health(doc, names)
    return _badge(request, badges.health_svg(name, state), badges.health_shields(name, state))


def _health(doc: Mapping[str, Any], names: list[str]) -> str:
    groups = {i["group"] for i in doc.get("incidents", [])}
    in_incident = {n for i in doc.get("incidents", []) for n in i.get("checks", [])}
    entries = [e for e in doc.get("checks", []) if e["name"] in names]
    if any(e["name"] in in_incident or e["name"] in groups for e in entries) or any(
            n in groups for n in names):
        return "down"
    if entries and all(e.get("in_maintenance") for e in entries):
        return "maintenance"
    if not entries or all(e.get("state") is None for e in entries):
        return "unknown"
    return "up"


async def uptime(request: web.Request) -> web.Response:
    window = request.match_info["window"]
    if window not in WINDOWS:
        return web.Response(status=400, text=f"windows: {', '.join(WINDOWS)}\n")
    found = await _names(request)
    if isinstance(found, web.Response):
        return found
    _, names = found
    now = time.time()
    figure = await request.app[SITE].pages.availability(names, now - SECONDS[window], now, now)
    return _badge(request, badges.uptime_svg(window, figure),
                  badges.uptime_shields(window, figure))


async def latency(request: web.Request) -> web.Response:
    window = request.match_info["window"]
    if window not in LATENCY_WINDOWS:
        return web.Response(status=400, text=f"windows: {', '.join(LATENCY_WINDOWS)}\n")
    found = await _names(request)
    if isinstance(found, web.Response):
        return found
    _, names = found
    now = time.time()
    per_check = await request.app[SITE].pages.buckets(names, now - SECONDS[window],
                                                              now, now)
    n = sum(b.results for bs in per_check.values() for b in bs)
    mean = sum(b.duration_sum_ms for bs in per_check.values() for b in bs) / n if n else None
    return _badge(request, badges.latency_svg(window, mean),
                  badges.latency_shields(window, mean))
