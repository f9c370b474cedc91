"""The configuration contract: the models of every key, loading one file or a conf.d directory,
and errors that name the file, the line and the key path.

`load(path)` returns a `Config` or raises `ConfigError` with every problem found.
`Config.effective_checks()` gives each check with the defaults applied: what the daemon runs.
`Config.config_hash()` fingerprints what the agents of one cluster must agree on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import difflib
import fnmatch
import functools
import hashlib
import json
import pickle
import re
import socket
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from checks import KINDS
from checks.base import Spec
from checks.values import (
    SENSITIVE_NAME,
    Duration,
    Percent,
    ReadableFile,
    StrictModel,
    format_duration,
    host_port,
    parse_duration,
)
from probe.configerrors import PLAIN, issue, locate, place
from probe.configerrors import ConfigError as ConfigError
from probe.configerrors import ConfigIssue as ConfigIssue
from probe.helpdesks import ROUTES, AnyRoute
from probe.helpdesks.base import Priority, RouteBase
from probe.secrets import EnvRef, SecretError, Secrets, from_settings, redact
from probe.webconfig import config_issues
from probe.yamlpos import KeyPath, Position, YamlError, load_with_positions, show_path

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name (letters, digits, '_', '.', '-'; no spaces)"
        )
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"{format_duration(value)} must be longer than 0")
    return value


Name = Annotated[str, AfterValidator(_name)]
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
Threshold = Annotated[int, Field(ge=1, le=1000)]


class Agent(StrictModel):
    name: str = Field(default_factory=socket.gethostname)
    state_dir: Path = Path("/var/lib/probe")
    listen: Annotated[str, host_port("127.0.0.1:9469")] = "127.0.0.1:9469"
    web_config: ReadableFile | None = None
    max_concurrency: Annotated[int, Field(ge=1, le=100_000)] = 200
    history: Annotated[int, Field(ge=1, le=10_000)] = 50  # results kept per check
    log_level: Literal["debug", "info", "warning", "error"] = "info"


# An agent silent this long has left the cluster and its checks move to the others: under a
# second a busy event loop or a slow commit would have agents leave and come back all day;
# over ten minutes a dead agent's checks would go unwatched for longer than any check's
# interval is meant to allow.
MIN_AGENT_TTL, MAX_AGENT_TTL = 1.0, 600.0


def _agent_ttl(value: float) -> float:
    if value < MIN_AGENT_TTL:
        raise ValueError(f"must be at least {format_duration(MIN_AGENT_TTL)}")
    if value > MAX_AGENT_TTL:
        raise ValueError(f"must be at most {format_duration(MAX_AGENT_TTL)}")
    return value


class Cluster(Secrets):
    """Several agents sharing one PostgreSQL database (issue 12). The connection string may
    hold a password, so it is a secret like a helpdesk's token: `database: env:NAME` or
    `database_file: PATH`, read when the daemon connects (`dsn()`), never at load time, so
    that `probe validate` runs without it."""

    database: EnvRef | None = None
    database_file: Path | None = None
    site: Name = "default"  # agents of one site share its checks
    agent_ttl: Annotated[Duration, AfterValidator(_agent_ttl)] = 5.0
    # Sites that vote (issue 13): a check fails for probe when `quorum` of the sites that run
    # it see it failing. Without `sites`, the agents of `site` decide alone, as in issue 12.
    sites: Annotated[list[Name], Field(min_length=1, max_length=64)] | None = None
    quorum: Annotated[int, Field(ge=1, le=64)] | None = None  # default: a majority of sites
    alert_route: Name | None = None  # where probe tickets its own trouble
    # A site silent this long leaves the electorate (so that a dead site cannot hold an
    # incident open for ever) and its silence is ticketed on alert_route.
    silent_after: PositiveDuration = 180.0

    secrets: ClassVar[dict[str, bool]] = {"database": True}

    def dsn(self) -> str:
        """The libpq connection string or URI, read now; SecretError when it cannot be."""
        value = self.reveal("database")
        if not value:
            # libpq would take "" as "the local server, as this user": not what anyone meant
            raise SecretError(f"database: {self.source()} holds an empty connection string")
        return value

    def source(self) -> str:
        """Where the connection string comes from, for messages: never the string itself."""
        return self.database or f"the file {self.database_file}"

    @property
    def voting(self) -> bool:
        """Sites vote: each site's agents run their checks and vote, the decision is the
        quorum's (probe.cluster.quorum)."""
        return self.sites is not None

    def quorum_of(self, sites: list[str] | None, quorum: int | None) -> int:
        """A check's quorum: its own, or the cluster's, or a majority of the sites that run
        it (two of three, two of two: one site's own trouble never tickets alone)."""
        return quorum or self.quorum or len(sites or self.sites or [self.site]) // 2 + 1


def _dsn_secrets(dsn: str) -> set[str]:
    """The connection string, and its password on its own: a message may quote one without
    the other (libpq's key=value form puts the password anywhere in it)."""
    found = {dsn}
    with contextlib.suppress(ProgrammingError):  # malformed: connecting will say so
        password = conninfo_to_dict(dsn).get("password")
        if isinstance(password, str) and password:
            found.add(password)
    return found


