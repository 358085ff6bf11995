"""How much of a worker's session goes to training, to checkpoints, and how much a SIGKILL loses.

1. Session share: one worker trains a single long chunk for a session of `--minutes` (10) at the
   default intervals (heartbeat every 2 min under the default 10-min lease, settle 10 s), ended
   either by a stop request at the session's length (as SIGTERM or the user would) or by a session
   deadline (the worker keeps its upload margin, at least 30 s, back before it). Each is measured
   twice in the same run: with the baseline's fixed checkpoint interval (`--checkpoint-minutes`,
   10: what workers did before) and with the adaptive one (the default now: checkpointing at
   most 2% of the session, every 1 to 2 min where a checkpoint is cheap). The time spent in
   training steps is the steps it trained times the seconds per step (the session's own pace
   between progress reports, and a bare Trainer's — same model, data, op determinism, no journal,
   no checkpoints — measured in the same process before and after); the rest went to syncing,
   claiming, settling, fetching, building the model, heartbeats and checkpoints. For each session
   it prints:
   - training's share of the session (target: >= 98%);
   - checkpointing's share: the time checkpoints held training up (writing, upload, validation,
     the event; the worker's own measurement) over the session (target: <= 2%);
   - the most training a SIGKILL at the worst moment would lose: the longest stretch from the
     step of one durable checkpoint (or the chunk's start) to the moment the next one is
     durable (target: <= 2 min);
   and an estimate for a 12-hour session: the same start and end overhead, spread over 12 hours,
   plus the same checkpointing share.
2. Work lost to a SIGKILL: a `shardrun worker` process (its default, adaptive interval unless
   `--kill-checkpoint-minutes` is given) is killed at a random point after it started training; a
   new worker takes the chunk over once the lease (1 min, in a job of its own) expires. Lost work
   is the step the killed worker had reached (from its heartbeats' rate) minus the step the new
   one resumes from. Target: <= one checkpoint interval, and <= 2 min by default.

The session counts from the Worker's construction (TensorFlow is imported once per notebook and is
not counted) to the end of `run()`.

    python benchmarks/bench_worker.py                    # 10-min sessions, 3 kills, adaptive interval
    python benchmarks/bench_worker.py --minutes 3 --checkpoint-minutes 3 --settle-seconds 3 --kills 0
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

JOB = """\
[job]
name = "bench-worker"
data = "photos/"
platform = "local"          # no session limit: one chunk per run, longer than any session here
reserve_mb = 1
lease_minutes = {lease}

[[accounts]]
name = "alice"
store = "local://stores/alice"
quota_gb = 1

[[runs]]
name = "{model}"
model = "{model}"
scale = 2
channels = 1
epochs = 100000
batch_size = {batch}
patch_size = 32
patches_per_image = 16
seed = 1
"""


def make_job(folder: Path, model: str, batch: int, lease_minutes: float):
    """Writes and plans a one-run job on scikit-image's photographs; returns its JobConfig."""
    from shardrun.config.job import load_job
    from shardrun.plan.job import plan_job
    from shardrun.demo import write_demo_job

    write_demo_job(folder)  # the demo's photographs; its job file is replaced below
    (folder / "job.toml").write_text(JOB.format(model=model, batch=batch, lease=lease_minutes))
    job = load_job(folder / "job.toml")
    plan_job(job, scan_workers=1)
    return job


