"""How much memory does the full setup take while spans flow, and does it stay bounded under overload?

Run from the repository root:

    . .venv/bin/activate
    python benchmarks/memory.py                      # about 3 minutes on 2 vCPUs
    python benchmarks/memory.py --spans 300000       # shorter

Each scenario runs in a fresh Python process (so one scenario's heap cannot hide in another's) and
reports its resident set size (RSS, from /proc/self/status) before, at its peak (sampled every 50 ms
by a thread), and at the end, with what was stored and what was dropped:

- `flow`: `--spans` spans (executions of 10 steps) through WorkflowSpanProcessor(store) +
  BatchSpanProcessor(DuckDBSpanExporter(store)) with the default queues, the application pacing
  itself to at most about 11,000 spans/s (as a real service is paced by its work).
- `overload`: the application produces spans as fast as it can, with a small store queue
  (`max_queued_spans=20,000`) and a big BatchSpanProcessor queue, so the writer cannot keep up: RSS must
  stay bounded and the drop count must say what was lost.
- `baseline`: the same process with the SDK and no processor, producing the same spans (the floor).
- `flow-process`, `overload-process`: the same with `TraceStore(db, writer_process=True)`; RSS is
  then the application's plus its writer process's, sampled together.
- `10m`: a store opened on a database that already holds `--big` spans (made by benchmarks/queries.py's
  generator) while `--more` (100,000) more are ingested: RSS at a large database. Run twice: as installed,
  and as if pandas were not installed (pyarrow imports it, about 50 MB, on its first conversion), and
  with a writer process (both processes' RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_SCENARIO = r"""
import json, os, sys, threading, time
from pathlib import Path
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer

def rss_mb(pid="self"):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:  # the writer process has ended
        pass
    return 0.0

def total_mb():
    # With a writer process, its memory counts too: what the application's work costs the machine.
    writer = store.writer_pid if store is not None else None
    return rss_mb() + (rss_mb(writer) if writer else 0.0)

store = None
peak = [rss_mb()]
stop = threading.Event()
def sample():
    while not stop.wait(0.05):
        peak[0] = max(peak[0], total_mb())
threading.Thread(target=sample, daemon=True).start()

scenario, spans, db, writer_process = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
before = rss_mb()
provider = TracerProvider(shutdown_on_exit=False)
if scenario in ("flow", "overload", "10m"):
    # flow and 10m: the default queue bound, what a user gets.
    queued = 20_000 if scenario == "overload" else 50_000
    store = TraceStore(db, max_queued_spans=queued, writer_process=writer_process)
    provider.add_span_processor(WorkflowSpanProcessor(store))
    queue = 1_000_000 if scenario == "overload" else 2048
    provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(store), max_queue_size=queue))
wf = WorkflowTracer("bench", tracer_provider=provider)
start = time.perf_counter()
made = 0
while made < spans:
    with wf.execution():
        for step in range(10):
            with wf.step("step") as handle:
                handle.span.set_attributes({"a": step, "b": "x" * 20})
    made += 11
    if scenario in ("flow", "10m") and made % 1100 == 0:
        # Pace like a service doing real work: at most about 11,000 spans/s, which the writer sustains
        # next to the application (it stores about 30,000 spans/s when it has a core to itself).
        time.sleep(0.1)
elapsed = time.perf_counter() - start
provider.shutdown()
stored = dropped = 0
if store is not None:
    store.close()
    dropped = store.dropped_spans
    reader = TraceStore(db, read_only=True)
    stored = reader.sql("SELECT count(*) FROM spans")[0][0]
stop.set()
print(json.dumps({"before": before, "peak": peak[0], "after": rss_mb(), "made": made, "stored": stored,
                  "dropped": dropped, "seconds": elapsed, "pandas": "pandas" in sys.modules}))
"""

# pyarrow imports pandas (about 50 MB of RSS) on its first conversion of Python values when pandas is
# installed, as it is with this project's test extra; this makes the scenario run as if it were not.
_WITHOUT_PANDAS = r"""
import sys
class _NoPandas:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not installed (benchmarks/memory.py)")
        return None
sys.meta_path.insert(0, _NoPandas())
"""


def run(
    scenario: str, spans: int, db: Path, *, pandas: bool = True, writer_process: bool = False
) -> dict[str, float]:
    code = _SCENARIO if pandas else _WITHOUT_PANDAS + _SCENARIO
    out = subprocess.run(
        [sys.executable, "-c", code, scenario, str(spans), str(db), "1" if writer_process else "0"],
        check=True,
        # stdout only: a failing scenario's traceback goes to our stderr instead of being swallowed.
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=10_000_000, help="spans already stored in the 10m case")
    parser.add_argument("--more", type=int, default=100_000, help="spans ingested in the 10m case")
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; RSS in MB")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scenarios = [("baseline", False), ("flow", False), ("overload", False)]
        scenarios += [("flow", True), ("overload", True)]
        for name, writer_process in scenarios:
            label = f"{name}{'-process' if writer_process else ''}"
            result = run(name, args.spans, folder / f"{label}.duckdb", writer_process=writer_process)
            print(
                f"  {label:<17} made {result['made']:>10,.0f}  stored {result['stored']:>10,.0f}  "
                f"dropped {result['dropped']:>10,.0f}  RSS before {result['before']:>6.0f}  "
                f"peak {result['peak']:>6.0f}  after {result['after']:>6.0f}  ({result['seconds']:.0f} s)"
            )
        if not args.skip_big:
            sys.path.insert(0, str(Path(__file__).parent))
            import duckdb  # noqa: PLC0415
            from queries import generate  # noqa: PLC0415

            from otel_workflow.storage.schema import ensure_schema  # noqa: PLC0415

            big = folder / "big.duckdb"
            with duckdb.connect(str(big)) as connection:
                ensure_schema(connection)
                generate(connection, args.big)
            for pandas, writer_process in ((True, False), (False, False), (True, True)):
                result = run("10m", args.more, big, pandas=pandas, writer_process=writer_process)
                print(
                    f"  {args.big:,} stored, then {args.more:,} more ingested "
                    f"({'with' if result['pandas'] else 'without'} pandas imported"
                    f"{', writer process included' if writer_process else ''}): "
                    f"RSS peak {result['peak']:.0f} MB, after {result['after']:.0f} MB, "
                    f"dropped {result['dropped']:,.0f}"
                )


if __name__ == "__main__":
    main()
