"""What a collaborative run (DiLoCo, docs/collaborative.md) buys and costs (issue 15, outcome 4).

Every worker here is a real process (this file run with `--child`: a `Worker` built as `shardrun
worker` builds it, SIGTERM asking it to stop), limited to ONE CPU: pinned to one core
(sched_setaffinity) with TensorFlow's and OpenMP's thread pools at one thread
(TF_NUM_INTRAOP_THREADS=1, TF_NUM_INTEROP_THREADS=1, OMP_NUM_THREADS=1; shardrun sets no thread
count itself). Each process counts its store calls: its stores are wrapped (`CountingStore`)
before the job opens them, and every call is counted with its bytes and the kind of object
(journal event, a round's change / global weights / outer momentum / global checkpoint, a unit's
checkpoint, shards...). Calls made in a worker loop that found nothing to do (it waits
`poll_seconds`, then looks again) are counted apart as polling, and the heartbeat thread's apart
too.

The data: synthetic images with structure a network can learn (sinusoidal gradients under random
rectangles, ellipses and lines; 32 training images and 8 held out as the validation folder), so
that 32 training images split into 2 and 4 parts of whole batches and every replica's samples add
up to the plain run's. One model (ESPCN, x2, luma, patch 24, 8 patches per image, batch 32, Adam
5e-4: 8 steps per epoch on the whole data, 4 per replica with N=2, 2 with N=4).

1. The baseline: a plain run of E epochs (S_total = 8E steps) in one process, validated every
   S_total/8 steps. S = S_total/2; its PSNR at S is the target of (a); its PSNR at S_total the
   baseline of (b). Beside it, on the other CPU, a control: a collaborative run with ONE replica,
   outer_lr 1 and no momentum, whose global weights are then the replica's own, so it must follow
   the plain run step for step (a check of the rounds' machinery: start weights, changes, outer
   step, the optimiser state carried across rounds).
(a) Wall time to reach the target: a collaborative run with replicas=2, H = the first sync
   interval and room to get there (2E epochs), trained by 1 worker process (it trains both
   replicas in turn) and by 2 (one core each), each stopped (SIGTERM) once a round's global
   validation PSNR has reached the target. The time is the store's time of the `outer` event of
   that round, counted from the run's first claim (training time; a session's start-up, paid once
   per 12-hour session on a real platform, left out) and from the processes' start (shown too).
   Target: 2 workers <= 0.6x the 1-worker time. With every replica required the rounds are
   reproducible, so both reach it at the same round (checked).
(b) Quality after the same samples: collaborative runs of E epochs per replica (each replica sees
   1/N of the images E times: N x steps_per_replica x batch = the plain run's samples) for N = 2
   and 4, H = 50 and 200 (E = 200; with --quick E = 24, H = 20 and 40); final global validation
   PSNR minus the plain run's final PSNR. Target: within 0.1 dB. Each run is trained by 2 worker
   processes. The outer step keeps the defaults (outer_lr 0.7, Nesterov momentum 0.9); without
   --quick the same four runs are trained again with outer_lr 1 and no momentum (plain averaging
   of the replicas' weights), shown beside them (--averaging / --no-averaging).
   Warm start (as DiLoCo starts its replicas from a synchronously pre-trained model): the plain
   run's accepted checkpoint after its first share of the samples (--warm-share, default 0.25:
   step S_total/4), written as a Keras 2 HDF5 weights file, is the `init` of collaborative runs
   of the remaining samples ((1 - share) x E epochs per replica; N = 2 and 4, the same H, capped
   at the replica's steps, default outer settings); their final PSNR minus the plain run's final
   (the same total samples) is shown beside the cold-start figures (--warm-share 0: none).
(c) Bytes through the store per round and per training sample: the DiLoCo exchange (N changes up,
   the global weights and outer momentum up, the changes, the momentum and the global weights
   read back) as counted by the workers, and everything else a round moves (unit and global
   checkpoints, validation pictures, journal events), against what synchronous data parallelism
   would send: every step, each replica's gradient up and the averaged gradient down
   (2 x N x H x packed_size per round, train/outer.packed_size of the weights).
(d) Store API calls per round (the workers' calls outside polling, split by kind), per idle poll
   and per heartbeat; how many workers computed each round's outer step (the worker that closes
   a round computes it; the others wait 2 heartbeats before computing it too); how many units a worker
   trained on another replica than its previous unit's (it then restores that replica's
   checkpoint and needs its part's shards). Then (c) and (d) projected to N = 8 T4 sessions on
   Google Drive: a T4 step of batch_size / patches_per_second of configs/profiles/colab-t4.toml
   (64 / 2500 = 25.6 ms for every model: input-bound), rounds of H steps with no overhead (the
   fastest rounds: the most calls and bytes per minute), calls and bytes per round fitted as
   a + b*N from the N = 2 and 4 runs, with the outer step computed once per round (best case) and
   by all 8 sessions (worst case), polling every 5 s throughout (round_poll_seconds, the polls of
   a worker whose round waits: an upper bound, idle workers otherwise poll every 30 s) and
   heartbeats at the default 2 min (and the round length those 5 s polls give). Checked against Drive's limits as
   assumed and printed (12,000 queries per minute per user; 20,000 per 100 s per project; 750 GB
   uploaded per day per user), every session counted as one user, one store call as one Drive
   request (a listing: one per 1,000 objects). The packed sizes of the other built-in models (as
   colab-t4.toml configures them) scale the bytes.

    .venv/bin/python benchmarks/bench_collaborative.py                 # about 10-13 min on 2 cores
    .venv/bin/python benchmarks/bench_collaborative.py --quick         # about 3 min
    .venv/bin/python benchmarks/bench_collaborative.py --quick --json /tmp/collab.json --keep /tmp/benchc/run
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
THREAD_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
              "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
MODEL = dict(model="espcn", scale=2, channels=1, batch_size=32, patch_size=24, patches_per_image=8,
             learning_rate=5e-4, seed=3, patches_per_second=100.0)
TRAIN_IMAGES, VALIDATION_IMAGES, IMAGE_SIZE = 32, 8, (80, 64)
# The worker's settings for the benchmark's own processes: claims trusted at once (one machine's
# folder lists at once), idle polls every 50 ms, no periodic checkpoint inside a unit (a unit
# ends with its own), heartbeats every 3 s.
FAST = dict(settle_seconds=0.05, poll_seconds=0.05, heartbeat_seconds=3.0, checkpoint_seconds=3600.0)
# Drive, as assumed (Google's published defaults; they have changed over the years).
DRIVE = {"queries_per_minute_per_user": 12_000, "queries_per_100s_per_project": 20_000,
         "upload_bytes_per_day_per_user": 750e9}
DEFAULT_POLL_S, DEFAULT_HEARTBEAT_S = 30.0, 120.0  # WorkerSettings' defaults (heartbeat: min(2 min, lease/3))
DEFAULT_ROUND_POLL_S = 5.0  # WorkerSettings.round_poll_seconds: the polls of a worker whose round waits
ONE_TIME = {"shards", "manifest", "validation-set", "run-files", "usage"}


# -- the worker processes' side -------------------------------------------------------------------


def category(key: str) -> str:
    """Returns the kind of object a key (or a listing's prefix) names."""
    parts = key.split("/")
    where = parts[1] if len(parts) > 1 else ""
    name = parts[-1]
    if where == "journal":
        return "journal"
    if where == "rounds":
        if len(parts) < 4 or not name:
            return "rounds-list"
        kind = name.split("-", 1)[0]
        return {"change": "change", "weights": "global-weights", "momentum": "momentum",
                "global": "global-ckpt"}.get(kind, "rounds-other")
    if where == "checkpoints":
        return "val-png" if name.endswith(".val.png") else "unit-ckpt" if name.endswith(".ckpt") else "checkpoints-list"
    return {"shards": "shards", "plans": "manifest", "validation": "validation-set", "files": "run-files",
            "ledger": "snapshot"}.get(where, f"other:{where}")


class Counts:
    """Store calls and bytes, by phase (work, poll, heartbeat, setup), call and kind of object."""

    def __init__(self):
        self.lock = threading.Lock()
        self.totals: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
        self.loop: dict[str, list[int]] | None = None  # the main thread's calls in the loop under way
        self.in_outer = False  # inside Rounds.outer (an outer step being computed)

    def add(self, call: str, key: str, nbytes: int = 0, objects: int = 0) -> None:
        label = f"{call} {category(key)}"
        with self.lock:
            # The heartbeat thread's calls, and (the journal reads events on a pool) its sync's, are
            # the heartbeat's; a pool's reads during the main thread's sync go with the main thread.
            if threading.current_thread().name.startswith("heartbeat-"):
                bucket = self.totals["heartbeat"]
            elif self.in_outer:
                bucket = self.totals["outer"]
            elif self.loop is not None:
                bucket = self.loop
            else:
                bucket = self.totals["setup"]
            entry = bucket[label]
            entry[0] += 1
            entry[1] += nbytes
            entry[2] += objects

    def begin_loop(self) -> None:
        with self.lock:
            self.loop = defaultdict(lambda: [0, 0, 0])

    def end_loop(self, idle: bool) -> None:
        with self.lock:
            target = self.totals["poll" if idle else "work"]
            for label, (n, b, o) in (self.loop or {}).items():
                entry = target[label]
                entry[0] += n
                entry[1] += b
                entry[2] += o
            self.loop = None


def counting_store(inner, counts: Counts):
    """Returns a store that hands every call to `inner` and counts it."""
    from shardrun.storage.base import Store

    class CountingStore(Store):
        def __init__(self):
            self.inner, self.url = inner, inner.url
            self.time_resolution = inner.time_resolution
            self.duplicate_copies = inner.duplicate_copies

        def _write(self, key, source, digest):
            counts.add("write", key, digest.size)
            return inner._write(key, source, digest)

        def _read(self, key, offset=0):
            with inner._read(key, offset) as stream:
                data = stream.read()
            counts.add("read", key, len(data))
            return io.BytesIO(data)

        def get_with_stat(self, key):
            data, stat = inner.get_with_stat(key)
            counts.add("read", key, len(data))
            return data, stat

        def _stat(self, key):
            counts.add("stat", key)
            return inner._stat(key)

        def _list(self, prefix):
            found = inner.list(prefix)
            counts.add("list", prefix, objects=len(found))
            return found

        def _list_folder(self, prefix):
            found = inner.list_folder(prefix)
            counts.add("list", prefix, objects=len(found.objects) + len(found.folders))
            return found

        def list_keys(self, prefix=""):
            found = inner.list_keys(prefix)
            counts.add("list", prefix, objects=len(found))
            return found

        def _delete(self, key):
            counts.add("delete", key)
            inner._delete(key)

        def usage(self):
            counts.add("usage", "x/usage")
            return inner.usage()

        def identity(self):
            return inner.identity()

    return CountingStore()


def child(job_file: str, account: str, out: str, settings_json: str) -> None:
    """A worker process: the job's stores counted, its Worker run until done or SIGTERM."""
    from shardrun.storage import registry

    counts = Counts()
    opened = registry.open_store
    registry.open_store = lambda acct: counting_store(opened(acct), counts)

    from shardrun.config.job import load_job
    from shardrun.session import Session
    from shardrun.worker import Worker, WorkerJob, WorkerSettings

    import logging
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    job = load_job(Path(job_file))
    worker = Worker(WorkerJob.from_config(job, account), account, Session("local", time.time(), None, "bench"),
                    settings=WorkerSettings(**json.loads(settings_json)))
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
    loops = {"idle": 0, "other": 0}
    plain_loop = worker.loop

    def loop():
        counts.begin_loop()
        result = "failed"
        try:
            result = plain_loop()
            return result
        finally:
            counts.end_loop(result == "idle")
            loops["idle" if result == "idle" else "other"] += 1

    worker.loop = loop
    plain_outer = worker.rounds.outer
    outers = [0]

    def outer(*a, **k):
        counts.in_outer = True
        try:
            return plain_outer(*a, **k)
        finally:
            counts.in_outer = False
            outers[0] += 1

    worker.rounds.outer = outer
    reason = "crashed"
    try:
        reason = worker.run()
    finally:
        Path(out).write_text(json.dumps({
            "worker": worker.id, "reason": reason, "started": started, "ended": time.time(), "loops": loops, "outer_steps": outers[0],
            "outcomes": [[o.run, o.chunk, o.result, o.start_step, o.step, o.train_seconds] for o in worker.outcomes],
            "counts": {phase: dict(rows) for phase, rows in counts.totals.items()}}))


# -- the data and the jobs ------------------------------------------------------------------------


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int) -> None:
    """Writes `count` PNGs with structure a network can learn: sinusoidal gradients per channel
    under random rectangles, ellipses and lines (edges of every orientation)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    for i in range(count):
        base = np.stack([rng.uniform(60, 255) * (0.5 + 0.5 * np.sin(rng.uniform(2, 14) * xx + rng.uniform(1, 14) * yy
                                                                    + rng.uniform(0, 6))) for _ in range(3)], -1)
        image = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(8, 16))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(3, w // 2)), y0 + int(rng.integers(3, h // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = int(rng.integers(3))
            if shape == 0:
                draw.rectangle([x0, y0, x1, y1], fill=colour)
            elif shape == 1:
                draw.ellipse([x0, y0, x1, y1], fill=colour)
            else:
                draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 4)))
        image.save(folder / f"img{seed:02d}-{i:04d}.png")


def make_job(folder: Path, data: Path, run: dict):
    """Writes a one-run, one-account job using the shared images, plans it; returns the JobConfig."""
    from shardrun.config.job import load_job
    from shardrun.plan.job import plan_job

    folder.mkdir(parents=True)
    lines = ["[job]", f'name = "{run["name"]}"', f'data = "{data / "train"}/"', f'validation = "{data / "val"}/"',
             'platform = "local"', "reserve_mb = 0", "", "[[accounts]]", 'name = "alice"',
             'store = "local://stores/alice"', "quota_gb = 2", "", "[[runs]]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in run.items()]
    (folder / "job.toml").write_text("\n".join(lines) + "\n")
    job = load_job(folder / "job.toml")
    plan_job(job, scan_workers=1)
    return job


def start_workers(job, count: int, folder: Path, settings: dict, cpus: list[int]) -> list[tuple]:
    """Starts `count` worker processes on the job, each pinned to one CPU; returns (process, out path)."""
    started = []
    env = {**os.environ, **THREAD_ENV}
    for n in range(count):
        cpu = cpus[n % len(cpus)]
        out = folder / f"worker-{n}.json"
        log = open(folder / f"worker-{n}.log", "w")
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(job.base_dir / "job.toml"), "alice",
             str(out), json.dumps(settings)],
            stdout=log, stderr=subprocess.STDOUT, cwd=job.base_dir, env=env,
            preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu}))
        log.close()
        started.append((process, out))
    return started


def wait_workers(workers: list[tuple], timeout: float, stop_when=None, poll: float = 0.5) -> list[dict]:
    """Waits for the worker processes (SIGTERM to all when `stop_when()` is true, SIGKILL past the
    timeout); returns their reports."""
    limit = time.monotonic() + timeout
    stopped = False
    while any(p.poll() is None for p, _ in workers):
        if time.monotonic() > limit:
            for p, _ in workers:
                if p.poll() is None:
                    p.kill()
            break
        if stop_when is not None and not stopped and stop_when():
            for p, _ in workers:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(poll)
    for p, _ in workers:
        p.wait()
    reports = []
    for p, out in workers:
        if not out.exists():
            raise SystemExit(f"a worker process (exit {p.returncode}) left no report; see {out.with_suffix('.log')}")
        reports.append(json.loads(out.read_text()))
    return reports


def ledger_of(job, path: Path):
    from shardrun.journal import Journal
    from shardrun.ledger.db import Ledger
    from shardrun.storage.account import Account
    from shardrun.storage.registry import open_store

    ledger = Ledger.open(path)
    home = open_store(Account(job.home.name, job.home.store, base_dir=job.base_dir))
    journal = Journal(home, job.name)
    ledger.sync(journal)
    return ledger, journal


def first_claim_time(ledger) -> float | None:
    (t,) = ledger.db.execute("SELECT MIN(server_time) FROM events WHERE kind = 'claim'").fetchone()
    return t


def round_timing(ledger, replicas: int) -> dict:
    """Returns the medians, in store time, of a unit (its owner's last claim to its `done`), of the
    wait from a round's last `done` to its first `outer`, and of a round (outer to outer), and the
    claims lost to another worker's."""
    import statistics

    events = list(ledger.db.query("SELECT server_time, kind, worker, chunk FROM events "
                                  "WHERE kind IN ('claim', 'done', 'outer') ORDER BY server_time"))
    claims, units, dones, outers, done_by = {}, [], defaultdict(list), {}, {}
    for e in events:
        if e["kind"] == "claim":
            claims[(e["chunk"], e["worker"])] = e["server_time"]
        elif e["kind"] == "done" and (e["chunk"], e["worker"]) in claims:
            units.append(e["server_time"] - claims[(e["chunk"], e["worker"])])
            dones[e["chunk"] // replicas].append(e["server_time"])
            done_by[e["chunk"]] = e["worker"]
        elif e["kind"] == "outer":
            outers.setdefault(e["chunk"], e["server_time"])
    waits = [outers[r] - max(t) for r, t in dones.items() if r in outers]
    ends = [outers[r] for r in sorted(outers)]
    lost = sum(1 for chunk, worker in claims if chunk in done_by and done_by[chunk] != worker)
    median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    return {"unit_s": median(units[1:]), "outer_wait_s": median(waits),  # the first unit traces the step
            "round_s": median([b - a for a, b in zip(ends, ends[1:])]), "claims_lost": lost}


def round_table(ledger, run: str) -> list[dict]:
    rows = []
    for r in ledger.rounds(run):
        v = json.loads(r["validation"]) if r["validation"] else None
        rows.append({"round": r["round"], "state": r["state"], "done_time": r["done_time"],
                     "psnr": v and v["psnr"], "bicubic_psnr": v and v["bicubic_psnr"],
                     "change_bytes": r["change_bytes"], "weights_size": r["weights_size"],
                     "momentum_size": r["momentum_size"], "replicas": r["replicas"]})
    return rows


# -- the measurements -----------------------------------------------------------------------------


def plain_run(data: Path, folder: Path, epochs: int, cpu: int = 0, warm_step: int | None = None) -> dict:
    """Trains the plain run; with `warm_step`, its accepted checkpoint at that step is exported
    (`shardrun export`'s export_run, a .keras file) as the warm-started runs' init weights."""
    run = {"name": "plain", **MODEL, "epochs": epochs}
    job = make_job(folder / "plain", data, run)
    total = epochs * TRAIN_IMAGES * MODEL["patches_per_image"] // MODEL["batch_size"]
    began = time.time()
    reports = wait_workers(start_workers(job, 1, job.base_dir, {**FAST, "checkpoint_steps": total // 8}, [cpu]),
                           timeout=900)
    ledger, _ = ledger_of(job, job.base_dir / "check.db")
    curve = {}
    for cp in ledger.checkpoints("plain"):
        if cp["validation"]:
            v = json.loads(cp["validation"])
            curve[cp["step"]] = (v["psnr"], v["bicubic_psnr"])
    if total not in curve or total // 2 not in curve:
        raise SystemExit(f"the plain run has no validation at steps {total // 2} and {total}: {sorted(curve)}")
    ledger.close()
    result = {"steps": total, "S": total // 2, "target_psnr": curve[total // 2][0], "final_psnr": curve[total][0],
              "bicubic_psnr": curve[total][1], "curve": {str(k): v[0] for k, v in sorted(curve.items())},
              "seconds": time.time() - began, "reports": reports}
    if warm_step:
        result.update(warm_step=warm_step, warm_init=str(export_init(job, warm_step, folder / f"warm-{warm_step}.h5")),
                      warm_psnr=curve[warm_step][0] if warm_step in curve else None)
    return result


def export_init(job, step: int, path: Path) -> Path:
    """Writes the plain run's accepted checkpoint at `step` (as `shardrun export` fetches it) as a
    Keras 2 HDF5 weights file (train/init.py's format: `layer_names`, one group per layer with
    weights and its `weight_names`), the layers those of the run's own network; returns `path`."""
    import h5py

    from shardrun.plan.job import load_job_ledger
    from shardrun.product.checkpoints import fetch_checkpoint
    from shardrun.train.models import build_model
    from shardrun.train.trainer import TrainConfig

    ledger, _ = load_job_ledger(job, job.open_store(job.home))
    try:
        fetched = fetch_checkpoint(job, ledger, "plain", step, folder=path.parent / "warm-fetch")
    finally:
        ledger.close()
    if fetched.step != step:
        raise SystemExit(f"the plain run's checkpoint at step {step} cannot be read: {fetched.notices}")
    config = TrainConfig(MODEL["model"], MODEL["scale"], MODEL["channels"], patch_size=MODEL["patch_size"],
                         batch_size=MODEL["batch_size"])
    model = build_model(config.resolve(), seed=0)
    layers = [layer for layer in model.layers if layer.weights]
    arrays = list(fetched.weights)
    if sum(len(layer.weights) for layer in layers) != len(arrays):
        raise SystemExit(f"the checkpoint has {len(arrays)} weights, the network's layers {len(model.weights)}")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        for layer in layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/w{i}" for i in range(len(layer.weights))]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name, w in zip(names, layer.weights):
                a = arrays.pop(0)
                if tuple(a.shape) != tuple(w.shape):
                    raise SystemExit(f"checkpoint weight {a.shape} does not fit {layer.name}'s {tuple(w.shape)}")
                group.create_dataset(name, data=a)
    return path


def collaborative_run(data: Path, folder: Path, name: str, epochs: int, replicas: int, sync_every: int,
                      workers: int, target: float | None = None, stop_at_target: bool = False,
                      cpus: tuple[int, ...] = (0, 1), **extra) -> dict:
    """Trains one collaborative run with `workers` processes; returns its rounds, times and counts."""
    run = {"name": name, **MODEL, "epochs": epochs, "mode": "collaborative", "replicas": replicas,
           "sync_every": sync_every, **extra}
    job = make_job(folder / name, data, run)
    ledger_path = job.base_dir / "watch.db"
    watch = {}

    def reached() -> bool:
        if "ledger" not in watch:
            watch["ledger"], watch["journal"] = ledger_of(job, ledger_path)
        else:
            watch["ledger"].sync(watch["journal"])
        return any(r["psnr"] is not None and r["psnr"] >= target for r in round_table(watch["ledger"], name))

    spawned = time.time()
    reports = wait_workers(start_workers(job, workers, job.base_dir, FAST, list(cpus)), timeout=900,
                           stop_when=reached if stop_at_target else None)
    if "ledger" in watch:
        watch["ledger"].close()
    ledger, _ = ledger_of(job, job.base_dir / "check.db")
    rounds = round_table(ledger, name)
    collab = ledger.collaborative(name)
    claimed = first_claim_time(ledger)
    result = {"name": name, "replicas": replicas, "sync_every": sync_every, "epochs": epochs, "workers": workers,
              "rounds_planned": collab["rounds"], "steps_per_replica": collab["steps_per_replica"],
              "rounds": rounds, "finished": ledger.finished(), "spawned": spawned, "first_claim": claimed,
              "bad_events": len(ledger.bad_events()), "reports": reports,
              "final_psnr": rounds[-1]["psnr"] if rounds and rounds[-1]["state"] == "done" else None}
    if target is not None:
        hit = next((r for r in rounds if r["psnr"] is not None and r["psnr"] >= target), None)
        result["target_round"] = hit and hit["round"]
        result["to_target_s"] = hit and hit["done_time"] - claimed
        result["to_target_from_start_s"] = hit and hit["done_time"] - spawned
    result["timing"] = round_timing(ledger, replicas)
    ledger.close()
    return result


# -- the accounting -------------------------------------------------------------------------------


EXCHANGE = ("change", "global-weights", "momentum")  # the DiLoCo objects themselves
SCALES_WITH_WEIGHTS = EXCHANGE + ("unit-ckpt", "global-ckpt")  # what grows with the network


def merged(reports: list[dict], phases: tuple[str, ...]) -> dict[str, list[int]]:
    """Sums the workers' counts over `phases`: label -> [calls, bytes, objects]."""
    total: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for report in reports:
        for phase in phases:
            for label, values in report["counts"].get(phase, {}).items():
                for i, v in enumerate(values):
                    total[label][i] += v
    return total


def drive_requests(label: str, calls: float, objects: float) -> float:
    """Drive requests for `calls` store calls: one each, a listing one per 1,000 objects (at least one)."""
    return max(calls, math.ceil(objects / 1000)) if label.startswith("list") else calls


def kind(label: str) -> str:
    return label.split(" ", 1)[1]


def per(rows: dict[str, list[int]], count: float) -> dict[str, list[float]]:
    return {label: [v / count for v in values] for label, values in rows.items()
            if kind(label) not in ONE_TIME} if count else {}


def accounting(result: dict) -> dict:
    """Returns a collaborative run's bytes and calls per round (from its workers' counts): the
    units' side (claims, training, handing in, syncs) and the outer steps' apart."""
    done = [r for r in result["rounds"] if r["state"] == "done"]
    n_rounds = len(done)
    reports = result["reports"]
    outers = sum(r["outer_steps"] for r in reports)
    unit = per(merged(reports, ("work",)), n_rounds)
    outer_round = per(merged(reports, ("outer",)), n_rounds)
    outer_each = per(merged(reports, ("outer",)), outers)
    both = defaultdict(lambda: [0.0, 0.0, 0.0])
    for rows in (unit, outer_round):
        for label, values in rows.items():
            for i, v in enumerate(values):
                both[label][i] += v
    up = lambda rows, kinds=None: sum(v[1] for l, v in rows.items() if l.startswith("write")  # noqa: E731
                                      and (kinds is None or kind(l) in kinds))
    down = lambda rows, kinds=None: sum(v[1] for l, v in rows.items() if l.startswith("read")  # noqa: E731
                                        and (kinds is None or kind(l) in kinds))
    packed = done[0]["weights_size"] if done else 0
    n, h = result["replicas"], result["sync_every"]
    requests = lambda rows: sum(drive_requests(l, v[0], v[2]) for l, v in rows.items())  # noqa: E731
    polls = merged(reports, ("poll",))
    idle_loops = sum(r["loops"]["idle"] for r in reports)
    beats = merged(reports, ("heartbeat",))
    beat_writes = sum(v[0] for l, v in beats.items() if l == "write journal")
    one_time = {l: v for l, v in merged(reports, ("work", "setup")).items() if kind(l) in ONE_TIME}
    exchange_up, exchange_down = up(both, EXCHANGE), down(both, EXCHANGE)
    all_bytes = up(both) + down(both)
    # A worker that trains another replica than in its previous unit restores that replica's
    # checkpoint, builds a trainer for it and needs its part's shards (on another machine: downloads them).
    trained = [[o[1] % n for o in r["outcomes"] if o[2] == "done"] for r in reports]
    switches = sum(sum(1 for a, b in zip(seq, seq[1:]) if a != b) for seq in trained)
    units_done = sum(len(seq) for seq in trained)
    return {"rounds": n_rounds, "packed_size": packed, "samples_per_round": n * h * MODEL["batch_size"],
            "outer_steps_per_round": outers / n_rounds if n_rounds else 0.0,
            "exchange_up": exchange_up, "exchange_down": exchange_down, "exchange": exchange_up + exchange_down,
            "uploads_from_rows": (sum((r["change_bytes"] or 0) + (r["weights_size"] or 0) + (r["momentum_size"] or 0)
                                      for r in done) / n_rounds) if n_rounds else 0,
            "other_bytes": all_bytes - exchange_up - exchange_down, "all_bytes": all_bytes,
            "sync_dp": 2 * n * h * packed,
            "calls": sum(v[0] for v in both.values()), "requests": requests(both),
            "unit_requests": requests(unit), "outer_requests_each": requests(outer_each),
            "unit_up_scaling": up(unit, SCALES_WITH_WEIGHTS), "unit_up_fixed": up(unit) - up(unit, SCALES_WITH_WEIGHTS),
            "outer_up_scaling": up(outer_each, SCALES_WITH_WEIGHTS),
            "outer_up_fixed": up(outer_each) - up(outer_each, SCALES_WITH_WEIGHTS),
            "calls_by_kind": {l: v[0] for l, v in sorted(both.items())},
            "bytes_by_kind": {l: v[1] for l, v in sorted(both.items()) if v[1]},
            "poll_calls_per_idle_loop": sum(v[0] for v in polls.values()) / idle_loops if idle_loops else 0.0,
            "idle_loops": idle_loops, "heartbeats": beat_writes,
            "replica_switches": switches, "units": units_done,
            "replicas_per_worker": [sorted(set(seq)) for seq in trained],
            "calls_per_heartbeat": sum(v[0] for v in beats.values()) / beat_writes if beat_writes else None,
            "one_time_calls": sum(v[0] for v in one_time.values()), "one_time_bytes": sum(v[1] for v in one_time.values())}


def fit(points: dict[int, float], n: int) -> float:
    """Returns a + b*n through the (replicas -> value) points with the fewest and most replicas."""
    (n1, y1), (n2, y2) = min(points.items()), max(points.items())
    if n1 == n2:
        return y1 * n / n1
    return y1 + (y2 - y1) / (n2 - n1) * (n - n1)


def model_sizes() -> dict[str, int]:
    """Returns packed_size of each model of colab-t4.toml, as that profile configures it."""
    import tomllib

    from shardrun.train.models import build_model
    from shardrun.train.outer import packed_size
    from shardrun.train.trainer import TrainConfig

    profile = tomllib.loads((ROOT / "configs" / "profiles" / "colab-t4.toml").read_text())
    sizes = {}
    for name, m in profile["models"].items():
        config = TrainConfig(name, m["scale"], m["channels"], patch_size=m["patch_size"], batch_size=m["batch_size"])
        model = build_model(config.resolve(), seed=0)
        sizes[name] = packed_size([tuple(w.shape) for w in model.weights])
    return sizes


def t4_step_seconds() -> tuple[float, int]:
    """Returns a T4 step's seconds and batch for the benchmark's model (configs/profiles/colab-t4.toml)."""
    import tomllib

    profile = tomllib.loads((ROOT / "configs" / "profiles" / "colab-t4.toml").read_text())
    m = profile["models"][MODEL["model"]]
    return m["batch_size"] / m["patches_per_second"], m["batch_size"]


def projection(accounts: dict[tuple[int, int], dict], measured_h: int, h: int, sizes: dict[str, int],
               n: int = 8) -> dict:
    """Projects rounds of `h` T4 steps with `n` sessions on Drive, from the calls and bytes per
    round measured at H = `measured_h` (fitted as a + b*N over N = 2 and 4). The outer step is
    counted once per round (best: the worker that closes the round) and once per session (worst:
    a closer slower than the others' grace of 2 heartbeats, and every session computes it too)."""
    step_s, batch = t4_step_seconds()
    m = {r: a for (r, hh), a in accounts.items() if hh == measured_h}
    round_s = h * step_s
    rounds_per_min = 60 / round_s
    unit_req = fit({r: a["unit_requests"] for r, a in m.items()}, n)
    outer_req = fit({r: a["outer_requests_each"] for r, a in m.items()}, n)
    poll = max(a["poll_calls_per_idle_loop"] for a in m.values())
    beat = max([a["calls_per_heartbeat"] for a in m.values() if a["calls_per_heartbeat"] is not None] + [1.0])
    # Polls counted at the shorter round_poll_seconds throughout (an upper bound: a session polls
    # that often only while a round it trained in waits for the others).
    background = n * poll * 60 / DEFAULT_ROUND_POLL_S + n * beat * 60 / DEFAULT_HEARTBEAT_S
    cases = {}
    for case, k in (("one outer step", 1), (f"{n} outer steps", n)):
        per_round = unit_req + k * outer_req
        per_min = per_round * rounds_per_min + background
        cases[case] = {"outer_steps": k, "requests_per_round": per_round, "requests_per_min_all": per_min,
                       "requests_per_100s_all": per_min * 100 / 60, "requests_per_min_per_session": per_min / n}
    packed_here = next(iter(m.values()))["packed_size"]
    scaling = {key: fit({r: a[key] for r, a in m.items()}, n)
               for key in ("unit_up_scaling", "unit_up_fixed", "outer_up_scaling", "outer_up_fixed")}
    models = {}
    for name, size in sorted(sizes.items()):
        ratio = size / packed_here
        unit_up = scaling["unit_up_scaling"] * ratio + scaling["unit_up_fixed"]
        outer_up = scaling["outer_up_scaling"] * ratio + scaling["outer_up_fixed"]
        models[name] = {"packed_size": size,
                        "upload_per_round": {c: unit_up + v["outer_steps"] * outer_up for c, v in cases.items()},
                        "upload_per_day_all": {c: (unit_up + v["outer_steps"] * outer_up) * rounds_per_min * 1440
                                               for c, v in cases.items()},
                        "sync_dp_per_day": 2 * n * size * 86400 / step_s}
    # A replica that finishes before the last one sees the next round open only at its next look
    # (every round_poll_seconds while its round waits): the last of n - 1 uniform waits, on average.
    polled_round_s = round_s + DEFAULT_ROUND_POLL_S * (n - 1) / n
    return {"n": n, "h": h, "measured_h": measured_h, "t4_step_s": step_s, "t4_batch": batch, "round_s": round_s,
            "polled_round_s": polled_round_s, "busy_share_with_default_polls": round_s / polled_round_s,
            "unit_requests_per_round": unit_req, "outer_requests_each": outer_req, "poll_calls": poll,
            "heartbeat_calls": beat, "background_per_min": background, "cases": cases, "models": models}


# -- the run and the report -----------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs and H (about 3 min)")
    parser.add_argument("--epochs", type=int, help="epochs of the plain run and of each replica (default 200; 24 quick)")
    parser.add_argument("--sync-every", help="two H values, comma-separated (default 50,200; 20,40 quick); "
                                             "(a) uses the first")
    parser.add_argument("--averaging", action=argparse.BooleanOptionalAction, default=None,
                        help="also train (b)'s runs with outer_lr 1 and no momentum (plain averaging of the "
                             "replicas); default: on, off with --quick")
    parser.add_argument("--warm-share", type=float, default=0.25,
                        help="(b)'s warm start: the plain run's weights after this share of its samples start "
                             "collaborative runs of the remaining samples (default 0.25; 0: no warm-started runs)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", type=Path, help="work in this folder (emptied first) and keep it")
    args = parser.parse_args()
    epochs = args.epochs or (24 if args.quick else 200)
    hs = [int(h) for h in (args.sync_every or ("20,40" if args.quick else "50,200")).split(",")]
    total_steps = epochs * TRAIN_IMAGES * MODEL["patches_per_image"] // MODEL["batch_size"]
    warm_step = round(args.warm_share * total_steps) if args.warm_share else None
    warm_epochs = None
    if warm_step:
        # The warm start is an accepted checkpoint of the plain run (one every total/8 steps), and
        # the remaining samples are whole epochs of every replica.
        warm_epochs = epochs - round(args.warm_share * epochs)
        if (not 0 < args.warm_share < 1 or warm_step % (total_steps // 8)
                or abs(warm_epochs - epochs * (1 - args.warm_share)) > 1e-9):
            raise SystemExit(f"--warm-share {args.warm_share}: it must be a multiple of 1/8 of the {epochs} epochs "
                             f"(the plain run's checkpoints) and leave whole epochs")
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("this benchmark needs 2 CPUs (one per worker process)")
    for r in (2, 4):
        steps = epochs * (TRAIN_IMAGES // r) * MODEL["patches_per_image"] // MODEL["batch_size"]
        if max(hs) > steps:
            raise SystemExit(f"H = {max(hs)} is more than the {steps} steps per replica of N = {r} at {epochs} "
                             f"epochs: raise --epochs")
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        args.keep.mkdir(parents=True)
        folder = args.keep
    else:
        folder = Path(tempfile.mkdtemp(prefix="bench-collab-"))
    started, load_before = time.time(), os.getloadavg()
    try:
        data = folder / "data"
        write_images(data / "train", TRAIN_IMAGES, IMAGE_SIZE, seed=1)
        write_images(data / "val", VALIDATION_IMAGES, IMAGE_SIZE, seed=2)
        print(f"{MODEL['model']} x{MODEL['scale']}, {TRAIN_IMAGES} training + {VALIDATION_IMAGES} validation images of "
              f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, batch {MODEL['batch_size']}, patch {MODEL['patch_size']}, "
              f"{epochs} epochs; each worker a process on one CPU (1 TF thread); load average "
              f"{load_before[0]:.2f}; in {folder}", flush=True)
        # The control (one replica, outer_lr 1, no momentum: each round's global weights are the
        # replica's own, so it must follow the plain run step for step) trains beside the plain
        # run, on the other CPU: only its PSNR counts.
        control_result = {}
        control_thread = threading.Thread(target=lambda: control_result.update(collaborative_run(
            data, folder, f"n1-h{hs[-1]}-control", epochs, 1, hs[-1], workers=1, cpus=(1,),
            outer_lr=1.0, outer_momentum=0.0)))
        control_thread.start()
        plain = plain_run(data, folder, epochs, cpu=0, warm_step=warm_step)
        control_thread.join()
        control = control_result
        if not control:
            raise SystemExit("the control run failed; see its worker log under " + str(folder))
        print(f"  plain: {plain['steps']} steps, {plain['seconds']:.0f} s; PSNR at S = {plain['S']}: "
              f"{plain['target_psnr']:.3f} dB, at {plain['steps']}: {plain['final_psnr']:.3f} dB "
              f"(bicubic {plain['bicubic_psnr']:.3f})", flush=True)
        runs: dict[tuple[int, int], dict] = {}
        for h in hs:
            for n in (2, 4):
                name = f"n{n}-h{h}"
                runs[(n, h)] = r = collaborative_run(data, folder, name, epochs, n, h, workers=2)
                print(f"  {name}: {len(r['rounds'])} rounds, final PSNR {r['final_psnr'] or float('nan'):.3f}, "
                      f"{max(x['ended'] for x in r['reports']) - r['spawned']:.0f} s", flush=True)
        print(f"  control (N=1, outer_lr 1, momentum 0): final PSNR {control['final_psnr'] or float('nan'):.3f}",
              flush=True)
        # (b), warm start: the plain run's weights at warm_step (its first warm-share of the
        # samples) start collaborative runs of the remaining samples (warm_epochs per replica).
        warm: dict[tuple[int, int], dict] = {}
        if warm_step:
            for h in hs:
                for n in (2, 4):
                    steps = warm_epochs * (TRAIN_IMAGES // n) * MODEL["patches_per_image"] // MODEL["batch_size"]
                    warm[(n, h)] = r = collaborative_run(data, folder, f"n{n}-h{h}-warm", warm_epochs, n,
                                                         min(h, steps), workers=2, init=plain["warm_init"])
                    r["h_asked"] = h
                    print(f"  n{n}-h{h}, warm from step {warm_step}: {len(r['rounds'])} rounds of "
                          f"{r['sync_every']} steps, final PSNR {r['final_psnr'] or float('nan'):.3f}, "
                          f"{max(x['ended'] for x in r['reports']) - r['spawned']:.0f} s", flush=True)
        averaged: dict[tuple[int, int], dict] = {}
        if args.averaging if args.averaging is not None else not args.quick:
            for (n, h) in sorted(runs):
                averaged[(n, h)] = r = collaborative_run(data, folder, f"n{n}-h{h}-avg", epochs, n, h, workers=2,
                                                         outer_lr=1.0, outer_momentum=0.0)
                print(f"  n{n}-h{h}, averaging: final PSNR {r['final_psnr'] or float('nan'):.3f}", flush=True)
        # (a): the same run, with room (twice the epochs), by 1 and by 2 workers, each stopped at the target.
        timed = {}
        for workers in (1, 2):
            timed[workers] = r = collaborative_run(data, folder, f"n2-h{hs[0]}-{workers}w", 2 * epochs, 2, hs[0],
                                                   workers=workers, target=plain["target_psnr"], stop_at_target=True)
            print(f"  {workers} worker(s): target at round {r['target_round']}, "
                  f"{'-' if r['to_target_s'] is None else format(r['to_target_s'], '.1f')} s", flush=True)
        accounts = {key: accounting(r) for key, r in runs.items()}
        sizes = model_sizes()
        projections = {h: projection(accounts, h, h, sizes) for h in hs}
        if 500 not in hs:
            projections[500] = projection(accounts, hs[-1], 500, sizes)
        report(plain, runs, averaged, warm, control, timed, accounts, projections, epochs, hs, time.time() - started,
               (load_before, os.getloadavg()), args.json)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def control_check(plain: dict, control: dict) -> tuple[float | None, int]:
    """Returns the largest |PSNR difference| between the control's rounds and the plain run at the
    same steps, and how many steps were compared."""
    h = control["sync_every"]
    diffs = []
    for r in control["rounds"]:
        step = min((r["round"] + 1) * h, control["steps_per_replica"])
        if r["psnr"] is not None and str(step) in plain["curve"]:
            diffs.append(abs(r["psnr"] - plain["curve"][str(step)]))
    return (max(diffs) if diffs else None), len(diffs)


def report(plain, runs, averaged, warm, control, timed, accounts, projections, epochs, hs, wall, loads, json_path) -> None:
    one, two = timed[1], timed[2]
    print()
    print(f"(a) time to the plain run's PSNR at step S = {plain['S']} of {plain['steps']} ({plain['target_psnr']:.3f} dB): "
          f"replicas = 2, H = {hs[0]}, up to {2 * epochs} epochs")
    print(f"    {'workers':>7}  {'round':>5}  {'from 1st claim':>14}  {'from start':>10}  {'ratio':>6}")
    for r in (one, two):
        t = r["to_target_s"]
        ratio = t / one["to_target_s"] if t is not None and one["to_target_s"] else None
        start = r["to_target_from_start_s"]
        print(f"    {r['workers']:>7}  {str(r['target_round']):>5}  {'not reached' if t is None else f'{t:.1f} s':>14}  "
              f"{'' if start is None else f'{start:.1f} s':>10}  {'' if ratio is None else f'{ratio:.2f}x':>6}")
    t1, t2 = one["timing"], two["timing"]
    ideal = None
    if t1["unit_s"] and t1["outer_wait_s"] is not None:
        ideal = (t1["unit_s"] + t1["outer_wait_s"]) / (2 * t1["unit_s"] + t1["outer_wait_s"])
    fmt = lambda x: "-" if x is None else f"{x:.2f} s"  # noqa: E731
    print(f"    per round (medians, store time): a unit {fmt(t1['unit_s'])} with 1 worker, {fmt(t2['unit_s'])} with 2; "
          f"last done to outer {fmt(t1['outer_wait_s'])} / {fmt(t2['outer_wait_s'])}; a round {fmt(t1['round_s'])} / "
          f"{fmt(t2['round_s'])}; claims lost {t1['claims_lost']} / {t2['claims_lost']}")
    if ideal is not None:
        print(f"    with the 1-worker unit time for both (no contention for the cores), 2 workers would take "
              f"{ideal:.2f}x per round")
    if one["to_target_s"] and two["to_target_s"]:
        ratio = two["to_target_s"] / one["to_target_s"]
        verdict_a = (f"{'PASS' if ratio <= 0.6 else 'FAIL'}: 2 workers take {ratio:.2f}x the 1-worker time "
                     f"(target <= 0.6x; from the processes' start {two['to_target_from_start_s'] / one['to_target_from_start_s']:.2f}x)")
        if one["target_round"] != two["target_round"]:
            verdict_a += f"; NOTE: reached at different rounds ({one['target_round']} and {two['target_round']})"
    else:
        verdict_a = (f"FAIL: the target was not reached in {2 * epochs} epochs (best global PSNR "
                     f"{max((x['psnr'] or 0) for x in two['rounds']):.3f} dB)")
    print()
    print(f"(b) final validation PSNR after the plain run's samples ({epochs} epochs; plain: {plain['final_psnr']:.3f} dB, "
          f"bicubic {plain['bicubic_psnr']:.3f})")
    print(f"    {'N':>2}  {'H':>4}  {'rounds':>6}  {'PSNR':>8}  {'diff':>7}  global PSNR by round")
    worst = 0.0
    for (n, h), r in sorted(runs.items()):
        diff = None if r["final_psnr"] is None else r["final_psnr"] - plain["final_psnr"]
        worst = max(worst, abs(diff)) if diff is not None else float("inf")
        trail = " ".join(f"{x['psnr']:.1f}" for x in r["rounds"] if x["psnr"] is not None)
        print(f"    {n:>2}  {h:>4}  {len(r['rounds']):>6}  {'-' if r['final_psnr'] is None else format(r['final_psnr'], '.3f'):>8}  "
              f"{'-' if diff is None else format(diff, '+.3f'):>7}  {trail}")
    worst_avg = None
    if averaged:
        print("    the same runs with outer_lr 1 and no momentum (plain averaging of the replicas' weights):")
        worst_avg = 0.0
        for (n, h), r in sorted(averaged.items()):
            diff = None if r["final_psnr"] is None else r["final_psnr"] - plain["final_psnr"]
            worst_avg = max(worst_avg, abs(diff)) if diff is not None else float("inf")
            trail = " ".join(f"{x['psnr']:.1f}" for x in r["rounds"] if x["psnr"] is not None)
            print(f"    {n:>2}  {h:>4}  {len(r['rounds']):>6}  "
                  f"{'-' if r['final_psnr'] is None else format(r['final_psnr'], '.3f'):>8}  "
                  f"{'-' if diff is None else format(diff, '+.3f'):>7}  {trail}")
    worst_warm = None
    if warm:
        print(f"    warm start: the plain run's weights at step {plain['warm_step']} of {plain['steps']} "
              f"({plain['warm_step'] / plain['steps']:.0%} of its samples; {'-' if plain['warm_psnr'] is None else format(plain['warm_psnr'], '.3f')} dB"
              f" there) as init, then {next(iter(warm.values()))['epochs']} epochs per replica (the remaining samples), "
              f"outer_lr 0.7, Nesterov 0.9; diff against the plain run's final:")
        worst_warm = 0.0
        for (n, h), r in sorted(warm.items()):
            diff = None if r["final_psnr"] is None else r["final_psnr"] - plain["final_psnr"]
            worst_warm = max(worst_warm, abs(diff)) if diff is not None else float("inf")
            trail = " ".join(f"{x['psnr']:.1f}" for x in r["rounds"] if x["psnr"] is not None)
            shown_h = f"{r['sync_every']}" if r["sync_every"] == h else f"{r['sync_every']}*"
            print(f"    {n:>2}  {shown_h:>4}  {len(r['rounds']):>6}  "
                  f"{'-' if r['final_psnr'] is None else format(r['final_psnr'], '.3f'):>8}  "
                  f"{'-' if diff is None else format(diff, '+.3f'):>7}  {trail}")
        if any(r["sync_every"] != h for (n, h), r in warm.items()):
            print("    (* H capped at the replica's steps: one round)")
    c_diff, c_points = control_check(plain, control)
    print(f"    control: N = 1, H = {control['sync_every']}, outer_lr 1, momentum 0 (must equal the plain run): "
          f"final {control['final_psnr'] or float('nan'):.3f} dB; largest |diff| from the plain run at the same step "
          f"{'-' if c_diff is None else format(c_diff, '.4f')} dB over {c_points} steps")
    verdict_b = (f"{'PASS' if worst <= 0.1 else 'FAIL'}: from scratch the largest |difference| is {worst:.3f} dB "
                 f"(target <= 0.1 dB; outer_lr 0.7, Nesterov 0.9)" + ("" if worst_avg is None else
                                                   f"; with plain averaging {worst_avg:.3f} dB"))
    if worst_warm is not None:
        verdict_b += (f"; warm-started from the plain run at step {plain['warm_step']} "
                      f"{'PASS' if worst_warm <= 0.1 else 'FAIL'}: {worst_warm:.3f} dB")
    verdict_control = ("PASS" if c_diff is not None and c_diff <= 0.01 else "FAIL") + \
        f": the one-replica control follows the plain run to {'-' if c_diff is None else format(c_diff, '.4f')} dB"
    print()
    print("(c) bytes through the store per round (every worker's reads and writes), against synchronous data parallelism")
    print(f"    {'N':>2}  {'H':>4}  {'exch. up':>10}  {'exch. down':>10}  {'other':>10}  {'all/sample':>10}  "
          f"{'sync DP':>10}  {'exch./DP':>8}  {'all/DP':>7}  {'outer steps':>11}")
    for (n, h), a in sorted(accounts.items()):
        print(f"    {n:>2}  {h:>4}  {human_bytes(a['exchange_up']):>10}  {human_bytes(a['exchange_down']):>10}  "
              f"{human_bytes(a['other_bytes']):>10}  {human_bytes(a['all_bytes'] / a['samples_per_round']):>10}  "
              f"{human_bytes(a['sync_dp']):>10}  {a['exchange'] / a['sync_dp']:>8.4f}  {a['all_bytes'] / a['sync_dp']:>7.4f}  "
              f"{a['outer_steps_per_round']:>11.2f}")
    first = accounts[min(accounts)]
    print(f"    packed weights (train/outer.packed_size) {human_bytes(first['packed_size'])}; sync DP = 2 x N x H x that; "
          f"exch. = changes, global weights, momentum (the rounds' rows: {human_bytes(first['uploads_from_rows'])} up per "
          f"round at N=2, H={hs[0]}); other = unit and global checkpoints (weights + Adam state), validation pictures, "
          f"journal events; outer steps = how many workers computed each round's (2 workers here)")
    print()
    print("(d) store calls per round (every worker, polling and heartbeats apart), by call and object")
    keys = sorted(accounts)
    labels = sorted({l for a in accounts.values() for l in a["calls_by_kind"]})
    print("    " + f"{'call':<24}" + "".join(f"{f'N{n} H{h}':>10}" for n, h in keys))
    for label in labels:
        print("    " + f"{label:<24}" + "".join(f"{accounts[k]['calls_by_kind'].get(label, 0):>10.1f}" for k in keys))
    switched = "".join(f"{str(accounts[k]['replica_switches']) + '/' + str(accounts[k]['units']):>10}" for k in keys)
    print("    " + f"{'units on another replica':<24}" + switched)
    for title, key in (("total", "calls"), ("  of one outer step", "outer_requests_each"),
                       ("per idle poll", "poll_calls_per_idle_loop"), ("per heartbeat", "calls_per_heartbeat")):
        print("    " + f"{title:<24}" + "".join("         -" if accounts[k][key] is None else f"{accounts[k][key]:>10.1f}"
                                             for k in keys))
    p0 = next(iter(projections.values()))
    print()
    print(f"    projected to N = 8 T4 sessions on Drive: a T4 step of {p0['t4_step_s'] * 1000:.1f} ms (batch {p0['t4_batch']}, "
          f"configs/profiles/colab-t4.toml), rounds of H steps without overhead; polls every {DEFAULT_ROUND_POLL_S:.0f} s "
          f"(round_poll_seconds, as while a round waits; {DEFAULT_POLL_S:.0f} s otherwise) and "
          f"heartbeats every {DEFAULT_HEARTBEAT_S:.0f} s per session; calls per round fitted a + b*N")
    print(f"    Drive limits assumed: {DRIVE['queries_per_minute_per_user']:,} queries per minute per user, "
          f"{DRIVE['queries_per_100s_per_project']:,} per 100 s per project, "
          f"{DRIVE['upload_bytes_per_day_per_user'] / 1e9:.0f} GB uploaded per day per user; one store call = one "
          f"request (a listing one per 1,000 objects); every session counted as one user (the worst case)")
    verdicts_d = []
    for h, p in sorted(projections.items()):
        note = "" if p["measured_h"] == h else f" (calls and bytes per round as measured at H = {p['measured_h']})"
        print(f"    H = {h}: a round every {p['round_s']:.1f} s{note}; with the default {DEFAULT_ROUND_POLL_S:.0f} s round polls "
              f"about {p['polled_round_s']:.1f} s (the T4s busy {100 * p['busy_share_with_default_polls']:.0f}% of the time)")
        for case, c in p["cases"].items():
            print(f"        {case:<16} {c['requests_per_round']:>6.0f} requests/round -> {c['requests_per_min_all']:>8,.0f}/min "
                  f"all sessions ({c['requests_per_min_per_session']:,.0f} per session), {c['requests_per_100s_all']:,.0f} per 100 s")
        for name, mm in p["models"].items():
            ups = mm["upload_per_day_all"]
            print(f"        {name:<10} {human_bytes(mm['packed_size']):>9} weights: "
                  + ", ".join(f"{human_bytes(v)}/day up ({case})" for case, v in ups.items())
                  + f"; sync DP {human_bytes(mm['sync_dp_per_day'])}/day")
        for case, c in p["cases"].items():
            upload = max(mm["upload_per_day_all"][case] for mm in p["models"].values())
            ok = (c["requests_per_min_all"] <= DRIVE["queries_per_minute_per_user"],
                  c["requests_per_100s_all"] <= DRIVE["queries_per_100s_per_project"],
                  upload <= DRIVE["upload_bytes_per_day_per_user"])
            verdicts_d.append(f"H={h}, {case}: {'PASS' if all(ok) else 'FAIL'} ({c['requests_per_min_all']:,.0f} "
                              f"requests/min {'<=' if ok[0] else '>'} 12,000/user; {c['requests_per_100s_all']:,.0f}/100 s "
                              f"{'<=' if ok[1] else '>'} 20,000/project; {human_bytes(upload)}/day up "
                              f"{'<=' if ok[2] else '>'} 750 GB/user, largest model)")
    c = [a["exchange"] / a["sync_dp"] for a in accounts.values()]
    alls = [a["all_bytes"] / a["sync_dp"] for a in accounts.values()]
    print()
    print(f"verdict (a): {verdict_a}")
    print(f"verdict (b): {verdict_b}")
    print(f"verdict (b) control: {verdict_control}")
    print(f"verdict (c): the DiLoCo exchange is {min(c):.4f}x-{max(c):.4f}x the bytes of synchronous data parallelism; "
          f"everything the rounds move {min(alls):.4f}x-{max(alls):.4f}x")
    for v in verdicts_d:
        print(f"verdict (d): {v}")
    print(f"(the benchmark took {wall:.0f} s; load average {loads[0][0]:.2f} before, {loads[1][0]:.2f} after)")
    if json_path:
        strip = lambda r: {k: v for k, v in r.items() if k != "reports"}  # noqa: E731
        json_path.write_text(json.dumps({
            "settings": {"model": MODEL, "epochs": epochs, "sync_every": hs, "train_images": TRAIN_IMAGES,
                         "validation_images": VALIDATION_IMAGES, "image_size": IMAGE_SIZE, "worker": FAST,
                         "threads": THREAD_ENV, "drive_limits": DRIVE, "load_average": loads},
            "plain": strip(plain),
            "a": {"one_worker": strip(one), "two_workers": strip(two), "verdict": verdict_a},
            "b": {**{f"n{n}-h{h}": strip(r) for (n, h), r in runs.items()},
                  **{f"n{n}-h{h}-averaging": strip(r) for (n, h), r in averaged.items()},
                  **{f"n{n}-h{h}-warm": {**strip(r), "diff_db": None if r["final_psnr"] is None
                                         else r["final_psnr"] - plain["final_psnr"]} for (n, h), r in warm.items()},
                  **{f"n{n}-h{h}-diff_db": None if r["final_psnr"] is None else r["final_psnr"] - plain["final_psnr"]
                     for (n, h), r in runs.items()},
                  "warm_start": None if not warm else {"step": plain["warm_step"], "psnr": plain["warm_psnr"],
                                                       "init": plain["warm_init"], "worst_abs_diff_db": worst_warm},
                  "worst_abs_diff_db": worst, "control": strip(control),
                  "control_max_diff_db": c_diff, "verdict": verdict_b, "verdict_control": verdict_control},
            "c_d": {f"n{n}-h{h}": a for (n, h), a in accounts.items()},
            "projection": {str(h): p for h, p in projections.items()}, "verdict_d": verdicts_d,
            "seconds": wall}, indent=1, default=str))
        print(f"figures written to {json_path}")


if __name__ == "__main__":
    main()
