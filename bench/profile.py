"""`python -m bench.profile KIND`: where the daemon's time goes. Runs the kinds scenario's
daemon (200 checks of KIND every second, max_concurrency 50) against the benchmark's targets,
samples it with py-spy (`pip install py-spy`) after start-up, and prints the functions with the
most samples of their own, and probe's functions with the most in total (with what they call).
The collapsed stacks are kept (bench/results/profile-KIND.txt) for a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import daemon, targets
from bench.proc import Processes
from bench.scenarios import CONCURRENCY, KINDS

HERE = Path(__file__).resolve().parent
IDLE = {"epoll_pwait", "PyThread_acquire_lock_timed"}


def summary(collapsed: str, top: int) -> str:
    """Own and total samples per function from py-spy's collapsed stacks ("a;b;c 12")."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        if IDLE & set(f.split(" (")[0] for f in stack.split(";")):
            continue  # waiting, which py-spy counts as work in native mode
        n = int(count)
        samples += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")"
                  if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            if "(probe/" in frame or "(checks/" in frame:
                total[frame] += n
    lines = [f"{samples} samples"]
    for title, counter in (("own", own), ("total (probe's own functions)", total)):
        lines.append(f"\ntop {top} by {title} samples:")
        lines += [f"{n / samples:7.1%}  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--checks", type=int, default=200)
    parser.add_argument("--native", action="store_true", help="C frames too (uvloop, ssl)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = HERE / "results" / f"profile-{args.kind}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with Processes() as processes, tempfile.TemporaryDirectory(prefix="probe-bench-") as tmp:
        where = targets.start(processes, Path(tmp) / "targets")
        checks = [{"name": f"{args.kind}-{n:04d}", **daemon.spec(args.kind, where)}
                  for n in range(args.checks)]
        probe = daemon.start(
            processes, Path(tmp) / "probe", checks,
            defaults={"interval": "1s", "retry_interval": "1s", "timeout": "1s",
                      "ticket": {"enabled": False}},
            agent={"max_concurrency": CONCURRENCY},
        )
        time.sleep(3)
        # --nonblocking leaves the daemon running while sampled; --native needs it paused.
        done = subprocess.run([
            spy, "record", "--pid", str(probe.process.pid), "--duration", str(int(args.seconds)),
            "--rate", "250", "--format", "raw", "--output", str(out),
            *(["--native"] if args.native else ["--nonblocking"]),
        ], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"py-spy failed: {done.stderr.strip()}", file=sys.stderr)
            return 1
    print(summary(out.read_text(), args.top))
    print(f"\ncollapsed stacks in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
