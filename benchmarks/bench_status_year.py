"""`status` on the ledger of a year-long job (issue: < 2 s for the table and JSON, < 5 s for --html).

Builds a real job (plan_job on a local store: 20 runs, 5 accounts), then simulates a year of 20
workers, one per run, in sessions of one chunk each (about 12 hours): a claim, a heartbeat every
2 minutes, a checkpoint with validation every 10 minutes, `done`; one session in 20 dies
mid-chunk, and the next session of that run expires its lease and resumes from the last
checkpoint. Every event goes through the real fold (Ledger.add_events, in batches of a few
thousand, in store-time order) straight into the job's local ledger — writing six million journal
objects to the store first would only add a file-system stress test. The journal on the store
keeps the plan event alone, as after a compaction, so `status` still syncs it (a listing and a
lookup) but finds nothing new.

It then times, median of --repeat runs in this process: `status` as JSON (job_status +
json.dumps), as the table (rendered by rich to a string) and as --html (status_html), against
baselines measured in the same run: `SELECT count(*) FROM events` over the ledger, and reading
the ledger file once from disk. One `shardrun status --json` in a fresh process is timed too
(Python and imports included).

    .venv/bin/python benchmarks/bench_status_year.py [--days 365] [--workers 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import heapq
import io
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import job_text, write_images  # noqa: E402

from shardrun.config.job import load_job  # noqa: E402
from shardrun.plan.job import plan_job  # noqa: E402
from shardrun.journal import Event  # noqa: E402
from shardrun.ledger.db import Ledger  # noqa: E402
from shardrun.render.status import status_view  # noqa: E402
from shardrun.status.report import job_status  # noqa: E402
from shardrun.render.html import status_html  # noqa: E402

HEARTBEAT_S = 120.0
CHECKPOINT_S = 600.0
GAP_S = 600.0  # between one session's end and the next one's claim
DIES = 0.05  # share of sessions that die mid-chunk
ACCOUNTS = ("alice", "bob", "carol", "dave", "erin")
DEVICES = (("Tesla T4 (GPU)", "colab", 12.0), ("Tesla K80 (GPU)", "colab", 5.0),
           ("Tesla P100 (GPU)", "kaggle", 20.0), ("CPU (8 cores)", "local", 0.6))
BATCH = 16


def simulate_run(w: int, run: str, chunks: list[tuple[int, int]], start: float, end: float, lease: float,
                 seed: int):
    """Yields (server time, Event) for one run's sessions, in time order."""
    rng = random.Random(seed + w)
    device, platform, sps = DEVICES[w % len(DEVICES)]
    account = ACCOUNTS[w % len(ACCOUNTS)]
    ident = {"account": account, "platform": platform, "device": device}
    t, idx, generation, resume, session, serial = start + 7 * w, 0, 0, chunks[0][0], 0, 0
    pending_expire = False

    def event(kind, worker, **payload):
        nonlocal serial
        serial += 1
        e = Event(f"{int(t * 1e6):016x}-{w:02d}{serial:08d}", kind, worker, run, idx, generation,
                  payload, server_time=t)
        return t, e

    while t < end and idx < len(chunks):
        worker = f"{account}-slot{w:02d}-s{session:05d}"
        session += 1
        if pending_expire:
            yield event("expire", worker)
            generation += 1
            t += 5
            pending_expire = False
        yield event("claim", worker, **ident)
        chunk_start, chunk_end = chunks[idx]
        step, last_checkpoint = resume, t
        death = t + rng.uniform(3600, 11 * 3600) if rng.random() < DIES else None
        while step < chunk_end and t < end:
            t += HEARTBEAT_S * rng.uniform(0.98, 1.02)
            if death is not None and t >= death:
                break
            step = min(chunk_end, step + int(sps * HEARTBEAT_S))
            loss = 0.02 + 0.5 / math.sqrt(1 + step / 1000) + rng.uniform(0, 0.003)
            pps = sps * BATCH * rng.uniform(0.95, 1.05)
            rates = {"patches_per_second": pps, "steps_per_second": pps / BATCH}
            yield event("heartbeat", worker, step=step, loss=loss, **rates, **ident)
            if t - last_checkpoint >= CHECKPOINT_S and step < chunk_end:
                t += 1
                psnr = 30 + 4 * (1 - 1 / math.sqrt(1 + step / 50_000))
                validation = {"psnr": psnr, "ssim": 0.85 + psnr / 1000, "bicubic_psnr": 30.0, "bicubic_ssim": 0.86,
                              "images": 4}
                yield event("checkpoint", worker, step=step, key=f"ck/{run}/{step}", md5="0" * 32, loss=loss,
                            validation=validation, **rates, **ident)
                last_checkpoint, resume = t, step
        if death is not None and t >= death:
            t = death + lease + 60  # the next session of this run finds the lease over
            pending_expire = True
            continue
        if step >= chunk_end:
            t += 2
            yield event("done", worker, step=chunk_end, key=f"ck/{run}/{chunk_end}", md5="0" * 32, loss=loss,
                        **ident)
            idx, generation, resume = idx + 1, 0, chunk_end
            t += GAP_S