class Flapping(StrictModel):
    """Icinga's method: weighted percent state change over the last `window` results; flapping
    starts above `high` and ends below `low`."""

    enabled: bool = True
    high: Percent = 0.30
    low: Percent = 0.25
    window: Annotated[int, Field(ge=3, le=100)] = 21

    @model_validator(mode="after")
    def _order(self) -> Flapping:
        if self.low > self.high:
            raise ValueError("low must not be above high")
        return self


class TicketPolicy(StrictModel):
    enabled: bool = True
    route: Name | None = None  # the only route when there is one
    priority: Priority = "urgent"
    # for a certificate that expires within min_days_left but still serves: not an outage yet
    expiry_priority: Priority = "normal"
    update_interval: PositiveDuration = 3600.0
    escalate_after: PositiveDuration | None = 3600.0
    on_human_close: Literal["reopen", "new", "leave"] = "reopen"
    title_template: str | None = None
    body_template: str | None = None


class Defaults(StrictModel):
    interval: PositiveDuration = 30.0
    retry_interval: PositiveDuration = 10.0
    timeout: PositiveDuration = 10.0
    failure_threshold: Threshold = 3
    success_threshold: Threshold = 2
    flapping: Flapping = Flapping()
    ticket: TicketPolicy = TicketPolicy()


class Ticketing(StrictModel):
    routes: dict[Name, AnyRoute] = {}
    poll_interval: PositiveDuration = 60.0  # how often open tickets are looked at in the helpdesk


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not a known time zone (like UTC or Europe/Berlin)"
        ) from None
    return value


def _clock(value: object) -> dt.time:
    # YAML 1.1 reads an unquoted 02:00 as the number 120 (sexagesimal): take it back.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1440:
        return dt.time(value // 60, value % 60)
    if isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}", value):
        hour, minute = map(int, value.split(":"))
        if hour < 24 and minute < 60:
            return dt.time(hour, minute)
    raise ValueError(f"{value!r} is not a time of day (like \"02:00\")")


class Maintenance(StrictModel):
    """A window in which no incident opens: one-off (start, end) or recurring (weekdays, at,
    duration, timezone)."""

    checks: list[str] = []  # names or glob patterns
    services: list[str] = []
    reason: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    weekdays: list[Weekday] = list(WEEKDAYS)
    at: Annotated[dt.time, Field(json_schema_extra={"type": "string"})] | None = None
    duration: PositiveDuration | None = None
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, value: object) -> dt.time | None:
        return None if value is None else _clock(value)

    @model_validator(mode="after")
    def _shape(self) -> Maintenance:
        if not self.checks and not self.services:
            raise ValueError("names no checks and no services")
        one_off = self.start is not None or self.end is not None
        recurring = self.at is not None or self.duration is not None
        if one_off and recurring:
            raise ValueError("is either one-off (start, end) or recurring (at, duration), not both")
        if one_off:
            if self.start is None or self.end is None:
                raise ValueError("a one-off window needs both start and end")
            for label, value in (("start", self.start), ("end", self.end)):
                if value.tzinfo is None:
                    raise ValueError(f"{label} needs a time zone (like 2026-12-01T02:00:00Z)")
            if self.end <= self.start:
                raise ValueError("end is not after start")
        elif self.at is None or self.duration is None:
            raise ValueError("needs start and end, or at and duration")
        if not self.weekdays:
            raise ValueError("weekdays is empty")
        return self


# Shorter than a day and a day's figures could not be rolled up from its minutes; the hours and
# days must outlive the minutes and the hours they are rolled up from.
MIN_KEEP = {"minutes": 26 * 3600.0, "hours": 2 * 86400.0, "days": 2 * 86400.0}


class History(StrictModel):
    """How long the history of results is kept at each resolution (probe.history), and how a
    maintenance window counts in availability (probe.availability): excluded from the time
    counted (the default), or counted as up, or as down."""

    minutes: Duration = 48 * 3600.0
    hours: Duration = 30 * 86400.0
    days: Duration = 400 * 86400.0
    maintenance: Literal["exclude", "up", "down"] = "exclude"

    @model_validator(mode="after")
    def _long_enough(self) -> History:
        for key, least in MIN_KEEP.items():
            if getattr(self, key) < least:
                raise ValueError(f"{key} must be kept at least {format_duration(least)}")
        return self


class Service(StrictModel):
    """What the pages and the report say of a service (a name checks give as `service`)."""

    description: str = ""
    sla: Percent | None = None  # the availability promised, like 99.95%


class StatusPage(StrictModel):
    """/status: the page for the people the services serve. Nothing internal is on it; with
    `public: true` it needs no credentials, while every other page stays behind web_config."""

    title: str = "Service status"
    description: str = ""
    services: list[Name] = []  # the services it lists, in this order; [] lists every one
    public: bool = False


