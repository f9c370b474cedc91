"""Which proxy a helpdesk request goes through, as curl decides it.

A route's `proxy:` wins: a URL (`http://proxy.example:3128`), or `direct` for none. Without it,
the environment, as curl reads it: `https_proxy` or `HTTPS_PROXY` for an https:// URL,
`http_proxy` (lower case only: `HTTP_PROXY` can be set by a CGI request's `Proxy:` header) for
an http:// one, then `all_proxy` or `ALL_PROXY`; a proxy without a scheme is http://.

`no_proxy` or `NO_PROXY` (lower case first) lists the hosts reached directly, whichever proxy
was chosen: comma-separated; `*` alone is every host; a name matches itself and its subdomains
(`example.com` and `.example.com` both match `api.example.com`); an address matches itself, a
CIDR block (`10.0.0.0/8`) the addresses in it; a `:port` on an entry is ignored, as curl does.

Credentials: `proxy_credentials_file` (or `proxy_credentials: env:NAME`) holding `user:password`
for the route's proxy; in an environment variable's URL (`http://user:pass@proxy:3128`), as curl
takes them. A proxy of another scheme (socks5://) is refused in words, never ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

DIRECT = "direct"
SCHEMES = ("http", "https")


def proxy_url(value: str) -> str:
    """A route's `proxy:` setting: `direct`, or an http:// or https:// proxy's URL."""
    if value == DIRECT:
        return value
    parts = urlsplit(value)
    if parts.username or parts.password:  # first: the message must not echo them
        raise ValueError("credentials do not belong in the URL: use proxy_credentials_file")
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// proxy URL (or {DIRECT})")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{value!r}: a proxy's URL is its scheme, host and port only")
    return value


def choose(url: str, setting: str | None, env: Mapping[str, str]) -> str | None:
    """The proxy for a request to `url` (None: direct), from the route's `setting` and the
    environment `env`. Raises ValueError for a proxy probe cannot use."""
    if setting == DIRECT:
        return None
    parts = urlsplit(url)
    if bypassed(parts.hostname or "", _env(env, "no_proxy")):
        return None
    chosen = setting
    if chosen is None:
        own = _env(env, "https_proxy") if parts.scheme == "https" else env.get("http_proxy")
        chosen = own or _env(env, "all_proxy")
    if not chosen:
        return None
    if "://" not in chosen:
        chosen = f"http://{chosen}"
    scheme = chosen.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ValueError(f"a {scheme}:// proxy is not supported (http:// or https:// only)")
    return chosen


def bypassed(host: str, no_proxy: str | None) -> bool:
    """Whether `host` is reached directly under `no_proxy` (curl's NO_PROXY rules)."""
    if not no_proxy or not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
            ipaddress.ip_address(host))
    except ValueError:
        address = None
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry = _without_port(entry).strip("[]").rstrip(".")
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.lstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def _without_port(entry: str) -> str:
    if entry.startswith("["):  # [::1]:8080
        return entry.split("]", 1)[0] + "]"
    if entry.count(":") == 1:  # host:port (an IPv6 address has more colons)
        return entry.split(":", 1)[0]
    return entry


def _env(env: Mapping[str, str], name: str) -> str | None:
    """curl's order: the lower-case variable, then the upper-case one."""
    return env.get(name) or env.get(name.upper()) or None