def build(base: Path, days: float, workers: int, seed: int) -> tuple:
    write_images(base / "images", 40, size=(64, 64))
    # Each run is planned at its worker's speed (chunks of about one session) and long enough to
    # need about 16 months: after a year the ETA still has months to say.
    steps_per_epoch = 40 * 16 // BATCH
    runs = [dict(name=f"run{i:02d}", model="decusr", scale=2, channels=1, batch_size=BATCH, patch_size=32,
                 patches_per_second=DEVICES[i % len(DEVICES)][2] * BATCH,
                 epochs=int(DEVICES[i % len(DEVICES)][2] * 480 * 86400 / steps_per_epoch)) for i in range(workers)]
    text = job_text(runs=runs, reserve_mb=0, accounts=[(a, 15) for a in ACCOUNTS])
    (base / "job.toml").write_text(text)
    job = load_job(base / "job.toml")
    started = time.perf_counter()
    plan_job(job, scan_workers=1)
    ledger = Ledger.open(job.ledger_path)
    plan = ledger.plan()
    chunks = {r["name"]: [(c["start_step"], c["end_step"]) for c in ledger.chunks(r["name"])] for r in ledger.runs()}
    print(f"planned {workers} runs of {len(chunks['run00']):,} chunks each in {time.perf_counter() - started:.1f} s")
    start = plan["server_time"] + 60
    end = start + days * 86400
    streams = [simulate_run(w, f"run{w:02d}", chunks[f"run{w:02d}"], start, end, plan["lease_seconds"], seed)
               for w in range(workers)]
    started, total, batch = time.perf_counter(), 0, []
    for _, event in heapq.merge(*streams, key=lambda item: item[0]):
        batch.append(event)
        if len(batch) >= 5000:
            ledger.add_events(batch)
            total += len(batch)
            batch = []
            if total % 500_000 == 0:
                print(f"  {total:,} events folded ({time.perf_counter() - started:.0f} s)", flush=True)
    ledger.add_events(batch)
    total += len(batch)
    fold_s = time.perf_counter() - started
    ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.close()
    return job, total, fold_s


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=365.0)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path,
                        help="build in this folder and keep it (default: a temporary one); "
                             "a folder built before is timed again without rebuilding")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        if (base / "job.toml").exists():
            job = load_job(base / "job.toml")
            print(f"reusing the ledger built before in {base}")
        else:
            job, events, fold_s = build(base, args.days, args.workers, args.seed)
            print(f"folded {events:,} events ({args.days:g} days, {args.workers} workers) in {fold_s:.0f} s "
                  f"({fold_s / events * 1e6:.0f} us/event)")
        print(f"ledger file {job.ledger_path.stat().st_size / 1e9:.2f} GB")

        ledger = Ledger.open(job.ledger_path)
        count_s, _ = timed(lambda: ledger.db.execute("SELECT count(*) FROM events").fetchone()[0], args.repeat)
        rows = {t: ledger.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("events", "workers", "run_history", "hardware", "attempts", "checkpoints", "chunks")}
        ledger.close()
        read_s, _ = timed(lambda: job.ledger_path.read_bytes().__len__(), args.repeat)
        print("rows: " + ", ".join(f"{t} {n:,}" for t, n in rows.items()))

        json_s, status = timed(lambda: json.dumps(job_status(job)), args.repeat)

        def table():
            from rich.console import Console

            console = Console(file=io.StringIO(), width=160)
            console.print(status_view(job_status(job)))
            return console.file.getvalue()

        table_s, text = timed(table, args.repeat)
        html_s, page = timed(lambda: status_html(job_status(job)), args.repeat)
        started = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "shardrun", "status", str(job.base_dir / "job.toml"), "--json"],
                             capture_output=True, text=True, check=True)
        cli_s = time.perf_counter() - started
        data = json.loads(cli.stdout)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "shardrun", "status", str(job.base_dir / "job.toml"), "--html",
                        str(job.base_dir / "status.html")], capture_output=True, text=True, check=True)
        cli_html_s = time.perf_counter() - started

        print(f"baselines: SELECT count(*) FROM events {count_s:.3f} s; reading the ledger file {read_s:.3f} s")
        for name, seconds, target in (("status --json", json_s, 2), ("status (table)", table_s, 2),
                                      ("status --html", html_s, 5)):
            print(f"{name:<15} {seconds:6.3f} s   {seconds / count_s:6.2f}x count(*)   "
                  f"{seconds / read_s:6.2f}x reading the file   target < {target} s: "
                  f"{'met' if seconds < target else 'NOT met'}")
        print(f"in a fresh process (interpreter and imports included): shardrun status --json {cli_s:.2f} s, "
              f"shardrun status --html (and the table) {cli_html_s:.2f} s")
        print(f"JSON {len(status) / 1e3:.0f} kB, table {len(text) / 1e3:.0f} kB, page {len(page) / 1e3:.0f} kB; "
              f"{data['journal']['events']:,} events, {data['sessions']['count']:,} sessions "
              f"({data['sessions']['ended']}), ETA {data['eta']['seconds'] / 86400:.1f} days "
              f"(allowance x{data['eta']['allowance']['factor']:.3f}), "
              f"steps done {sum(r['steps_done'] for r in data['runs']):,}")


if __name__ == "__main__":
    main()
