"""`probe cluster status`: the cluster as its database sees it — every agent, its heartbeat's
age (the database's clock), the groups it holds, whether its configuration agrees with this
one, and when sites vote each site's agents and silence and the quorum's trouble — read by any
machine that has the configuration, no agent needed. `probe cluster votes
CHECK`: each site's vote on a check, its age, and the verdict with the rule that made it."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from probe.cluster import trouble, votes
from probe.cluster.claims import held_by
from probe.cluster.members import Members
from probe.config import Check, Config
from probe.tickets.pgledger import Pool, schema_version


async def document(pool: Pool, config: Config) -> dict[str, Any]:
    cluster = config.cluster
    assert cluster is not None
    config_hash = config.config_hash()
    started = time.monotonic()
    version = await schema_version(pool)
    latency = time.monotonic() - started
    members = Members(pool, cluster.agent_ttl)
    agents = await members.agents()
    held = await held_by(pool)
    doc: dict[str, Any] = {
        "database": {"schema": version, "latency_seconds": round(latency, 4)},
        "config_hash": config_hash,
        "agent_ttl": cluster.agent_ttl,
        "agents": [{**asdict(a), "groups_held": held.get(a.name, 0),
                    "config_agrees": a.config_hash == config_hash} for a in agents],
        "live": sum(1 for a in agents if a.live),
    }
    if cluster.sites:
        membership = await members.membership()
        silent = membership.silent(cluster.sites)
        doc["sites"] = [{
            "site": site, "agents_live": sum(1 for a in agents if a.live and a.site == site),
            "silent_seconds": round(silent[site], 1) if site in silent else None,
            "in_the_vote": silent.get(site, 0.0) < cluster.silent_after,
        } for site in cluster.sites]
        voted = [c for c in config.effective_checks() if c.sites]
        doc["troubles"] = [reason for check in trouble.checks(config)
                           for state, reason, _ in [trouble.judge(
                               check, voted, membership, cluster.silent_after)]
                           if state == "failing"]
    return doc


def healthy(doc: dict[str, Any]) -> bool:
    """An agent live, and when sites vote one in each site."""
    return bool(doc["live"]) and all(s["agents_live"] for s in doc.get("sites", ()))


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
    if "sites" in doc:
        lines.append("sites:")
        for s in doc["sites"]:
            if s["agents_live"]:
                lines.append(f"  {s['site']}: {s['agents_live']} agent"
                             f"{'s' if s['agents_live'] != 1 else ''} live")
            else:
                vote = "in the vote still" if s["in_the_vote"] else "out of the vote"
                lines.append(f"  {s['site']}: NO AGENT LIVE, silent for "
                             f"{s['silent_seconds']:g}s ({vote})")
        lines += [f"trouble: {t}" for t in doc["troubles"]] or ["no quorum trouble"]
    return "\n".join(lines)


async def votes_document(pool: Pool, check: Check, *, agent_ttl: float,
                         silent_after: float) -> dict[str, Any]:
    membership = await Members(pool, agent_ttl).membership()
    rows = {row.site: row for row in await votes.of_check(pool, check.name)}
    tally = votes.Tally(silent_after)
    tally.add(rows.values(), {check.name})
    found, views = tally.count(check, membership)
    sites = []
    for view in views:
        row = rows.get(view.site)
        sites.append({
            "site": view.site, "vote": view.vote, "reason": view.reason,
            "cast": row.value if row else None, "agent": row.agent if row else None,
            "age_seconds": round(membership.now - row.since, 1) if row else None,
            "silent_seconds": round(s, 1) if (s := membership.silent([view.site]).get(
                view.site)) is not None else None,
        })
    return {"check": check.name, "quorum": check.quorum, "sites": sites,
            "verdict": found.state, "rule": found.rule()}


def votes_text(doc: dict[str, Any]) -> str:
    lines = [f"{doc['check']}: {doc['verdict'].upper()} (quorum {doc['quorum']})",
             f"  rule: {doc['rule']}"]
    for s in doc["sites"]:
        if s["vote"] in ("unheard", "silent") and s["cast"] is not None:
            what = f"{s['vote']} (last voted {s['cast']} by {s['agent']}, gone)"
        elif s["cast"] is None:
            what = f"{s['vote']} (never voted)"
        else:
            what = f"{s['vote']} for {s['age_seconds']:g}s, cast by {s['agent']}"
        if s["reason"]:
            what += f": {s['reason']}"
        if s["silent_seconds"] is not None:
            what += f"; site silent for {s['silent_seconds']:g}s"
        lines.append(f"  {s['site']}: {what}")
    return "\n".join(lines)

