"""Run every benchmark script, one after the other: the performance issue's single entry point.

Run from the repository root:

    . .venv/bin/activate
    python benchmarks/run_all.py                        # default sizes; about 5 minutes on 2 vCPUs
    python benchmarks/run_all.py --quick                # tiny sizes, about 25 s: what CI runs
    python benchmarks/run_all.py --only queries --only memory

Each script runs as a subprocess of this interpreter, its output streamed as it comes, and a summary
(ok/failed and seconds per script) ends the run. The exit status is 1 if any script failed. No
thresholds are asserted: a script fails only by exiting non-zero (a crash, or ingest_paths.py's
content check), so `--quick` keeps the scripts from rotting without making CI depend on timings.

The default run uses each script's own defaults, except where the whole run would otherwise pass
10 minutes on a shared 2-vCPU machine (measured: the four other scripts at their defaults plus
memory.py at a fifth of its default took 10 minutes together):
- app_thread.py: 11,000 spans per run instead of 22,000 (still the median of 3);
- ingest.py: 50,000 spans instead of 100,000 (still the median of 3);
- memory.py: 100,000 spans per scenario instead of 1,000,000 (the 10M-span database is kept).
`--quick` gives every script sizes small enough to finish in seconds while still going through
all of its code: every setup, method, query and scenario, temp databases included.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    name: str
    default: tuple[str, ...]
    quick: tuple[str, ...]


BENCHMARKS = (
    # 880 spans = 10 executions of 11 spans on each of 8 threads, so every workload runs whole.
    Benchmark("app_thread", ("--spans", "11000", "--repeat", "5"), ("--spans", "880", "--repeat", "1")),
    Benchmark("ingest", ("--spans", "50000"), ("--spans", "2000", "--repeat", "1")),
    Benchmark(
        "ingest_paths",
        (),
        ("--spans", "1000", "--repeat", "1", "--executemany-spans", "256", "--with-store"),
    ),
    # queries.py looks up the 101st failed execution: 120,000 spans hold about 200.
    Benchmark("queries", (), ("--spans", "120000", "--repeat", "1")),
    Benchmark("memory", ("--spans", "100000"), ("--spans", "2200", "--big", "120000", "--more", "2200")),
    Benchmark("logs", (), ("--records", "2000", "--repeat", "1")),
    # One repetition at the script's sizes (~75 s): smaller sizes would measure the writer's 0.5 s cycle,
    # not the collector. --quick: both transports and modes, 1 and 2 clients, ~15 s.
    Benchmark("collector", ("--repeat", "1"), ("--quick",)),
)


def run(benchmark: Benchmark, quick: bool) -> tuple[bool, float]:
    """Run one script with its output going straight to ours; (succeeded, seconds)."""
    command = [
        sys.executable,
        str(HERE / f"{benchmark.name}.py"),
        *(benchmark.quick if quick else benchmark.default),
    ]
    print(f"\n== {benchmark.name}: {' '.join(command[1:])}", flush=True)
    # Unbuffered, so a long benchmark's lines appear as they are printed, not when it ends.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    returncode = subprocess.run(command, env=env, check=False).returncode
    return returncode == 0, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (CI)")
    parser.add_argument(
        "--only",
        action="append",
        choices=[b.name for b in BENCHMARKS],
        help="run only this script (repeatable)",
    )
    args = parser.parse_args()
    selected = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    results = [(b.name, *run(b, args.quick)) for b in selected]
    print(f"\n== summary ({'quick' if args.quick else 'default'} sizes)")
    for name, ok, seconds in results:
        print(f"  {name:<14}{'ok' if ok else 'FAILED':<8}{seconds:>8.1f} s")
    print(f"  {'total':<22}{sum(seconds for _, _, seconds in results):>8.1f} s")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