class AlertReceiver(Secrets):
    """One Alertmanager receiver whose webhook notifications become incidents (probe.alerts):
    the route its tickets go to, the priority its alerts' label gives them, and the bearer
    token Alertmanager sends (`http_config.authorization.credentials_file`)."""

    route: Name | None = None  # the only route when there is one
    priority_label: str = "severity"
    priorities: dict[str, Priority] = {"critical": "urgent", "page": "urgent",
                                       "error": "high", "warning": "high", "info": "normal"}
    default_priority: Priority = "high"  # the label missing, or a value not in priorities
    token: EnvRef | None = None
    token_file: Path | None = None
    update_interval: PositiveDuration = 3600.0
    escalate_after: PositiveDuration | None = 3600.0
    on_human_close: Literal["reopen", "new", "leave"] = "reopen"
    # A group not notified for this long, though still firing for probe, is resolved: its
    # Alertmanager restarted with its silences lost, or its rule was deleted. Longer than
    # Alertmanager's repeat_interval (4h by default), which re-sends a firing group.
    resolve_after: PositiveDuration = 24 * 3600.0

    secrets: ClassVar[dict[str, bool]] = {"token": False}


class Alertmanager(StrictModel):
    """POST /api/alertmanager: Alertmanager's webhook, by receiver name (its `receiver`)."""

    receivers: Annotated[dict[str, AlertReceiver], Field(min_length=1)]


class CheckBase(StrictModel):
    """The keys every check takes; exactly one kind key (http, tcp, ...) is added from KINDS."""

    name: Name
    description: str = ""
    service: Name | None = None
    depends_on: list[Name] = []
    interval: PositiveDuration | None = None
    retry_interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None
    failure_threshold: Threshold | None = None
    success_threshold: Threshold | None = None
    flapping: Flapping | None = None
    ticket: TicketPolicy | None = None
    runbook: str | None = None
    dashboard: str | None = None
    sites: Annotated[list[Name], Field(min_length=1)] | None = None  # a cluster's, voting
    quorum: Annotated[int, Field(ge=1, le=64)] | None = None
    sla: Percent | None = None  # the availability promised, like 99.95%

    @model_validator(mode="after")
    def _one_kind(self) -> CheckBase:
        kinds = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(kinds) != 1:
            have = f"has {' and '.join(kinds)}" if kinds else "has none"
            raise ValueError(f"needs exactly one of {', '.join(KINDS)}; {have}")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    @property
    def spec(self) -> Spec:
        spec: Spec = getattr(self, self.kind)
        return spec


CheckConfig: type[CheckBase] = create_model(  # type: ignore[call-overload]
    "CheckConfig",
    __base__=CheckBase,
    **{kind: (k.spec | None, None) for kind, k in KINDS.items()},
)


@dataclass(frozen=True, slots=True)
class Check:
    """One check as the daemon runs it: the defaults applied."""

    name: str
    kind: str
    spec: Spec
    service: str | None
    depends_on: tuple[str, ...]
    interval: float
    retry_interval: float
    timeout: float
    failure_threshold: int
    success_threshold: int
    flapping: Flapping
    ticket: TicketPolicy
    description: str
    runbook: str | None
    dashboard: str | None
    # The sites that run it and how many of them must see it failing; () outside a voting
    # cluster, where the one agent or site that runs it decides alone.
    sites: tuple[str, ...] = ()
    quorum: int = 1
    sla: float | None = None  # a ratio: 0.9995

    @property
    def group(self) -> str:
        """The incident this check belongs to: its service's, or its own."""
        return self.service or self.name


def _merged(default: StrictModel, override: StrictModel | None) -> Any:
    if override is None:
        return default
    return default.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


