"""Security as an operator meets it, with `probe run` for real as a subprocess and peers on
loopback: the HTTP endpoint behind TLS, client certificates and basic auth (the exporter-toolkit
web configuration file), helpdesks whose certificates are verified unless a route opts out,
and secrets that appear nowhere: not in the log, /metrics, /api/status, `probe status`,
`probe validate`, `probe tickets`, nor in the tickets themselves."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import shutil
import ssl
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp import web

from probe.config import ConfigError, load
from probe.secrets import Redactor, redact
from probe.webconfig import WebConfig, exposure_warning
from tests.harness.certs import CertFactory, Issued
from tests.harness.daemon import ProbeProcess
from tests.harness.ports import closed_port, free_port
from tests.harness.proc import PROBE

DATA = Path(__file__).parent / "webconfig"


# --- peers and the daemon ------------------------------------------------------------------


class Peers:
    """aiohttp applications served from a thread of their own, so that they outlive the
    event loop of one test (a module's fixtures share one daemon run)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []

    def serve(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> int:
        async def start() -> int:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
            self._runners.append(runner)
            return int(runner.addresses[0][1])

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def make_probe(
    directory: Path, rest: str = "", env: dict[str, str] | None = None, **agent: str
) -> ProbeProcess:
    """A daemon on directory/probe.yaml, not started. A module-scoped fixture's daemon serves
    several tests: it outlives each test, and the fixture stops it."""
    port = free_port()
    keys = "".join(f", {key}: {value}" for key, value in agent.items())
    config = directory / "probe.yaml"
    config.write_text(f'agent: {{name: sec-agent, state_dir: {directory}/state, '
                      f'listen: "127.0.0.1:{port}"{keys}}}\n{rest}')
    return ProbeProcess(config, port, env=env, reaped=False)


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def basic(user: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


async def fetch(
    url: str, *, ctx: ssl.SSLContext | bool | None = None, auth: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.get(
        url, ssl=True if ctx is None else ctx, headers=auth,
        timeout=aiohttp.ClientTimeout(total=10),
    ) as response:
        return response.status, dict(response.headers), await response.text()


def client_context(certs: CertFactory, client: Issued | None = None,
                   tls12_only: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca.cert_file)
    if client is not None:
        ctx.load_cert_chain(client.cert_file, client.key_file)
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# --- the web configuration file: exact errors ------------------------------------------------

BAD_WEB_CONFIGS = {
    "unknown-key.yml": [
        "{file}:1: tls_server_config.key_file: missing (required)",
        "{file}:3: tls_server_config.key_fil: unknown key (did you mean 'key_file'?)",
    ],
    "unsupported.yml": [
        "{file}:1: tls_server_config.cert_file: missing (required)",
        "{file}:1: tls_server_config.key_file: missing (required)",
        "{file}:2: tls_server_config.cert: inline certificates are not supported: put it in a "
        "file and set cert_file",
        "{file}:3: tls_server_config.key: inline secrets are not allowed: put the key in a file "
        "and set key_file",
        "{file}:4: tls_server_config.client_allowed_sans: not supported by probe: give these "
        "clients certificates from their own client_ca_file",
        "{file}:5: rate_limit: not supported by probe: limit requests in a reverse proxy",
    ],
    "client-auth-unverified.yml": [
        "{file}:4: tls_server_config.client_auth_type: RequireAnyClientCert is not supported: "
        "probe takes only client certificates it verifies; use RequireAndVerifyClientCert (or "
        "VerifyClientCertIfGiven) with client_ca_file",
    ],
    "client-auth-without-ca.yml": [
        "{file}:4: tls_server_config.client_auth_type: RequireAndVerifyClientCert needs "
        "client_ca_file",
    ],
    "client-ca-without-auth.yml": [
        "{file}:4: tls_server_config.client_ca_file: set, but client_auth_type is NoClientCert: "
        "set client_auth_type: RequireAndVerifyClientCert",
    ],
    "old-tls.yml": [
        "{file}:4: tls_server_config.min_version: 'TLS11' is not one of 'TLS12' or 'TLS13'",
    ],
    "versions-reversed.yml": [
        "{file}:4: tls_server_config.min_version: TLS13 is above max_version TLS12",
    ],
    "headers.yml": [
        "{file}:4: http_server_config.headers.Server: not a header probe sets; these are: "
        "Content-Security-Policy, X-Frame-Options, X-Content-Type-Options, X-XSS-Protection, "
        "Strict-Transport-Security",
        "{file}:5: http_server_config.headers.X-Frame-Options: 'allow-from https://example.net' "
        "is not one of deny, sameorigin",
    ],
    "users.yml": [
        "{file}:2: basic_auth_users.prometheus: not a bcrypt hash: make one with "
        "htpasswd -nBC 10 \"\" | tr -d ':\\n'",
        "{file}:3: basic_auth_users.grafana:ro: a user name must be non-empty and without ':'",
    ],
    "users-a-list.yml": [
        "{file}:1: basic_auth_users: expected a mapping of keys",
    ],
    "missing-files.yml": [
        "{file}:2: tls_server_config.cert_file: cannot read {dir}/no-such.pem: No such file or "
        "directory",
    ],
}


def main_config(tmp_path: Path, web_config: Path) -> Path:
    config = tmp_path / "probe.yaml"
    config.write_text(f"agent: {{state_dir: {tmp_path}/state, web_config: {web_config}}}\n")
    return config


def issues_of(config: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(config)
    return [str(issue) for issue in caught.value.issues]


@pytest.mark.parametrize("name", sorted(BAD_WEB_CONFIGS))
def test_a_bad_web_config_is_refused_with_file_line_and_key(name: str, tmp_path: Path) -> None:
    file = DATA / name
    expected = [line.format(file=file, dir=DATA) for line in BAD_WEB_CONFIGS[name]]
    assert issues_of(main_config(tmp_path, file)) == expected


def test_a_password_in_clear_is_not_echoed_back(tmp_path: Path) -> None:
    assert "hunter2" not in "\n".join(issues_of(main_config(tmp_path, DATA / "users.yml")))


def test_probe_validate_prints_the_web_config_errors(tmp_path: Path) -> None:
    config = main_config(tmp_path, DATA / "versions-reversed.yml")
    done = subprocess.run([*PROBE, "validate", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{DATA}/versions-reversed.yml:4: tls_server_config.min_version: TLS13 is above "
        "max_version TLS12",
        f"{config}: 1 error",
    ]


def test_a_certificate_that_does_not_match_its_key_is_refused(
    certs: CertFactory, tmp_path: Path
) -> None:
    one, other = certs.issue(), certs.issue()
    web_config = tmp_path / "web.yml"
    web_config.write_text(f"tls_server_config: {{cert_file: {one.cert_file}, "
                          f"key_file: {other.key_file}}}\n")
    assert issues_of(main_config(tmp_path, web_config)) == [
        f"{web_config}:1: tls_server_config.cert_file: cannot be used with key_file: "
        "key values mismatch",
    ]


def test_a_client_ca_file_without_a_certificate_is_refused(
    certs: CertFactory, tmp_path: Path
) -> None:
    server = certs.issue()
    web_config = tmp_path / "web.yml"
    web_config.write_text(f"""
tls_server_config:
  cert_file: {server.cert_file}
  key_file: {server.key_file}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {server.key_file}
""")
    [issue] = issues_of(main_config(tmp_path, web_config))
    assert issue.startswith(f"{web_config}:6: tls_server_config.client_ca_file: holds no usable "
                            "CA certificate: ")


def test_relative_paths_are_read_from_the_web_config_files_directory(
    certs: CertFactory, tmp_path: Path
) -> None:
    server = certs.issue()
    (tmp_path / "tls").mkdir()
    shutil.copy(server.cert_file, tmp_path / "tls" / "server.pem")
    shutil.copy(server.key_file, tmp_path / "tls" / "server.key")
    (tmp_path / "tls" / "web.yml").write_text(
        "tls_server_config: {cert_file: server.pem, key_file: server.key}\n")
    config = load(main_config(tmp_path, tmp_path / "tls" / "web.yml"))
    assert config.agent.web_config == tmp_path / "tls" / "web.yml"


# --- the endpoint behind TLS and basic auth ----------------------------------------------------

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def secured(
    certs: CertFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProbeProcess]:
    """A daemon behind TLS 1.3 and basic auth, with security headers."""
    directory = tmp_path_factory.mktemp("secured")
    server = certs.issue(("127.0.0.1", "localhost"))
    shutil.copy(server.cert_file, directory / "server.pem")
    shutil.copy(server.key_file, directory / "server.key")
    (directory / "web.yml").write_text(f"""
tls_server_config:
  cert_file: server.pem
  key_file: server.key
  min_version: TLS13
  cipher_suites: [TLS_AES_128_GCM_SHA256]
http_server_config:
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: {bcrypt_hash(PASSWORD)}
""")
    probe = make_probe(directory, "ticketing: {routes: {local: {backend: local}}}\n",
                       web_config=str(directory / "web.yml"))
    yield probe.start_blocking()
    probe.stop()


def url(probe: ProbeProcess, path: str, scheme: str = "https") -> str:
    return f"{scheme}://127.0.0.1:{probe.port}{path}"


async def test_a_scrape_without_credentials_is_refused_with_a_basic_challenge(
    secured: ProbeProcess, certs: CertFactory
) -> None:
    status, headers, _ = await fetch(url(secured, "/metrics"), ctx=client_context(certs))
    assert status == 401
    assert headers["WWW-Authenticate"] == "Basic"


async def test_a_wrong_password_or_an_unknown_user_is_refused(
    secured: ProbeProcess, certs: CertFactory
) -> None:
    ctx = client_context(certs)
    for auth in (basic("prometheus", "wrong"), basic("mallory", PASSWORD)):
        status, headers, _ = await fetch(url(secured, "/metrics"), ctx=ctx, auth=auth)
        assert status == 401
        assert headers["WWW-Authenticate"] == "Basic"


async def test_the_right_password_gets_the_metrics(
    secured: ProbeProcess, certs: CertFactory
) -> None:
    for _ in range(2):  # the second from the cache of checked passwords
        status, _, body = await fetch(url(secured, "/metrics"), ctx=client_context(certs),
                                      auth=basic("prometheus", PASSWORD))
        assert status == 200
        assert "probe_build_info" in body


async def test_every_path_asks_for_credentials(secured: ProbeProcess, certs: CertFactory) -> None:
    for path in ("/-/healthy", "/-/ready", "/api/status", "/no-such-page"):
        status, _, _ = await fetch(url(secured, path), ctx=client_context(certs))
        assert status == 401, path


async def test_the_configured_headers_are_on_every_response(
    secured: ProbeProcess, certs: CertFactory
) -> None:
    for auth in (None, basic("prometheus", PASSWORD)):
        _, headers, _ = await fetch(url(secured, "/-/healthy"), ctx=client_context(certs),
                                    auth=auth)
        assert headers["X-Frame-Options"] == "deny"
        assert headers["Strict-Transport-Security"] == "max-age=31536000"


def probe_status(probe: ProbeProcess, *args: str, password: str | None = None) -> tuple[int, str]:
    env = {k: v for k, v in probe.env.items() if k != "PROBE_PASSWORD"}
    if password is not None:
        env["PROBE_PASSWORD"] = password
    done = subprocess.run(
        [*PROBE, "status", "--config", str(probe.config), *args],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_probe_status_speaks_tls_and_basic_auth_to_its_own_daemon(secured: ProbeProcess) -> None:
    assert probe_status(secured, "--user", "prometheus", password=PASSWORD) == (
        0, "NAME  KIND  STATE  FAILS  FLAGS  REASON\n\nno open incidents\n")
    code, said = probe_status(secured)
    assert code == 2
    assert said == (
        f"cannot read the status from https://127.0.0.1:{secured.port}: it asks for a user name "
        "and password (basic_auth_users in its web_config): give --user NAME, and the password "
        "in PROBE_PASSWORD or when asked\n")
    assert probe_status(secured, "--user", "prometheus", password="wrong") == (
        2, f"cannot read the status from https://127.0.0.1:{secured.port}: "
           "the user name or password is wrong\n")


async def test_plain_http_to_the_tls_port_gets_nothing(secured: ProbeProcess) -> None:
    with pytest.raises(aiohttp.ClientError):
        await fetch(url(secured, "/metrics", scheme="http"),
                    auth=basic("prometheus", PASSWORD))


async def test_a_client_below_min_version_is_refused(
    secured: ProbeProcess, certs: CertFactory
) -> None:
    with pytest.raises(aiohttp.ClientError):
        await fetch(url(secured, "/metrics"), ctx=client_context(certs, tls12_only=True),
                    auth=basic("prometheus", PASSWORD))


def test_settings_that_change_nothing_are_said_to_be_ignored(secured: ProbeProcess) -> None:
    assert "web_config: cipher_suites is ignored" in secured.log_text()


async def test_a_reload_takes_a_new_password_and_a_renewed_certificate_or_refuses_a_bad_file(
    certs: CertFactory, tmp_path: Path
) -> None:
    first, renewed = certs.issue(), certs.issue()
    web_config = tmp_path / "web.yml"

    def write(issued: Issued, password: str) -> None:
        web_config.write_text(f"tls_server_config: {{cert_file: {issued.cert_file}, "
                              f"key_file: {issued.key_file}}}\n"
                              f"basic_auth_users: {{prometheus: {bcrypt_hash(password)}}}\n")

    write(first, "old password")
    probe = make_probe(tmp_path, web_config=str(web_config))
    probe.start_blocking()
    port = probe.port
    try:
        address = f"https://127.0.0.1:{port}/metrics"
        ctx = client_context(certs)
        old, new = basic("prometheus", "old password"), basic(
            "prometheus", "new password")
        assert (await fetch(address, ctx=ctx, auth=old))[0] == 200
        write(renewed, "new password")
        probe.reload_blocking()
        assert (await fetch(address, ctx=ctx, auth=old))[0] == 401  # not from the cache
        assert (await fetch(address, ctx=ctx, auth=new))[0] == 200
        served = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
        assert served == renewed.cert_file.read_text()

        web_config.write_text(web_config.read_text() + "bogus: true\n")
        probe.hup()
        probe.wait_blocking("the refusal",
                            lambda: f"{web_config}:3: bogus: unknown key" in probe.log_text())
        assert (await fetch(address, ctx=ctx, auth=new))[0] == 200
    finally:
        probe.stop()


@pytest.fixture(scope="module")
def client_ca(certs: CertFactory) -> Issued:
    return certs.make_ca("probe test client CA")


@pytest.fixture(scope="module")
def mutual(
    certs: CertFactory, client_ca: Issued, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProbeProcess]:
    """A daemon that requires a client certificate from its own client CA."""
    directory = tmp_path_factory.mktemp("mutual")
    server = certs.issue(("127.0.0.1",))
    (directory / "web.yml").write_text(f"""
tls_server_config:
  cert_file: {server.cert_file}
  key_file: {server.key_file}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {client_ca.cert_file}
""")
    probe = make_probe(directory, web_config=str(directory / "web.yml"))
    yield probe.start_blocking()
    probe.stop()


async def test_a_client_without_a_certificate_is_refused(
    mutual: ProbeProcess, certs: CertFactory
) -> None:
    with pytest.raises(aiohttp.ClientError):
        await fetch(url(mutual, "/metrics"), ctx=client_context(certs))


async def test_a_client_with_a_certificate_from_the_client_ca_is_served(
    mutual: ProbeProcess, certs: CertFactory, client_ca: Issued
) -> None:
    client = certs.issue(("prometheus.example.net",), issuer=client_ca)
    status, _, body = await fetch(url(mutual, "/metrics"), ctx=client_context(certs, client))
    assert status == 200
    assert "probe_build_info" in body


async def test_a_client_with_a_certificate_from_another_ca_is_refused(
    mutual: ProbeProcess, certs: CertFactory
) -> None:
    stranger = certs.issue(("prometheus.example.net",))  # the server's CA, not the clients'
    with pytest.raises(aiohttp.ClientError):
        await fetch(url(mutual, "/metrics"), ctx=client_context(certs, stranger))


# --- warnings at start -------------------------------------------------------------------------


def test_an_endpoint_open_to_the_network_without_protection_is_warned_of() -> None:
    # The daemon logs this at start; binding a wildcard address in a test would expose it.
    assert exposure_warning("0.0.0.0:9469", None) == (
        "serving metrics on 0.0.0.0:9469 without TLS or authentication")
    assert exposure_warning("[::]:9469", None) == (
        "serving metrics on [::]:9469 without TLS or authentication")
    assert exposure_warning("192.0.2.7:9469", None) == (
        "serving metrics on 192.0.2.7:9469 without TLS or authentication")


def test_a_loopback_endpoint_is_not_warned_of() -> None:
    for listen in ("127.0.0.1:9469", "[::1]:9469", "localhost:9469", "127.0.0.53:9469"):
        assert exposure_warning(listen, None) is None


def test_basic_auth_without_tls_on_the_network_is_warned_of() -> None:
    web = WebConfig.model_validate({"basic_auth_users": {"prometheus": bcrypt_hash("x")}})
    assert exposure_warning("0.0.0.0:9469", web) == (
        "serving metrics on 0.0.0.0:9469 with basic auth but without TLS: passwords cross the "
        "network in clear text")


# --- helpdesk TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helpdesk_tls(
    certs: CertFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProbeProcess, list[str]]]:
    """Two webhook routes to one helpdesk with a self-signed certificate: `strict` verifies
    it (the default), `lax` opted out. A check on each fails at once."""
    directory = tmp_path_factory.mktemp("helpdesk-tls")
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{route}", hook)
    peers = Peers()
    self_signed = certs.issue(("127.0.0.1",), self_signed=True)
    helpdesk = peers.serve(app, self_signed.server_context())
    down = closed_port()
    probe = make_probe(directory, f"""
defaults: {{interval: 500ms, retry_interval: 300ms, timeout: 400ms, failure_threshold: 1}}
ticketing:
  routes:
    strict: {{backend: webhook, url: "https://127.0.0.1:{helpdesk}/strict"}}
    lax: {{backend: webhook, url: "https://127.0.0.1:{helpdesk}/lax", tls_verify: false}}
checks:
  - {{name: to-strict, ticket: {{route: strict}}, tcp: {{host: 127.0.0.1, port: {down}}}}}
  - {{name: to-lax, ticket: {{route: lax}}, tcp: {{host: 127.0.0.1, port: {down}}}}}
""")
    try:
        probe.start_blocking()
        probe.wait_blocking("the lax route's ticket and the strict route's refusal",
                   lambda: "/lax" in received and "TLS certificate not trusted" in
                   probe.log_text())
        yield probe, received
    finally:
        probe.stop()
        peers.close()


def test_a_route_that_does_not_verify_tls_is_warned_of_at_start(
    helpdesk_tls: tuple[ProbeProcess, list[str]]
) -> None:
    log = helpdesk_tls[0].log_text()
    assert "route lax does not verify the helpdesk's TLS certificate" in log
    assert "route strict does not verify" not in log


def test_a_verifying_route_refuses_a_self_signed_helpdesk(
    helpdesk_tls: tuple[ProbeProcess, list[str]]
) -> None:
    probe, received = helpdesk_tls
    assert "/strict" not in received
    retries = [line for line in probe.log_text().splitlines()
               if "ticket action will be retried" in line and "route=strict" in line]
    assert retries
    assert "TLS certificate not trusted" in retries[0]
    assert "self-signed certificate" in retries[0] or "self signed certificate" in retries[0]


def test_a_route_that_opted_out_delivers_to_a_self_signed_helpdesk(
    helpdesk_tls: tuple[ProbeProcess, list[str]]
) -> None:
    assert "/lax" in helpdesk_tls[1]


# --- secrets appear nowhere --------------------------------------------------------------------

TOKEN_IN_FILE = f"file-secret-{uuid.uuid4().hex}"
TOKEN_IN_ENV = f"env-secret-{uuid.uuid4().hex}"
TOKEN_IN_HEADER = f"header-secret-{uuid.uuid4().hex}"
TOKEN_IN_URL = f"url-secret-{uuid.uuid4().hex}"
SECRETS = (TOKEN_IN_FILE, TOKEN_IN_ENV, TOKEN_IN_HEADER, TOKEN_IN_URL)


class Leaky:
    """What a run against peers that echo credentials left behind."""

    def __init__(self, probe: ProbeProcess, target_saw: list[str], helpdesk_saw: list[str]) -> None:
        self.probe = probe
        self.target_saw = target_saw
        self.helpdesk_saw = helpdesk_saw
        self.outputs: dict[str, str] = {}


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leaky]:
    """Secrets in a token file, an environment variable, Authorization headers (of a webhook
    route and of http checks) and a check's URL. The target redirects to a URL carrying the token it
    was sent, then answers 503 repeating the header; another redirects to an ftp:// URL with
    the token; the helpdesk answers 400 repeating the header and the signing secrets."""
    directory = tmp_path_factory.mktemp("leaky")
    target_saw: list[str] = []
    helpdesk_saw: list[str] = []

    def token(request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        target_saw.append(header)
        return header.removeprefix("Bearer ")

    async def health(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/landing?access_token={token(request)}")

    async def landing(request: web.Request) -> web.Response:
        header, sent = request.headers.get("Authorization"), request.query.get("access_token")
        return web.Response(status=503, text=f"denied: Authorization: {header} (token {sent})")

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"ftp://127.0.0.1/drop?token={token(request)}")

    async def hook(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        helpdesk_saw.append(header)
        message = (f"rejected {request.path}: Authorization {header} unknown; we sign with "
                   f"{TOKEN_IN_FILE} and {TOKEN_IN_ENV}")
        return web.json_response({"message": message}, status=400)

    target, helpdesk = web.Application(), web.Application()
    target.router.add_get("/health", health)
    target.router.add_get("/landing", landing)
    target.router.add_get("/away", away)
    helpdesk.router.add_post("/{route}", hook)
    peers = Peers()
    target_port, helpdesk_port = peers.serve(target), peers.serve(helpdesk)
    (directory / "hook-secret").write_text(TOKEN_IN_FILE + "\n")
    # A credential header comes from the environment (the checks) or a file (the webhook).
    (directory / "hook-auth").write_text(f"Bearer {TOKEN_IN_HEADER}\n")
    auth = "headers: {Authorization: env:PROBE_TEST_AUTH}"
    base = f"http://127.0.0.1:{target_port}"
    probe = make_probe(directory, f"""
defaults:
  interval: 500ms
  retry_interval: 300ms
  timeout: 400ms
  failure_threshold: 1
  ticket: {{route: local}}
ticketing:
  routes:
    local: {{backend: local}}
    hook:
      backend: webhook
      url: "http://127.0.0.1:{helpdesk_port}/hook"
      secret_file: {directory}/hook-secret
      headers_file: {{Authorization: {directory}/hook-auth}}
    hook2:
      backend: webhook
      url: "http://127.0.0.1:{helpdesk_port}/hook2"
      secret: env:PROBE_TEST_SIGNING_SECRET
checks:
  - {{name: web, service: shop, http: {{url: "{base}/health", {auth}}}}}
  - {{name: web-away, service: shop, http: {{url: "{base}/away", {auth}}}}}
  - {{name: web-keyed, service: shop, http: {{url: "{base}/health?api_key={TOKEN_IN_URL}"}}}}
  - {{name: api, ticket: {{route: hook}}, http: {{url: "{base}/health", {auth}}}}}
  - {{name: api2, ticket: {{route: hook2}}, http: {{url: "{base}/health", {auth}}}}}
""", env={"PROBE_TEST_SIGNING_SECRET": TOKEN_IN_ENV,
          "PROBE_TEST_AUTH": f"Bearer {TOKEN_IN_HEADER}"}, log_level="debug")
    run = Leaky(probe, target_saw, helpdesk_saw)
    try:
        probe.start_blocking()
        probe.wait_blocking("a local ticket with its triage note, and two failed webhook actions",
                   lambda: bool(probe.db("SELECT 1 FROM local_notes"))
                   and len(probe.db("SELECT 1 FROM outbox WHERE status = 'failed'")) == 2)
        for path in ("/metrics", "/api/status"):
            with urllib.request.urlopen(f"http://127.0.0.1:{probe.port}{path}", timeout=10) as r:
                run.outputs[path] = r.read().decode()
        run.outputs["probe status"] = probe.command("status")
        run.outputs["probe validate"] = probe.command("validate")
        run.outputs["probe tickets"] = probe.command("tickets")
        run.outputs["probe tickets show"] = probe.command("tickets", "show", "1")
        run.outputs["probe tickets failed"] = probe.command("tickets", "failed")
        run.outputs["tickets"] = json.dumps(probe.db("SELECT title, body FROM local_tickets"))
        run.outputs["notes"] = json.dumps(probe.db("SELECT text FROM local_notes"))
        yield run
    finally:
        probe.stop()
        peers.close()


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_the_peers_were_sent_and_echoed_the_secrets(leaky: Leaky) -> None:
    assert f"Bearer {TOKEN_IN_HEADER}" in leaky.target_saw
    assert f"Bearer {TOKEN_IN_HEADER}" in leaky.helpdesk_saw
    assert "<redacted>" in leaky.outputs["/api/status"]  # it was there to be redacted


def test_no_secret_in_the_daemons_log(leaky: Leaky) -> None:
    log = leaky.probe.log_text()
    assert "ticket action failed for good" in log
    assert "<redacted>" in log
    assert_no_secret(log)


def test_no_secret_in_the_metrics(leaky: Leaky) -> None:
    assert_no_secret(leaky.outputs["/metrics"])


def test_no_secret_in_the_status(leaky: Leaky) -> None:
    status = json.loads(leaky.outputs["/api/status"])
    assert len(status["ticket_actions_failed"]) == 2
    assert_no_secret(leaky.outputs["/api/status"])
    assert "FAILED ticket action open" in leaky.outputs["probe status"]
    assert_no_secret(leaky.outputs["probe status"])


def test_no_secret_in_probe_validate(leaky: Leaky) -> None:
    assert ": OK: 5 checks (5 http), 3 routes" in leaky.outputs["probe validate"]
    assert_no_secret(leaky.outputs["probe validate"])


def test_no_secret_in_probe_tickets_or_the_local_tickets(leaky: Leaky) -> None:
    assert "[probe] shop DOWN" in leaky.outputs["probe tickets"]
    assert_no_secret(leaky.outputs["probe tickets"])
    assert "/health?api_key=<redacted>" in leaky.outputs["tickets"]
    assert_no_secret(leaky.outputs["tickets"])


def test_no_secret_in_the_triage_note(leaky: Leaky) -> None:
    assert "HTTP" in leaky.outputs["notes"]
    assert_no_secret(leaky.outputs["notes"] + leaky.outputs["probe tickets show"])


def test_no_secret_in_probe_tickets_failed(leaky: Leaky) -> None:
    assert "HTTP 400" in leaky.outputs["probe tickets failed"]
    assert_no_secret(leaky.outputs["probe tickets failed"])


# --- what probe validate echoes ------------------------------------------------------------------


def test_probe_validate_never_echoes_a_secret_in_an_unexpected_place(tmp_path: Path) -> None:
    config = tmp_path / "probe.yaml"
    config.write_text(f"""
agent: {{state_dir: {tmp_path}/state}}
ticketing:
  routes:
    hook:
      backend: webhook
      url: "htps://probe:{TOKEN_IN_FILE}@hooks.example.net/x"
      headers: {{Authorization: 1234567890987654321}}
checks:
  - name: web
    http: {{url: "ftp://probe:{TOKEN_IN_ENV}@example.net/"}}
""")
    done = subprocess.run([*PROBE, "validate", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert_no_secret(done.stderr)
    assert "1234567890987654321" not in done.stderr


# --- the redaction itself ----------------------------------------------------------------------


def test_redact_replaces_known_secrets_and_credentials_where_they_stand() -> None:
    assert redact(f"POST /hook: HTTP 400: {TOKEN_IN_FILE} unknown", [TOKEN_IN_FILE]) == (
        "POST /hook: HTTP 400: <redacted> unknown")
    assert redact("redirected to 'ftp://h/x?sig=abc&page=2'", []) == (
        "redirected to 'ftp://h/x?sig=<redacted>&page=2'")
    assert redact("https://user:pa55@h/x", []) == "https://user:<redacted>@h/x"
    assert redact('{"Authorization": "Bearer abc123", "X-Probe-Key": "a/b/1"}', []) == (
        '{"Authorization": "Bearer <redacted>", "X-Probe-Key": "a/b/1"}')
    assert redact("Cookie: session=1; theme=dark", []) == "Cookie: <redacted>"
    assert redact("basic auth: Basic dXNlcjpwYXNz sent", []) == "basic auth: Basic <redacted> sent"
    untouched = 'incident opened group=shop key=a/shop/1 reason="Basic authentication failed"'
    assert redact(untouched, []) == untouched


def test_the_log_filter_redacts_messages_arguments_and_tracebacks() -> None:
    redactor = Redactor()
    redactor.add([TOKEN_IN_ENV, "short"])  # too short to be taken for a secret
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(redactor)
    logger = logging.getLogger("probe.test-security")
    logger.addHandler(handler)
    try:
        logger.error("failed with %s (short)", TOKEN_IN_ENV)
        try:
            raise ValueError(f"token {TOKEN_IN_ENV} refused")
        except ValueError:
            logger.exception("crashed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "failed with <redacted> (short)" in text
    assert "ValueError: token <redacted> refused" in text
    assert TOKEN_IN_ENV not in text
