"""What a sync, `status` and a new worker's first sync cost as the journal grows (issue 13, outcome 4).

A real job is planned (plan_job: 10 runs on 5 accounts), then a team of `--workers` (10) works
on it as bench_status_year.py simulates (one session per chunk of about 12 hours: a claim, a
heartbeat every 2 minutes, a checkpoint every 10, `done`; one session in 20 dies and the next
expires its lease). Every event is stored as the worker would store it, in the journal's hour
bucket (`journal/v2/<YYYY-MM>/<DDTHH>/<id>.json`, the real Event bytes, the store time of its
write), and a *follower* — a worker's ledger — syncs as the job goes (hourly, and every 2 minutes
in the two hours before a measurement, publishing the ledger snapshot half an hour before it:
the oldest a worker's snapshot may be under the default `snapshot_minutes`).

A million objects on the Drive emulator over HTTP would take hours to write, so the store is a
faithful synthetic one: `BilledDrive`, an in-memory tree that counts the Drive v3 requests
DriveStore makes for the same calls (folder lookups and their cache, one files.list per folder
and per 1,000 children, files.get:media per read, about.get per usage), and the bytes those
requests carry. Before measuring, `calibrate` runs one scripted sequence (a first sync, a steady
sync, publishing and starting from a snapshot, a status) on the Drive emulator through the real
DriveStore and on BilledDrive, and prints both counts: they must agree.

When the journal reaches 1k, 10k, 100k and 1M events it measures, as medians:
- one steady sync of the follower (the next 2 minutes of the team's events);
- `status` in a new process on a machine that ran it 30 minutes earlier (job_status: the sync,
  the accounts' usage, the report; DriveStore's caches cold, as in a new process);
- a new worker's first sync: the snapshot downloaded, then the journal since it;
- `status` on a new machine (no local ledger: the same snapshot, then the report).
Each with its Drive requests, bytes and seconds on this machine, and "Drive s", the seconds it
would take with `--latency` (0.15 s) per request: event reads 8 at a time as the journal reads
them, every other request one after another (DriveStore lists buckets in parallel too: an upper
bound), plus the bytes at 10 MB/s. It prints every figure's ratio to the same measurement at 1k
events, and PASS/FAIL against the targets: a steady sync at 1M within 1.5x of 1k in requests,
bytes and Drive s, and in this machine's seconds or under 0.1 s (a sync's own work here is tens of
milliseconds, as large as a loaded machine's noise); a new worker's first sync at 1M under 30 s
(Drive s); status under 1 s (this machine's seconds) at every size.

    .venv/bin/python benchmarks/bench_journal.py                 # 1k .. 1M events (about 10 min)
    .venv/bin/python benchmarks/bench_journal.py --sizes 1000,10000 --skip-calibration
"""

from __future__ import annotations

import argparse
import heapq
import io
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_status_year import DEVICES, simulate_run  # noqa: E402
from tests.conftest import job_text, write_images  # noqa: E402

from shardrun import paths  # noqa: E402
from shardrun.clock import FakeClock  # noqa: E402
from shardrun.config.job import load_job  # noqa: E402
from shardrun.errors import NotFound  # noqa: E402
from shardrun.journal import READ_THREADS, Journal  # noqa: E402
from shardrun.ledger.db import Ledger  # noqa: E402
from shardrun.plan.job import plan_job  # noqa: E402
from shardrun.status.report import job_status  # noqa: E402
from shardrun.storage import memory  # noqa: E402
from shardrun.storage.base import Folder, Stat, Store, Usage, digest_bytes  # noqa: E402

# What Drive's answers weigh (DriveStore asks for FILE_FIELDS): a file entry in a files.list page
# (id, name, mimeType, size, md5, sha256, two times, trashed) and a folder's, and each request's
# headers both ways (HTTP/1.1 with OAuth, gzip off).
FILE_ENTRY_BYTES = 330
FOLDER_ENTRY_BYTES = 220
REQUEST_BYTES = 700
PAGE = 1000
ACCOUNTS = ("alice", "bob", "carol", "dave", "erin")
BATCH = 16


