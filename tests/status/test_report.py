"""`shardrun status`: figures from a known journal (ETA, staleness, sessions, losses), a job with no
events, an old ledger snapshot, unreachable accounts, --watch, --json and the HTML page, looked at
in headless Chromium."""

from __future__ import annotations

import io
import json
import re
import shutil
import sqlite3
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from tests.conftest import job_text, write_images
from shardrun import paths
from shardrun.cli.main import main
from shardrun.clock import FakeClock
from shardrun.config.job import load_job
from shardrun.journal import Event
from shardrun.ledger.schema import SCHEMA_VERSION
from shardrun.ledger.db import Ledger
from shardrun.render.status import status_view
from shardrun.status.report import job_status, status_from_ledger
from shardrun.render.html import progress_figure, status_html
from shardrun.storage.base import Usage
from shardrun.storage.local import LocalStore
from shardrun.ledger.summaries import HISTORY_POINTS
from tests.test_worker import final_weights, new_worker, planned, straight_weights  # noqa: F401 (a fixture)

T0 = 1_800_000_000.0
LEASE = 600.0
BATCH = 8
STEPS = 100  # per chunk; 3 chunks per run
DATA = Path(__file__).parents[1] / "data"


# r1 as planned before precision, xla and deterministic were settings (the defaults); r2 fast
COMPUTE = {"r1": {}, "r2": {"precision": "mixed_float16", "xla": True, "deterministic": False}}


def plan_event() -> Event:
    runs = [{"name": r, "model": "decusr", "scale": 2, "channels": 1, "epochs": 3, "batch_size": BATCH,
             "patch_size": 32, "steps_per_epoch": STEPS, "steps_total": 3 * STEPS, "step_seconds": 0.5,
             "config": {"patches_per_image": 4, **COMPUTE[r]},
             "chunks": [[i * STEPS, (i + 1) * STEPS] for i in range(3)]}
            for r in ("r1", "r2")]
    payload = {"plan_id": "plan-1", "replaces": None, "job": "test-job", "fingerprint": "f", "images": 12,
               "image_bytes": 1000, "manifest_key": "test-job/plans/m.json", "manifest_md5": "0",
               "platform": "colab-free", "profile": "p", "lease_seconds": LEASE,
               "accounts": [{"name": "alice", "store": "local://stores/alice", "quota_bytes": 15 * 10**9,
                             "reserve_bytes": 0}],
               "shards": [{"id": "s1", "account": "alice", "key": "test-job/shards/s1.tar", "size": 500,
                           "md5": "x", "images": 12}],
               "runs": runs, "rejected": []}
    return Event("0000000000000000-plan", "plan", "planner", payload=payload, server_time=T0)


WHERE = {"w1": ("alice", "colab", "Tesla T4 (GPU)"), "w2": ("bob", "kaggle", "Tesla P100 (GPU)"),
         "w3": ("alice", "local", "CPU (8 cores)"), "w4": ("bob", "colab", "Tesla T4 (GPU)"),
         "w5": ("bob", "colab", "Tesla T4 (GPU)")}


def ev(t, kind, worker, run=None, chunk=None, generation=0, **payload) -> Event:
    account, platform, device = WHERE[worker]
    payload = {"account": account, "platform": platform, "device": device, **payload}
    return Event(f"{int((T0 + t) * 1e6):016x}-{kind}-{worker}", kind, worker, run, chunk, generation, payload,
                 server_time=T0 + t)


VAL_1 = {"psnr": 30.0, "ssim": 0.90, "bicubic_psnr": 28.0, "bicubic_ssim": 0.85, "images": 4}
VAL_2 = {"psnr": 31.0, "ssim": 0.92, "bicubic_psnr": 28.0, "bicubic_ssim": 0.85, "images": 4}


