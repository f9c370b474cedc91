"""`probe check` as an operator runs it: a subprocess, its table, its JSON, its exit codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.harness.httpserver import serve_app
from tests.harness.ports import closed_port
from tests.harness.proc import PROBE


async def probe(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *PROBE, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def web_port() -> AsyncIterator[int]:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down for maintenance")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/broken", broken)
    async with serve_app(app) as port:
        yield port


@pytest.fixture
def config(tmp_path: Path, web_port: int) -> Path:
    path = tmp_path / "probe.yaml"
    path.write_text(f"""
checks:
  - name: web
    http: {{url: "http://127.0.0.1:{web_port}/health", body_contains: ok}}
  - name: api
    http: {{url: "http://127.0.0.1:{web_port}/broken"}}
  - name: db
    timeout: 2s
    tcp: {{host: 127.0.0.1, port: {closed_port()}}}
  - name: web-port
    tcp: {{host: 127.0.0.1, port: {web_port}}}
""")
    return path


async def test_it_prints_a_table_and_exits_1_when_a_check_fails(config: Path) -> None:
    code, out, err = await probe("check", "--config", str(config))
    assert code == 1, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "KIND", "RESULT", "LATENCY", "REASON"]
    table = {row.split()[0]: row for row in rows}
    assert set(table) == {"web", "api", "db", "web-port"}
    assert table["web"].split()[1:3] == ["http", "UP"]
    assert table["api"].split()[1:3] == ["http", "DOWN"]
    assert table["api"].endswith("HTTP 503 (expected 2xx)")
    assert table["db"].split()[1:3] == ["tcp", "DOWN"]
    assert table["db"].endswith("connection refused")
    assert table["web-port"].split()[1:3] == ["tcp", "UP"]
    # the columns line up: every REASON starts where the header says
    column = header.index("REASON")
    assert table["api"][column:] == "HTTP 503 (expected 2xx)"


async def test_it_runs_only_the_named_checks_and_exits_0_when_they_pass(config: Path) -> None:
    code, out, _ = await probe("check", "--config", str(config), "web", "web-port")
    assert code == 0
    assert [row.split()[0] for row in out.splitlines()[1:]] == ["web", "web-port"]


async def test_json_carries_state_reason_phases_and_evidence(config: Path) -> None:
    code, out, _ = await probe("check", "--config", str(config), "--json", "api", "web")
    assert code == 1
    web_, api = json.loads(out)  # in the order of the configuration
    assert (api["name"], api["kind"], api["state"], api["ok"]) == ("api", "http", "down", False)
    assert api["reason"] == "HTTP 503 (expected 2xx)"
    assert api["evidence"]["status_code"] == 503
    assert api["evidence"]["body_excerpt"] == "down for maintenance"
    assert set(api["phases"]) == {"resolve", "connect", "tls", "processing", "transfer"}
    assert (web_["name"], web_["state"], web_["reason"]) == ("web", "up", "")


async def test_an_unknown_check_name_exits_2(config: Path) -> None:
    code, out, err = await probe("check", "--config", str(config), "nope")
    assert (code, out) == (2, "")
    assert err.strip() == "no check is named 'nope'"


async def test_a_bad_configuration_exits_2_with_its_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("checks:\n  - name: x\n    tcp: {host: h, port: 0}\n")
    code, out, err = await probe("check", "--config", str(bad))
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"{bad}:3: checks[0].tcp.port: 0 is not a port (1-65535)",
                                f"{bad}: 1 error"]
