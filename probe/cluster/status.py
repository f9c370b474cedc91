"""`probe cluster status`: the cluster as its database sees it — every agent, its heartbeat's
age (the database's clock), the groups it holds, whether its configuration agrees with this
one — read by any machine that has the configuration, no agent needed."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from probe.cluster.claims import held_by
from probe.cluster.members import Members
from probe.tickets.pgledger import Pool, schema_version


async def document(pool: Pool, *, agent_ttl: float, config_hash: str) -> dict[str, Any]:
    started = time.monotonic()
    version = await schema_version(pool)
    latency = time.monotonic() - started
    agents = await Members(pool, agent_ttl).agents()
    held = await held_by(pool)
    return {
        "database": {"schema": version, "latency_seconds": round(latency, 4)},
        "config_hash": config_hash,
        "agent_ttl": agent_ttl,
        "agents": [{**asdict(a), "groups_held": held.get(a.name, 0),
                    "config_agrees": a.config_hash == config_hash} for a in agents],
        "live": sum(1 for a in agents if a.live),
    }


def text(doc: dict[str, Any]) -> str:
    lines = [f"cluster database: schema {doc['database']['schema']}, answered in "
             f"{doc['database']['latency_seconds'] * 1000:.0f} ms; "
             f"{doc['live']} agent{'s' if doc['live'] != 1 else ''} live "
             f"(agent_ttl {doc['agent_ttl']:g}s)"]
    for a in doc["agents"]:
        state = "draining" if a["draining"] and a["live"] else "live" if a["live"] else "gone"
        agrees = "same configuration" if a["config_agrees"] else \
            f"DIFFERENT configuration ({a['config_hash']})"
        lines.append(f"  {a['site']}/{a['name']}  {state}  heartbeat "
                     f"{a['heartbeat_age']:.1f}s ago  {a['groups_held']} groups  {agrees}  "
                     f"{a['host']} probe {a['version']}")
    if not doc["agents"]:
        lines.append("  no agent has joined")
    return "\n".join(lines)
