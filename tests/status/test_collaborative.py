"""`status` of collaborative runs: rounds done, the current round's replicas and stragglers, the
global model's validation per round, the bytes exchanged, and a progress that counts each
replica's steps once; in the JSON, the terminal's tables and the HTML page.

The known journal is folded from hand-made events whose figures are worked out here by hand;
the real run trains a small collaborative run in-process and checks the figures against the
journal's own events and the objects on the store."""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console

from tests.conftest import job_text, write_images
from tests.status.test_report import chromium
from shardrun.clock import FakeClock
from shardrun.config.job import load_job
from shardrun.journal import Event
from shardrun.ledger.db import Ledger
from shardrun.plan.job import plan_job
from shardrun.render.html import status_html
from shardrun.render.status import status_view
from shardrun.session import Session
from shardrun.status.figures import estimate_eta, lost_sessions_allowance
from shardrun.status.report import job_status, status_from_ledger
from shardrun.storage.account import Account
from shardrun.storage.registry import open_store
from shardrun.worker import Worker, WorkerJob, WorkerSettings

T0 = 1_800_000_000.0
LEASE = 600.0
H = 10  # inner steps a round
STEPS = 40  # per replica: 4 rounds
TIMEOUT_MIN = 30.0


def collaborative_record() -> dict:
    return {"replicas": 3, "sync_every": H, "rounds": STEPS // H, "steps_per_replica": STEPS, "outer_lr": 0.7,
            "outer_momentum": 0.9, "min_replicas": 2, "round_timeout_minutes": TIMEOUT_MIN,
            "parts": [{"replica": i, "images": 4, "bytes": 100, "shards": [f"s{i}"], "accounts": ["alice"]}
                      for i in range(3)]}


def plan_event() -> Event:
    run = {"name": "c", "model": "decusr", "scale": 2, "channels": 1, "epochs": 4, "batch_size": 8,
           "patch_size": 32, "steps_per_epoch": 10, "steps_total": STEPS, "step_seconds": 0.5,
           "config": {"patches_per_image": 4}, "chunks": [], "mode": "collaborative",
           "collaborative": collaborative_record()}
    payload = {"plan_id": "plan-1", "replaces": None, "job": "test-job", "fingerprint": "f", "images": 12,
               "image_bytes": 1000, "manifest_key": "test-job/plans/m.json", "manifest_md5": "0",
               "platform": "colab-free", "profile": "p", "lease_seconds": LEASE,
               "accounts": [{"name": "alice", "store": "local://stores/alice", "quota_bytes": 15 * 10**9,
                             "reserve_bytes": 0}],
               "shards": [{"id": f"s{i}", "account": "alice", "key": f"test-job/shards/s{i}.tar", "size": 100,
                           "md5": "x", "images": 4} for i in range(3)],
               "runs": [run], "rejected": []}
    return Event("0000000000000000-plan", "plan", "planner", payload=payload, server_time=T0)


def ev(t, kind, worker, chunk=None, generation=0, **payload) -> Event:
    payload = {"account": "alice", "platform": "colab", "device": "Tesla T4 (GPU)", **payload}
    return Event(f"{int((T0 + t) * 1e6):016x}-{kind}-{worker}", kind, worker, "c", chunk, generation, payload,
                 server_time=T0 + t)


def base_of(round_) -> str:
    return "initial" if round_ == 0 else f"w{round_ - 1}"  # round 0's: built by every worker