class Tree:
    """The objects of one Drive account, with an index by folder so a listing costs its folder only."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.objects: dict[str, tuple[bytes, Stat]] = {}
        self.files: dict[str, set[str]] = {}     # folder prefix -> names of its objects
        self.folders: dict[str, set[str]] = {}   # folder prefix -> names of its sub-folders
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes, mtime: float) -> Stat:
        digest = digest_bytes(data)
        stat = Stat(key, len(data), mtime, digest.md5, digest.sha256)
        with self.lock:
            self.objects[key] = (data, stat)
            parent, _, name = key.rpartition("/")
            self.files.setdefault(parent + "/", set()).add(name)
            parts = parent.split("/")
            for i in range(len(parts)):
                self.folders.setdefault("/".join(parts[:i]) + "/" if i else "", set()).add(parts[i])
        return stat

    def delete(self, key: str) -> None:
        with self.lock:
            if self.objects.pop(key, None) is None:
                raise NotFound(f"no object {key}")
            parent, _, name = key.rpartition("/")
            self.files[parent + "/"].discard(name)


class BilledDrive(Store):
    """One client (one process's DriveStore) on a Tree, counting the requests DriveStore would make.

    DriveStore resolves a key's folders by name, one files.list each, and remembers what it found
    (and every sub-folder a listing showed); a listing is one files.list per 1,000 children; a read
    of a file it has not seen listed first looks it up (files.list), then files.get:media; a stat is
    a lookup; a write looks the name up, then one files.create:multipart (plus the folders it
    creates); usage is about.get. `calibrate` checks this against DriveStore on the emulator.
    """

    duplicate_copies = True  # as DriveStore: the ledger also looks for earlier copies of known events

    def __init__(self, tree: Tree, url: str):
        self.tree, self.url, self.quota_bytes = tree, url, None
        self.calls: Counter = Counter()
        self.bytes = 0
        self._known_folders: set[str] = set()
        self._known_files: set[str] = set()
        self._root_checked = False
        self._lock = threading.Lock()

    def _bill(self, method: str, n: int = 1, payload: int = 0) -> None:
        with self._lock:
            self.calls[method] += n
            self.bytes += n * REQUEST_BYTES + payload

    def _resolve(self, folder: str, create: bool = False) -> bool:
        """Looks up each folder of `folder` (a prefix ending in '/') not known yet; returns whether it exists."""
        if not self._root_checked:
            self._root_checked = True
            self._bill("files.get", payload=FOLDER_ENTRY_BYTES)
        parts = folder.rstrip("/").split("/") if folder else []
        for i in range(len(parts)):
            path = "/".join(parts[:i + 1]) + "/"
            if path in self._known_folders:
                continue
            self._bill("files.list", payload=FOLDER_ENTRY_BYTES)
            parent = "/".join(parts[:i]) + "/" if i else ""
            if parts[i] not in self.tree.folders.get(parent, ()):
                if not create:
                    return False
                self._bill("files.create", payload=FOLDER_ENTRY_BYTES)
            self._known_folders.add(path)
        return True

    # -- the primitives, over the tree --

    def _write(self, key, source, digest) -> Stat:
        data = source.read()
        parent = key.rpartition("/")[0] + "/"
        self._resolve(parent, create=True)
        self._bill("files.list", payload=FILE_ENTRY_BYTES)  # is the name there already?
        self._bill("files.create:multipart", payload=len(data) + FILE_ENTRY_BYTES)
        self._known_files.add(key)
        return self.tree.put(key, data, self.tree.clock.now())

    def _get(self, key: str) -> tuple[bytes, Stat]:
        try:
            return self.tree.objects[key]
        except KeyError:
            raise NotFound(f"{self.url}: no object {key}") from None

    def _lookup(self, key: str) -> None:
        if key not in self._known_files:
            self._resolve(key.rpartition("/")[0] + "/")
            self._bill("files.list", payload=FILE_ENTRY_BYTES)
            self._known_files.add(key)

    def _read(self, key, offset=0):
        self._lookup(key)
        data, _ = self._get(key)
        self._bill("files.get:media", payload=len(data) - offset)
        return io.BytesIO(data[offset:])

    def _stat(self, key) -> Stat:
        self._resolve(key.rpartition("/")[0] + "/")
        self._bill("files.list", payload=FILE_ENTRY_BYTES)
        return self._get(key)[1]

    def get_with_stat(self, key):
        self._lookup(key)
        data, stat = self._get(key)
        self._bill("files.get:media", payload=len(data))  # DriveStore keeps the listed stat
        return data, stat

    def _list(self, prefix):
        folders = [f for f in list(self.tree.files) if f.startswith(prefix)]
        self._bill("files.list", max(1, len(folders)), payload=FILE_ENTRY_BYTES * len(self.tree.objects))
        return [s for k, (_, s) in list(self.tree.objects.items()) if k.startswith(prefix)]

    def _list_folder(self, prefix: str) -> Folder:
        if not self._resolve(prefix):
            return Folder([], [])
        names = sorted(self.tree.files.get(prefix, ()))
        subfolders = sorted(self.tree.folders.get(prefix, ()))
        self._bill("files.list", max(1, math.ceil((len(names) + len(subfolders)) / PAGE)),
                   payload=len(names) * FILE_ENTRY_BYTES + len(subfolders) * FOLDER_ENTRY_BYTES)
        self._known_folders.update(prefix + f + "/" for f in subfolders)
        self._known_files.update(prefix + n for n in names)
        return Folder([self.tree.objects[prefix + n][1] for n in names], subfolders)

    def _delete(self, key):
        self._lookup(key)
        self._bill("files.delete")
        self.tree.delete(key)

    def usage(self) -> Usage:
        self._bill("about.get", payload=300)
        return Usage(sum(len(d) for d, _ in list(self.tree.objects.values())), self.quota_bytes)


class Drive:
    """The team's accounts as BilledDrive trees, reachable as `memory://bench-<account>` (what the
    job file names), each open a new client, so every measured process starts with cold caches."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.trees = {a: Tree(clock) for a in ACCOUNTS}
        self.clients: list[BilledDrive] = []

    def open_all(self) -> list[BilledDrive]:
        opened = []
        for account, tree in self.trees.items():
            client = BilledDrive(tree, f"memory://bench-{account}")
            memory._NAMED[f"bench-{account}"] = client  # what MemoryBackend opens for that URL
            opened.append(client)
        self.clients = opened
        return opened

    def home(self) -> BilledDrive:
        return self.clients[0]

    def cost(self, clients: list[BilledDrive]) -> tuple[int, int, Counter]:
        calls = Counter()
        for c in clients:
            calls.update(c.calls)
        return sum(calls.values()), sum(c.bytes for c in clients), calls


