"""blackbox_exporter (Debian's prometheus-blackbox-exporter) with modules equivalent to the
probe checks of each kind, and the load generator that asks it for probes: N
`GET /probe?module=X&target=Y` at a fixed concurrency over keep-alive connections.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from bench.proc import Process, Processes, ensure, free_port, wait_http
from bench.targets import DNS_NAME, Targets

PACKAGE = "prometheus-blackbox-exporter"


def modules(targets: Targets) -> dict[str, object]:
    tls = {"ca_file": str(targets.ca_file)}
    ip4 = {"preferred_ip_protocol": "ip4"}
    return {"modules": {
        "http_2xx": {"prober": "http", "timeout": "5s", "http": ip4},
        "https": {"prober": "http", "timeout": "5s", "http": {**ip4, "tls_config": tls}},
        "tcp_connect": {"prober": "tcp", "timeout": "5s", "tcp": ip4},
        "tls": {"prober": "tcp", "timeout": "5s", "tcp": {**ip4, "tls": True, "tls_config": tls}},
        "dns": {"prober": "dns", "timeout": "5s", "dns": {
            **ip4, "query_name": DNS_NAME, "query_type": "A", "transport_protocol": "udp",
        }},
        "icmp": {"prober": "icmp", "timeout": "5s", "icmp": ip4},
    }}


def probe_of(kind: str, targets: Targets) -> tuple[str, str]:
    """The module and target that do what probe's check of `kind` does."""
    return {
        "http": ("http_2xx", targets.http_url),
        "https": ("https", targets.https_url),
        "tcp": ("tcp_connect", f"127.0.0.1:{targets.http_port}"),
        "tls": ("tls", f"127.0.0.1:{targets.https_port}"),
        "dns": ("dns", targets.dns_server),
        "icmp": ("icmp", "127.0.0.1"),
    }[kind]


@dataclass
class Exporter:
    process: Process
    url: str


def start(processes: Processes, directory: Path, targets: Targets) -> Exporter:
    binary = ensure(PACKAGE, [PACKAGE])
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "blackbox.yml"
    config.write_text(yaml.safe_dump(modules(targets)))
    port = free_port()
    process = processes.start("blackbox_exporter", [
        binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ], log=directory / "blackbox.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/-/healthy", process)
    return Exporter(process, url)


async def _load(url: str, module: str, target: str, count: int, concurrency: int) -> int:
    failures = 0
    remaining = count
    params = {"module": module, "target": target}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining, failures
            while remaining > 0:
                remaining -= 1
                async with session.get(url + "/probe", params=params) as response:
                    body = await response.text()
                if response.status != 200 or "\nprobe_success 1" not in body:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


def load(exporter: Exporter, module: str, target: str, count: int, concurrency: int = 50) -> int:
    """Send `count` probe requests; returns how many did not succeed."""
    return asyncio.run(_load(exporter.url, module, target, count, concurrency))