def seconds_per_step(job, folder: Path, seconds: float) -> float:
    """Returns a bare Trainer's seconds per step on the job's run and shards, after a warm-up."""
    from shardrun.journal import Journal
    from shardrun.ledger.db import Ledger
    from shardrun.plan.shards import Manifest
    from shardrun.storage.account import Account
    from shardrun.storage.registry import open_store
    from shardrun.train.data import ShardImageSource
    from shardrun.train.trainer import TrainConfig, Trainer

    home = open_store(Account(job.home.name, job.home.store, base_dir=job.base_dir))
    ledger = Ledger.open(folder / "baseline-ledger.db")
    ledger.sync(Journal(home, job.name))
    plan = ledger.plan()
    manifest = Manifest.from_json_bytes(home.get_bytes(plan["manifest_key"], plan["manifest_md5"]))
    for shard in ledger.shards():
        home.download(shard["key"], folder / "baseline-shards" / f"{shard['id']}.tar", expected_md5=shard["md5"])
    r = job.runs[0]
    trainer = Trainer(TrainConfig(r.model, r.scale, r.channels, r.options, r.patch_size, r.batch_size,
                                  r.patches_per_image, r.epochs, r.seed, r.learning_rate),
                      ShardImageSource(manifest.images, folder / "baseline-shards"), folder / "baseline-ckpt")
    trainer.train(20, checkpoint_at_end=False)  # tracing and the pipeline's start
    steps, elapsed = 0, 0.0
    while elapsed < seconds:
        result = trainer.train(trainer.step + 50, checkpoint_at_end=False)
        steps, elapsed = steps + result.steps_done, elapsed + result.elapsed_s
    return elapsed / steps


def session(job, minutes: float, end: str, settings) -> dict:
    """Runs one worker session of `minutes`; returns its wall time, steps and heartbeats."""
    from shardrun.session import Session
    from shardrun.worker import Worker, WorkerJob

    length = minutes * 60
    started = time.monotonic()
    deadline = time.time() + length if end == "deadline" else None
    beats: list[tuple[float, int]] = []  # (time, step) at each progress report, and once at the chunk's end
    stop_asked: list[float] = []
    shown: list[tuple[float, str, int | None]] = []  # (time, activity, step) at each display update

    def on_update(progress) -> None:
        if not shown or shown[-1][1:] != (progress.activity, progress.step):
            shown.append((time.monotonic(), progress.activity, progress.step))

    worker = Worker(WorkerJob.from_config(job), "alice", Session("local", time.time(), deadline, "bench"),
                    settings=settings, on_update=on_update,
                    on_progress=lambda run, chunk, step, end, loss: beats.append((time.monotonic(), step)))
    if end == "stop":
        # A signal, as SIGTERM from the platform: its handler runs in the main thread between two
        # steps (a timer thread can wait seconds for the GIL while the input pipeline holds it).
        signal.signal(signal.SIGALRM, lambda signum, frame: (stop_asked.append(time.monotonic()),
                                                              worker.request_stop()))
        signal.setitimer(signal.ITIMER_REAL, max(1e-3, length - (time.monotonic() - started)))
    reason = worker.run(max_chunks=1)
    wall = time.monotonic() - started
    signal.setitimer(signal.ITIMER_REAL, 0)
    trained = [o for o in worker.outcomes if o.result != "lost"]  # none: the session was too short to start
    interval, heartbeat = worker.checkpoint_interval(), worker.heartbeat_interval()
    worker.ledger.close()
    # Between two heartbeats the worker does nothing but steps (and that heartbeat's write and
    # sync): the steps' pace in this very session, on a machine whose load varies.
    paces = [(t2 - t1) / (s2 - s1) for (t1, s1), (t2, s2) in zip(beats[:-2], beats[1:-1]) if s2 > s1]
    pace = statistics.median(paces) if paces else None
    result = {"wall": wall, "reason": reason, "steps": sum(o.step - o.start_step for o in trained),
              "train_call": sum(o.train_seconds for o in trained), "result": ", ".join(o.result for o in trained),
              "pace": pace, "before": None, "after": None,
              "stop_to_exit": started + wall - stop_asked[0] if stop_asked else None,
              "checkpoints": len(worker.checkpoint_costs), "checkpoint_s": sum(worker.checkpoint_costs),
              "checkpoint_cost": statistics.median(worker.checkpoint_costs) if worker.checkpoint_costs else None,
              "interval": interval, "heartbeat": heartbeat,
              "most_lost": most_lost(shown)}
    if pace and trained and len(beats) >= 2:
        # Where steady stepping, extrapolated from the first and last heartbeats, began and ended.
        first_t, first_step = beats[0]
        last_t, last_step = beats[-2]
        result["before"] = first_t - (first_step - trained[0].start_step) * pace - started
        result["after"] = wall - (last_t - started + (trained[-1].step - last_step) * pace)
    return result


