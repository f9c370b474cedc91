"""What checks/net.py promises the kinds that connect through it (http, tcp and tls): a failure
means one thing and reads one way, whichever of them met it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from checks import http, tcp, tls
from checks.base import Result
from tests.harness.certs import CertFactory, Issued
from tests.harness.proc import PROBE
from tests.harness.starved import starved
from tests.harness.tlsserver import greet, serve


async def probe_check(command: list[str], config: Path) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        *command, "check", "--config", str(config), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out, err.decode()
    assert proc.returncode is not None
    return proc.returncode, {row["name"]: row for row in json.loads(out)}


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def test_a_host_out_of_file_descriptors_makes_http_tcp_and_tls_unknown_not_down(
    tmp_path: Path, certs: CertFactory
) -> None:
    config = tmp_path / "probe.yaml"
    async with serve(greet(OK)) as web_port, serve(tls=certs.issue().server_context()) as tls_port:
        # The tls check does not verify, so that its first need for a descriptor is its
        # socket, as it is for http and tcp (a ca_file is read before connecting).
        config.write_text(f"""
checks:
  - name: web
    http: {{url: "http://127.0.0.1:{web_port}/"}}
  - name: port
    tcp: {{host: 127.0.0.1, port: {web_port}}}
  - name: cert
    tls: {{host: 127.0.0.1, port: {tls_port}, verify: false}}
""")
        code, starving = await probe_check(starved(), config)
        _, fed = await probe_check(list(PROBE), config)

    said = {name: (row["kind"], row["state"], row["reason"]) for name, row in starving.items()}
    assert said == {
        "web": ("http", "unknown", "too many open files"),
        "port": ("tcp", "unknown", "too many open files"),
        "cert": ("tls", "unknown", "too many open files"),
    }
    assert code == 1
    # With descriptors to spare, the same checks of the same targets pass.
    assert {name: row["state"] for name, row in fed.items()} == dict.fromkeys(fed, "up"), fed


def self_signed(certs: CertFactory) -> tuple[Issued, str]:
    return certs.issue(self_signed=True), "TLS certificate rejected: self-signed certificate"


def from_an_unknown_ca(certs: CertFactory) -> tuple[Issued, str]:
    rogue = certs.make_ca("probe rogue CA")
    return certs.issue(issuer=rogue), "TLS certificate rejected: issued by an unknown CA"


@pytest.mark.parametrize("make", [self_signed, from_an_unknown_ca])
async def test_http_tcp_and_tls_word_an_untrusted_certificate_alike(
    certs: CertFactory, make: Any
) -> None:
    served, reason = make(certs)
    ca_file = certs.ca.cert_file
    async with serve(tls=served.server_context()) as port:
        results: dict[str, Result] = {
            "http": await http.run(http.HttpSpec(url=f"https://localhost:{port}/",
                                                 ca_file=ca_file), timeout=2),
            "tcp": await tcp.run(tcp.TcpSpec(host="127.0.0.1", port=port, tls=True,
                                             server_name="localhost", ca_file=ca_file),
                                 timeout=2),
            "tls": await tls.run(tls.TlsSpec(host="127.0.0.1", port=port,
                                             server_name="localhost", ca_file=ca_file),
                                 timeout=2),
        }

    said = {kind: (result.state, result.reason) for kind, result in results.items()}
    if make is from_an_unknown_ca:  # the tls check has the chain, and names the CA
        assert said.pop("tls") == ("down", f"{reason} (CN=probe rogue CA)")
    assert said == dict.fromkeys(said, ("down", reason))
