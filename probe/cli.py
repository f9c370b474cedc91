"""The `probe` command: validate, schema, check, run, and the commands beside the daemon."""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import json
import logging
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from checks import execute
from checks.base import Result
from checks.values import format_duration
from probe import control, daemon, log, version, webconfig
from probe import report as report_forms
from probe.archive import Archive, pg_epoch, pg_query, sqlite_query
from probe.cluster import status as cluster_status
from probe.cluster.importer import Imported, ImportRefused, import_state
from probe.config import Check, Cluster, Config, ConfigError, load, source_files
from probe.demo import demo as run_demo
from probe.effective import effective_yaml
from probe.pages.build import Pages
from probe.pages.render import report as html_report
from probe.secrets import SecretError, known
from probe.store import Store, StoreError
from probe.tickets.admin import test_ticket, tickets_command
from probe.tickets.ledger import LedgerError
from probe.tickets.pgledger import Pool, SchemaError, open_pool

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="probe", description="Health checks that open, update and close helpdesk tickets."
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="probe's version, and those of Python, OpenSSL and its libraries")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a configuration and summarise it")
    validate.add_argument("--config", "-c", type=Path, required=True, help="file or directory")
    validate.add_argument("--print", action="store_true", dest="print_effective",
                          help="print the effective configuration as YAML: templates expanded, "
                               "defaults written into each check, secrets as their references")

    commands.add_parser("schema", help="print the configuration's JSON Schema")

    check = commands.add_parser("check", help="run checks once and print their results")
    check.add_argument("--config", "-c", type=Path, required=True, help="file or directory")
    check.add_argument("names", nargs="*", metavar="NAME", help="checks to run (default: all)")
    check.add_argument("--json", action="store_true", help="print the results as JSON")

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", type=Path, required=True, help="file or directory")

    reload = commands.add_parser("reload", help="validate the files, have the running daemon "
                                                "read them, and wait until it has")
    reload.add_argument("--config", "-c", type=Path, required=True, help="file or directory")
    reload.add_argument("--pid", type=int, help="the daemon's process (systemd: $MAINPID); "
                                                "default: the one its state directory names")

    status = commands.add_parser("status", help="what a running daemon sees now")
    _daemon_address(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    maint = commands.add_parser("maintenance",
                                help="maintenance windows of a running daemon: list, add, end")
    _daemon_address(maint)
    maint.add_argument("action", nargs="?", default="list", choices=["list", "add", "end"])
    maint.add_argument("id", nargs="?", type=int, help="the window to end")
    maint.add_argument("--check", action="append", default=[], dest="checks",
                       help="a check name or glob pattern (repeat for more)")
    maint.add_argument("--service", action="append", default=[], dest="services",
                       help="a service (repeat for more)")
    maint.add_argument("--for", dest="duration", help="how long from now, like 2h")
    maint.add_argument("--until", dest="end", help="when it ends, like 2026-12-01T04:00:00Z")
    maint.add_argument("--reason", default="", help="why: shown in status and the log")

    tickets = commands.add_parser("tickets", help="the local backend's tickets")
    tickets.add_argument("--config", "-c", type=Path, required=True, help="file or directory")
    tickets.add_argument("action", nargs="?", default="list",
                         choices=["list", "show", "ack", "close", "failed", "retry"],
                         help="list (default), show ID, ack ID (take it), close ID (close it by "
                              "hand), failed (actions that could not be delivered), retry "
                              "(deliver the failed ones again)")
    tickets.add_argument("id", nargs="?", type=int, help="a local ticket's number")
    tickets.add_argument("--owner", default="operator", help="who takes the ticket (ack)")

    test = commands.add_parser("test-ticket",
                               help="open, note and resolve a test ticket on a route")
    test.add_argument("--config", "-c", type=Path, required=True, help="file or directory")
    test.add_argument("--route", required=True, help="the route to test")

    cluster = commands.add_parser("cluster", help="the cluster's database (several agents)")
    within = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    move = within.add_parser("import", help="move a single agent's open incidents, tickets, "
                                            "ticket actions, states and maintenance windows "
                                            "into the cluster (stop the agent first)")
    move.add_argument("--from", dest="source", type=Path, required=True, metavar="STATE_DIR",
                      help="the agent's state directory (its state_dir)")
    move.add_argument("--config", "-c", type=Path, required=True,
                      help="the cluster's configuration, file or directory (agent.history: "
                           "the results kept of each check)")
    move.add_argument("--database-env", default="PROBE_DATABASE", metavar="NAME",
                      help="the environment variable that holds the cluster's database "
                           "(a libpq connection string; never on the command line, which "
                           "every user can read); default: PROBE_DATABASE")

    shown = within.add_parser("status", help="the cluster's agents, their heartbeats, the "
                                             "groups each holds, configuration agreement, "
                                             "sites and quorum trouble; exit 1 when no agent "
                                             "is live, or a site has none")
    shown.add_argument("--config", "-c", type=Path, required=True, help="file or directory")
    shown.add_argument("--json", action="store_true", help="the status as JSON")

    voted = within.add_parser("votes", help="each site's vote on a check, its age, the "
                                            "verdict and the rule that produced it")
    voted.add_argument("check", help="the check's name")
    voted.add_argument("--config", "-c", type=Path, required=True, help="file or directory")
    voted.add_argument("--json", action="store_true", help="the votes as JSON")

    report = commands.add_parser(
        "report", help="availability, downtime, incidents and SLAs over a period, from the "
                       "state database (no daemon needed)")
    report.add_argument("--config", "-c", type=Path, required=True, help="file or directory")
    report.add_argument("--from", dest="start", required=True, metavar="DATE",
                        help="a date (2026-11-01) or a time (2026-11-01T08:00:00Z)")
    report.add_argument("--to", dest="end", metavar="DATE",
                        help="a date (the end of that day) or a time; default: now")
    report.add_argument("--service", metavar="NAME", help="this service and its checks only")
    report.add_argument("--format", choices=report_forms.FORMATS, default="md")
    demo = commands.add_parser("demo", help="see a ticket open, inform and close (offline)")
    demo.add_argument("--listen", default="127.0.0.1:9469", help="where to serve /metrics")

    args = parser.parse_args(argv)
    if args.command == "demo":
        log.setup("error")
        try:
            return asyncio.run(run_demo(args.listen))
        except ConfigError as err:  # a --listen that is not host:port
            print("\n".join(f"probe demo --listen: {i.message}" for i in err.issues),
                  file=sys.stderr)
            return EXIT_CONFIG
    if args.command in ("status", "maintenance") and args.url:
        return _remote(args, args.url, None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "schema":
        print(json.dumps(Config.model_json_schema(by_alias=True), indent=2))
        return EXIT_OK
    config = _load(args.config)
    if args.command == "reload":  # a file refused here is a failed reload, as validate's 1
        return EXIT_FAILED if config is None else _reload(config, args.pid)
    if args.command == "validate":
        if config is None:
            return EXIT_FAILED
        if args.print_effective:
            print(effective_yaml(config, source_files(args.config)), end="")
            return EXIT_OK
        print(f"{args.config}: OK: {config.summary()}")
        return EXIT_OK
    if config is None:
        return EXIT_CONFIG
    if args.command == "run":
        log.setup(config.agent.log_level)
        run_loop(daemon.run(args.config, config))
        return EXIT_OK
    if args.command in ("status", "maintenance"):
        return _remote(args, *_endpoint(config))
    if args.command == "tickets":
        return tickets_command(config, args.action, args.id, args.owner)
    if args.command == "test-ticket":
        return asyncio.run(test_ticket(config, args.route))
    if args.command == "report":
        return _report(config, args.start, args.end, args.service, args.format)
    if args.command == "cluster" and args.cluster_command == "status":
        return _cluster_status(config, as_json=args.json)
    if args.command == "cluster" and args.cluster_command == "votes":
        return _cluster_votes(config, args.check, as_json=args.json)
    if args.command == "cluster":
        return _cluster_import(config, args.source, args.database_env)
    return _check(config, args.names, as_json=args.json)


class _Version(argparse.Action):
    """argparse's own version action reflows the text into one paragraph: this keeps the
    lines."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version.text())
        parser.exit()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the daemon on uvloop where it is installed: the same asyncio, at a fraction of the
    CPU per check (see docs/performance.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _endpoint(config: Config) -> tuple[str, ssl.SSLContext | None]:
    """The daemon's own address, and for an endpoint behind TLS a context that trusts exactly
    the certificate its web_config serves (whose names need not include the listen address)."""
    listen = config.agent.listen
    if config.agent.web_config is None:
        return f"http://{listen}", None
    tls = webconfig.load(config.agent.web_config).tls_server_config  # load() validated it
    if tls is None:
        return f"http://{listen}", None
    try:
        context = ssl.create_default_context(cafile=str(tls.cert_file))
    except (OSError, ssl.SSLError):
        context = ssl.create_default_context()  # unreadable here: the system's CAs, then
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the served leaf itself is trusted
    return f"https://{listen}", context


def _daemon_address(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", "-c", type=Path, help="the daemon's configuration")
    where.add_argument("--url", help="the daemon's address, like http://127.0.0.1:9469")
    parser.add_argument("--user", help="for an endpoint with basic_auth_users: the user name "
                                       "(the password from PROBE_PASSWORD, or asked for)")


class _Refused(Exception):
    """The daemon said no (`unreachable` false), or could not be asked: in words."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class _Daemon:
    """The running daemon's HTTP API, over TLS and basic auth when its web_config asks."""

    def __init__(self, url: str, context: ssl.SSLContext | None, user: str | None) -> None:
        self.url, self.context, self.user = url.rstrip("/"), context, user
        self._auth: str | None = None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={} if body is None else {"Content-Type": "application/json"})
        if self.user is not None:
            request.add_header("Authorization", self._credentials(self.user))
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            raise _Refused(self._why(err)) from None
        except (OSError, ValueError) as err:
            raise _Refused(str(err), unreachable=True) from None

    def _credentials(self, user: str) -> str:
        if self._auth is None:
            password = os.environ.get("PROBE_PASSWORD")
            if password is None:
                password = getpass.getpass(f"password of {user} at {self.url}: ")
            self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return self._auth

    def _why(self, err: urllib.error.HTTPError) -> str:
        if err.code == 401:
            return ("the user name or password is wrong" if self.user else
                    "it asks for a user name and password (basic_auth_users in its web_config): "
                    "give --user NAME, and the password in PROBE_PASSWORD or when asked")
        try:
            said = json.load(err).get("error")
        except (ValueError, AttributeError, OSError):
            said = None
        return str(said) if said else f"HTTP {err.code}"


def _remote(args: argparse.Namespace, url: str, context: ssl.SSLContext | None) -> int:
    daemon = _Daemon(url, context, args.user)
    if args.command == "status":
        try:
            return _status(daemon.call("GET", "/api/status"), as_json=args.json)
        except _Refused as err:
            print(f"cannot read the status from {url}: {err}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        return _maintenance(daemon, args)
    except _Refused as err:
        if err.unreachable:
            print(f"maintenance {args.action}: cannot reach {url}: {err}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"maintenance {args.action}: {url} says: {err}", file=sys.stderr)
        return EXIT_FAILED


def _maintenance(daemon: _Daemon, args: argparse.Namespace) -> int:
    if args.action == "add":
        request = {"checks": args.checks, "services": args.services, "reason": args.reason}
        request.update({k: v for k in ("duration", "end") if (v := getattr(args, k))})
        added = daemon.call("POST", "/api/maintenance", request)
        print(f"maintenance {added['id']} set until {added['end']}: {_scope(added)}")
        return EXIT_OK
    if args.action == "end":
        if args.id is None:
            print("maintenance end: which window? give its ID (probe maintenance list)",
                  file=sys.stderr)
            return EXIT_CONFIG
        daemon.call("DELETE", f"/api/maintenance/{args.id}")
        print(f"maintenance {args.id} ended")
        return EXIT_OK
    rows = [("ID", "ACTIVE", "WHEN", "FOR", "REASON")]
    for w in daemon.call("GET", "/api/maintenance")["windows"]:
        when = (f"{w['start']} to {w['end']}" if w["start"] else
                f"{','.join(w['weekdays'])} at {w['at']} for {w['duration']} ({w['timezone']})")
        rows.append((str(w["id"] or "config"), "yes" if w["active"] else "no", when,
                     _scope(w), w["reason"] or "-"))
    print(_columns(rows))
    return EXIT_OK


def _scope(window: dict[str, Any]) -> str:
    parts = [f"checks {', '.join(window['checks'])}" if window["checks"] else "",
             f"services {', '.join(window['services'])}" if window["services"] else ""]
    return "; ".join(p for p in parts if p)


def _status(data: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    cluster = data.get("cluster")
    rows = [("NAME", "KIND", "STATE", "FAILS", "FLAGS", *(("AGENT",) if cluster else ()),
             "REASON")]
    for c in data["checks"]:
        flags = ",".join(f for f in ("flapping", "unreachable", "in_maintenance") if c[f])
        # When sites vote, the sites' verdict is the check's state for probe.
        state = c.get("quorum") or c["state"] or "pending"
        rows.append((c["name"], c["kind"], state.upper(),
                     str(c["consecutive_failures"]), flags or "-",
                     *((c.get("agent") or "-",) if cluster else ()), c["reason"]))
    print(_columns(rows))
    print()
    if cluster:
        live = [a["name"] for a in cluster["agents"] if a["live"]]
        print(f"cluster site {cluster['site']}: {len(live)} agents live ({', '.join(live)}); "
              f"seen from {data['agent']}")
    if not data["incidents"]:
        print("no open incidents")
    for i in data["incidents"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i["first_failure_at"]))
        print(f"OPEN {i['group']} ({i['key']}) since {since}: {i['why']}; {i['reason']}")
        if i["unreachable"]:
            print(f"  unreachable because of it: {', '.join(i['unreachable'])}")
        for alert in i.get("alerts", []):  # fed by Alertmanager
            print(f"  firing: {alert}")
    pending = data["ticket_actions_pending"]
    if pending["count"]:
        print(f"{pending['count']} ticket actions waiting for delivery "
              f"(up to {pending['most_attempts']} attempts so far)")
    for failed in data["ticket_actions_failed"]:
        print(f"FAILED ticket action {failed['action']} of {failed['incident']} on "
              f"{failed['route']}: {failed['error']}  (probe tickets retry)")
    if not data["state_writable"]:
        print("WARNING: the state database cannot be written")
    return EXIT_FAILED if data["incidents"] else EXIT_OK


def _reload(config: Config, pid: int | None) -> int:
    try:
        record = control.reload(config.agent.state_dir, pid)
    except control.ReloadFailed as err:
        print(f"reload: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if not record.ok:
        print("\n".join(["reload refused, the running configuration stays:", *record.errors]),
              file=sys.stderr)
        return EXIT_FAILED
    print(f"reloaded: process {record.pid} runs the new configuration")
    return EXIT_OK


def _cluster_status(config: Config, *, as_json: bool) -> int:
    if config.cluster is None:
        print("cluster status: the configuration has no cluster: section", file=sys.stderr)
        return EXIT_CONFIG
    doc = _read_cluster("cluster status", config.cluster,
                        lambda pool: cluster_status.document(pool, config))
    if isinstance(doc, int):
        return doc
    print(json.dumps(doc, indent=2) if as_json else cluster_status.text(doc))
    return EXIT_OK if cluster_status.healthy(doc) else EXIT_FAILED


def _cluster_votes(config: Config, name: str, *, as_json: bool) -> int:
    cluster = config.cluster
    if cluster is None or not cluster.voting:
        print("cluster votes: the configuration's cluster: section has no sites that vote",
              file=sys.stderr)
        return EXIT_CONFIG
    check = next((c for c in config.effective_checks() if c.name == name), None)
    if check is None:
        print(f"cluster votes: no check is named {name!r}", file=sys.stderr)
        return EXIT_CONFIG
    doc = _read_cluster("cluster votes", cluster, lambda pool: cluster_status.votes_document(
        pool, check, agent_ttl=cluster.agent_ttl, silent_after=cluster.silent_after))
    if isinstance(doc, int):
        return doc
    print(json.dumps(doc, indent=2) if as_json else cluster_status.votes_text(doc))
    return EXIT_OK


def _report(config: Config, start_text: str, end_text: str | None, service: str | None,
            form: str) -> int:
    now = time.time()
    try:
        start = report_forms.parse_when(start_text, end=False)
        end = now if end_text is None else report_forms.parse_when(end_text, end=True)
    except ValueError as err:
        print(f"probe report: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if end <= start:
        print("probe report: --to is not after --from", file=sys.stderr)
        return EXIT_CONFIG
    services = sorted({c.service for c in config.effective_checks() if c.service})
    if service is not None and service not in services:
        print(f"probe report: no check has service {service!r} (services: "
              f"{', '.join(services) or 'none'})", file=sys.stderr)
        return EXIT_CONFIG

    async def produce(archive: Archive) -> str:
        built = await report_forms.build(Pages(config, archive), start, end, now, service)
        if form == "csv":
            return report_forms.to_csv(built)
        if form == "json":
            return report_forms.to_json(built) + "\n"
        if form == "html":
            return html_report(built)
        return report_forms.to_markdown(built)

    if config.cluster is not None:
        async def read(pool: Pool) -> dict[str, Any]:
            return {"text": await produce(daemon.archive_of(config, pg_query(pool), pg_epoch))}

        found = _read_cluster("probe report", config.cluster, read)
        if isinstance(found, int):
            return found
        text = str(found["text"])
    else:
        path = config.agent.state_dir / Store.FILE
        if not path.exists():
            print(f"probe report: no state database at {path}: has probe run with this "
                  "configuration?", file=sys.stderr)
            return EXIT_FAILED
        try:
            store = Store(config.agent.state_dir)
        except StoreError as err:
            print(f"probe report: {err}", file=sys.stderr)
            return EXIT_FAILED
        try:
            text = asyncio.run(produce(daemon.archive_of(config, sqlite_query(store))))
        finally:
            store.close()
    sys.stdout.write(text)
    return EXIT_OK


def _read_cluster(command: str, cluster: Cluster,
                  read: Callable[[Pool], Awaitable[dict[str, Any]]]) -> dict[str, Any] | int:
    """`read` on the cluster's database (never migrated by a command that only reads); an
    exit code, said on stderr, when it cannot be reached."""
    try:
        dsn = cluster.dsn()
    except SecretError as err:
        print(f"{command}: {err}", file=sys.stderr)
        return EXIT_CONFIG

    async def opened() -> dict[str, Any]:
        pool = await open_pool(dsn, timeout=10, migrated=False)
        try:
            return await read(pool)
        finally:
            await pool.close()

    try:
        return asyncio.run(opened())
    except (LedgerError, SchemaError, psycopg.Error, PoolTimeout) as err:
        print(f"{command}: the cluster's database: {err}", file=sys.stderr)
        return EXIT_FAILED


def _cluster_import(config: Config, source: Path, variable: str) -> int:
    # The cluster's own configuration says where its database is; else the variable.
    dsn = os.environ.get(variable)
    if config.cluster is not None:
        try:
            dsn = config.cluster.dsn()
        except SecretError as err:
            print(f"cluster import: {err}", file=sys.stderr)
            return EXIT_CONFIG
    if not dsn:
        print(f"cluster import: the environment variable {variable} is not set: it holds the "
              "cluster's database (like host=db.example dbname=probe user=probe)",
              file=sys.stderr)
        return EXIT_CONFIG

    async def move() -> Imported:
        pool = await open_pool(dsn, timeout=10)
        try:
            return await import_state(source, pool, history=config.agent.history)
        finally:
            await pool.close()

    try:
        imported = asyncio.run(move())
    except ImportRefused as err:
        print(f"cluster import refused: {err}", file=sys.stderr)
        return EXIT_FAILED
    except LedgerError as err:  # says "the cluster's database: ..." itself
        print(f"cluster import: {err}; nothing written", file=sys.stderr)
        return EXIT_FAILED
    except (SchemaError, psycopg.Error, PoolTimeout) as err:
        print(f"cluster import: the cluster's database: {err}; nothing written",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"{source}: {imported.summary()}")
    return EXIT_OK


def _load(path: Path) -> Config | None:
    try:
        return load(path)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        count = len(err.issues)
        print(f"{path}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return None


def _check(config: Config, names: list[str], *, as_json: bool) -> int:
    checks = config.effective_checks()
    names_known = {c.name for c in checks}
    unknown = [n for n in names if n not in names_known]
    if unknown:
        print(f"no check is named {', '.join(map(repr, unknown))}", file=sys.stderr)
        return EXIT_CONFIG
    chosen = [c for c in checks if not names or c.name in names]
    known.add(config.secret_values())  # what a target echoes of a token is not printed back
    results = [known.redact_result(r)
               for r in asyncio.run(_run_all(chosen, config.agent.max_concurrency))]
    if as_json:
        rows = [{"name": c.name, **r.as_dict()} for c, r in zip(chosen, results, strict=True)]
        print(json.dumps(rows, indent=2))
    else:
        print(_table(chosen, results))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


async def _run_all(checks: list[Check], concurrency: int) -> list[Result]:
    gate = asyncio.Semaphore(concurrency)

    async def one(check: Check) -> Result:
        async with gate:
            return await execute(check.spec, timeout=check.timeout)

    return await asyncio.gather(*(one(c) for c in checks))


def _table(checks: list[Check], results: list[Result]) -> str:
    rows = [("NAME", "KIND", "RESULT", "LATENCY", "REASON")]
    for check, result in zip(checks, results, strict=True):
        rows.append((check.name, check.kind, result.state.upper(),
                     format_duration(result.duration), result.reason))
    return _columns(rows)


def _columns(rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns; the last one (a reason) runs free."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        .rstrip()
        for row in rows
    )


if __name__ == "__main__":
    sys.exit(main())