class Config(StrictModel):
    # Top-level keys starting with x- are skipped when loading: a place for YAML anchors.
    model_config = ConfigDict(json_schema_extra={"patternProperties": {"^x-": {}}})

    agent: Agent = Agent()
    cluster: Cluster | None = None  # absent: one agent on its own SQLite state, as ever
    defaults: Defaults = Defaults()
    ticketing: Ticketing = Ticketing()
    maintenance: list[Maintenance] = []
    checks: list[CheckConfig] = []
    history: History = History()
    services: dict[Name, Service] = {}
    status_page: StatusPage = StatusPage()
    alertmanager: Alertmanager | None = None
    _hash: str | None = PrivateAttr(default=None)  # config_hash(), once computed

    def effective_checks(self) -> list[Check]:
        d, cluster = self.defaults, self.cluster
        voting = cluster is not None and cluster.voting
        out = []
        for c in self.checks:
            ticket: TicketPolicy = _merged(d.ticket, c.ticket)
            if ticket.route is None and len(self.ticketing.routes) == 1:
                ticket = ticket.model_copy(update={"route": next(iter(self.ticketing.routes))})
            out.append(
                Check(
                    name=c.name,
                    kind=c.kind,
                    spec=c.spec,
                    service=c.service,
                    depends_on=tuple(c.depends_on),
                    interval=c.interval or d.interval,
                    retry_interval=c.retry_interval or d.retry_interval,
                    timeout=c.timeout or d.timeout,
                    failure_threshold=c.failure_threshold or d.failure_threshold,
                    success_threshold=c.success_threshold or d.success_threshold,
                    flapping=_merged(d.flapping, c.flapping),
                    ticket=ticket,
                    description=c.description,
                    runbook=c.runbook,
                    dashboard=c.dashboard,
                    sites=tuple(c.sites or cluster.sites or ()) if voting and cluster else (),
                    quorum=cluster.quorum_of(c.sites, c.quorum) if voting and cluster else 1,
                    sla=c.sla,
                )
            )
        return out

    def secret_values(self) -> set[str]:
        """The secret values this configuration holds, for probe.secrets' Redactor to hide:
        each route's secrets (those that can be read now), the values of headers with a
        sensitive name (Authorization, Cookie, *token*, *key*, *secret*, *password*) in routes
        and http checks, read from the environment or their `headers_file`, with the
        credential after its scheme word, and sensitive query parameters of the URLs they
        call."""
        found: set[str] = set()
        for route in self.routes.values():
            for name in route.secrets:
                # One that cannot be read now is reported by its backend when it needs it.
                with contextlib.suppress(SecretError):
                    if route.has_secret(name):
                        found.add(route.reveal(name))
            found.update(from_settings(route))
            with contextlib.suppress(SecretError):
                if route.has_secret("proxy_credentials"):
                    credentials = route.reveal("proxy_credentials")
                    found |= {credentials, credentials.partition(":")[2]} - {""}
        for check in self.checks:
            found.update(from_settings(check.spec))
        for receiver in self.alertmanager.receivers.values() if self.alertmanager else ():
            with contextlib.suppress(SecretError):  # the receiver says so when asked
                if receiver.has_secret("token"):
                    found.add(receiver.reveal("token"))
        if self.cluster is not None:
            with contextlib.suppress(SecretError):  # the daemon says so when it connects
                found.update(_dsn_secrets(self.cluster.dsn()))
        return found

    def config_hash(self) -> str:
        """A fingerprint of what the agents of a cluster must agree on, so that a cluster can
        tell an agent that runs other checks or another ticket policy from its peers: the
        effective checks (their services and dependencies with them), the maintenance
        windows, the routes and the ticketing policy, and the cluster section (sites, quorum,
        agent_ttl, ...).

        What is each agent's own is left out: the agent section (name, listen, state_dir,
        web_config, log_level, ...), its site and where it reads the database's connection
        string.
        Secrets appear only as their references; a credential written in a check's URL is
        taken out before hashing, so the hash cannot be used to guess it. Canonical JSON
        (sorted keys, checks in name order, floats as repr) keeps it equal across processes
        and Python versions, and however the YAML was ordered. Computed once: a Config is
        immutable, and a cluster's heartbeat asks for it every second (with 1,000 checks,
        recomputing it was four fifths of an agent's CPU: `python -m bench --only cluster`)."""
        if self._hash is None:
            self._hash = self._fingerprint()
        return self._hash

    def _fingerprint(self) -> str:
        checks = sorted(self.effective_checks(), key=lambda check: check.name)
        windows = sorted((_data(w) for w in self.maintenance), key=_canonical)
        shared = {
            "checks": [_data(check) for check in checks],
            "maintenance": windows,
            "ticketing": _data(self.ticketing),
            # The site is each agent's own, as its name is: agents of every site must agree.
            "cluster": None if self.cluster is None else _data(self.cluster.model_copy(
                update={"site": "", "database": None, "database_file": None})),
        }
        text = redact(_canonical(shared), ())
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def routes(self) -> dict[str, RouteBase]:
        return self.ticketing.routes

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for check in self.checks:
            kinds[check.kind] = kinds.get(check.kind, 0) + 1
        per_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        text = (
            f"{_count(len(self.checks), 'check')} ({per_kind or 'none'}), "
            f"{_count(len(self.routes), 'route')}, "
            f"{_count(len(self.maintenance), 'maintenance window')}"
        )
        if self.cluster is not None:
            # The hash is what an operator compares between the agents of a site.
            c = self.cluster
            text += (f"; cluster site {c.site} as agent {self.agent.name}, agents leave after "
                     f"{format_duration(c.agent_ttl)} silent, database from {c.source()}, "
                     f"config hash {self.config_hash()}")
        return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _data(value: Any) -> Any:
    """`value` (a model, an effective Check, plain data) as JSON data for `config_hash`."""
    if isinstance(value, BaseModel):
        return _exact(value, value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_data(v) for v in value]
    return value


def _exact(value: Any, dumped: Any) -> Any:
    """A model's JSON dump (`dumped`: paths, times and patterns as text) with its floats as
    they are: the dump writes a duration as format_duration rounds it for display (1.25ms as
    1ms), in either mode, and two different intervals must not hash alike."""
    if isinstance(value, BaseModel):
        return {name: _exact(getattr(value, name), dumped[name])
                for name in type(value).model_fields}
    if isinstance(value, dict):
        return {key: _exact(v, d)
                for (key, d), v in zip(dumped.items(), value.values(), strict=True)}
    if isinstance(value, set | frozenset):  # iterated in the order of the process's hash seed
        return sorted(dumped, key=_canonical)
    if isinstance(value, list | tuple):
        return [_exact(v, d) for v, d in zip(value, dumped, strict=True)]
    if isinstance(value, float):
        return value
    return dumped


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


