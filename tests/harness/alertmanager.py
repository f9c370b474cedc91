"""Debian's Alertmanager (`prometheus-alertmanager`, 0.25 on bookworm) on loopback, routing every
alert to one webhook receiver, `ops`: probe's POST /api/alertmanager with a bearer token from a
file, as docs/alertmanager.md tells operators to set it up. Several of them form a cluster (the
gossip on loopback), as a highly available Alertmanager does.

Missing, the tests skip, unless PROBE_REQUIRE_PROMETHEUS is set (CI sets it): then they fail.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.harness.ports import free_port
from tests.harness.proc import ready, terminate
from tests.harness.prometheus import tool

# Alertmanager's timers, shortened so that a test sees in seconds what takes minutes in
# production: the first notification a second after the first alert, a changed group's a
# second after the change, and the same group again every two seconds.
TIMERS = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "2s"}


class Alertmanager:
    def __init__(self, directory: Path, webhook: str, token_file: Path, *,
                 peers: list[int] | None = None, group_by: list[str] | None = None) -> None:
        self.directory = directory
        self.webhook = webhook  # probe's URL
        self.token_file = token_file
        self.peers = peers or []  # the cluster ports of the replicas to join
        self.group_by = group_by or ["alertname"]
        self.port = 0
        self.cluster_port = 0
        self.log = directory / "alertmanager.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *, clustered: bool = False) -> Alertmanager:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "alertmanager.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "route": {"receiver": "ops", "group_by": self.group_by, **TIMERS},
            "receivers": [{"name": "ops", "webhook_configs": [{
                "url": self.webhook, "send_resolved": True, "max_alerts": 100,
                "http_config": {"authorization": {
                    "type": "Bearer", "credentials_file": str(self.token_file)}}}]}],
        }))
        for _attempt in range(3):
            self.port, self.cluster_port = free_port(), free_port()
            cluster = ([f"--cluster.listen-address=127.0.0.1:{self.cluster_port}",
                        "--cluster.peer-timeout=1s", "--cluster.gossip-interval=100ms",
                        "--cluster.pushpull-interval=1s", "--cluster.settle-timeout=2s",
                        *(f"--cluster.peer=127.0.0.1:{p}" for p in self.peers)]
                       if clustered else ["--cluster.listen-address="])
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [tool("prometheus-alertmanager", "prometheus-alertmanager"),
                     f"--config.file={config}",
                     f"--storage.path={self.directory / 'data'}",
                     f"--web.listen-address={self.address}",
                     f"--web.external-url=http://{self.address}", "--log.level=warn",
                     *cluster],
                    stdout=log, stderr=subprocess.STDOUT)
            assert self.proc is not None
            if ready(self.proc, f"http://{self.address}/-/ready"):
                return self
            self.stop()
        raise AssertionError(f"alertmanager did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        terminate(self.proc)