def most_lost(shown: list[tuple[float, str, int | None]]) -> float | None:
    """Returns the most a SIGKILL at the worst moment would lose, in seconds, from the display's
    updates: a checkpoint saves the state of the step it began at (activity "checkpoint") and is
    durable once training resumes (the next "training" update); a kill just before it is durable
    loses everything since the previous durable state was reached (the chunk's start, at first)."""
    training = [i for i, (_, activity, _) in enumerate(shown) if activity == "training"]
    if not training:
        return None
    saved_at = shown[training[0]][0]  # the restored state: nothing to lose yet
    worst = 0.0
    for i in range(training[0], len(shown)):
        t, activity, _ = shown[i]
        if activity == "checkpoint":
            durable = next((shown[j][0] for j in range(i + 1, len(shown)) if shown[j][1] != "checkpoint"), t)
            worst = max(worst, durable - saved_at)
            saved_at = t
    return worst


def kill_trial(job, folder: Path, n: int, checkpoint_minutes: float | None, rng: random.Random) -> dict:
    """Kills a `shardrun worker` process at a random point; returns the work lost, measured."""
    from shardrun.journal import Journal
    from shardrun.session import Session
    from shardrun.storage.account import Account
    from shardrun.storage.registry import open_store
    from shardrun.train.trainer import read_checkpoint
    from shardrun.worker import Worker, WorkerJob, WorkerSettings

    home = open_store(Account(job.home.name, job.home.store, base_dir=job.base_dir))
    journal = Journal(home, job.name)
    log = folder / f"killed-{n}.log"
    # What the kill may lose: the fixed interval, or the adaptive default's promise (2 min).
    interval = checkpoint_minutes * 60 if checkpoint_minutes else 120.0
    flags = ["--checkpoint-minutes", str(checkpoint_minutes)] if checkpoint_minutes else []
    with open(log, "w") as out:
        child = subprocess.Popen(
            [str(Path(sys.executable).with_name("shardrun")), "worker", str(job.base_dir / "job.toml"),
             "--account", "alice", *flags, "--settle-seconds", "1", "--poll-seconds", "1"],
            stdout=out, stderr=subprocess.STDOUT, cwd=job.base_dir)

    def beats():
        events, _ = journal.read(journal.keys())
        return sorted((e for e in events if e.kind == "heartbeat" and f"-{child.pid}-" in e.worker),
                      key=lambda e: e.order)

    while not beats():
        if child.poll() is not None:
            raise SystemExit(f"the worker exited before training:\n{log.read_text()}")
        time.sleep(0.5)
    time.sleep(rng.uniform(0.5, 2.5) * interval)
    child.send_signal(signal.SIGKILL)
    killed_at = time.time()
    child.wait()
    heartbeats = beats()
    first, last = heartbeats[0], heartbeats[-1]
    rate = (last.payload["step"] - first.payload["step"]) / (last.server_time - first.server_time)
    reached = last.payload["step"] + rate * (killed_at - last.server_time)

    # A new worker takes the chunk over once the lease has expired, and stops at its first heartbeat.
    settings = WorkerSettings(settle_seconds=1, heartbeat_seconds=1, poll_seconds=1,
                              checkpoint_seconds=interval)
    successor = Worker(WorkerJob.from_config(job), "alice", Session("local", time.time(), None, "bench"),
                       settings=settings)
    successor.on_progress = lambda *args: successor.request_stop()
    successor.run(max_chunks=1)
    (outcome,) = [o for o in successor.outcomes if o.result != "lost"]
    resumed = outcome.start_step
    restored = next(c for c in successor.ledger.checkpoints(job.runs[0].name) if c["step"] == resumed)
    path = folder / f"restored-{n}.ckpt.npz"
    home.download(restored["key"], path, expected_md5=restored["md5"])
    written_at = read_checkpoint(path)[0]["written_at"]
    successor.ledger.close()
    return {"trained_s": killed_at - first.server_time, "reached": reached, "resumed": resumed,
            "lost_steps": reached - resumed, "lost_s": (reached - resumed) / rate,
            "since_checkpoint_s": killed_at - written_at, "interval_s": interval,
            "steps_per_interval": rate * interval}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of each measured session")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0,
                        help="the baseline's fixed checkpoint interval (the adaptive one is measured beside it)")
    parser.add_argument("--heartbeat-minutes", type=float, default=None,
                        help="default: the worker's, min(2, a third of the lease)")
    parser.add_argument("--lease-minutes", type=float, default=10.0, help="the sessions' job's lease")
    parser.add_argument("--settle-seconds", type=float, default=10.0)
    parser.add_argument("--end", choices=("stop", "deadline", "both"), default="both",
                        help="end the session by a stop request, by its deadline, or measure both")
    parser.add_argument("--model", default="decusr")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--baseline-seconds", type=float, default=60.0)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILL trials (0: none)")
    parser.add_argument("--kill-checkpoint-minutes", type=float, default=None,
                        help="checkpoint interval in the kill trials (default: the worker's adaptive one)")
    parser.add_argument("--folder", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tensorflow as tf

    from shardrun.train.bench import device_description
    from shardrun.worker import WorkerSettings

    tf.config.experimental.enable_op_determinism()  # as workers do
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench-worker-"))
    folder.mkdir(parents=True, exist_ok=True)
    job = make_job(folder / "sessions", args.model, args.batch_size, lease_minutes=args.lease_minutes)
    print(f"device: {device_description()}; model {args.model}, patch 32, batch {args.batch_size}; folder {folder}")

    ends = ("stop", "deadline") if args.end == "both" else (args.end,)
    heartbeat = None if args.heartbeat_minutes is None else args.heartbeat_minutes * 60
    configs = {f"fixed {args.checkpoint_minutes:g} min": args.checkpoint_minutes * 60, "adaptive": None}
    before = seconds_per_step(job, folder, args.baseline_seconds)
    print(f"bare trainer: {1000 * before:.1f} ms/step (before the sessions)")
    sessions = {}
    for name, interval in configs.items():  # the baseline and the adaptive interval, in the same run
        settings = WorkerSettings(settle_seconds=args.settle_seconds, heartbeat_seconds=heartbeat,
                                  checkpoint_seconds=interval)
        for end in ends:
            sessions[name, end] = session(job, args.minutes, end, settings)
    after = seconds_per_step(job, folder, args.baseline_seconds)
    per_step = min(before, after)  # the faster baseline: the conservative share
    print(f"bare trainer: {1000 * after:.1f} ms/step (after); using {1000 * per_step:.1f} ms/step")
    print(f"sessions of {args.minutes:g} min; lease {args.lease_minutes:g} min, settle {args.settle_seconds:g} s")
    rows = []
    for (name, end), s in sessions.items():
        # A session that ends at its deadline lasts until then, whenever the worker stopped.
        length = max(s["wall"], args.minutes * 60) if end == "deadline" else s["wall"]
        print(f"  {name}, ended by {end:<8}: wall {length:7.1f} s (worker done after {s['wall']:.1f} s), "
              f"{s['steps']} steps ({s['result'] or 'none'}); {s['train_call']:.1f} s inside the trainer's train() "
              f"call; heartbeat every {s['heartbeat']:g} s")
        if s["stop_to_exit"] is not None:
            print(f"    from the stop request to the worker's exit: {s['stop_to_exit']:.1f} s")
        share = None
        if s["pace"]:
            stepping = s["steps"] * s["pace"]
            share = stepping / length
            overhead = s["before"] + s["after"] + length - s["wall"]
            print(f"    at this session's own pace ({1000 * s['pace']:.1f} ms/step between progress reports): "
                  f"{stepping:.1f} s in steps = {share:.1%} of the session; "
                  f"{s['before']:.1f} s before steady stepping (start, sync, shards, claim, settle, restore, "
                  f"model, tracing), {s['after'] + length - s['wall']:.1f} s after it (final checkpoint, upload, yield"
                  f"{', and the deadline margin' if end == 'deadline' else ''})")
        stepping = s["steps"] * per_step
        print(f"    at the bare trainer's pace ({1000 * per_step:.1f} ms/step): {stepping:.1f} s in steps = "
              f"{stepping / length:.1%} of the session")
        ckpt_share = s["checkpoint_s"] / length
        cost = "" if s["checkpoint_cost"] is None else f", median {s['checkpoint_cost']:.2f} s each"
        print(f"    checkpointing: {s['checkpoints']} checkpoints (the final one included{cost}) held training up "
              f"{s['checkpoint_s']:.1f} s = {ckpt_share:.2%} of the session; interval at the end "
              f"{s['interval']:.0f} s")
        lost = s["most_lost"]
        print(f"    the most a SIGKILL at the worst moment loses: "
              f"{'-' if lost is None else f'{lost:.1f} s'} (target <= 120 s)")
        estimate = None
        if share is not None:
            # Twelve hours with the same start and end, and the periodic checkpoints' share.
            # The steady middle of this session lost `other` to heartbeats and the like, besides its
            # periodic checkpoints; twelve hours' middle loses as much per second, plus one
            # checkpoint per interval (a fixed 10-min interval's come only in a long session).
            middle, twelve = length - overhead, 12 * 3600
            periodic = s["checkpoint_s"] - (s["checkpoint_cost"] or 0.0)  # all but the final checkpoint
            other = max(0.0, middle - share * length - periodic) / middle
            steady = s["checkpoint_cost"] / s["interval"] if s["checkpoint_cost"] else 0.0
            estimate = (twelve - overhead) * (1 - other - steady) / twelve
            print(f"    in a 12-hour session (same start and end, this checkpointing share): ~{estimate:.1%} training")
        rows.append((name, end, share, ckpt_share, lost, estimate))
    print("summary (training share: target >= 98%; checkpointing <= 2%; most lost to a SIGKILL <= 120 s):")
    print(f"  {'interval':<16} {'ended by':<9} {'training':>9} {'checkpointing':>14} {'SIGKILL loses':>14} "
          f"{'12-h est.':>10}")
    for name, end, share, ckpt_share, lost, estimate in rows:
        print(f"  {name:<16} {end:<9} {'-' if share is None else f'{share:.1%}':>9} {ckpt_share:>14.2%} "
              f"{'-' if lost is None else f'{lost:.0f} s':>14} {'-' if estimate is None else f'{estimate:.1%}':>10}")

    if args.kills:
        kill_job = make_job(folder / "kills", args.model, args.batch_size, lease_minutes=1.0)
        rng = random.Random(args.seed)
        trials = [kill_trial(kill_job, folder, n, args.kill_checkpoint_minutes, rng) for n in range(args.kills)]
        every = (f"every {args.kill_checkpoint_minutes:g} min" if args.kill_checkpoint_minutes
                 else "at the adaptive interval (at most 2 min for a cheap checkpoint)")
        print(f"SIGKILL at a random point, checkpoint {every}, lease 1 min:")
        for t in trials:
            print(f"  killed after {t['trained_s']:6.1f} s of training at step ~{t['reached']:.0f}; resumed from "
                  f"step {t['resumed']}: lost {t['lost_steps']:.0f} steps = {t['lost_s']:.1f} s "
                  f"({t['lost_s'] / t['interval_s']:.2f} of {t['interval_s']:.0f} s; {t['since_checkpoint_s']:.1f} s "
                  f"since that checkpoint was written)")
        print(f"  worst: {max(t['lost_s'] for t in trials):.1f} s lost = "
              f"{max(t['lost_s'] / t['interval_s'] for t in trials):.2f} of {trials[0]['interval_s']:.0f} s (mean "
              f"{statistics.mean(t['lost_s'] for t in trials):.1f} s); target <= 1")


if __name__ == "__main__":
    main()