def known_events() -> list[Event]:
    """w1 trains r1 throughout; w2 trains r2, checkpoints at 290 and dies after 300; w3 expires
    w2's lease at 950 and carries r2 on from there."""
    return [
        plan_event(),
        ev(10, "claim", "w1", "r1", 0),
        ev(20, "claim", "w2", "r2", 0),
        ev(130, "heartbeat", "w1", "r1", 0, step=20, loss=0.09, patches_per_second=80.0),
        ev(140, "heartbeat", "w2", "r2", 0, step=10, loss=0.20, patches_per_second=40.0),
        ev(250, "heartbeat", "w1", "r1", 0, step=40, loss=0.05, patches_per_second=80.0),
        ev(260, "checkpoint", "w1", "r1", 0, step=40, key="k/r1-40", md5="a", loss=0.06, validation=VAL_1),
        ev(290, "checkpoint", "w2", "r2", 0, step=30, key="k/r2-30", md5="b", loss=0.15),
        ev(300, "heartbeat", "w2", "r2", 0, step=30, loss=0.12, patches_per_second=40.0),
        ev(370, "heartbeat", "w1", "r1", 0, step=60, loss=0.07, patches_per_second=80.0),
        ev(480, "done", "w1", "r1", 0, step=100, key="k/r1-100", md5="c", loss=0.04, validation=VAL_2),
        ev(490, "claim", "w1", "r1", 1),
        ev(950, "expire", "w3", "r2", 0),
        ev(960, "claim", "w3", "r2", 0, generation=1),
        ev(1080, "heartbeat", "w3", "r2", 0, generation=1, step=40, loss=0.10, patches_per_second=24.0),
        ev(1090, "heartbeat", "w1", "r1", 1, step=150, loss=0.045, patches_per_second=160.0),
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
    usages = {"alice": Usage(2_000_000, 15 * 10**9), "bob": Usage(0, 15 * 10**9)}
    return status_from_ledger(job, ledger, FakeClock(T0 + 1100), usages, [])


def test_status_figures_from_a_known_journal(known_status):
    s = known_status
    r1, r2 = s["runs"]
    # r1: chunk 0 done (100 steps), chunk 1 reported at 150; r2: chunk 0 reported at 40 by w3
    assert (r1["steps_done"], r2["steps_done"]) == (150, 40)
    assert r1["epochs_done"] == pytest.approx(1.5)
    assert r1["chunks"] == {"waiting": 1, "ready": 0, "running": 1, "done": 1}
    assert r1["loss"] == {"current": 0.045, "current_step": 150, "best": 0.04, "best_step": 100}
    assert r2["loss"] == {"current": 0.10, "current_step": 40, "best": 0.10, "best_step": 40}
    v = r1["validation"]
    assert (v["step"], v["psnr"], v["bicubic_psnr"], v["ssim"], v["bicubic_ssim"]) == (100, 31.0, 28.0, 0.92, 0.85)
    assert v["gain_db"] == pytest.approx(3.0) and v["best_psnr"] == 31.0 and r2["validation"] is None
    assert [h["psnr"] for h in r1["history"] if h["psnr"] is not None] == [30.0, 31.0]

    # staleness in store time: the latest event is at 1090; w2's last at 300 is a lease (600 s) older
    assert s["as_of"] == "2027-01-15T08:18:10+00:00"
    workers = {w["id"]: w for w in s["workers"]}
    assert {w: workers[w]["stale"] for w in workers} == {"w1": False, "w2": True, "w3": False}
    assert workers["w2"]["silent_seconds"] == 1090 - 300
    assert (workers["w1"]["platform"], workers["w1"]["device"], workers["w1"]["steps_per_second"]) == (
        "colab", "Tesla T4 (GPU)", 160.0 / BATCH)

    # sessions: one per worker process, first to last event
    lengths = {"w1": 1090 - 10, "w2": 300 - 20, "w3": 1080 - 950}
    sessions = s["sessions"]
    assert sessions["count"] == 3 and sessions["total_seconds"] == sum(lengths.values())
    assert sessions["median_seconds"] == statistics.median(lengths.values())
    assert sessions["longest_seconds"] == max(lengths.values())
    assert sessions["ended"] == {"running": 2, "yielded": 0, "finished": 0, "left": 0, "lost": 1, "silent": 0}

    # the ETA: r1 has 150 steps left at w1's 20 steps/s, r2 260 at w3's 3 steps/s; two workers alive
    t1, t2 = 150 / (160.0 / BATCH), 260 / (24.0 / BATCH)
    training = max(t1, t2, (t1 + t2) / 2)
    # lost: w2's attempt, from its last checkpoint (290) to the expiry (950); worked: both ended
    # attempts, claim to end (r1 chunk 0: 10 to 480; r2 chunk 0: 20 to 950)
    share = (950 - 290) / ((480 - 10) + (950 - 20))
    eta = s["eta"]
    assert eta["allowance"]["lost_share"] == pytest.approx(share)
    assert eta["allowance"]["factor"] == pytest.approx(1 / (1 - share))
    assert (eta["allowance"]["expired_attempts"], eta["allowance"]["ended_attempts"]) == (1, 2)
    assert eta["training_seconds"] == pytest.approx(training)
    assert eta["seconds"] == pytest.approx(training / (1 - share))
    assert (eta["workers_alive"], eta["finished"]) == (2, False)
    assert [(r["source"], r["remaining_steps"]) for r in eta["runs"]] == [("worker w1", 150), ("worker w3", 260)]

    hardware = {(h["device"], h["run"]): h for h in s["hardware"]}
    t4 = hardware[("Tesla T4 (GPU)", "r1")]
    assert (t4["samples"], t4["patches_per_second"]) == (4, (3 * 80.0 + 160.0) / 4)
    assert t4["images_per_second"] == pytest.approx(100.0 / 4)
    assert t4["epoch_seconds"] == pytest.approx(STEPS * BATCH / 100.0)
    assert hardware[("Tesla P100 (GPU)", "r2")]["patches_per_second"] == 40.0


def test_status_shows_how_each_run_computes(known_status):
    r1, r2 = known_status["runs"]
    assert r1["training"] == {"precision": "float32", "xla": None, "deterministic": True, "label": "fp32 · det"}
    assert r2["training"] == {"precision": "mixed_float16", "xla": True, "deterministic": False,
                              "label": "mixed16 · fast · xla"}
    console = Console(width=240, record=True, file=io.StringIO())
    console.print(status_view(known_status))
    rows = {line.split()[1]: line for line in console.export_text().splitlines() if line.startswith(("│ r1", "│ r2"))}
    assert "fp32 · det" in rows["r1"] and "mixed16 · fast · xla" in rows["r2"]
    page = status_html(known_status)
    assert "<th>compute</th>" in page or '<th class="l">compute</th>' in page
    assert '<td class="l">fp32 · det</td>' in page and '<td class="l">mixed16 · fast · xla</td>' in page


def test_a_worker_that_ended_cleanly_is_not_stale(job):
    ledger = Ledger.open(None)
    ledger.add_events([plan_event(), ev(10, "claim", "w1", "r1", 0),
                       ev(100, "done", "w1", "r1", 0, step=100, key="k/1", md5="m", loss=0.1),
                       ev(200, "claim", "w3", "r1", 1), ev(300, "heartbeat", "w3", "r1", 1, step=120),
                       ev(290, "claim", "w2", "r2", 0), ev(900, "heartbeat", "w3", "r1", 1, step=200),
                       ev(880, "leave", "w4", reason="stopped"),
                       ev(150, "claim", "w5", "r2", 1), ev(160, "yield", "w5", "r2", 1, step=0),
                       ev(890, "leave", "w5", reason="deadline")])
    status = status_from_ledger(job, ledger, FakeClock(T0 + 900), {}, [])
    states = {w["id"]: (w["state"], w["stale"]) for w in status["workers"]}
    # w1 handed its chunk on 800 s ago: ended, not stale; w2 claimed and went silent: stale; w4
    # and w5 said they left 20 and 10 s ago: ended at once, not alive for another lease
    assert states == {"w1": ("ended", False), "w2": ("stale", True), "w3": ("running", False),
                      "w4": ("ended", False), "w5": ("ended", False)}
    assert {w["id"]: w["left_reason"] for w in status["workers"]}["w5"] == "deadline"
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(status_view(status))
    assert "ended (deadline)" in console.export_text() and "ended (deadline)" in status_html(status)
    assert {s["worker"]: s["end"] for s in status["sessions"]["recent"]}["w5"] == "yielded"  # its last work
    assert status["sessions"]["ended"] == {"running": 1, "yielded": 1, "finished": 1, "left": 1, "lost": 0,
                                           "silent": 1}
    assert status["eta"]["workers_alive"] == 1
    assert status["eta"]["at"] == datetime.fromtimestamp(T0 + 900 + status["eta"]["seconds"], timezone.utc).isoformat(
        timespec="seconds")



def test_there_is_no_eta_while_no_worker_is_running(job):
    ledger = Ledger.open(None)
    ledger.add_events([plan_event(), ev(10, "claim", "w1", "r1", 0),
                       ev(100, "heartbeat", "w1", "r1", 0, step=50, loss=0.1, patches_per_second=80.0),
                       ev(110, "yield", "w1", "r1", 0, step=50, key="k/1", md5="m", loss=0.1),
                       ev(120, "leave", "w1", reason="deadline")])
    status = status_from_ledger(job, ledger, FakeClock(T0 + 130), {}, [])
    eta = status["eta"]
    assert (eta["workers_alive"], eta["seconds"], eta["at"], eta["finished"]) == (0, None, None, False)
    # one worker's work: r1's 250 steps left at its latest 10 steps/s, r2's 300 at the plan's 0.5 s a step
    assert eta["training_seconds"] == pytest.approx(250 / (80.0 / BATCH) + 300 * 0.5)
    assert [r["eta_seconds"] for r in status["runs"]] == [None, None]
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(status_view(status))
    text = console.export_text()
    assert "ETA: none while no worker is running (3 min of training left for one worker)" in text
    assert "no worker" in text.split("ETA: none")[0]  # the runs table's ETA column
    page = status_html(status)
    assert "No ETA while no worker is running" in page and "no worker running" in page



def test_progress_reported_at_one_moment_gets_an_hour_either_side(job):
    import matplotlib.dates as mdates

    ledger = Ledger.open(None)
    ledger.add_events([plan_event(), ev(10, "claim", "w1", "r1", 0),
                       ev(130, "heartbeat", "w1", "r1", 0, step=20, loss=0.09, patches_per_second=80.0)])
    status = status_from_ledger(job, ledger, FakeClock(T0 + 140), {}, [])
    assert [len(r["history"]) for r in status["runs"]] == [1, 0]
    lo, hi = mdates.num2date(progress_figure(status).axes[0].get_xlim())
    point = datetime.fromtimestamp(T0 + 130, timezone.utc)
    assert (point - lo).total_seconds() == pytest.approx(3600) and (hi - point).total_seconds() == pytest.approx(3600)


def test_a_journal_silent_for_a_lease_is_noted(job):
    ledger = Ledger.open(None)
    ledger.add_events(known_events())
    late = status_from_ledger(job, ledger, FakeClock(T0 + 1090 + LEASE + 60), {}, [])
    assert any("latest event is 11 min old" in n for n in late["notes"])


def test_the_history_stays_bounded_however_many_heartbeats():
    ledger = Ledger.open(None)
    plan = plan_event()
    plan.payload["runs"][0]["steps_total"] = 3 * STEPS * 100
    plan.payload["runs"][0]["chunks"] = [[0, 3 * STEPS * 100]]
    events = [plan, ev(1, "claim", "w1", "r1", 0)]
    events += [ev(2 + i, "heartbeat", "w1", "r1", 0, step=i, loss=1.0 / (i + 1), patches_per_second=8.0)
               for i in range(3 * STEPS * 100)]
    ledger.add_events(events)
    assert ledger.event_count() == len(events)
    history = ledger.history("r1")
    assert len(history) <= HISTORY_POINTS and sum(h["loss_n"] for h in history) == 3 * STEPS * 100
    assert ledger.db.execute("SELECT COUNT(*) FROM workers").fetchone()[0] == 1
    assert ledger.run_metrics()["r1"]["best_loss"] == pytest.approx(1.0 / (3 * STEPS * 100))


def test_a_job_with_no_events_yet(job):
    before = job_status(job)  # not even planned: no journal folder on the store
    assert before["runs"] == [] and before["eta"] is None and before["workers"] == []
    assert before["sessions"]["count"] == 0 and before["as_of"] is None
    assert any("no plan yet" in n for n in before["notes"])
    assert "<h1>Job test-job</h1>" in status_html(before)

    from shardrun.plan.job import plan_job

    plan_job(job, scan_workers=1)
    after_plan = job_status(job)  # planned, no worker yet: the plan's estimate is all there is
    run = after_plan["runs"][0]
    assert run["loss"]["current"] is None and run["validation"] is None and run["history"] == []
    assert after_plan["eta"]["runs"][0]["source"] == "plan estimate" and after_plan["eta"]["workers_alive"] == 0
    result = CliRunner().invoke(main, ["status", str(job.base_dir / "job.toml")])
    assert result.exit_code == 0, result.output
    assert "ETA: none while no worker is running" in result.output and "Sessions: none yet" in result.output
    nowhere = CliRunner().invoke(main, ["status", str(job.base_dir / "job.toml"), "--html",
                                        str(job.base_dir / "missing" / "s.html")])
    assert nowhere.exit_code == 1 and nowhere.output.strip().count("\n") == 0
    assert nowhere.output.startswith("Error: cannot write the page to") and "missing" in nowhere.output


def test_a_snapshot_from_an_older_schema_is_migrated(tmp_path):
    """tests/data/ledger-v2.db was written by the schema-2 code (see make_ledger_v2.py)."""
    with sqlite3.connect(DATA / "ledger-v2.db") as old:
        assert old.execute("PRAGMA user_version").fetchone()[0] == 2
        assert "workers" not in {r[0] for r in old.execute("SELECT name FROM sqlite_master")}
    write_images(tmp_path / "images", 3)
    (tmp_path / "job.toml").write_text(job_text(name="old-job", reserve_mb=0))
    job = load_job(tmp_path / "job.toml")
    LocalStore(tmp_path / "stores" / "alice").put_file(paths.ledger_snapshot_key("old-job"), DATA / "ledger-v2.db")
    assert not job.ledger_path.exists()  # a machine that never saw the job: status starts from the snapshot

    result = CliRunner().invoke(main, ["status", str(tmp_path / "job.toml"), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    (run,) = status["runs"]
    assert (run["steps_done"], run["chunks"]["done"], run["chunks"]["running"]) == (130, 1, 1)
    assert run["loss"] == {"current": 0.02, "current_step": 130, "best": 0.02, "best_step": 130}
    assert status["sessions"]["count"] == 2 and {w["id"] for w in status["workers"]} == {"w1", "w2"}
    assert {h["device"] for h in status["hardware"]} == {"unknown"}  # old events did not say
    with sqlite3.connect(job.ledger_path) as migrated:
        assert migrated.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


UNREACHABLE_DRIVE = """
drive_root_url = "http://127.0.0.1:9"
drive_retries = 0
"""


def test_an_unreachable_account_is_shown_as_unknown(tmp_path):
    write_images(tmp_path / "images", 3)
    text = job_text(reserve_mb=0, accounts=[("alice", 15), ("bob", 15), ("carol", 15)])
    # bob: a Drive account whose endpoint refuses connections; carol: a local folder that is a file
    text = text.replace("[[accounts]]", UNREACHABLE_DRIVE + "[[accounts]]", 1)
    text = text.replace('store = "local://stores/bob"', 'store = "drive://bobs-folder"\nauth = "token"\ntoken = "t"')
    (tmp_path / "job.toml").write_text(text)
    (tmp_path / "stores").mkdir()
    (tmp_path / "stores" / "carol").write_text("not a folder")
    result = CliRunner().invoke(main, ["status", str(tmp_path / "job.toml"), "--json"])
    assert result.exit_code == 0, result.output
    accounts = {a["name"]: a for a in json.loads(result.output)["accounts"]}
    assert accounts["alice"]["reachable"] is True and accounts["alice"]["used_bytes"] == 0
    for name in ("bob", "carol"):
        assert accounts[name]["reachable"] is False and accounts[name]["used_bytes"] is None
    assert "ConnectionRefused" in accounts["bob"]["error"] and "is a file" in accounts["carol"]["error"]
    table = CliRunner().invoke(main, ["status", str(tmp_path / "job.toml"), "--html", str(tmp_path / "s.html")])
    assert table.exit_code == 0, table.output
    assert table.output.count("unknown (unreachable)") == 2
    assert "Account bob: usage unknown" in table.output
    assert (tmp_path / "s.html").read_text().count("unknown (unreachable)") == 2


def test_watch_refreshes_until_its_count(job, monkeypatch):
    from shardrun.plan.job import plan_job

    plan_job(job, scan_workers=1)
    jobfile = str(job.base_dir / "job.toml")
    piped = CliRunner().invoke(main, ["status", "--watch", jobfile, "--interval", "0.1", "--refreshes", "3"])
    assert piped.exit_code == 0, piped.output
    assert [int(n) for n in re.findall(r"Refresh (\d+) at", piped.output)] == [1, 2, 3]
    assert piped.output.count("decusr-x2") == 3
    # On a terminal the view is redrawn in place: the cursor goes back up over the previous one.
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm")
    live = CliRunner().invoke(main, ["status", jobfile, "--watch", "--interval", "0.1", "--refreshes", "2"])
    assert live.exit_code == 0, live.output
    assert {"Refresh 1 at", "Refresh 2 at"} <= set(re.findall(r"Refresh \d at", live.output))
    assert "\x1b[1A" in live.output or "\x1b[2K" in live.output
    both = CliRunner().invoke(main, ["status", jobfile, "--watch", "--json"])
    assert both.exit_code == 2 and "cannot be combined" in both.output


def test_the_html_page_is_self_contained_with_its_plots(known_status, tmp_path):
    page = status_html(known_status)
    assert page.count("<svg") == 6 and "<img" not in page
    # no request of any kind: no external src/href, stylesheet import or url()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page and "<script" not in page
    for number in ("150 of 300", "0.04 @ 100", "31.00 dB (28.00)", "0.9200 (0.8500)", "+89.2%", "stale"):
        assert number in page, number
    assert "NVIDIA Tesla K80 (Colab)" in page and "log2 axis" in page  # the paper's machines beside ours
    assert "Tesla T4 (GPU)" in page and "2.00 MB of 15.00 GB" in page


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed: `apt-get install -y chromium` (.ci/run does it)"
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=120)


def test_chromium_renders_the_page_with_its_numbers(known_status, tmp_path):
    page = tmp_path / "status.html"
    page.write_text(status_html(known_status))
    dom = chromium("--dump-dom", page.as_uri(), tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))
    for number in ("Job test-job", "150 of 300", "31.00 dB (28.00)", "stale", "Tesla T4 (GPU)", "lost"):
        assert number in text, number
    assert dom.stdout.count("<svg") == 6

    shot = tmp_path / "status.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars", page.as_uri(),
                      tmp_path=tmp_path)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 20  # text, tables and plots, not a blank page
    colours = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    plot_blue = np.all(np.abs(colours.astype(int) - (0x1F, 0x77, 0xB4)) < 12, axis=1).mean()
    assert plot_blue > 0.001  # the plots' lines and bars were drawn


