"""How fast `status` answers on a ledger of many events (issue: < 2 s at 100,000 events).

Builds a job on a local store whose journal holds N events (a plan, then claims, heartbeats,
checkpoints and done events from 20 workers over 2 runs), folds it once (the first sync), then
times `status` — which syncs the journal (listing it, reading nothing new) and queries the
ledger — against a baseline measured in the same run: merely listing the journal folder.

    .venv/bin/python benchmarks/bench_status.py [--events 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import job_text, write_images  # noqa: E402

from shardrun import paths  # noqa: E402
from shardrun.config.job import load_job  # noqa: E402
from shardrun.plan.job import plan_job  # noqa: E402
from shardrun.journal import Event  # noqa: E402
from shardrun.ledger.db import Ledger  # noqa: E402
from shardrun.status.report import job_status  # noqa: E402


def write_events(root: Path, job: str, count: int, runs: dict[str, list]) -> None:
    """Writes `count` events straight into the local store's journal folder (fast set-up)."""
    folder = root / paths.journal_prefix(job)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    t = time.time() - count * 0.5
    workers = [f"worker-{i:02d}" for i in range(20)]
    chunk_of = {}
    while n < count:
        for w, worker in enumerate(workers):
            run = list(runs)[w % len(runs)]
            chunks = runs[run]
            idx = chunk_of.get(run, 0)
            if idx >= len(chunks):
                idx = len(chunks) - 1
            events = [("claim", {}), *(("heartbeat", {"step": chunks[idx][0] + k}) for k in range(40))]
            for kind, payload in events:
                if n >= count:
                    break
                event = Event(f"{int(t * 1e6):016x}-{n:08d}", kind, worker, run, idx, 0, payload)
                (folder / f"{event.id}.json").write_bytes(event.to_bytes())
                n += 1
                t += 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        write_images(base / "images", 40, size=(64, 64))
        runs = [dict(name=f"run{i}", model="decusr", scale=2, channels=1, epochs=2000, batch_size=16,
                     patch_size=32, patches_per_second=2.0) for i in range(2)]
        (base / "job.toml").write_text(job_text(runs=runs, reserve_mb=0))
        job = load_job(base / "job.toml")
        plan_job(job, scan_workers=1)
        ledger = Ledger.open(job.ledger_path)
        chunks = {r["name"]: [(c["start_step"], c["end_step"]) for c in ledger.chunks(r["name"])] for r in ledger.runs()}
        ledger.close()
        started = time.perf_counter()
        write_events(base / "stores" / "alice", job.name, args.events - 1, chunks)
        print(f"wrote {args.events:,} events in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        first = job_status(job)
        print(f"first sync (reads and folds every event): {time.perf_counter() - started:.2f} s, "
              f"{first['journal']['events']:,} events in the ledger")

        status_times, list_times = [], []
        journal = base / "stores" / "alice" / paths.journal_prefix(job.name)
        for _ in range(args.repeat):
            started = time.perf_counter()
            sum(1 for _ in os.scandir(journal))
            list_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            status = job_status(job)
            json.dumps(status)
            status_times.append(time.perf_counter() - started)
        s, b = statistics.median(status_times), statistics.median(list_times)
        print(f"status (median of {args.repeat}): {s:.3f} s   baseline, listing the journal folder: {b:.3f} s   "
              f"ratio {s / b:.1f}x   target < 2 s: {'met' if s < 2 else 'NOT met'}")
        print(f"steps done: {[r['steps_done'] for r in status['runs']]}, chunks: {[r['chunks'] for r in status['runs']]}")


if __name__ == "__main__":
    main()