@dataclass
class Cost:
    calls: float
    bytes: float
    seconds: float
    methods: Counter

    def drive_seconds(self, latency: float) -> float:
        """This machine's seconds plus the requests at `latency` each (reads of event objects at
        READ_THREADS at a time, as the journal reads them; every other request one after another)
        plus the bytes at 10 MB/s."""
        reads = self.methods.get("files.get:media", 0)
        return self.seconds + (self.calls - reads) * latency + math.ceil(reads / READ_THREADS) * latency \
            + self.bytes / 10e6


def median_cost(costs: list[Cost]) -> Cost:
    middle = sorted(costs, key=lambda c: c.calls)[len(costs) // 2]
    return Cost(*(statistics.median(getattr(c, f) for c in costs) for f in ("calls", "bytes", "seconds")),
                middle.methods)


def measure(drive: Drive, action) -> Cost:
    """Runs `action(home)` on fresh clients of every account; returns what it cost."""
    clients = drive.open_all()
    started = time.perf_counter()
    action(clients[0])
    seconds = time.perf_counter() - started
    calls, sent, methods = drive.cost(clients)
    return Cost(calls, sent, seconds, methods)


# -- the job ---------------------------------------------------------------------------------------

def machine(base: Path, name: str, text: str):
    """A machine of its own (its own .shardrun/ ledger) with the job file; returns the loaded job."""
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.toml").write_text(text)
    images = folder / "images"
    if not images.exists():
        images.symlink_to(base / "images", target_is_directory=True)
    return load_job(folder / "job.toml")


def plan(base: Path, drive: Drive, workers: int):
    write_images(base / "images", 40, size=(64, 64))
    steps_per_epoch = 40 * 16 // BATCH
    runs = [dict(name=f"run{i:02d}", model="decusr", scale=2, channels=1, batch_size=BATCH, patch_size=32,
                 patches_per_second=DEVICES[i % len(DEVICES)][2] * BATCH,
                 epochs=int(DEVICES[i % len(DEVICES)][2] * 480 * 86400 / steps_per_epoch)) for i in range(workers)]
    text = job_text(name="bench-journal", runs=runs, reserve_mb=0,
                    accounts=[dict(name=a, store=f"memory://bench-{a}", quota_gb=15) for a in ACCOUNTS])
    drive.open_all()
    job = machine(base, "planner", text)
    plan_job(job, scan_workers=1, clock=drive.clock)
    return text, job


# -- calibration against the emulator ---------------------------------------------------------------

def scripted(store_for, advance, workdir: Path) -> list[Counter]:
    """One sequence of reader calls; returns the requests each step made (store_for() opens a new
    client and resets the counts; advance(s) moves the store's clock)."""
    from tests.ledger.test_db import plan_event

    writer = store_for()
    journal = Journal(writer, "j")
    journal.append("plan", "planner", payload=plan_event().payload)
    for i in range(30):
        journal.append("heartbeat", "w1", "r1", 0, 0, {"step": i})
    steps = []
    reader = store_for()
    ledger = Ledger.open(workdir / "a.db")
    ledger.sync(Journal(reader, "j"))
    steps.append(reader.counted())
    for i in range(5):
        journal.append("heartbeat", "w1", "r1", 0, 0, {"step": 30 + i})
    reader.reset()
    ledger.sync(Journal(reader, "j"))
    steps.append(reader.counted())
    ledger.publish(reader, "j")
    advance(1800)
    for i in range(3):
        journal.append("heartbeat", "w1", "r1", 0, 0, {"step": 40 + i})
    fresh = store_for()
    Ledger.from_snapshot(fresh, "j", workdir / "b.db").sync(Journal(fresh, "j"))
    steps.append(fresh.counted())
    return steps


def calibrate(tmp: Path) -> bool:
    from tests.drive_accounts import drive_store_for, new_drive_account
    from tests.drive_emulator import DriveEmulator

    emu = DriveEmulator().start()
    try:
        account = new_drive_account(emu)

        def emulated():
            store = drive_store_for(emu, account)
            emu.reset_calls()
            store.counted = lambda: Counter({m: n for (_, m), n in emu.calls.items() if n})
            store.reset = emu.reset_calls
            return store

        def advance(seconds):
            emu.clock_offset += seconds

        (tmp / "emu").mkdir()
        on_emulator = scripted(emulated, advance, tmp / "emu")
    finally:
        emu.stop()
    clock = FakeClock(time.time())
    tree = Tree(clock)

    def billed():
        store = BilledDrive(tree, "memory://calibration")
        store.counted = lambda: Counter(store.calls)
        store.reset = store.calls.clear
        return store

    (tmp / "billed").mkdir()
    synthetic = scripted(billed, lambda s: setattr(clock, "_now", clock.now() + s), tmp / "billed")
    agree = True
    print("calibration: Drive requests of the same reader calls, emulator (DriveStore over HTTP) vs BilledDrive")
    for name, real, model in zip(("first sync", "steady sync", "first sync from a snapshot"), on_emulator, synthetic):
        real = Counter({m: n for m, n in real.items() if m != "oauth.token"})
        same = real == model
        agree &= same
        print(f"  {name:<28} emulator {sum(real.values()):3d} {dict(sorted(real.items()))}")
        print(f"  {'':<28} billed   {sum(model.values()):3d} {dict(sorted(model.items()))}  "
              f"{'same' if same else 'DIFFERENT'}")
    return agree


# -- the year ---------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.15, help="seconds per Drive request (projection)")
    parser.add_argument("--skip-calibration", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        calibrated = True if args.skip_calibration else calibrate(base)
        clock = FakeClock(time.time())
        drive = Drive(clock)
        text, planner = plan(base, drive, args.workers)
        ledger = Ledger.open(planner.ledger_path)
        the_plan = ledger.plan()
        chunks = {r["name"]: [(c["start_step"], c["end_step"]) for c in ledger.chunks(r["name"])] for r in ledger.runs()}
        ledger.close()
        start = the_plan["server_time"] + 60
        streams = [simulate_run(w, f"run{w:02d}", chunks[f"run{w:02d}"], start, start + 10 * 365 * 86400,
                                the_plan["lease_seconds"], args.seed) for w in range(args.workers)]
        events = heapq.merge(*streams, key=lambda item: item[0])
        home_tree = drive.trees[ACCOUNTS[0]]
        plan_id = the_plan["id"]
        total = 1  # the plan

        def store_until(t_end: float) -> int:
            nonlocal total, pending
            stored = 0
            while pending is not None and pending[0] <= t_end:
                t, e = pending
                clock._now = max(clock.now(), t)
                e = replace(e, plan=plan_id)
                home_tree.put(paths.bucket_event_key(job_name, paths.bucket_start(t), e.id), e.to_bytes(), t)
                stored += 1
                pending = next(events, None)
            clock._now = max(clock.now(), t_end)
            total += stored
            return stored

        job_name = planner.name
        pending = next(events, None)
        follower_home = drive.open_all()[0]
        follower_path = base / "follower.db"
        follower = Ledger.open(follower_path)
        follower_journal = Journal(follower_home, job_name, clock)
        rate = args.workers * 3600 / 120 * 1.1  # events an hour, about
        results: dict[int, dict[str, Cost]] = {}
        fold_started = time.perf_counter()
        for size in sizes:
            # Hourly syncs until two hours before `size` events, then every 2 minutes.
            while total < size - 2.2 * rate:
                store_until(clock.now() + 3600)
                follower.sync(follower_journal)
            published = status_copied = False
            while total < size:
                store_until(clock.now() + 120)
                follower.sync(follower_journal)
                if not published and total >= size - rate / 2:
                    follower.publish(follower_home, job_name)
                    published = True
                    status_machine = machine(base, f"status-{size}", text)
                    status_machine.ledger_path.parent.mkdir(parents=True, exist_ok=True)
                    # Its status 30 min ago: a consistent copy of the follower's ledger.
                    follower.db.execute("VACUUM INTO ?", [str(status_machine.ledger_path)])
                    status_copied = True
            assert status_copied
            print(f"{total:,} events, {(clock.now() - start) / 86400:.1f} days of the team's work "
                  f"({time.perf_counter() - fold_started:.0f} s to here)", flush=True)

            steady = []
            for _ in range(args.repeat):
                store_until(clock.now() + 120)
                follower_home.calls.clear()
                follower_home.bytes = 0
                started = time.perf_counter()
                follower.sync(follower_journal)
                steady.append(Cost(sum(follower_home.calls.values()), follower_home.bytes,
                                   time.perf_counter() - started, Counter(follower_home.calls)))
            status = []
            for i in range(args.repeat):
                path = status_machine.ledger_path
                trial = path.with_name(f"trial-{i}.db")
                shutil.copy(path, trial)
                job = replace(status_machine, ledger=str(trial))
                status.append(measure(drive, lambda home: job_status(job, clock=clock)))
            first = []
            for i in range(args.repeat):
                fresh = base / f"new-worker-{size}-{i}.db"
                first.append(measure(drive, lambda home: Ledger.from_snapshot(home, job_name, fresh).sync(
                    Journal(home, job_name, clock))))
            new_status = []
            for i in range(args.repeat):
                job = replace(status_machine, ledger=str(base / f"new-status-{size}-{i}.db"))
                new_status.append(measure(drive, lambda home: job_status(job, clock=clock)))
            results[size] = {"steady sync": median_cost(steady), "status": median_cost(status),
                             "new worker's first sync": median_cost(first), "status, new machine": median_cost(new_status)}
            snapshot = home_tree.objects[paths.ledger_snapshot_key(job_name)][1].size
            print(f"  snapshot {snapshot / 1e6:.2f} MB; follower ledger {follower_path.stat().st_size / 1e6:.2f} MB",
                  flush=True)

        baseline = results[sizes[0]]
        print(f"\nper measurement: Drive requests, bytes, seconds here, Drive s (at {args.latency:g} s a request, "
              f"10 MB/s); ratios to {sizes[0]:,} events")
        for name in baseline:
            print(f"{name}:")
            for size in sizes:
                c, b = results[size][name], baseline[name]
                print(f"  {size:>9,} events  {c.calls:5.0f} requests ({c.calls / b.calls:4.2f}x)  "
                      f"{c.bytes / 1e3:8.1f} kB ({c.bytes / b.bytes:4.2f}x)  {c.seconds:6.3f} s ({c.seconds / b.seconds:4.2f}x)  "
                      f"Drive {c.drive_seconds(args.latency):6.2f} s   "
                      + " ".join(f"{m} {n}" for m, n in sorted(c.methods.items())))
        top = results[sizes[-1]]
        checks = [
            (f"steady sync at {sizes[-1]:,} within 1.5x of {sizes[0]:,} (requests)",
             top["steady sync"].calls <= 1.5 * baseline["steady sync"].calls),
            (f"steady sync at {sizes[-1]:,} within 1.5x of {sizes[0]:,} (bytes)",
             top["steady sync"].bytes <= 1.5 * baseline["steady sync"].bytes),
            (f"steady sync at {sizes[-1]:,} within 1.5x of {sizes[0]:,} (Drive s)",
             top["steady sync"].drive_seconds(args.latency) <= 1.5 * baseline["steady sync"].drive_seconds(args.latency)),
            (f"steady sync at {sizes[-1]:,} within 1.5x of {sizes[0]:,} (seconds here, or under 0.1 s)",
             top["steady sync"].seconds <= max(1.5 * baseline["steady sync"].seconds, 0.1)),
            (f"a new worker's first sync at {sizes[-1]:,} under 30 s (Drive s)",
             top["new worker's first sync"].drive_seconds(args.latency) < 30),
            ("status under 1 s here at every size", all(r["status"].seconds < 1 for r in results.values())),
            ("the synthetic store's requests match DriveStore's on the emulator", calibrated),
        ]
        for name, ok in checks:
            print(f"{'PASS' if ok else 'FAIL'}  {name}")


if __name__ == "__main__":
    main()