# --- loading and errors --------------------------------------------------------------------


def load(path: Path | str) -> Config:
    """Load and validate one YAML file, or every *.yaml / *.yml file of a directory."""
    # Reading a file with every key's position takes several times the memory of what is
    # kept (with 10,000 checks, 70 MB for 15), and the models made meanwhile stay scattered
    # over it: the process would keep all of it. Rebuilt once the reading is over, they take
    # little room of their own, and the rest goes back to the system (40 MB at 10,000 checks).
    config: Config = pickle.loads(pickle.dumps(_read(Path(path))))
    return config


def source_files(path: Path) -> list[Path]:
    """The files a configuration at `path` is read from: the file, or a conf.d directory's
    *.yaml and *.yml files in name order (`probe validate --print` names them too)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def _read(path: Path) -> Config:
    if path.is_dir():
        files = source_files(path)
        if not files:
            raise ConfigError([ConfigIssue(str(path), 0, "", "no *.yaml files in this directory")])
    elif path.exists():
        files = [path]
    else:
        raise ConfigError([ConfigIssue(str(path), 0, "", "no such file or directory")])
    data, positions, issues = _merge(files)
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        issues += _translate(err, data, positions)
    issues += _cross_checks(data, positions, config)
    if issues:
        raise ConfigError(sorted(set(issues), key=lambda i: (i.file, i.line, i.path)))
    assert config is not None
    return config


_SECTIONS_ONCE = ("agent", "defaults")
_LIST_SECTIONS = ("checks", "maintenance")


def _merge(files: list[Path]) -> tuple[dict[str, Any], dict[KeyPath, Position], list[ConfigIssue]]:
    """Merge conf.d files: lists are concatenated, routes joined, `agent` and `defaults` may be
    set in one file only."""
    merged: dict[str, Any] = {}
    positions: dict[KeyPath, Position] = {}
    issues: list[ConfigIssue] = []
    for file in files:
        try:
            data, pos = load_with_positions(file)
        except YamlError as err:
            issues.append(ConfigIssue(err.file, err.line, "", err.message))
            continue
        if data is None:
            continue
        if not isinstance(data, dict):
            issues.append(ConfigIssue(str(file), 1, "", "the top level must be a mapping of keys"))
            continue
        for key, value in data.items():
            if isinstance(key, str) and key.startswith("x-"):
                continue  # a place for YAML anchors (`x-web: &web {...}`), as in Compose files
            key_pos = pos[(key,)]
            list_section = key in _LIST_SECTIONS and isinstance(value, list)
            if list_section and isinstance(merged.get(key), list):  # not `checks: 5` before
                offset = len(merged[key])
                merged[key].extend(value)
                positions.update(_shift(pos, key, offset))
                continue
            if key == "ticketing" and isinstance(value, dict) and key in merged:
                routes = value.get("routes")
                known = merged[key].get("routes") if isinstance(merged[key], dict) else None
                only_routes = set(value) == {"routes"}
                if isinstance(routes, dict) and isinstance(known, dict) and only_routes:
                    for name, route in routes.items():
                        if name in known:
                            first = positions[("ticketing", "routes", name)]
                            issues.append(issue(pos, ("ticketing", "routes", name),
                                                 f"route defined twice (also at {place(first)})"))
                            continue
                        known[name] = route
                    positions.update({p: v for p, v in pos.items() if p[:1] == ("ticketing",)
                                      and p not in positions})
                    continue
            if key in merged:
                first = positions[(key,)]
                issues.append(issue(pos, (key,), f"also set at {place(first)}: set it in one file"))
                continue
            merged[key] = value
            positions.update({p: v for p, v in pos.items() if p[:1] == (key,)})
            positions[(key,)] = key_pos
    return merged, positions, issues


def _shift(
    pos: dict[KeyPath, Position], key: str, offset: int
) -> Iterator[tuple[KeyPath, Position]]:
    for path, where in pos.items():
        if path[:1] == (key,) and len(path) > 1 and isinstance(path[1], int):
            yield (key, path[1] + offset, *path[2:]), where


_SECRET_KEYS = {"token", "password", "secret", "routing_key", "api_key", "api_token"}


@functools.cache
def _vocabulary() -> set[str]:
    words: set[str] = set()

    def walk(schema: Any) -> None:
        if isinstance(schema, dict):
            words.update(schema.get("properties", {}))
            for value in schema.values():
                walk(value)
        elif isinstance(schema, list):
            for value in schema:
                walk(value)

    walk(Config.model_json_schema(by_alias=True))
    return words


def _message(error: Any, key: str | int | None) -> str:
    kind, msg, value = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        words = sorted(_vocabulary() - {key})
        close = difflib.get_close_matches(str(key), words, n=1, cutoff=0.75)
        return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "missing":
        return "missing (required)"
    if kind in ("value_error", "assertion_error"):
        return str(msg).split(", ", 1)[1] if ", " in msg else str(msg)
    if kind == "union_tag_invalid":
        return f"{error['ctx']['tag']!r} is not one of {error['ctx']['expected_tags']}"
    if kind == "union_tag_not_found":  # a route without its backend
        return "missing (required): the helpdesk, one of " + ", ".join(map(repr, ROUTES))
    if kind == "literal_error":
        return f"{_show(value, key)} is not one of {error['ctx']['expected']}"
    text = PLAIN.get(kind) or str(msg).replace("Input should be", "expected")
    text = text[0].lower() + text[1:]
    shown = _show(value, key)
    return f"{text}, got {shown}" if shown else text


def error_text(err: ValidationError) -> str:
    """The first problem of a model validated outside a file (a maintenance window sent to the
    API), as `key.path: message` in the words configuration errors use."""
    first = err.errors()[0]
    path = tuple(first["loc"])
    text = _message(first, path[-1] if path else None)
    return f"{show_path(path)}: {text}" if path else text


def _show(value: Any, key: str | int | None) -> str:
    if key in _SECRET_KEYS or (isinstance(key, str) and SENSITIVE_NAME.search(key)):
        return ""
    if isinstance(value, dict | list):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _translate(
    err: ValidationError, data: Any, positions: dict[KeyPath, Position]
) -> list[ConfigIssue]:
    by_path: dict[KeyPath, list[dict[str, Any]]] = {}
    for error in err.errors():
        path = locate(error["loc"], data, missing=error["type"] == "missing")
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = (*path, "backend")
        by_path.setdefault(path, []).append(dict(error))
    issues = []
    for path, errors in by_path.items():
        # A failed `X | None` reports the None branch too: it says nothing useful.
        useful = [e for e in errors if e["type"] != "none_required"] or errors
        messages = list(dict.fromkeys(_message(e, path[-1] if path else None) for e in useful))
        issues.append(issue(positions, path, "; or ".join(messages)))
    return issues


def _cross_checks(
    data: Any, positions: dict[KeyPath, Position], config: Config | None
) -> list[ConfigIssue]:
    """What no single key can know: unique names, dependencies that exist and form no cycle,
    routes that exist, maintenance windows that match a check. Runs on the raw data too, so
    that these errors are reported alongside the others."""
    issues: list[ConfigIssue] = []
    raw_checks = data.get("checks") if isinstance(data, dict) else None
    checks = raw_checks if isinstance(raw_checks, list) else []
    first_at: dict[str, int] = {}
    deps: dict[str, list[str]] = {}
    services: set[str] = set()
    for i, check in enumerate(checks):
        if not isinstance(check, dict) or not isinstance(check.get("name"), str):
            continue
        name = check["name"]
        if name in first_at:
            first = positions.get(("checks", first_at[name], "name"), ("?", 0))
            issues.append(issue(positions, ("checks", i, "name"),
                                 f"duplicate check name {name!r} (first at {place(first)})"))
        else:
            first_at[name] = i
        if isinstance(check.get("service"), str):
            services.add(check["service"])
        listed = check.get("depends_on")
        deps[name] = [d for d in listed if isinstance(d, str)] if isinstance(listed, list) else []
    for name, parents in deps.items():
        for j, parent in enumerate(parents):
            where: KeyPath = ("checks", first_at[name], "depends_on", j)
            if parent == name:
                issues.append(issue(positions, where, "a check cannot depend on itself"))
            elif parent not in first_at:
                issues.append(issue(positions, where, f"no check is named {parent!r}"))
    for cycle in _cycles(deps):
        at: KeyPath = ("checks", first_at[cycle[0]], "depends_on")
        issues.append(issue(positions, at, "dependency cycle: " + " -> ".join(cycle)))

    issues += _route_checks(data, positions, checks)
    issues += _cluster_checks(data, positions)
    issues += _alertmanager_checks(data, positions)
    windows = data.get("maintenance") if isinstance(data, dict) else None
    for i, window in enumerate(windows if isinstance(windows, list) else []):
        if not isinstance(window, dict):
            continue
        for j, pattern in enumerate(window.get("checks") or []):
            if isinstance(pattern, str) and not fnmatch.filter(first_at, pattern):
                issues.append(issue(positions, ("maintenance", i, "checks", j),
                                     f"{pattern!r} matches no check"))
        for j, service in enumerate(window.get("services") or []):
            if isinstance(service, str) and service not in services:
                issues.append(issue(positions, ("maintenance", i, "services", j),
                                     f"no check has service {service!r}"))
    issues += _service_checks(data, positions, services)
    if config is not None:
        issues += _timing_checks(config, positions)
        issues += config_issues(config.agent.web_config)
    return issues


def _service_checks(data: Any, positions: dict[KeyPath, Position],
                    services: set[str]) -> list[ConfigIssue]:
    """The services described and those on the status page are services of some check."""
    issues = []
    described = data.get("services") if isinstance(data, dict) else None
    for name in described if isinstance(described, dict) else {}:
        if isinstance(name, str) and name not in services:
            issues.append(issue(positions, ("services", name), f"no check has service {name!r}"))
    page = data.get("status_page") if isinstance(data, dict) else None
    listed = page.get("services") if isinstance(page, dict) else None
    for j, name in enumerate(listed if isinstance(listed, list) else []):
        if isinstance(name, str) and name not in services:
            issues.append(issue(positions, ("status_page", "services", j),
                                 f"no check has service {name!r}"))
    return issues


def _raw_routes(data: Any) -> dict[Any, Any]:
    """ticketing.routes as the user wrote it ({} where it is not a mapping)."""
    ticketing = data.get("ticketing") if isinstance(data, dict) else None
    routes = ticketing.get("routes") if isinstance(ticketing, dict) else None
    return routes if isinstance(routes, dict) else {}


def _route_checks(
    data: Any, positions: dict[KeyPath, Position], checks: list[Any]
) -> list[ConfigIssue]:
    routes = _raw_routes(data)
    issues = []
    for name, route in routes.items():
        target = route.get("escalate_to") if isinstance(route, dict) else None
        if isinstance(target, str) and target not in routes:
            issues.append(issue(positions, ("ticketing", "routes", name, "escalate_to"),
                                 f"no route is named {target!r}"))
    defaults = data.get("defaults") if isinstance(data, dict) else None
    default_ticket = defaults.get("ticket") if isinstance(defaults, dict) else None
    default_route = default_ticket.get("route") if isinstance(default_ticket, dict) else None
    if isinstance(default_route, str) and default_route not in routes:
        issues.append(issue(positions, ("defaults", "ticket", "route"),
                             f"no route is named {default_route!r}"))
    for i, check in enumerate(checks):
        ticket = check.get("ticket") if isinstance(check, dict) else None
        route = ticket.get("route") if isinstance(ticket, dict) else None
        if isinstance(route, str) and route not in routes:
            issues.append(issue(positions, ("checks", i, "ticket", "route"),
                                 f"no route is named {route!r}"))
        enabled = ticket.get("enabled", True) if isinstance(ticket, dict) else True
        if (route is None and default_route is None and len(routes) > 1 and enabled
                and isinstance(check, dict)):
            issues.append(issue(positions, ("checks", i),
                                 "several routes exist: set ticket.route here or in defaults"))
    return issues


def _alertmanager_checks(data: Any, positions: dict[KeyPath, Position]) -> list[ConfigIssue]:
    """Each receiver's route exists (or is the only one); alert groups are decided by one agent
    on its SQLite state: not yet in a cluster."""
    section = data.get("alertmanager") if isinstance(data, dict) else None
    receivers = section.get("receivers") if isinstance(section, dict) else None
    if not isinstance(receivers, dict):
        return []
    issues = []
    if isinstance(data, dict) and data.get("cluster") is not None:
        issues.append(issue(positions, ("alertmanager",), (
            "is not supported in a cluster yet: point Alertmanager at one agent that runs "
            "alone (docs/alertmanager.md)")))
    routes = _raw_routes(data)
    for name, receiver in receivers.items():
        route = receiver.get("route") if isinstance(receiver, dict) else None
        if isinstance(route, str) and route not in routes:
            issues.append(issue(positions, ("alertmanager", "receivers", name, "route"),
                                 f"no route is named {route!r}"))
        elif route is None and len(routes) != 1 and isinstance(receiver, dict):
            issues.append(issue(positions, ("alertmanager", "receivers", name), (
                "set route: the route its tickets go to" if routes else
                "needs a route, and ticketing.routes has none")))
    return issues


def _cluster_checks(data: Any, positions: dict[KeyPath, Position]) -> list[ConfigIssue]:
    """What a cluster asks of the rest: an agent name of its own, and no local helpdesk."""
    if not isinstance(data, dict) or "cluster" not in data:
        return []
    if data["cluster"] is None:
        # `cluster:` with every key commented out would run this agent alone, unannounced.
        return [issue(positions, ("cluster",), "is empty: set database or database_file, or "
                                               "leave the section out to run one agent alone")]
    if not isinstance(data["cluster"], dict):
        return []  # the model's error says what it should be
    issues = []
    agent = data.get("agent")
    if not isinstance(agent, dict) or "name" not in agent:
        # Said at the agent section, or at the cluster's when there is none.
        at = positions.get(("agent",), positions[("cluster",)])
        issues.append(ConfigIssue(at[0], at[1], "agent.name", (
            "must be set in a cluster: the host name it defaults to is no safe identity for "
            "a cluster member (two hosts may share one, and a renamed host would come back "
            "as another agent)")))
    routes = _raw_routes(data)
    for name, route in routes.items():
        if isinstance(route, dict) and route.get("backend") == "local":
            issues.append(issue(positions, ("ticketing", "routes", name, "backend"), (
                "the local helpdesk keeps its tickets in one agent's state directory, which "
                "the other agents of the cluster never see: use a helpdesk every agent "
                "reaches")))
    return issues + _site_checks(data, positions, routes)


def _site_checks(data: dict[str, Any], positions: dict[KeyPath, Position],
                 routes: dict[str, Any]) -> list[ConfigIssue]:
    """Sites that vote: every site named is one of `sites`, no quorum is above the number of
    sites that run a check, and probe's own trouble has a route to go to."""
    cluster, issues = data["cluster"], []
    sites = cluster.get("sites")
    raw = data.get("checks")
    checks: list[Any] = raw if isinstance(raw, list) else []
    if not isinstance(sites, list):
        for key in ("quorum", "alert_route"):
            if key in cluster:
                issues.append(issue(positions, ("cluster", key),
                                     "only means something with sites: the sites that vote"))
        for i, check in enumerate(checks):
            for key in ("sites", "quorum"):
                if isinstance(check, dict) and key in check:
                    issues.append(issue(positions, ("checks", i, key),
                                         "only means something in a cluster with sites: "
                                         "set cluster.sites"))
        return issues
    known = list(dict.fromkeys(s for s in sites if isinstance(s, str)))
    issues += _listed(positions, ("cluster", "sites"), sites, known)
    site = cluster.get("site", "default")
    if isinstance(site, str) and site not in known:
        issues.append(issue(positions, ("cluster", "site"),
                             f"{site!r} is not one of sites ({', '.join(known)})"))
    quorum = cluster.get("quorum")
    if isinstance(quorum, int) and quorum > len(known):
        issues.append(issue(positions, ("cluster", "quorum"),
                             f"{quorum} is more than the {len(known)} sites that vote"))
    route = cluster.get("alert_route")
    if route is None:
        issues.append(issue(positions, ("cluster",), (
            "alert_route: must be set with sites: the route where probe tickets its own "
            "trouble (a site gone silent, a quorum out of reach)")))
    elif isinstance(route, str) and route not in routes:
        issues.append(issue(positions, ("cluster", "alert_route"),
                             f"no route is named {route!r}"))
    ttl, silent = cluster.get("agent_ttl"), cluster.get("silent_after")
    with contextlib.suppress(ValueError, TypeError):  # the model says what is wrong with them
        if silent is not None and parse_duration(silent) < parse_duration(ttl or 5.0):
            issues.append(issue(positions, ("cluster", "silent_after"),
                                 "must not be shorter than agent_ttl: a site is silent only "
                                 "once its last agent has left"))
    for i, check in enumerate(checks):
        if not isinstance(check, dict):
            continue
        own = check.get("sites")
        if isinstance(own, list):
            issues += _listed(positions, ("checks", i, "sites"), own, known)
        running = {s for s in (own if isinstance(own, list) else known) if isinstance(s, str)}
        wanted = check.get("quorum", quorum)
        if ("quorum" in check or "sites" in check) and isinstance(wanted, int) and running \
                and wanted > len(running):
            at: KeyPath = ("checks", i, "quorum") if "quorum" in check else ("checks", i, "sites")
            whose = "a quorum of" if "quorum" in check else "the cluster's quorum of"
            issues.append(issue(positions, at, (
                f"{whose} {wanted} is more than the "
                f"{'1 site that runs' if len(running) == 1 else f'{len(running)} sites that run'}"
                " this check: set its quorum")))
    return issues