def test_a_real_worker_reports_what_status_shows(planned, tmp_path):
    """Heartbeats, checkpoints and done events of a real worker carry loss, throughput, platform,
    device and validation; validating at checkpoints leaves the weights exactly as straight training."""
    worker = new_worker(planned)
    assert worker.run() == "finished"
    ledger = Ledger.open(planned.ledger_path)
    rows = [(kind, json.loads(p)) for (kind, p) in ledger.db.execute(
        "SELECT kind, payload FROM events WHERE kind IN ('heartbeat', 'checkpoint', 'done') AND run = 'a'")]
    payloads = [p for _, p in rows]
    assert payloads and all(p["platform"] == "local" and p["device"].startswith("CPU") and p["account"] == "alice"
                            for p in payloads)
    figures = ("loss", "patches_per_second", "steps_per_second")
    # Checkpoints and dones always carry figures; a heartbeat may come while the first step still
    # compiles (none yet), and afterwards repeats the last ones while no step is taken.
    assert all(p[f] > 0 for kind, p in rows if kind != "heartbeat" for f in figures)
    assert all(p[f] is None or p[f] > 0 for kind, p in rows if kind == "heartbeat" for f in figures)
    validated = [p["validation"] for p in payloads if "validation" in p]
    assert len(validated) == 6 and all(v["images"] == 4 and v["bicubic_psnr"] > 10 for v in validated)
    assert len({round(v["bicubic_psnr"], 9) for v in validated}) == 1  # the same images every time
    status = job_status(planned)
    run = status["runs"][0]
    assert run["validation"]["step"] == 6 and run["validation"]["psnr"] == validated[-1]["psnr"]
    assert run["training"] == {"precision": "float32", "xla": None, "deterministic": True, "label": "fp32 · det"}
    assert run["loss"]["best"] == min(p["loss"] for p in payloads if p["loss"] is not None)
    (w,) = status["workers"]
    assert w["id"] == worker.id and w["chunks_done"] == 6 and w["device"].startswith("CPU")
    assert {h["run"] for h in status["hardware"]} == {"a", "b"}
    chunked, straight = final_weights(planned, "a"), straight_weights(planned, "a", tmp_path)
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(chunked, straight)) == 0.0


