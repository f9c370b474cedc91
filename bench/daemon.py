"""The probe daemon under test: `probe run` as a subprocess with a generated configuration (its
own state directory and loopback port), and what the benchmark reads of it — its /metrics
(schedule lag histogram, skipped runs), its CPU and memory from /proc, its state database.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.proc import Process, Processes, free_port, wait_http
from bench.targets import DNS_NAME, Targets

REPO = Path(__file__).resolve().parents[1]
LAG = "probe_check_schedule_lag_seconds"
SKIPPED = "probe_checks_skipped_total"


def spec(kind: str, targets: Targets) -> dict[str, Any]:
    """A check of `kind` doing what the blackbox module of the same kind does (one echo for
    icmp, as blackbox sends)."""
    specs: dict[str, dict[str, Any]] = {
        "http": {"http": {"url": targets.http_url}},
        "https": {"http": {"url": targets.https_url, "ca_file": str(targets.ca_file)}},
        "tcp": {"tcp": {"host": "127.0.0.1", "port": targets.http_port}},
        "tls": {"tls": {"host": "127.0.0.1", "port": targets.https_port,
                        "ca_file": str(targets.ca_file)}},
        "dns": {"dns": {"name": DNS_NAME, "type": "A", "server": targets.dns_server}},
        "icmp": {"icmp": {"host": "127.0.0.1", "count": 1}},
    }
    return specs[kind]


@dataclass(frozen=True)
class Scrape:
    """The daemon's own figures at one moment."""

    at: float  # wall clock, when the answer came
    took: float  # seconds the scrape took
    lag_buckets: list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last
    lag_count: float
    skipped: float


@dataclass
class Daemon:
    process: Process
    url: str
    state_dir: Path

    def scrape(self) -> Scrape:
        sent = time.time()
        with urllib.request.urlopen(self.url + "/metrics", timeout=120) as response:
            text = response.read().decode()
        at = time.time()
        buckets: list[tuple[float, float]] = []
        count = skipped = 0.0
        for line in text.splitlines():
            if line.startswith(LAG + "_bucket"):
                bound = line[line.index('le="') + 4 : line.index('"}')]
                buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
            elif line.startswith(LAG + "_count"):
                count = float(line.rsplit(" ", 1)[1])
            elif line.startswith(SKIPPED + " "):
                skipped = float(line.rsplit(" ", 1)[1])
        return Scrape(at, at - sent, buckets, count, skipped)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Read the state database (WAL: readable while the daemon writes)."""
        db = sqlite3.connect(f"file:{self.state_dir / 'probe.sqlite3'}?mode=ro", uri=True,
                             timeout=10)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()


def start(
    processes: Processes,
    directory: Path,
    checks: Sequence[dict[str, Any]],
    *,
    defaults: dict[str, Any],
    agent: dict[str, Any] | None = None,
    ticketing: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
    source: Path = REPO,
    extra: dict[str, Any] | None = None,
) -> Daemon:
    """Start `probe run` on `checks` and wait until it is ready: the installed probe, or with
    `source` other than the checkout (`--rev`), the probe and checks packages found there;
    `env` added to the environment (a cluster's `database: env:NAME`)."""
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        try:
            return _start(processes, directory, checks, defaults=defaults, agent=agent,
                          ticketing=ticketing, cluster=cluster, env=env, cpus=cpus,
                          source=source, extra=extra)
        except PortTaken:
            continue  # another process took the free port first: another one
    raise RuntimeError("probe found no free port in 5 tries")


class PortTaken(Exception):
    pass


def _start(
    processes: Processes,
    directory: Path,
    checks: Sequence[dict[str, Any]],
    *,
    defaults: dict[str, Any],
    agent: dict[str, Any] | None,
    ticketing: dict[str, Any] | None,
    cluster: dict[str, Any] | None,
    env: dict[str, str] | None,
    cpus: set[int] | None,
    source: Path,
    extra: dict[str, Any] | None,
) -> Daemon:
    port = free_port()
    config: dict[str, Any] = {
        "agent": {
            "name": f"bench-{directory.name}",
            "state_dir": str(directory / "state"),
            "listen": f"127.0.0.1:{port}",
            **(agent or {}),
        },
        "defaults": defaults,
        "checks": list(checks),
    }
    if ticketing:
        config["ticketing"] = ticketing
    if cluster:
        config["cluster"] = cluster
    config.update(extra or {})  # other sections (alertmanager)
    path = directory / "probe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # -P: never the checkout by accident (the working directory); PYTHONPATH for --rev's copy.
    env = {**os.environ, **(env or {})}
    if source != REPO:
        env["PYTHONPATH"] = str(source)
    process = processes.start(
        "probe", [sys.executable, "-P", "-m", "probe", "run", "--config", str(path)],
        log=directory / "probe.log", cpus=cpus, env=env, cwd=directory,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/-/ready", process, timeout=60)
    except RuntimeError:
        if not process.alive() and "address already in use" in process.tail(20):
            processes.stop(process)
            raise PortTaken from None
        raise
    return Daemon(process, url, directory / "state")


def quantile(q: float, before: Scrape, after: Scrape) -> float:
    """The q-quantile of the lag observed between two scrapes, interpolated linearly inside a
    bucket as Prometheus' histogram_quantile does (the top finite bound if it is beyond)."""
    counts = [(bound, a - b) for (bound, a), (_, b) in
              zip(after.lag_buckets, before.lag_buckets, strict=True)]
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return 0.0
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def share_within(limit: float, before: Scrape, after: Scrape) -> float:
    """The share of runs that started at most `limit` late (`limit` a bucket bound): exact."""
    total = after.lag_count - before.lag_count
    for (bound, a), (_, b) in zip(after.lag_buckets, before.lag_buckets, strict=True):
        if bound == limit:
            return (a - b) / total if total else 1.0
    raise ValueError(f"{limit} is not a bucket bound")


def max_bucket(before: Scrape, after: Scrape) -> float:
    """The bound of the highest bucket that got a run: the worst lag is at most this."""
    top, previous = 0.0, 0.0
    for (bound, a), (_, b) in zip(after.lag_buckets, before.lag_buckets, strict=True):
        if a - b > previous:
            top = bound
        previous = a - b
    return top