def _listed(positions: dict[KeyPath, Position], path: KeyPath, listed: list[Any],
            known: list[str]) -> list[ConfigIssue]:
    """A list of sites: each one of `known`, none twice."""
    issues, seen = [], set()
    for j, site in enumerate(listed):
        if not isinstance(site, str):
            continue
        if site in seen:
            issues.append(issue(positions, (*path, j), f"{site!r} is listed twice"))
        elif site not in known:
            issues.append(issue(positions, (*path, j),
                                 f"{site!r} is not one of cluster.sites ({', '.join(known)})"))
        seen.add(site)
    return issues


def _timing_checks(config: Config, positions: dict[KeyPath, Position]) -> list[ConfigIssue]:
    issues = []
    for i, check in enumerate(config.effective_checks()):
        if check.timeout > check.interval:
            issues.append(issue(positions, ("checks", i, "timeout"),
                                 f"timeout {format_duration(check.timeout)} is longer than the "
                                 f"interval {format_duration(check.interval)}"))
        # each block is valid alone; merged with the defaults' it may not be
        flapping = check.flapping
        if flapping.low > flapping.high:
            issues.append(issue(positions, ("checks", i, "flapping"),
                                 f"low {flapping.low * 100:g}% (with the defaults') must not be "
                                 f"above high {flapping.high * 100:g}%"))
    return issues


def _cycles(deps: dict[str, list[str]]) -> list[list[str]]:
    """Each dependency cycle once, as the path that closes it (a -> b -> a).

    A depth-first walk with its own stack: a chain of a thousand dependencies must not
    exhaust Python's."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for root in deps:
        if root in state:
            continue
        state[root] = 1
        trail = [root]
        parents = [iter(deps[root])]
        while parents:
            parent = next(parents[-1], None)
            if parent is None:
                state[trail.pop()] = 2
                parents.pop()
            elif parent not in deps:
                continue
            elif state.get(parent) == 1:
                cycles.append([*trail[trail.index(parent):], parent])
            elif parent not in state:
                state[parent] = 1
                trail.append(parent)
                parents.append(iter(deps[parent]))
    return cycles