def test_new_journal_keys_are_found_alike_for_short_and_long_listings():
    ledger = Ledger.open(None)
    events = [plan_event(), ev(1, "claim", "w1", "r1", 0)]
    events += [ev(2 + i, "heartbeat", "w1", "r1", 0, step=i) for i in range(200)]
    ledger.add_events(events, bad=[("test-job/journal/garbage.json", "unreadable event")])
    known = [paths.event_key("test-job", e.id) for e in events[:3]]
    new = [paths.event_key("test-job", "ffff-new-1"), paths.event_key("test-job", "ffff-new-2")]
    short = known + ["test-job/journal/garbage.json"] + new  # looked up key by key
    assert len(short) * 20 < ledger.event_count()
    assert sorted(ledger.unknown_keys(short)) == new
    long = [paths.event_key("test-job", e.id) for e in events] + new  # checked against every id at once
    assert sorted(ledger.unknown_keys(long)) == new


def test_watch_ends_on_ctrl_c_with_status_0(job):
    import signal
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "shardrun", "status", str(job.base_dir / "job.toml"), "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's Ctrl-C finds it
    try:
        seen = []
        for line in process.stdout:  # wait until two refreshes were shown, then press Ctrl-C
            seen.append(line)
            if "Refresh 2 at" in line:
                break
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert "Refresh 2 at" in "".join(seen)
    assert process.returncode == 0 and "Traceback" not in rest
