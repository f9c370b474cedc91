"""The traceroute in a ticket's triage note, for real: probe runs in the first of three network
namespaces in a line, its check's target is in the last, and the one between forwards (a
router). The note names the router and the target with their round trips; without CAP_NET_RAW
it says why it could not trace."""

from __future__ import annotations

import re
import shlex
import sqlite3
from pathlib import Path

from tests.harness import sites
from tests.harness.proc import PROBE
from tests.harness.sites import SiteProbe


def daemon(near: sites.Namespace, directory: Path, target: str) -> SiteProbe:
    """A daemon in `near` whose one check (a closed port of `target`) fails at once."""
    directory.mkdir()
    config = directory / "probe.yaml"
    config.write_text(f"""
agent: {{name: route, state_dir: {directory}/state, listen: "127.0.0.1:9469"}}
defaults: {{interval: 1s, retry_interval: 1s, timeout: 900ms, failure_threshold: 1}}
ticketing: {{routes: {{local: {{backend: local}}}}}}
checks:
  - name: db
    tcp: {{host: {target}, port: 5432}}
""")
    return SiteProbe(near, config, 9469, directory / "state")


def route_line(probe: SiteProbe) -> str | None:
    if not (probe.state / "probe.sqlite3").exists():
        return None
    with sqlite3.connect(probe.state / "probe.sqlite3") as db:
        notes = [text for (text,) in db.execute(
            "SELECT text FROM local_notes WHERE text LIKE 'Triage at open time:%'")]
    for note in notes:
        for line in note.splitlines():
            if line.strip().startswith("Route "):
                return str(line).strip()
    return None


async def test_the_triage_note_shows_the_routers_on_the_way(tmp_path: Path) -> None:
    with sites.line(3) as (near, router, far):
        probe = daemon(near, tmp_path / "privileged", far.address).start()
        line = await probe.wait("the triage note", lambda: route_line(probe), timeout=30)
        assert re.fullmatch(
            rf"Route {re.escape(far.address)}\s+{re.escape(router.address)} [\d.]+m?s > "
            rf"{re.escape(far.address)} [\d.]+m?s: reached in 2 hops", line), line
        probe.stop()

        # Without CAP_NET_RAW (which the unit grants), a line that says so.
        bare = daemon(near, tmp_path / "unprivileged", far.address)
        bare.launch(near.command(["capsh", "--drop=cap_net_raw", "--", "-c", shlex.join(
            [*PROBE, "run", "--config", str(bare.config)])]))
        line = await bare.wait("the triage note", lambda: route_line(bare), timeout=30)
        assert line.endswith("not traced: a traceroute needs CAP_NET_RAW (the unit grants it: "
                             "AmbientCapabilities=CAP_NET_RAW)"), line
        bare.stop()
