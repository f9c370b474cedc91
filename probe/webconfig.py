"""The HTTP endpoint's protection: TLS, client certificates, basic auth and response headers,
set in `agent.web_config` with the web configuration file of Prometheus' exporter-toolkit, so
that what works for node_exporter works here:

    tls_server_config:
      cert_file: probe.crt              # relative paths: from this file's directory
      key_file: probe.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: clients-ca.crt
      min_version: TLS12                # TLS12 | TLS13; max_version too
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...            # bcrypt: htpasswd -nBC 10 "" | tr -d ':\\n'

Every path asks for the credentials, /-/healthy included, as the exporter-toolkit does.
`cipher_suites`, `prefer_server_cipher_suites`, `curve_preferences` and `http2` are accepted and
ignored (OpenSSL's defaults and HTTP/1.1 serve); what probe cannot do the way the toolkit does
(a client certificate taken without verification, `client_allowed_sans`, `rate_limit`, inline
certificates and keys) is an error rather than a silent weakening.

`load(path)` validates the file (errors name file, line and key, as the main configuration's
do); `config_issues` is the hook with which `probe.config.load` reports them too; `Guard`
enforces the file on each request and is updated on reload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import difflib
import hashlib
import ipaddress
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import bcrypt
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from checks.values import StrictModel
from probe.configerrors import PLAIN, ConfigError, ConfigIssue, issue, locate
from probe.yamlpos import KeyPath, Position, YamlError, load_with_positions

ClientAuth = Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TlsVersion = Literal["TLS12", "TLS13"]
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
           "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}

# The headers the exporter-toolkit lets one set, and the values it accepts where it limits them.
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
_BCRYPT = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
_HTPASSWD = "htpasswd -nBC 10 \"\" | tr -d ':\\n'"
_UNSUPPORTED: dict[KeyPath, str] = {
    ("tls_server_config", "cert"): "inline certificates are not supported: put it in a file "
                                   "and set cert_file",
    ("tls_server_config", "key"): "inline secrets are not allowed: put the key in a file and "
                                  "set key_file",
    ("tls_server_config", "client_ca"): "inline certificates are not supported: put them in a "
                                        "file and set client_ca_file",
    ("tls_server_config", "client_allowed_sans"): "not supported by probe: give these clients "
                                                  "certificates from their own client_ca_file",
    ("rate_limit",): "not supported by probe: limit requests in a reverse proxy",
}
IGNORED = ("cipher_suites", "prefer_server_cipher_suites", "curve_preferences")

CACHE_SECONDS = 60.0  # a scrape every 15s costs one bcrypt check a minute, not four
CACHE_SIZE = 100
# Checked against for an unknown user, so that a wrong name costs as long as a wrong password.
_DUMMY_HASH = b"$2b$10$E.jE8kWQd6IYkO5O7de06edSacZULxxZkScoXBaHCzdRJMLXZta66"


class TlsServerConfig(StrictModel):
    cert_file: Path
    key_file: Path
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: TlsVersion = "TLS12"
    max_version: TlsVersion = "TLS13"
    cipher_suites: list[str] = []
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[str] = []


class HttpServerConfig(StrictModel):
    http2: bool = True
    headers: dict[str, str] | None = None


class WebConfig(StrictModel):
    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig | None = None
    basic_auth_users: dict[str, str] | None = None

    @property
    def users(self) -> dict[str, str]:
        return self.basic_auth_users or {}

    @property
    def headers(self) -> dict[str, str]:
        http = self.http_server_config
        return {k: v for k, v in (http.headers or {}).items() if v} if http else {}

    def notes(self) -> list[str]:
        """Settings accepted for compatibility that change nothing here."""
        tls, http = self.tls_server_config, self.http_server_config
        ignored = [k for k in IGNORED if tls is not None and k in tls.model_fields_set]
        if http is not None and "http2" in http.model_fields_set:
            ignored.append("http2")
        return [f"web_config: {key} is ignored (OpenSSL's defaults and HTTP/1.1 apply)"
                for key in ignored]


# --- loading and errors --------------------------------------------------------------------


def load(path: Path) -> WebConfig:
    """The web configuration file at `path`, validated; relative paths in it are made
    absolute from its directory. Raises ConfigError."""
    file = str(path)
    try:
        data, positions = load_with_positions(path)
    except YamlError as err:
        raise ConfigError([ConfigIssue(err.file, err.line, "", err.message)]) from None
    if data is None:
        return WebConfig()
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, "", "the top level must be a mapping of keys")])
    issues = _headers_and_users(data, positions)
    try:
        web = WebConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(sorted(set(issues + _translate(err, data, positions)),
                                 key=lambda i: (i.line, i.path))) from None
    tls = web.tls_server_config
    if tls is not None:
        base = path.parent
        tls = tls.model_copy(update={
            "cert_file": base / tls.cert_file,
            "key_file": base / tls.key_file,
            "client_ca_file": base / tls.client_ca_file if tls.client_ca_file else None,
        })
        web = web.model_copy(update={"tls_server_config": tls})
        issues += _tls_issues(tls, positions)
    if issues:
        raise ConfigError(sorted(issues, key=lambda i: (i.line, i.path)))
    return web


def config_issues(path: Path | None) -> list[ConfigIssue]:
    """The problems of the web configuration file at `path` (none when it is not set): the
    hook through which `probe validate` and reloads report them with the main file's."""
    if path is None:
        return []
    try:
        load(path)
    except ConfigError as err:
        return err.issues
    return []


