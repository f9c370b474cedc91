"""Agents of several sites on one database, for the tests of sites that vote (issue 13): each a
real `probe run` with its own directory, started on loopback or inside a site's network
namespace (tests/harness/sites.py), checking `targets` HTTP targets (/N/health under
`targets_base`) and ticketing into a server that speaks Zendesk's API — its `desk` route for
the targets, its `oncall` route (group 99) for probe's own trouble."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg

from tests.harness.daemon import ProbeProcess
from tests.harness.fake_zendesk import EMAIL, TOKEN, FakeZendesk
from tests.harness.ports import free_port
from tests.harness.sites import Site, SiteProbe

TTL = 2.0
ONCALL = 99  # the Zendesk group of the alert route's tickets
SITES = ("eu-west", "us-east", "ap-south")


class Voting:
    def __init__(self, tmp_path: Path, dsn: str, desk: FakeZendesk, desk_url: str,
                 targets_base: str, targets: int, *, quorum: int = 2,
                 silent_after: str = "3m", sites: tuple[str, ...] = SITES,
                 only: dict[int, tuple[str, ...]] | None = None) -> None:
        self.tmp_path, self.dsn, self.desk, self.desk_url = tmp_path, dsn, desk, desk_url
        self.targets_base, self.targets = targets_base, targets
        self.quorum, self.silent_after, self.sites = quorum, silent_after, sites
        self.only = only or {}  # check number → the sites that alone run it, with quorum 1
        self.agents: dict[str, ProbeProcess] = {}
        self.token = tmp_path / "zendesk-token"
        self.token.write_text(TOKEN + "\n")

    def config(self, name: str, site: str, port: int) -> str:
        checks = "\n".join(f"""
  - name: web{n}
    http: {{url: "{self.targets_base}/{n}/health"}}""" + (
            f"\n    sites: [{', '.join(self.only[n])}]\n    quorum: 1" if n in self.only else "")
            for n in range(self.targets))
        return f"""
agent: {{name: {name}, state_dir: {self.tmp_path}/{name}/state, listen: "127.0.0.1:{port}"}}
cluster:
  database: env:PROBE_DATABASE
  site: {site}
  sites: [{", ".join(self.sites)}]
  quorum: {self.quorum}
  alert_route: oncall
  agent_ttl: {TTL}s
  silent_after: {self.silent_after}
defaults:
  interval: 500ms
  retry_interval: 200ms
  timeout: 450ms
  failure_threshold: 3
  success_threshold: 2
  ticket: {{route: desk, update_interval: 1h}}
ticketing:
  routes:
    desk: {{backend: zendesk, url: "{self.desk_url}", email: {EMAIL},
            token_file: {self.token}, timeout: 5s}}
    oncall: {{backend: zendesk, url: "{self.desk_url}", email: {EMAIL},
              token_file: {self.token}, timeout: 5s, group_id: {ONCALL}}}
checks:{checks}
"""

    def start(self, name: str, site: str, namespace: Site | None = None) -> ProbeProcess:
        """Start agent `name` of `site` (again: same directory, same port), inside
        `namespace` when given."""
        if name in self.agents:
            return self.agents[name].start()
        port = free_port()
        directory = self.tmp_path / name
        directory.mkdir(exist_ok=True)
        config = directory / "probe.yaml"
        config.write_text(self.config(name, site, port))
        env = {"PROBE_DATABASE": self.dsn}
        agent = (ProbeProcess(config, port, directory / "state", env=env) if namespace is None
                 else SiteProbe(namespace, config, port, directory / "state", env=env))
        self.agents[name] = agent
        return agent.start()

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{a.log_text()[-3000:]}" for n, a in self.agents.items())

    async def votes_of(self, check: str) -> dict[str, str]:
        """`votes`, off the event loop: the tests' targets and helpdesk are served by it, and a
        loop held by a blocking call makes every site's checks time out."""
        return await asyncio.to_thread(self.votes, check)

    def votes(self, check: str) -> dict[str, str]:
        """site → its vote on `check`, as the database has it."""
        with psycopg.connect(self.dsn) as conn:
            if conn.execute("SELECT to_regclass('votes')").fetchone() == (None,):
                return {}
            rows = conn.execute("SELECT site, value FROM votes WHERE check_name = %s",
                                (check,)).fetchall()
        return {str(s): str(v) for s, v in rows}

    def tickets(self, group: int | None = None) -> list[dict[str, Any]]:
        """The helpdesk's tickets about the targets (group None), or probe's own (ONCALL)."""
        return [t for t in self.desk.tickets.values() if t.get("group_id") == group]

    @staticmethod
    def text(ticket: dict[str, Any]) -> str:
        """Everything said on a ticket: its description, then each comment."""
        return "\n".join([str(ticket["description"]),
                          *(str(c["body"]) for c in ticket["comments"][1:])])
