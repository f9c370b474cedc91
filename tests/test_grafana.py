"""config/grafana/probe.json against real data: a probe daemon checks loopback targets of every
kind (one failing, one failing then recovering, a helpdesk that refuses), Debian's Prometheus
scrapes it every second with config/prometheus/probe-rules.yml loaded, and every query of every
panel, template variable and annotation of the dashboard must parse and return series."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.harness.certs import CertFactory
from tests.harness.daemon import ProbeProcess
from tests.harness.dnsserver import WWW_V4, DnsServer
from tests.harness.httpserver import serve_app
from tests.harness.ports import free_port
from tests.harness.prometheus import (
    DASHBOARD,
    RULES,
    Prometheus,
    metric_names,
    served_names,
    tool,
)
from tests.harness.tlsserver import hold, serve

# What Grafana puts in place of its own variables, as it would for a 1-hour dashboard range and
# a 1 s scrape interval: windows long enough for rate() to see two scrapes of a young server.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
SCRAPE_SERIES = {"up"}  # made by Prometheus for each target


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


def substitute(expr: str, variables: list[str]) -> str:
    """The query Grafana sends with every template variable at All (`.*`)."""
    values = GRAFANA_VARIABLES | dict.fromkeys(variables, ".*")
    for name in sorted(values, key=len, reverse=True):  # $__range before a $__r...
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


def test_the_dashboard_is_one_grafana_can_import() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    variables = board["templating"]["list"]
    assert variables[0] == variables[0] | {"type": "datasource", "name": "DS_PROMETHEUS",
                                           "query": "prometheus"}
    names = {v["name"] for v in variables}
    assert {"check", "service", "kind", "instance", "job"} <= names
    ids, titles = set(), set()
    for panel in panels(board["panels"]):
        title = panel["title"]
        assert panel["id"] not in ids, title
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, title
        if panel["type"] == "row":
            continue
        assert title not in titles, f"two panels named {title!r}: failures would not say which"
        titles.add(title)
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), title
        for source in (panel, *panel["targets"]):
            assert source["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, title
    for variable in variables[1:]:
        assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}", variable["name"]


class Helpdesk:
    """A webhook receiver that fails once (transient, retried), then refuses (permanent)."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        if self.calls == 1:
            return web.Response(status=503, text="down for maintenance")
        return web.Response(status=400, text="no such queue")


async def test_every_query_of_the_dashboard_returns_series_from_a_real_prometheus(
    tmp_path: Path, certs: CertFactory, dns_server: DnsServer,
) -> None:
    tool("prometheus")  # skips (or fails) before anything starts
    flaky_down = True
    helpdesk = Helpdesk()

    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=503 if flaky_down else 200, text="flaky")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="broken")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/broken", broken)
    app.router.add_get("/flaky", flaky)
    app.router.add_post("/hook", helpdesk.handle)
    leaf = certs.issue()
    async with serve_app(app) as http, serve(hold, tls=leaf.server_context()) as tls, \
            serve(hold) as tcp:
        port = free_port()
        config = tmp_path / "probe.yaml"
        config.write_text(f"""
agent: {{name: grafana, state_dir: {tmp_path}/state, listen: "127.0.0.1:{port}"}}
defaults:
  interval: 300ms
  retry_interval: 200ms
  timeout: 250ms
  failure_threshold: 2
  success_threshold: 2
  ticket: {{route: local}}
ticketing:
  routes:
    local: {{backend: local}}
    hook: {{backend: webhook, url: "http://127.0.0.1:{http}/hook", timeout: 2s}}
checks:
  - {{name: web, service: shop, http: {{url: "http://127.0.0.1:{http}/ok"}}}}
  - {{name: shop-flaky, service: shop, http: {{url: "http://127.0.0.1:{http}/flaky"}}}}
  - name: api
    service: api
    ticket: {{route: hook}}
    http: {{url: "http://127.0.0.1:{http}/broken"}}
  - {{name: cert, tls: {{host: 127.0.0.1, port: {tls}, ca_file: "{certs.ca.cert_file}"}}}}
  - {{name: port, tcp: {{host: 127.0.0.1, port: {tcp}}}}}
  - name: www
    dns: {{name: www.probe.test, type: A, server: "{dns_server.address}", expect: [{WWW_V4}]}}
  - {{name: ping, icmp: {{host: 127.0.0.1, interval: 10ms}}}}
""")
        probe = ProbeProcess(config, port).start()
        prometheus = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"], [RULES])
        prometheus.directory.mkdir()
        try:
            await asyncio.to_thread(prometheus.start)
            await probe.wait("the shop's incident",
                             lambda: probe.metric('probe_incident_open{group="shop"}') == 1)
            flaky_down = False
            await probe.wait("the shop's recovery and the helpdesk's refusal", lambda: (
                probe.metric('probe_incidents_resolved_total{group="shop"}') == 1
                and 'kind="permanent"' in probe.get("/metrics")))
            text = probe.get("/metrics")

            async def scraped(expr: str) -> bool:
                answer = await asyncio.to_thread(prometheus.query, expr)
                return bool(answer["data"]["result"])

            await probe.wait("Prometheus to scrape it all", lambda: scraped(
                'probe_ticket_failures_total{kind="permanent"}'
                ' and on() probe_incidents_resolved_total'), timeout=30)
            await asyncio.sleep(3)  # a few more scrapes, for rate() and the 1 s rules
            problems = await asyncio.to_thread(evaluate, prometheus, served_names(text))
        finally:
            prometheus.stop()
            probe.stop()
    assert problems == [], "\n".join(problems)


def evaluate(prometheus: Prometheus, served: set[str]) -> list[str]:
    """What is wrong with the dashboard's queries, each line naming its panel."""
    board = dashboard()
    variables = [v["name"] for v in board["templating"]["list"]]
    served = served | SCRAPE_SERIES
    problems = []

    def check(where: str, expr: str) -> None:
        query = substitute(expr, variables)
        unknown = metric_names(query) - served
        if unknown:
            problems.append(f"{where}: series probe does not serve: {sorted(unknown)}")
        answer = prometheus.query(query)
        if answer["status"] != "success":
            problems.append(f"{where}: {answer.get('errorType')}: {answer.get('error')}: "
                            f"{query}")
        elif not answer["data"]["result"]:
            problems.append(f"{where}: no series: {query}")

    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            check(f"panel {panel['title']!r} query {target['refId']}", target["expr"])
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            check(f"annotation {annotation['name']!r}", annotation["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        definition = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition, re.S)
        assert match, f"variable {variable['name']!r}: {definition}"
        selector = substitute(match.group(1), variables)
        unknown = metric_names(selector) - served
        if unknown:
            problems.append(f"variable {variable['name']!r}: series probe does not serve: "
                            f"{sorted(unknown)}")
        answer = prometheus.api(f"label/{match.group(2)}/values", **{"match[]": selector})
        if answer["status"] != "success" or not answer["data"]:
            problems.append(f"variable {variable['name']!r}: no values: {answer}")
    # The rules file loaded in a real Prometheus, against real series: none may fail.
    for group in prometheus.api("rules")["data"]["groups"]:
        for rule in group["rules"]:
            if rule.get("health") == "err":
                problems.append(f"rule {rule['name']!r}: {rule.get('lastError')}")
    return problems