def _translate(
    err: ValidationError, data: Any, positions: dict[KeyPath, Position]
) -> list[ConfigIssue]:
    issues = []
    for error in err.errors():
        kind = error["type"]
        path = locate(error["loc"], data, missing=kind == "missing")
        if kind == "extra_forbidden":
            message = _UNSUPPORTED.get(path) or _unknown(path)
        elif kind == "missing":
            message = "missing (required)"
        elif kind == "literal_error":
            message = f"{error['input']!r} is not one of {error['ctx']['expected']}"
        else:  # never the value: under basic_auth_users it is a password's hash
            message = PLAIN.get(kind) or str(error["msg"]).replace("Input should be", "expected")
            message = message[0].lower() + message[1:]
        issues.append(issue(positions, path, message))
    return sorted(set(issues), key=lambda i: (i.line, i.path))


def _unknown(path: KeyPath) -> str:
    model: type[StrictModel] = WebConfig
    if path[:1] == ("tls_server_config",):
        model = TlsServerConfig
    elif path[:1] == ("http_server_config",):
        model = HttpServerConfig
    close = difflib.get_close_matches(str(path[-1]), list(model.model_fields), n=1, cutoff=0.75)
    return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")


def _tls_issues(tls: TlsServerConfig, positions: dict[KeyPath, Position]) -> list[ConfigIssue]:
    """Client authentication that verifies, versions in order, files that load."""
    issues = []
    at: KeyPath = ("tls_server_config",)
    auth = tls.client_auth_type
    if auth in ("RequestClientCert", "RequireAnyClientCert"):
        issues.append(issue(positions, (*at, "client_auth_type"),
                             f"{auth} is not supported: probe takes only client certificates it "
                             "verifies; use RequireAndVerifyClientCert (or "
                             "VerifyClientCertIfGiven) with client_ca_file"))
    elif auth != "NoClientCert" and tls.client_ca_file is None:
        issues.append(issue(positions, (*at, "client_auth_type"),
                             f"{auth} needs client_ca_file"))
    elif auth == "NoClientCert" and tls.client_ca_file is not None:
        issues.append(issue(positions, (*at, "client_ca_file"),
                             "set, but client_auth_type is NoClientCert: set client_auth_type: "
                             "RequireAndVerifyClientCert"))
    if tls.min_version > tls.max_version:
        issues.append(issue(positions, (*at, "min_version"),
                             f"{tls.min_version} is above max_version {tls.max_version}"))
    if not issues:
        try:
            server_context(tls)
        except TlsFileError as err:
            issues.append(issue(positions, (*at, err.key), err.message))
    return issues


def _headers_and_users(data: dict[str, Any], positions: dict[KeyPath, Position]
                       ) -> list[ConfigIssue]:
    """Headers the exporter-toolkit knows, with values it accepts; users with bcrypt hashes.
    On the raw data, so that they are reported alongside type errors."""
    issues = []
    http = data.get("http_server_config")
    headers = http.get("headers") if isinstance(http, dict) else None
    for name, value in (headers if isinstance(headers, dict) else {}).items():
        where: KeyPath = ("http_server_config", "headers", name)
        allowed = HEADERS.get(name, ())
        if name not in HEADERS:
            issues.append(issue(positions, where, "not a header probe sets; these are: "
                                                   + ", ".join(HEADERS)))
        elif isinstance(value, str) and ("\r" in value or "\n" in value):
            issues.append(issue(positions, where, "contains a line break"))
        elif allowed and isinstance(value, str) and value and value.lower() not in allowed:
            issues.append(issue(positions, where,
                                 f"{value!r} is not one of {', '.join(allowed)}"))
    users = data.get("basic_auth_users")
    for user, hashed in (users if isinstance(users, dict) else {}).items():
        where = ("basic_auth_users", user)
        if not user or ":" in str(user):
            issues.append(issue(positions, where, "a user name must be non-empty and "
                                                   "without ':'"))
        elif isinstance(hashed, str) and not _BCRYPT.fullmatch(hashed):
            issues.append(issue(positions, where, f"not a bcrypt hash: make one with "
                                                   f"{_HTPASSWD}"))
    return issues