def done(t, worker, unit, size) -> Event:
    return ev(t, "done", worker, unit, key=f"k/u{unit}", md5="m", loss=0.1,
              change={"key": f"rounds/change-{unit}", "sha256": f"c{unit}", "md5": "m", "size": size,
                      "base": base_of(unit // 3)})


def outer(t, worker, round_, replicas, weights, momentum, psnr) -> Event:
    return ev(t, "outer", worker, round_, replicas=replicas, step=(round_ + 1) * H, base=base_of(round_),
              changes=[f"c{round_ * 3 + i}" for i in replicas],
              weights={"key": f"rounds/w{round_}", "sha256": f"w{round_}", "md5": "m", "size": weights},
              momentum={"key": f"rounds/m{round_}", "sha256": f"m{round_}", "md5": "m", "size": momentum},
              validation={"psnr": psnr, "ssim": 0.9, "bicubic_psnr": 28.0, "bicubic_ssim": 0.85, "images": 4},
              checkpoint={"key": f"rounds/g{round_}.ckpt", "md5": "m", "step": (round_ + 1) * H})


def known_events() -> list[Event]:
    """Round 0: three replicas (w1, w2, w3), closed by all; round 1: w3 goes silent at step 13,
    w1 closes the round at its timeout with replicas 0 and 1; round 2 is open: replica 0 (w1) is
    done, replicas 1 (w2, step 28) and 2 (w4, step 24) keep it open."""
    return [
        plan_event(),
        ev(10, "claim", "w1", 0), ev(12, "claim", "w2", 1), ev(14, "claim", "w3", 2),
        done(100, "w1", 0, 100), done(110, "w2", 1, 110), done(120, "w3", 2, 120),
        outer(130, "w1", 0, [0, 1, 2], 1000, 2500, 30.0),
        ev(131, "claim", "w1", 3), ev(132, "claim", "w2", 4), ev(133, "claim", "w3", 5),
        ev(200, "heartbeat", "w3", 5, step=13, loss=0.2, patches_per_second=8.0, steps_per_second=1.0),
        done(240, "w1", 3, 101), done(250, "w2", 4, 111),
        ev(131 + TIMEOUT_MIN * 60, "close", "w1", 1),  # the timeout runs from the round's first claim
        outer(1940, "w2", 1, [0, 1], 1001, 2501, 31.0),
        ev(1950, "claim", "w1", 6), ev(1952, "claim", "w2", 7), ev(1960, "claim", "w4", 8),
        ev(2040, "heartbeat", "w2", 7, step=27, loss=0.1, patches_per_second=8.0, steps_per_second=1.0),
        done(2050, "w1", 6, 102),
        ev(2060, "heartbeat", "w4", 8, step=24, loss=0.1, patches_per_second=4.0, steps_per_second=0.1),
        ev(2070, "heartbeat", "w2", 7, step=28, loss=0.1, patches_per_second=8.0, steps_per_second=1.0),
    ]


@pytest.fixture
def job(tmp_path):
    write_images(tmp_path / "images", 3)
    (tmp_path / "job.toml").write_text(job_text(reserve_mb=0))
    return load_job(tmp_path / "job.toml")


@pytest.fixture
def known_status(job):
    ledger = Ledger.open(None)
    ledger.add_events(known_events())
    assert not ledger.bad_events()
    return status_from_ledger(job, ledger, FakeClock(T0 + 2100), {}, [])


def test_a_collaborative_runs_rounds_replicas_and_stragglers(known_status):
    (run,) = known_status["runs"]
    c = run["collaborative"]
    assert run["mode"] == "collaborative"
    # Each replica's steps once: rounds 0 and 1 whole (10 + 10), round 2 by its replicas' mean
    # (10 + 8 + 4) // 3 = 7; not the 75 steps the replicas trained in all (30 + 20 + 3 dropped + 22).
    assert (run["steps_done"], run["steps_total"]) == (27, 40)
    assert run["epochs_done"] == pytest.approx(2.7)
    assert (c["replica_steps_done"], c["replica_steps_total"]) == (75, 120)
    assert run["chunks"] == {"waiting": 3, "ready": 0, "running": 2, "done": 6, "dropped": 1}
    assert (c["rounds_done"], c["rounds_total"], c["replicas"], c["min_replicas"]) == (2, 4, 3, 2)
    cur = c["current"]
    assert (cur["round"], cur["state"], cur["start_step"], cur["end_step"], cur["changes_in"]) == (2, "open", 20, 30, 1)
    assert cur["opened_at"] == "2027-01-15T08:32:20+00:00"  # T0 + 1940, the outer step of round 1
    assert cur["open_seconds"] == pytest.approx(2070 - 1940)  # as of the journal's latest event
    assert cur["timeout_at"] == "2027-01-15T09:02:30+00:00"  # T0 + 1950 (its first claim) + 30 min
    assert [(r["replica"], r["worker"], r["state"], r["step"], r["round_steps_done"], r["straggler"])
            for r in cur["replicas"]] == [(0, "w1", "done", 30, 10, False), (1, "w2", "running", 28, 8, True),
                                          (2, "w4", "running", 24, 4, True)]
    assert [(s["replica"], s["worker"], s["open_seconds"], s["behind_seconds"]) for s in cur["stragglers"]] == [
        (1, "w2", pytest.approx(130.0), pytest.approx(20.0)), (2, "w4", pytest.approx(130.0), pytest.approx(20.0))]
    assert [(h["round"], h["step"], h["psnr"], h["bicubic_psnr"], h["closed_by"], h["replicas"], h["outer_worker"])
            for h in c["history"]] == [(0, 10, 30.0, 28.0, "all", [0, 1, 2], "w1"),
                                       (1, 20, 31.0, 28.0, "timeout", [0, 1], "w2")]
    assert [h["done_time"] for h in c["history"]] == [T0 + 130, T0 + 1940]
    assert c["validation"] == {"round": 1, "step": 20, "psnr": 31.0, "ssim": 0.9, "bicubic_psnr": 28.0,
                               "bicubic_ssim": 0.85}


def test_the_bytes_a_collaborative_run_exchanged(known_status):
    c = known_status["runs"][0]["collaborative"]
    # Round 0 uploads its changes 100 + 110 + 120, weights 1000 and momentum 2500; the outer step
    # reads the changes, and each of round 1's 3 replicas reads the weights.
    # Round 1 (closed with replicas 0 and 1): changes 101 + 111, weights 1001, momentum 2501; the
    # outer step reads the changes and round 0's weights and momentum; round 2's replicas the weights.
    assert [(h["uploaded_bytes"], h["downloaded_bytes"]) for h in c["history"]] == [
        (330 + 1000 + 2500, 330 + 3 * 1000), (212 + 1001 + 2501, 212 + 1000 + 2500 + 3 * 1001)]
    b = c["bytes"]
    assert (b["changes"], b["weights"], b["momentum"]) == (542, 2001, 5001)
    assert (b["uploaded"], b["downloaded"], b["total"]) == (7544, 10045, 17589)


def test_the_eta_of_a_collaborative_run_counts_its_replicas_side_by_side(known_status):
    eta = known_status["eta"]
    # w1 (alive), w2 and w4 (running); w3 silent since 200, a lease and more: stale.
    assert eta["workers_alive"] == 3
    (r,) = eta["runs"]
    # 13 steps left for each replica; the run's rate is its latest running unit's worker (w4).
    assert (r["remaining_steps"], r["replicas"], r["steps_per_second"]) == (13, 3, 0.1)
    assert eta["training_seconds"] == pytest.approx(130.0)  # three replicas at once on three workers
    runs = [{"name": "c", "steps_done": 27, "steps_total": 40, "collaborative": {"replicas": 3}}]
    ledger_runs = {"c": {"step_seconds": 10.0}}
    allowance = lost_sessions_allowance({})
    # With two workers a round takes two turns: replicas 0 and 1, then 2.
    two = estimate_eta(runs, ledger_runs, {}, {}, 2, allowance, T0, T0)
    assert two["training_seconds"] == pytest.approx(130 * 2) and runs[0]["eta_seconds"] == pytest.approx(260)
    one = estimate_eta(runs, ledger_runs, {}, {}, 1, allowance, T0, T0)
    assert one["training_seconds"] == pytest.approx(130 * 3)
    four = estimate_eta(runs, ledger_runs, {}, {}, 4, allowance, T0, T0)
    assert four["training_seconds"] == pytest.approx(130)


def test_the_json_of_a_collaborative_run_is_json(known_status):
    text = json.dumps(known_status)
    back = json.loads(text)["runs"][0]["collaborative"]
    assert back["bytes"]["total"] == 17589 and back["current"]["stragglers"][0]["replica"] == 1


def printed(status: dict) -> str:
    console = Console(width=200, record=True)
    console.print(status_view(status))
    return console.export_text()


def test_the_terminal_shows_the_rounds_the_replicas_and_the_stragglers(known_status):
    text = printed(known_status)
    assert "27/40" in text and "67.5" in text  # progress once per replica, not 75/40
    assert ("Collaborative run c: 3 replicas, 2 of 4 rounds done (10 inner steps a round); round 2 open for 2 min, "
            "1 of 3 changes in; exchanged 17.59 kB (7.54 kB up, 10.04 kB down); global model after round 1: "
            "31.00 dB (bicubic 28.00).") in re.sub(r"\s*\n\s*", " ", text)
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    # the current round's replicas
    assert ["0", "w1", "done", "30", "10/10"] in rows
    assert ["1", "w2", "running (straggler)", "28", "8/10"] in rows
    assert ["2", "w4", "running (straggler)", "24", "4/10"] in rows
    # the rounds done
    assert ["0", "10", "all", "0,1,2", "30.00 (28.00)", "0.9000", "3.83 kB", "3.33 kB",
            "2027-01-15T08:02:10+00:00"] in rows
    assert ["1", "20", "timeout", "0,1", "31.00 (28.00)", "0.9000", "3.71 kB", "6.71 kB",
            "2027-01-15T08:32:20+00:00"] in rows
    assert "Straggler: run c round 2 replica 2 (w4, running, 4 of 10 steps) keeps the round open: 2 min since it " \
           "opened, 20 s since the first change came in (store time)." in re.sub(r"\s*\n\s*", " ", text)
    # The units: 1 dropped (round 1's replica 2); the workers' units as round/replica.
    assert "3/0/2/6 (+1 dropped)" in text
    assert [r[4] for r in rows if r and r[0] in ("w1", "w2", "w3", "w4")] == ["c r2/1", "c r2/2", "c r2/0", "c r1/2"]
    # The run's own validation column shows the global model's latest, not a replica's.
    assert "31.00 (28.00)" in text.split("Collaborative run")[0]


def test_the_html_page_has_the_rounds_table_and_plot(known_status, tmp_path):
    page = status_html(known_status)
    assert page.count("<svg") == 7  # the six of every page and the rounds' PSNR
    assert "validation PSNR per round" in page and 'aria-label="Rounds"' in page
    for text in ("<h2>Collaborative runs</h2>", "27 of 40", "31.00 dB (28.00)", "running (straggler)",
                 "3.71 kB", "6.71 kB", "17.59 kB", "timeout", "3 / 0 / 2 / 6 (+1 dropped)", ">c r1/2</td>"):
        assert text in page, text
    html_file = tmp_path / "status.html"
    html_file.write_text(page)
    dom = chromium("--dump-dom", html_file.as_uri(), tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shown = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))
    for text in ("Collaborative runs", "2 of 4 rounds done", "running (straggler)", "30.00 dB (28.00)",
                 "31.00 dB (28.00)", "Straggler: run c round 2 replica 1 (w2, running, 8 of 10 steps)"):
        assert text in shown, text
    assert dom.stdout.count("<svg") == 7


def test_a_plain_job_has_no_collaborative_section(tmp_path):
    from tests.status.test_report import known_events as plain_events

    write_images(tmp_path / "images", 3)
    (tmp_path / "job.toml").write_text(job_text(reserve_mb=0))
    ledger = Ledger.open(None)
    ledger.add_events(plain_events())
    status = status_from_ledger(load_job(tmp_path / "job.toml"), ledger, FakeClock(T0 + 1100), {}, [])
    assert [(r["mode"], r["collaborative"]) for r in status["runs"]] == [("plain", None), ("plain", None)]
    assert [p["replicas"] for p in status["eta"]["runs"]] == [1, 1]
    assert "Collaborative" not in printed(status) and "Collaborative runs" not in status_html(status)


# -- a real collaborative run, trained in-process -----------------------------------------------------

FAST = WorkerSettings(settle_seconds=0.01, heartbeat_seconds=0.0, checkpoint_seconds=3600, checkpoint_steps=1,
                      poll_seconds=0.01)
NO_LIMIT = Session("local", 0.0, None, "test")
# 12 images, 4 patches each, batches of 16; 3 replicas of 4 images: 1 step an epoch, 4 epochs,
# rounds of 2 steps.
RUN = dict(name="c", model="espcn", scale=2, channels=1, epochs=4, batch_size=16, patch_size=16,
           patches_per_image=4, patches_per_second=0.000943, seed=3, mode="collaborative", replicas=3, sync_every=2)


def test_a_real_collaborative_run_reports_what_status_shows(tmp_path):
    write_images(tmp_path / "images", 12, size=(48, 40))
    (tmp_path / "job.toml").write_text(job_text(runs=[RUN], reserve_mb=0, platform="local", validation_share=0))
    job = load_job(tmp_path / "job.toml")
    plan_job(job, scan_workers=1)
    home = open_store(Account(job.home.name, job.home.store, base_dir=job.base_dir))

    # alice trains round 0 (three units and its outer step) and one unit of round 1, then leaves.
    alice = Worker(WorkerJob.from_config(job), "alice", NO_LIMIT, settings=FAST)
    assert alice.run(max_chunks=4) == "max-chunks"
    status = job_status(job)
    (run,) = status["runs"]
    c = run["collaborative"]
    ledger = Ledger.open(job.ledger_path)
    units = {(u["round"], u["replica"]): u for u in ledger.chunks("c")}
    in_round_1 = sorted(i for (r, i), u in units.items() if r == 1 and u["state"] == "done")
    assert len(in_round_1) == 1 and c["rounds_done"] == 1 and c["current"]["round"] == 1
    assert (run["steps_done"], run["steps_total"]) == (2 + 2 // 3, 4)  # round 0, and a third of round 1 floored
    assert c["replica_steps_done"] == 3 * 2 + 2
    assert [s["replica"] for s in c["current"]["stragglers"]] == sorted({0, 1, 2} - set(in_round_1))
    assert all(s["state"] == "ready" and s["worker"] is None for s in c["current"]["stragglers"])
    assert [r["worker"] for r in c["current"]["replicas"] if r["state"] == "done"] == [alice.id]
    ledger.close()

    bob = Worker(WorkerJob.from_config(job), "bob", NO_LIMIT, settings=FAST)
    assert bob.run() == "finished"
    status = job_status(job)
    (run,) = status["runs"]
    c = run["collaborative"]
    assert (run["steps_done"], run["steps_total"], c["replica_steps_done"]) == (4, 4, 12)  # 100%, not 300%
    assert (c["rounds_done"], c["rounds_total"], c["current"]) == (2, 2, None)
    ledger = Ledger.open(job.ledger_path)
    outers = {}
    for (chunk, worker, payload) in ledger.db.execute(
            "SELECT chunk, worker, payload FROM events WHERE kind = 'outer' ORDER BY server_time, id"):
        outers.setdefault(chunk, (worker, json.loads(payload)))
    assert [(h["round"], h["psnr"], h["ssim"], h["bicubic_psnr"], h["replicas"], h["closed_by"], h["outer_worker"])
            for h in c["history"]] == [
        (r, p["validation"]["psnr"], p["validation"]["ssim"], p["validation"]["bicubic_psnr"], [0, 1, 2], "all", w)
        for r, (w, p) in sorted(outers.items())]
    # The bytes: the objects on the store themselves.
    size = lambda key: home.stat(key).size  # noqa: E731
    changes = [size(u["change_key"]) for u in ledger.chunks("c")]
    weights = [size(p["weights"]["key"]) for _, (_, p) in sorted(outers.items())]
    momentum = [size(p["momentum"]["key"]) for _, (_, p) in sorted(outers.items())]
    ledger.close()
    assert c["bytes"]["changes"] == sum(changes) and c["bytes"]["weights"] == sum(weights)
    assert c["bytes"]["uploaded"] == sum(changes) + sum(weights) + sum(momentum)
    # The outer steps read every change, round 1's reads round 0's weights and momentum, and the
    # three replicas of round 1 read round 0's weights.
    assert c["bytes"]["downloaded"] == sum(changes) + weights[0] + momentum[0] + 3 * weights[0]
    text = printed(status)
    assert "2 of 2 rounds done" in text and "4/4" in text and "100.0" in text
    assert f"{c['history'][1]['psnr']:.2f} ({c['history'][1]['bicubic_psnr']:.2f})" in text


def test_a_run_whose_last_round_waits_for_its_outer_step_is_not_done(job):
    # Round 3 (the last) closed with every change in; no outer step yet.
    events = known_events()[:-7] + [
        ev(1950 + i, "claim", "w1", u) for i, u in enumerate((6, 7, 8))] + [
        done(2000 + i, "w1", u, 100) for i, u in enumerate((6, 7, 8))] + [
        outer(2010, "w1", 2, [0, 1, 2], 1002, 2502, 32.0)] + [
        ev(2020 + i, "claim", "w1", u) for i, u in enumerate((9, 10, 11))] + [
        done(2030 + i, "w1", u, 100) for i, u in enumerate((9, 10, 11))]
    ledger = Ledger.open(None)
    ledger.add_events(events)
    assert ledger.rounds("c")[3]["state"] == "closed" and not ledger.finished()
    status = status_from_ledger(job, ledger, FakeClock(T0 + 2100), {}, [])
    (run,) = status["runs"]
    c = run["collaborative"]
    assert (run["steps_done"], c["rounds_done"], c["current"]["round"], c["current"]["state"]) == (40, 3, 3, "closed")
    assert c["current"]["stragglers"] == [] and [r["state"] for r in c["current"]["replicas"]] == ["done"] * 3
    assert status["eta"]["finished"] is False and status["eta"]["training_seconds"] == 0
    text = printed(status)
    assert "round 3 closed (all), waiting for its outer step" in text and "every run is done" not in text
    assert [h["psnr"] for h in c["history"]] == [30.0, 31.0, 32.0]
