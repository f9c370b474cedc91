"""The targets every scenario probes, on 127.0.0.1: nginx serving HTTP and HTTPS (a certificate
from a CA made here; no session cache, no tickets, so each HTTPS or TLS probe is a full
handshake) and dnsmasq answering for the zone bench.test, with no upstream: nothing is ever
forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.proc import Processes, ensure, free_port, wait_port
from tests.harness.certs import CertFactory

DNS_NAME = "www.bench.test"
DNS_ANSWER = "127.0.0.1"

NGINX_CONF = """\
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    ssl_session_cache off;
    ssl_session_tickets off;
    server {{
        listen 127.0.0.1:{http};
        listen 127.0.0.1:{https} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


@dataclass(frozen=True)
class Targets:
    http_port: int
    https_port: int
    dns_port: int
    ca_file: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}/"

    @property
    def dns_server(self) -> str:
        return f"127.0.0.1:{self.dns_port}"


def start(processes: Processes, directory: Path) -> Targets:
    nginx = ensure("nginx", ["nginx-light", "nginx"])
    dnsmasq = ensure("dnsmasq", ["dnsmasq-base"])
    directory.mkdir(parents=True, exist_ok=True)
    certs = CertFactory(directory)
    # RSA 2048: what most public sites still serve, and the costlier handshake of the two.
    leaf = certs.issue(("127.0.0.1", "localhost"), key_type="rsa", days=365)
    targets = Targets(free_port(), free_port(), free_port(), certs.ca.cert_file)
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        dir=directory, http=targets.http_port, https=targets.https_port, cert=leaf.cert_file,
        key=leaf.key_file, connections=16384, nofile=20000,
    ))
    server = processes.start(
        "nginx", [nginx, "-c", str(conf), "-p", str(directory), "-g", "daemon off;"],
        log=directory / "nginx.log",
    )
    wait_port(targets.http_port, server)
    wait_port(targets.https_port, server)
    dns = processes.start("dnsmasq", [
        dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--pid-file=", "--log-facility=-", "--bind-interfaces", "--listen-address=127.0.0.1",
        f"--port={targets.dns_port}", "--local=/bench.test/",
        f"--host-record={DNS_NAME},{DNS_ANSWER}", "--cache-size=0", "--dns-forward-max=10000",
    ], log=directory / "dnsmasq.log")
    wait_port(targets.dns_port, dns)
    return targets