class TlsFileError(Exception):
    """A file of tls_server_config cannot be read or used; `key` names the setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"tls_server_config.{key}: {message}")
        self.key, self.message = key, message


def server_context(tls: TlsServerConfig) -> ssl.SSLContext:
    """The server side of TLS as `tls` says; raises TlsFileError."""
    for key in ("cert_file", "key_file", "client_ca_file"):
        file: Path | None = getattr(tls, key)
        if file is not None:
            try:
                file.read_bytes()
            except OSError as err:
                raise TlsFileError(key, f"cannot read {file}: {err.strerror}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as err:
        raise TlsFileError("cert_file", f"cannot be used with key_file: {_reason(err)}") from None
    if tls.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as err:
            raise TlsFileError("client_ca_file", f"holds no usable CA certificate: "
                                                 f"{_reason(err)}") from None
    ctx.verify_mode = _VERIFY.get(tls.client_auth_type, ssl.CERT_REQUIRED)
    return ctx


def _reason(err: ssl.SSLError) -> str:
    return str(err.reason or err).lower().replace("_", " ")


# --- at start -----------------------------------------------------------------------------


def exposure_warning(listen: str, web: WebConfig | None) -> str | None:
    """What to warn of when the endpoint is reachable from other machines unprotected."""
    host = listen.rpartition(":")[0].strip("[]")
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False  # a name, or a wildcard written as ""
    if local:
        return None
    tls = web is not None and web.tls_server_config is not None
    users = web is not None and bool(web.users)
    if not tls and not users:
        return f"serving metrics on {listen} without TLS or authentication"
    if users and not tls:
        return (f"serving metrics on {listen} with basic auth but without TLS: passwords "
                "cross the network in clear text")
    return None


# --- on each request ----------------------------------------------------------------------


class Guard:
    """Enforces the web configuration: owns the TLS context, asks every request for basic
    auth credentials (each password checked once a minute at most), adds the headers."""

    def __init__(self, config: WebConfig | None) -> None:
        self.config = config or WebConfig()
        tls = self.config.tls_server_config
        self.ssl_context = server_context(tls) if tls is not None else None
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        # Paths served without credentials (probe.pages.routes.public: a public status page).
        self.public: Callable[[str], bool] = lambda path: False

    def update(self, config: WebConfig | None) -> list[str]:
        """Take a reloaded file: users and headers at once, a renewed certificate for the
        next connections. Returns what only a restart changes."""
        config = config or WebConfig()
        old, new = self.config.tls_server_config, config.tls_server_config
        later = []
        if (old is None) != (new is None):
            later.append("web_config: TLS is switched on or off at the next start")
            config = config.model_copy(update={"tls_server_config": old})
        elif old is not None and new is not None and self.ssl_context is not None:
            same_files = {"cert_file": old.cert_file, "key_file": old.key_file}
            if new.model_copy(update=same_files) != old:
                later.append("web_config: tls_server_config changes other than cert_file and "
                             "key_file take effect at the next start")
            try:
                self.ssl_context.load_cert_chain(new.cert_file, new.key_file)
            except OSError as err:  # changed since it was validated
                later.append(f"web_config: the new certificate is not used: {err}")
                new = old
            config = config.model_copy(update={"tls_server_config": old.model_copy(
                update={"cert_file": new.cert_file, "key_file": new.key_file})})
        self.config = config
        return later

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        users = self.config.users
        if users and not self.public(request.path) and not await self.authorized(
                users, request.headers.get(hdrs.AUTHORIZATION)):
            return web.Response(status=401, text="Unauthorized\n",
                                headers={hdrs.WWW_AUTHENTICATE: "Basic"})
        return await handler(request)

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(self.config.headers)

    async def authorized(self, users: dict[str, str], header: str | None) -> bool:
        login, password = _basic_credentials(header or "")
        if login is None:
            return False
        hashed = users.get(login)
        # The hash is part of the key: a password changed by a reload is never taken from here.
        key = hashlib.sha256(
            "\0".join((login, password, hashed or "")).encode()).digest()
        now = time.monotonic()
        if self._cache.get(key, 0.0) > now:
            self._cache.move_to_end(key)
            return True
        target = hashed.encode() if hashed else _DUMMY_HASH
        # About 100 ms of CPU: off the event loop, which runs the checks.
        ok = await asyncio.to_thread(_checkpw, password.encode(), target)
        if not ok or hashed is None:
            return False
        self._cache[key] = now + CACHE_SECONDS
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return True


def _basic_credentials(header: str) -> tuple[str | None, str]:
    """(user, password) of an `Authorization: Basic` header; (None, "") for anything else."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, ""
    login, colon, password = decoded.partition(":")
    return (login, password) if colon else (None, "")


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # longer than bcrypt's 72 bytes: refused, as Go's bcrypt does
        return False
