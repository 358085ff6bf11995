"""The Drive backend on the loopback Drive v3 emulator: transfer speed, and Drive API calls.

Everything runs against tests/drive_emulator/ (no Google service is reachable from here), in one run:

1. Throughput. `DriveStore.put_file` of a --mib MiB file of random bytes (a resumable session in
   chunks of the job default, drive_chunk_mib = 8, checked against the md5 Drive records) and
   `DriveStore.download` of it (ranged 8 MiB requests, md5 verified), against the same bytes sent
   by one plain PUT and fetched by one plain GET from a minimal http.server on 127.0.0.1, through
   the same HTTP library (httplib2, which google-api-python-client uses). Best of --repeats each;
   prints MB/s and the ratio DriveStore / plain HTTP. The emulator and the plain server both keep
   the bytes in memory, so the difference is the Drive protocol, shardrun's store logic and the
   md5 checks.
2. API calls per transfer (the emulator's own count, `emu.calls`): an upload from a fresh store
   (folder look-ups included), an upload from a warm one, and a download; per upload chunk.
3. API calls per worker-hour. A real `Worker` (shardrun/worker.py, as `shardrun worker` builds
   it) trains --chunks chunks of a small ESPCN job planned on the emulator, with the default
   intervals divided by --scale (60: heartbeat 2 s instead of 2 min, checkpoint 10 s instead of
   10 min, settle 10/60 s). Each chunk lasts about --chunk-seconds (step time measured first).
   Snapshots of emu.calls at every heartbeat (on_progress) and chunk end (on_outcome) give the
   calls of one heartbeat (event + journal sync), one checkpoint (upload + event), one chunk
   turnover (final checkpoint, done, claim, settle, restore) and one idle poll (two syncs).
   Printed: the measured rate x 3600 (at the scaled intervals: an upper bound), and the count
   per hour at the default intervals: 30 heartbeats + 6 checkpoints + 1 chunk turnover (generous:
   on Colab a chunk lasts a whole session), or for an idle worker 120 polls.

Drive's limit, for comparison: "Per 60 seconds per user: 12,000" queries
(https://developers.google.com/drive/api/guides/limits, 2025 version; it used to read 20,000
per 100 seconds per user). Since May 2026 new Cloud projects are metered in quota units instead
(325,000 per minute per user per project, same page), which leaves even more room.

    .venv/bin/python benchmarks/bench_drive.py                 # ~2 min on 2 busy cores
    .venv/bin/python benchmarks/bench_drive.py --mib 256 --repeats 3 --chunks 4
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httplib2  # noqa: E402
from google.oauth2.credentials import Credentials  # noqa: E402

from conftest import write_images  # noqa: E402
from tests.drive_emulator import DriveEmulator  # noqa: E402

from shardrun.storage.drive.store import DEFAULT_CHUNK, MIB, DriveStore  # noqa: E402

DRIVE_LIMIT_PER_60S = 12_000  # queries per 60 s per user (see the docstring)
DEFAULTS = {"heartbeat": 120.0, "checkpoint": 600.0, "settle": 10.0, "poll": 30.0}


# -- 1. throughput -----------------------------------------------------------------------------------


class _PlainHandler(BaseHTTPRequestHandler):
    """PUT stores the body in memory, GET returns it: HTTP with nothing else on top."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as the emulator's handler
    objects: dict[str, bytes] = {}

    def log_message(self, *args):
        pass

    def do_PUT(self):
        self.objects[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        body = self.objects[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def plain_http(source: Path, dest: Path, repeats: int) -> tuple[float, float]:
    """Returns the best (upload, download) seconds of a plain PUT and GET of the file."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PlainHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/object"
    http = httplib2.Http(timeout=60)
    ups, downs = [], []
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            response, _ = http.request(url, "PUT", body=source.read_bytes(),
                                       headers={"Content-Type": "application/octet-stream"})
            ups.append(time.perf_counter() - started)
            assert response.status == 200
            started = time.perf_counter()
            response, content = http.request(url, "GET")
            dest.write_bytes(content)
            downs.append(time.perf_counter() - started)
            assert response.status == 200 and dest.stat().st_size == source.stat().st_size
    finally:
        server.shutdown()
        server.server_close()
    return min(ups), min(downs)


def new_store(emu: DriveEmulator, email: str, folder: str) -> DriveStore:
    return DriveStore(folder, Credentials(token=emu.drive.accounts[email].token), root_url=emu.root_url,
                      account_name=email.split("@")[0])  # default chunk (8 MiB) and retry policy


def drive_transfers(emu: DriveEmulator, source: Path, dest: Path, repeats: int) -> dict:
    """Returns the best upload and download seconds through DriveStore, and the API calls of each."""
    email = "bench@example.com"
    emu.add_account(email, token="tok-bench", quota_bytes=None)
    folder = emu.create_folder(email, "shardrun")
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    ups, downs, calls = [], [], {}
    for i in range(repeats):
        store = new_store(emu, email, folder)  # a fresh store each time: its first upload is cold
        emu.reset_calls()
        started = time.perf_counter()
        stat = store.put_file(f"bench/cold-{i}.bin", source)
        ups.append(time.perf_counter() - started)
        assert stat.md5 == md5
        calls.setdefault("upload (fresh store)", Counter({m: n for (_, m), n in emu.calls.items()}))
        emu.reset_calls()
        started = time.perf_counter()
        store.download(f"bench/cold-{i}.bin", dest, expected_md5=md5)
        downs.append(time.perf_counter() - started)
        calls.setdefault("download", Counter({m: n for (_, m), n in emu.calls.items()}))
        dest.unlink()
        emu.reset_calls()
        store.put_file(f"bench/warm-{i}.bin", source)
        calls.setdefault("upload (warm store)", Counter({m: n for (_, m), n in emu.calls.items()}))
    return {"upload_s": min(ups), "download_s": min(downs), "calls": calls}


# -- 3. a worker session -----------------------------------------------------------------------------

RUN = dict(model="espcn", scale=2, channels=1, batch_size=16, patch_size=32, patches_per_image=8, seed=1)


def job_toml(emu_root: str | None, store: str, token: str | None, patches_per_second: float, epochs: int) -> str:
    drive = f'drive_root_url = "{emu_root}"\n' if emu_root else ""
    sign_in = f'token = "{token}"\n' if token else ""
    run = "\n".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in RUN.items())
    return (textwrap.dedent("""\
        [job]
        name = "bench-drive"
        data = "images/"
        platform = "colab-free"
        reserve_mb = 0
        shard_size_mb = 1
        """) + drive + f'[[accounts]]\nname = "alice"\nstore = "{store}"\n' + sign_in + "quota_gb = 1\n"
        + f'[[runs]]\nname = "x2"\n{run}\nepochs = {epochs}\npatches_per_second = {patches_per_second}\n')


def seconds_per_step(folder: Path) -> float:
    """A bare Trainer's seconds per step on the run, planned on a local store (no Drive)."""
    from shardrun.config.job import load_job
    from shardrun.plan.job import plan_job
    from shardrun.journal import Journal
    from shardrun.ledger.db import Ledger
    from shardrun.plan.shards import Manifest
    from shardrun.train.data import ShardImageSource
    from shardrun.train.trainer import TrainConfig, Trainer

    write_images(folder / "images", 12, size=(96, 96))
    (folder / "job.toml").write_text(job_toml(None, "local://stores/alice", None, 100.0, 1000))
    job = load_job(folder / "job.toml")
    plan_job(job, scan_workers=1)
    home = job.open_store(job.home)
    ledger = Ledger.open(None)
    ledger.sync(Journal(home, job.name))
    plan = ledger.plan()
    manifest = Manifest.from_json_bytes(home.get_bytes(plan["manifest_key"], plan["manifest_md5"]))
    for shard in ledger.shards():
        home.download(shard["key"], folder / "shards" / f"{shard['id']}.tar")
    r = job.runs[0]
    trainer = Trainer(TrainConfig(r.model, r.scale, r.channels, r.options, r.patch_size, r.batch_size,
                                  r.patches_per_image, r.epochs, r.seed, r.learning_rate),
                      ShardImageSource(manifest.images, folder / "shards"), folder / "ckpt")
    trainer.train(10, checkpoint_at_end=False)  # tracing and the pipeline's start
    result = trainer.train(trainer.step + 60, checkpoint_at_end=False)
    return result.elapsed_s / result.steps_done


def worker_session(emu: DriveEmulator, folder: Path, chunks: int, chunk_seconds: float, scale: float) -> dict:
    """Runs a Worker for `chunks` chunks at intervals divided by `scale`; returns the call tallies."""
    from shardrun.config.job import load_job
    from shardrun.plan.job import plan_job
    from shardrun.config.platforms import load_platforms
    from shardrun.session import detect_session
    from shardrun.worker import Worker, WorkerJob, WorkerSettings

    step_s = seconds_per_step(folder / "calibrate")
    steps_per_chunk = max(20, int(chunk_seconds / step_s))
    usable = load_platforms()["colab-free"].usable_seconds
    patches_per_second = RUN["batch_size"] / (usable / (steps_per_chunk + 0.5))  # the planner cuts these chunks
    email = "worker@example.com"
    emu.add_account(email, token="tok-worker", quota_bytes=None)
    drive_folder = emu.create_folder(email, "shardrun")
    write_images(folder / "job" / "images", 12, size=(96, 96))
    (folder / "job" / "job.toml").write_text(job_toml(emu.root_url, f"drive://{drive_folder}", "tok-worker",
                                                      patches_per_second, epochs=100_000))
    config = load_job(folder / "job" / "job.toml")
    plan_job(config, scan_workers=1)
    settings = WorkerSettings(heartbeat_seconds=DEFAULTS["heartbeat"] / scale,
                              checkpoint_seconds=DEFAULTS["checkpoint"] / scale,
                              settle_seconds=DEFAULTS["settle"] / scale, poll_seconds=DEFAULTS["poll"] / scale)
    emu.reset_calls()
    marks: list[tuple[str, float, int, int]] = []  # (what, time, calls so far, checkpoints so far)
    by_method: list[Counter] = []  # calls so far per API method, at each mark
    started = time.monotonic()

    def mark(what: str) -> None:
        checkpoints = len(worker.ledger.checkpoints("x2")) if worker is not None else 0
        calls = emu.calls
        marks.append((what, time.monotonic(), sum(calls.values()), checkpoints))
        by_method.append(Counter({m: n for (_, m), n in calls.items()}))

    worker = None
    worker = Worker(WorkerJob.from_config(config, "alice"), "alice",
                    detect_session(load_platforms(), config.platform, None, environ={}), settings=settings,
                    on_progress=lambda *args: mark("progress"), on_outcome=lambda outcome: mark("outcome"))
    mark("started")
    assert worker.run(max_chunks=chunks) == "max-chunks"
    mark("ended")
    elapsed = time.monotonic() - started
    total = sum(emu.calls.values())
    methods = Counter({m: n for (_, m), n in emu.calls.items()})
    before = sum(emu.calls.values())
    worker.sync()
    worker.sync()  # an idle loop() syncs twice (before looking, and after checking leases)
    poll = sum(emu.calls.values()) - before

    # The progress call just before an outcome is the chunk's end (after the final checkpoint,
    # the `done` event and a sync), not a heartbeat.
    kinds = [("end" if what == "progress" and i + 1 < len(marks) and marks[i + 1][0] == "outcome" else what)
             for i, (what, *_rest) in enumerate(marks)]
    heartbeats, with_checkpoint, turnovers, chunk_ends = [], [], [], []
    kinds_of: dict[str, list[Counter]] = {}  # what each interval's calls were, by API method
    for i, (a, b) in enumerate(zip(kinds, kinds[1:])):
        calls, grew = marks[i + 1][2] - marks[i][2], marks[i + 1][3] > marks[i][3]
        if a == "progress" and b == "progress":
            category, samples = ("heartbeat + checkpoint", with_checkpoint) if grew else ("heartbeat", heartbeats)
        elif a == "progress" and b == "end":
            category, samples = "chunk end (final checkpoint, done)", chunk_ends
        elif a == "outcome" and b == "progress":
            category, samples = "claim of the next chunk + a heartbeat", turnovers
        else:
            continue
        samples.append(calls)
        kinds_of.setdefault(category, []).append(by_method[i + 1] - by_method[i])
    heartbeat = statistics.median(heartbeats)
    checkpoint = statistics.median(with_checkpoint) - heartbeat if with_checkpoint else float("nan")
    # A chunk turnover: the end of one chunk and the claim of the next.
    turnover = (statistics.median(turnovers) - heartbeat + statistics.median(chunk_ends)
                if turnovers and chunk_ends else float("nan"))
    return {"step_s": step_s, "steps_per_chunk": steps_per_chunk, "elapsed": elapsed, "total": total,
            "by_method": methods, "kinds": kinds_of, "heartbeat": heartbeat, "heartbeats": len(heartbeats),
            "checkpoint": checkpoint, "checkpoints": len(with_checkpoint), "turnover": turnover,
            "turnovers": len(turnovers), "poll": poll, "settings": settings,
            "peak_60s": peak_per_window(marks, 60.0)}


def peak_per_window(marks, window: float) -> int:
    """The most calls between two marks no more than `window` seconds apart."""
    best = 0
    for i, (_, ti, ci, _) in enumerate(marks):
        for _, tj, cj, _ in marks[i:]:
            if tj - ti <= window:
                best = max(best, cj - ci)
    return best


# -- report ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="size of the file moved in part 1 (MiB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=3, help="chunks the worker trains in part 3")
    parser.add_argument("--chunk-seconds", type=float, default=25.0, help="training time of one chunk in part 3")
    parser.add_argument("--scale", type=float, default=60.0, help="default intervals divided by this in part 3")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-drive-") as tmp, DriveEmulator() as emu:
        tmp = Path(tmp)
        source, dest = tmp / "source.bin", tmp / "dest.bin"
        source.write_bytes(os.urandom(args.mib * MIB))
        size_mb = args.mib * MIB / 1e6
        plain_up, plain_down = plain_http(source, dest, args.repeats)
        dest.unlink()
        drive = drive_transfers(emu, source, dest, args.repeats)

        print(f"1. Throughput, {args.mib} MiB, best of {args.repeats} (MB/s = 10^6 bytes/s), "
              f"DriveStore chunks of {DEFAULT_CHUNK // MIB} MiB:")
        print(f"   {'':34}{'DriveStore':>12}{'plain HTTP':>12}{'ratio':>8}")
        for what, d, p in (("upload (put_file, md5 checked)", drive["upload_s"], plain_up),
                           ("download (ranged, md5 checked)", drive["download_s"], plain_down)):
            print(f"   {what:34}{size_mb / d:>12.1f}{size_mb / p:>12.1f}{p / d:>8.2f}")

        chunks = -(-args.mib * MIB // DEFAULT_CHUNK)
        print(f"\n2. Drive API calls per transfer of {args.mib} MiB ({chunks} chunks of {DEFAULT_CHUNK // MIB} MiB):")
        for what, calls in drive["calls"].items():
            total = sum(calls.values())
            per_chunk = f", {total / chunks:.2f} per chunk" if what.startswith("upload") else ""
            methods = ", ".join(f"{m} {n}" for m, n in sorted(calls.items()))
            print(f"   {what:22} {total:3d} calls{per_chunk}  ({methods})")

        print(f"\n3. A worker session: {args.chunks} chunks, intervals / {args.scale:g} ...", flush=True)
        s = worker_session(emu, tmp / "worker", args.chunks, args.chunk_seconds, args.scale)
        st = s["settings"]
        print(f"   {s['steps_per_chunk']} steps a chunk at {s['step_s'] * 1000:.1f} ms a step; heartbeat "
              f"{st.heartbeat_seconds:g} s, checkpoint {st.checkpoint_seconds:g} s, settle {st.settle_seconds:.2f} s")
        print(f"   {s['total']} calls in {s['elapsed']:.1f} s: "
              + ", ".join(f"{m} {n}" for m, n in s["by_method"].most_common()))
        rate_hour = s["total"] / s["elapsed"] * 3600
        print(f"   per event (median): heartbeat {s['heartbeat']:.0f} (of {s['heartbeats']}), checkpoint "
              f"{s['checkpoint']:.0f} (of {s['checkpoints']}), chunk turnover {s['turnover']:.0f} "
              f"(of {s['turnovers']}), idle poll {s['poll']}")
        for category, deltas in s["kinds"].items():
            typical = sorted(deltas, key=lambda c: sum(c.values()))[len(deltas) // 2]
            print(f"     {category}: " + ", ".join(f"{m} {n}" for m, n in typical.most_common()))
        at_defaults = (3600 / DEFAULTS["heartbeat"] * s["heartbeat"] + 3600 / DEFAULTS["checkpoint"] * s["checkpoint"]
                       + s["turnover"])
        idle = 3600 / DEFAULTS["poll"] * s["poll"]
        limit_hour = DRIVE_LIMIT_PER_60S * 60
        print(f"   calls per worker-hour, measured at the scaled intervals: {rate_hour:,.0f} "
              f"({rate_hour / limit_hour:.2%} of Drive's {limit_hour:,}/h per user); busiest 60 s: {s['peak_60s']} "
              f"of {DRIVE_LIMIT_PER_60S:,}")
        print(f"   calls per worker-hour at the default intervals: training {at_defaults:,.0f} "
              f"({at_defaults / limit_hour:.3%} of the limit; {limit_hour / at_defaults:,.0f}x under it), "
              f"idle {idle:,.0f} ({idle / limit_hour:.3%})")


if __name__ == "__main__":
    main()
