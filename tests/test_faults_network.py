"""Faults of the network, made for real: the targets and the daemon run in a network namespace
the test creates, and the test degrades it with nftables rules inside it (random loss, a
blackhole, refusal), takes its link down and up, or puts a slow server in the path. Each fault
must give the expected check results, incidents and tickets — and no false ticket when the loss
stays under the configured threshold. Tickets are counted in the local backend's tables."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.helpdesk import Helpdesk
from tests.harness.proc import PROBE, module_command
from tests.harness.wait import until
from tests.reliability import record

REPO = Path(__file__).resolve().parents[1]
PORT = 8080  # inside the namespace: the fast target; PORT + 1 answers after 300ms


class Lab:
    """A network namespace with its own loopback, the targets, and a probe daemon in it."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name, self.directory = name, directory
        self.procs: list[subprocess.Popen[bytes]] = []

    def run(self, *command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *command], input=stdin,
                              capture_output=True, text=True, timeout=60, check=False,
                              cwd=REPO)

    def start(self, *command: str, log: str) -> subprocess.Popen[bytes]:
        with (self.directory / log).open("ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.name, *command],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs.append(proc)
        return proc

    def nft(self, rules: str) -> None:
        """Replace the namespace's filter with `rules` (nft syntax, in an input chain)."""
        script = ("table inet lab\ndelete table inet lab\n"
                  "table inet lab {\n chain input {\n  type filter hook input priority 0;\n"
                  f"  {rules}\n }}\n}}\n")
        done = self.run("nft", "-f", "-", stdin=script)
        assert done.returncode == 0, done.stderr

    def clear(self) -> None:
        self.nft("")

    async def wait(self, what: str, condition: Callable[[], Any], timeout: float = 20) -> Any:
        """`until` the condition holds; the end of the daemon's log if it never does."""
        return await until(what, condition, timeout, context=self.log_tail)

    def log_tail(self) -> str:
        log = self.directory / "probe.log"
        return log.read_text()[-3000:] if log.exists() else ""

    def check(self, config: Path, name: str) -> dict[str, Any]:
        """`probe check --json` inside the namespace: one result, as an operator sees it."""
        done = self.run(*PROBE, "check", "--config", str(config),
                        "--json", name)
        assert done.returncode in (0, 1), done.stderr
        (result,) = json.loads(done.stdout)
        return dict(result)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("needs root and nftables (Debian package nftables) for network namespaces")
    name = f"probe-fault-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode:
        pytest.skip("ip netns add is not permitted here")
    lab = Lab(name, tmp_path)
    try:
        assert lab.run("ip", "link", "set", "lo", "up").returncode == 0
        lab.clear()
        server = lab.start(*module_command("tests.harness.labserver"), str(PORT), "0.3",
                           log="targets.log")
        for _ in range(100):
            if "ready" in (tmp_path / "targets.log").read_text():
                break
            assert server.poll() is None, (tmp_path / "targets.log").read_text()
            subprocess.run(["sleep", "0.05"], check=True)
        yield lab
    finally:
        for proc in lab.procs:
            proc.kill()
            proc.wait(10)
        subprocess.run(["ip", "netns", "delete", name], check=False)


def config(lab: Lab, checks: str, max_concurrency: int | None = None) -> Path:
    path = lab.directory / "probe.yaml"
    concurrency = "" if max_concurrency is None else f", max_concurrency: {max_concurrency}"
    path.write_text(f"""
agent: {{name: lab, state_dir: {lab.directory}/state, listen: "127.0.0.1:9469"{concurrency}}}
defaults:
  interval: 300ms
  retry_interval: 200ms
  timeout: 250ms
  failure_threshold: 3
  success_threshold: 2
ticketing:
  routes:
    desk: {{backend: local}}
checks:
{checks}
""")
    return path


WEB = f"""
  - name: web
    service: shop
    http: {{url: "http://127.0.0.1:{PORT}/health"}}
  - name: web-port
    service: shop
    tcp: {{host: 127.0.0.1, port: {PORT}}}
"""


@pytest.fixture
async def daemon(lab: Lab) -> AsyncIterator[Callable[[str], Helpdesk]]:
    def start(checks: str) -> Helpdesk:
        lab.start(*PROBE, "run", "--config", str(config(lab, checks)),
                  log="probe.log")
        return Helpdesk(lab.directory / "state" / "probe.sqlite3")

    yield start


def runs(desk: Helpdesk, check: str) -> int:
    """How many results the check has had (the results table keeps only the last ones)."""
    found = desk.rows("SELECT MAX(seq) FROM results WHERE check_name = ?", (check,))
    return int(found[0][0] or 0) if found else 0


async def fault_opens_one_ticket_and_resolves(
    lab: Lab, desk: Helpdesk, fault: Callable[[], object], name: str, reason: str,
) -> None:
    await lab.wait("the first results", lambda: runs(desk, "web") >= 2)
    fault()
    (ticket,) = await lab.wait("the ticket", desk.tickets)
    assert ticket[1] == "lab/shop/1"
    ((body,),) = desk.rows("SELECT body FROM local_tickets")
    assert reason in body, body
    lab.run("ip", "link", "set", "lo", "up")
    lab.clear()
    await lab.wait("the resolve", lambda: desk.tickets()[0][3] == "resolved")
    tickets = desk.tickets()
    record("network faults (nftables, link, latency)", name, expected=1, found=len(tickets),
           duplicated=max(0, len(tickets) - 1), outcome=f"one ticket ({reason}), resolved")
    assert len(tickets) == 1


async def test_a_blackholed_target_times_out_into_one_ticket(lab: Lab, daemon: Any) -> None:
    desk = daemon(WEB)
    assert lab.check(lab.directory / "probe.yaml", "web")["state"] == "up"
    lab.nft(f"tcp dport {PORT} drop")
    result = lab.check(lab.directory / "probe.yaml", "web-port")
    assert (result["state"], result["reason"]) == ("down", "timed out after 250ms during connect")
    lab.clear()
    await fault_opens_one_ticket_and_resolves(
        lab, desk, lambda: lab.nft(f"tcp dport {PORT} drop"), "blackhole (nft drop)",
        "timed out after 250ms")


async def test_a_refusing_target_gives_connection_refused(lab: Lab, daemon: Any) -> None:
    desk = daemon(WEB)
    await fault_opens_one_ticket_and_resolves(
        lab, desk, lambda: lab.nft(f"tcp dport {PORT} reject with tcp reset"),
        "refusal (nft reject)", "connection refused")


async def test_a_link_taken_down_and_up(lab: Lab, daemon: Any) -> None:
    desk = daemon(WEB)
    await fault_opens_one_ticket_and_resolves(
        lab, desk, lambda: lab.run("ip", "link", "set", "lo", "down"), "link down, then up",
        "DOWN")


async def test_a_slow_path_breaks_max_latency(lab: Lab, daemon: Any) -> None:
    desk = daemon(f"""
  - name: web
    service: shop
    timeout: 1s
    interval: 1s
    http: {{url: "http://127.0.0.1:{PORT + 1}/health", max_latency: 100ms}}
""")
    (_ticket,) = await lab.wait("the ticket", desk.tickets)
    ((body,),) = desk.rows("SELECT body FROM local_tickets")
    assert "took 3" in body and "(max 100ms)" in body
    record("network faults (nftables, link, latency)", "latency 300ms (slow server)",
           expected=1, found=len(desk.tickets()), outcome="one ticket: took ~300ms (max 100ms)")


PING = """
  - name: gateway
    interval: 500ms
    timeout: 500ms
    icmp: {host: 127.0.0.1, count: 10, interval: 10ms, max_loss: 50%}
"""


async def test_loss_under_the_threshold_opens_no_ticket(lab: Lab, daemon: Any) -> None:
    lab.nft("icmp type echo-request numgen random mod 100 < 20 drop")
    losses = [lab.check(lab.directory / "probe.yaml" if False else config(lab, PING),
                        "gateway")["evidence"]["loss"] for _ in range(5)]
    assert any(0 < loss <= 0.5 for loss in losses), losses  # the rule bites, but under 50%
    desk = daemon(PING)
    await lab.wait("twenty checks", lambda: runs(desk, "gateway") >= 20)
    down = desk.rows("SELECT COUNT(*) FROM results WHERE state = 'down'")[0][0]
    assert desk.tickets() == []
    record("network faults (nftables, link, latency)", "20% random loss, max_loss 50%",
           tried=runs(desk, "gateway"), expected=0, found=0, outcome=f"no ticket ({down} of "
           f"{runs(desk, 'gateway')} checks over the threshold, never 3 in a row)")


async def test_loss_over_the_threshold_opens_one_ticket(lab: Lab, daemon: Any) -> None:
    desk = daemon(PING)
    await lab.wait("a first result", lambda: runs(desk, "gateway") >= 1)
    lab.nft("icmp type echo-request numgen random mod 100 < 90 drop")
    (_ticket,) = await lab.wait("the ticket", desk.tickets)
    ((body,),) = desk.rows("SELECT body FROM local_tickets")
    # 90% random loss loses all ten echoes of a run about a third of the time (0.9**10): that
    # run's reason is "100% packet loss (10 sent)", the others' "N% packet loss (max 50%)".
    assert re.search(r"\d+% packet loss \(max 50%\)|100% packet loss \(10 sent\)", body), body
    lab.clear()
    await lab.wait("the resolve", lambda: desk.tickets()[0][3] == "resolved")
    record("network faults (nftables, link, latency)", "90% random loss, max_loss 50%",
           expected=1, found=len(desk.tickets()), outcome="one ticket, resolved")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_ten_thousand_targets_timing_out_at_once_starve_nothing(lab: Lab) -> None:
    many = int(os.environ.get("PROBE_FAULT_TIMEOUTS", "10000"))
    lab.nft("tcp dport 9 drop")  # every one of them: a SYN into the void
    blackholed = "".join(
        f"  - {{name: void{i}, interval: 10s, retry_interval: 10s, timeout: 1s, "
        f"ticket: {{enabled: false}}, "
        f"tcp: {{host: 127.0.0.1, port: 9}}}}\n" for i in range(many))
    canary = f"""  - name: canary
    interval: 1s
    timeout: 1s
    http: {{url: "http://127.0.0.1:{PORT}/health"}}
"""
    path = config(lab, canary + blackholed, max_concurrency=2000)
    proc = lab.start(*PROBE, "run", "--config", str(path), log="probe.log")
    desk = Helpdesk(lab.directory / "state" / "probe.sqlite3")
    await lab.wait("the daemon's first results", lambda: runs(desk, "canary") >= 1, 60)
    peak = 0
    # every one of them fails its way to an incident of its own: ten thousand at once
    for _ in range(60):
        await asyncio.sleep(1)
        peak = max(peak, rss_bytes(proc.pid))
        if desk.rows("SELECT COUNT(*) FROM incidents")[0][0] >= many:
            break
    canary_before = runs(desk, "canary")
    for _ in range(15):
        await asyncio.sleep(1)
        peak = max(peak, rss_bytes(proc.pid))
    canary_runs = runs(desk, "canary") - canary_before
    timed_out = desk.rows("SELECT COUNT(DISTINCT check_name) FROM results WHERE check_name "
                          "LIKE 'void%' AND reason LIKE 'timed out%'")[0][0]
    canary_down = desk.rows("SELECT COUNT(*) FROM results WHERE check_name = 'canary' AND "
                            "state != 'up'")[0][0]
    record("load faults", f"{many} targets timing out at once (nft drop), one healthy canary",
           tried=many, expected=0, found=len(desk.tickets()),
           outcome=f"every target ran and timed out ({timed_out}); the canary ran {canary_runs}"
                   f" times in 15s, {canary_down} not up; peak RSS {peak // 2**20} MiB")
    assert timed_out == many  # every check got its turn: none starved
    assert canary_runs >= 10  # the healthy check kept its 1s interval, near enough
    assert canary_down == 0
    assert peak < 400 * 2**20
    assert proc.poll() is None
