"""`python -m bench`: start the targets on loopback, run the scenarios, print the tables and
write the figures as JSON. `--smoke` runs every scenario briefly, for CI."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from bench import alerts, daemon, history, pages, report, rt, scenarios, targets
from bench.proc import Processes, Unavailable

HERE = Path(__file__).resolve().parent
SCENARIOS = ("kinds", "scale", "tickets", "cluster", "sites", "pages", "history", "alerts")
IN_PROCESS = ("pages", "history", "alerts")  # no targets: in this process (alerts: a daemon)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="every scenario briefly, one repetition (~2 minutes); for CI")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "latest.json",
                        help="where the JSON goes (default bench/results/latest.json)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"scenarios to run, comma-separated ({','.join(SCENARIOS)})")
    parser.add_argument("--kinds", default=",".join(scenarios.KINDS),
                        help="check kinds of the kinds scenario")
    parser.add_argument("--reps", type=int, help="repetitions of the kinds scenario (3)")
    parser.add_argument("--checks", type=int,
                        help="checks per kind and repetition in the kinds scenario (3000)")
    parser.add_argument("--sizes", help="numbers of checks of the scale scenario "
                        "(100,1000,10000)")
    parser.add_argument("--duration", type=float,
                        help="measured seconds of each scale run (180)")
    parser.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in scenarios.MIX.items()),
                        help="kinds of the scale scenario, kind=share (%(default)s)")
    parser.add_argument("--incidents", type=int, help="incidents per helpdesk (100)")
    parser.add_argument("--cluster-checks", type=int,
                        help="checks shared by the cluster scenario's three agents, and by the "
                        "sites scenario's six (1000)")
    parser.add_argument("--cluster-window", type=float,
                        help="measured seconds of the cluster's and the sites' steady state "
                        "(120)")
    parser.add_argument("--no-rt", action="store_true", help="leave Request Tracker out")
    parser.add_argument("--rev", help="run the probe of this git revision (git archive) "
                        "instead of the working tree's")
    parser.add_argument("--cpu", type=int, default=1 if (os.cpu_count() or 1) > 1 else 0,
                        help="the core the daemon is pinned to in the scale scenario (1)")
    args = parser.parse_args(argv)
    full = not args.smoke
    args.reps = args.reps or (3 if full else 1)
    args.checks = args.checks or (3000 if full else 300)
    args.sizes = [int(s) for s in (args.sizes or ("100,1000,10000" if full else "300")).split(",")]
    args.duration = args.duration or (180.0 if full else 20.0)
    args.incidents = args.incidents or (100 if full else 10)
    args.cluster_checks = args.cluster_checks or (1000 if full else 300)
    args.cluster_window = args.cluster_window or (120.0 if full else 20.0)
    args.only = [s for s in args.only.split(",") if s]
    try:
        args.mix = {k: float(v) for k, _, v in (p.partition("=") for p in args.mix.split(","))}
    except ValueError:
        parser.error(f"--mix: not kind=share,...: {args.mix}")
    if set(args.mix) - set(scenarios.KINDS):
        parser.error(f"--mix: kinds are {', '.join(scenarios.KINDS)}")
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}")
    return args


def _git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=daemon.REPO, capture_output=True, check=False)
    return done.stdout.decode(errors="replace").strip()


def source(rev: str | None, directory: Path) -> tuple[Path, str]:
    """Where the probe under test comes from, and what it is (a commit, dirty or not)."""
    if rev is None:
        dirty = " with changes" if _git("status", "--porcelain", "--", "probe", "checks") else ""
        return daemon.REPO, f"working tree at {_git('rev-parse', '--short', 'HEAD')}{dirty}"
    commit = _git("rev-parse", "--short", "--verify", f"{rev}^{{commit}}")
    if not commit:
        raise SystemExit(f"--rev {rev}: not a revision of {daemon.REPO}")
    directory.mkdir()
    archive = subprocess.run(["git", "archive", commit, "probe", "checks"], cwd=daemon.REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory, commit


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    results: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(), "skipped": [], "errors": [],
    }

    def say(line: str) -> None:
        print(line, flush=True)

    def attempt(name: str, work: Any) -> None:
        say(f"{name}...")
        started = time.monotonic()
        try:
            work()
        except Unavailable as why:
            results["skipped"].append(f"{name}: {why}")
            say(f"skipped {name}: {why}")
        except Exception as err:
            results["errors"].append(f"{name}: {err}")
            traceback.print_exc()
        say(f"{name}: {time.monotonic() - started:.0f}s")

    if "pages" in args.only:
        # in this process, from the models: no targets, no daemon (bench/pages.py)
        def render_pages() -> None:
            results["pages"] = pages.run(reps=5 if args.smoke else 50, say=say)

        attempt("pages", render_pages)
    if "history" in args.only:
        # in this process, on a real state database (bench/history.py)
        def keep_history() -> None:
            results["history"] = history.run(say, smoke=args.smoke)

        attempt("history", keep_history)
    if "alerts" in args.only:
        # a daemon of its own and Alertmanager's notifications, no targets (bench/alerts.py)
        def storm() -> None:
            with Processes() as processes, tempfile.TemporaryDirectory(
                    prefix="probe-bench-") as tmp:
                results["alerts"] = alerts.run(processes, Path(tmp) / "alerts", say,
                                               groups=100 if args.smoke else 1000)

        attempt("alerts", storm)
    if set(args.only) <= set(IN_PROCESS):
        results["probe"] = source(None, directory=Path())[1]  # always the working tree's
        report.write(results, args.output)
        say("")
        say(report.tables(results))
        say(f"\nfigures written to {args.output}")
        return 1 if results["errors"] else 0
    with Processes() as processes, tempfile.TemporaryDirectory(prefix="probe-bench-") as tmp:
        directory = Path(tmp)
        try:
            where = targets.start(processes, directory / "targets")
        except Unavailable as why:
            say(f"skipped every scenario: {why}")
            return 0
        code, results["probe"] = source(args.rev, directory / "source")
        say(f"probe: {results['probe']}")
        bench = scenarios.Bench(processes, directory, where, say, code)
        if "kinds" in args.only:
            results["kinds"] = []
            attempt("kinds", lambda: scenarios.kinds(
                bench, results["kinds"], count=args.checks, checks=100 if args.smoke else 200,
                reps=args.reps, which=args.kinds.split(",")))
        if "scale" in args.only:
            results["scale"] = []
            attempt("scale", lambda: scenarios.scale(
                bench, results["scale"], sizes=args.sizes, duration=args.duration, cpu=args.cpu,
                shares=args.mix))
        if "tickets" in args.only:
            results["tickets"] = []

            def local() -> None:
                results["tickets"].append(scenarios.tickets(
                    bench, backend="local", incidents=args.incidents, rate=2.0))

            def request_tracker() -> None:
                peer = rt.start(processes)
                results["rt_create"] = scenarios.rt_create(peer, args.incidents)
                # RT (two Starlet workers on SQLite) takes about two requests a second, and each
                # incident costs two (the create, the triage note): faster, tickets queue in RT.
                results["tickets"].append(scenarios.tickets(
                    bench, backend="rt", incidents=args.incidents, rate=0.5, rt_peer=peer))

            attempt("tickets (local)", local)
            if not args.no_rt:
                attempt("tickets (Request Tracker)", request_tracker)
        if "cluster" in args.only:

            def cluster() -> None:
                results["cluster"] = scenarios.cluster(
                    bench, checks=args.cluster_checks, failing=5 if args.smoke else 20,
                    duration=args.cluster_window)

            attempt("cluster", cluster)
        if "sites" in args.only:

            def sites() -> None:
                results["sites"] = scenarios.sites(
                    bench, checks=args.cluster_checks, failing=5 if args.smoke else 20,
                    duration=args.cluster_window)

            attempt("sites", sites)
    report.write(results, args.output)
    say("")
    say(report.tables(results))
    say(f"\nfigures written to {args.output}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every process the benchmark started is stopped", file=sys.stderr)
        sys.exit(130)
