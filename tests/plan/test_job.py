"""`plan` end to end on local stores: what it writes, idempotent re-runs, and bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import write_images
from shardrun import paths
from shardrun.config.job import load_job
from shardrun.plan.job import plan_job
from shardrun.errors import DatasetError, PlanError
from shardrun.ledger.db import Ledger
from shardrun.status.report import job_status
from shardrun.plan.shards import Manifest
from shardrun.storage.local import LocalStore

SMALL_SHARDS = dict(shard_size_mb=1, reserve_mb=0)  # 12 images of ~6 kB -> one shard each is too big; see below


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def many_images_job(job_dir, write_job):
    """A job whose 60 images (~58 kB each) fill several 1 MB shards over two accounts."""
    shutil.rmtree(job_dir / "images")
    write_images(job_dir / "images", 60, size=(140, 140))
    # Shards and placement are what these tests check: hold no validation images out of the 60
    # (tests/plan/test_validation.py covers the held-out share).
    return load_job(write_job(**SMALL_SHARDS, validation_share=0))


def test_plan_uploads_shards_writes_the_journal_and_folds_the_ledger(many_images_job):
    job = many_images_job
    report = plan_job(job, scan_workers=1)
    assert report.written and len(report.scan.accepted) == 60
    assert len(report.shards) >= 3
    assert {s["account"] for s in report.shards} == {"alice", "bob"}  # spread over the team
    for shard in report.shards:
        store = LocalStore(job.base_dir / "stores" / shard["account"])
        assert store.stat(shard["key"]).md5 == shard["md5"]
    home = LocalStore(job.base_dir / "stores" / "alice")
    assert len(home.list(paths.journal_prefix(job.name))) == 1
    manifest = Manifest.from_json_bytes(home.get_bytes(paths.manifest_key(job.name, report.plan_id)))
    assert len(manifest.images) == 60 and manifest.fingerprint == report.scan.fingerprint
    ledger = Ledger.open(job.ledger_path)
    assert ledger.plan()["id"] == report.plan_id
    assert sum(a["placed_bytes"] for a in ledger.accounts()) == sum(s["size"] for s in report.shards)
    assert home.exists(paths.ledger_snapshot_key(job.name))


def test_rerun_uploads_nothing_and_writes_no_second_plan(many_images_job):
    first = plan_job(many_images_job, scan_workers=1)
    again = plan_job(many_images_job, scan_workers=1)
    assert again.plan_id == first.plan_id and not again.written
    assert sum(a.uploaded_bytes for a in again.accounts) == 0
    home = LocalStore(many_images_job.base_dir / "stores" / "alice")
    assert len(home.list(paths.journal_prefix(many_images_job.name))) == 1


def test_interrupted_plan_resumes_uploading_only_what_is_missing(many_images_job):
    def interrupt(phase, done, total):
        if phase == "upload" and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        plan_job(many_images_job, scan_workers=1, on_progress=interrupt)
    home = LocalStore(many_images_job.base_dir / "stores" / "alice")
    assert home.list(paths.journal_prefix(many_images_job.name)) == []  # no plan yet
    resumed = plan_job(many_images_job, scan_workers=1)
    uploaded = [s for s in resumed.shards if s["uploaded"]]
    assert len(uploaded) == len(resumed.shards) - 2
    assert resumed.written


def test_a_damaged_shard_on_the_store_is_uploaded_again(many_images_job):
    first = plan_job(many_images_job, scan_workers=1)
    victim = first.shards[0]
    path = many_images_job.base_dir / "stores" / victim["account"] / victim["key"]
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    again = plan_job(many_images_job, scan_workers=1)
    assert [s["id"] for s in again.shards if s["uploaded"]] == [victim["id"]]
    assert LocalStore(path.parents[2]).stat(victim["key"]).md5 == victim["md5"]


def test_dry_run_writes_nothing_anywhere(many_images_job):
    report = plan_job(many_images_job, dry_run=True, scan_workers=1)
    assert not report.written and report.dry_run
    assert files_under(many_images_job.base_dir / "stores") == []
    assert not many_images_job.ledger_path.exists()
    assert sum(a.uploaded_bytes for a in report.accounts) == sum(s["size"] for s in report.shards)


def test_too_little_space_fails_before_writing_anything(job_dir, write_job):
    shutil.rmtree(job_dir / "images")
    write_images(job_dir / "images", 60, size=(140, 140))
    job = load_job(write_job(accounts=[("alice", 0.001), ("bob", 0.001)], **SMALL_SHARDS))
    with pytest.raises(PlanError, match=r"more bytes needed \(about \d+ more accounts? of 0.001 GB\)"):
        plan_job(job, scan_workers=1)
    assert files_under(job_dir / "stores") == []



def test_a_reserve_larger_than_the_quota_is_named_with_what_to_change(job_dir, write_job):
    job = load_job(write_job(accounts=[("alice", 0.05), ("bob", 0.05)], reserve_mb=512))
    with pytest.raises(PlanError, match=r"reserve \(reserve_mb = 512\) is as large as the quota of accounts "
                                        r"alice, bob .* Lower reserve_mb below 50 or raise quota_gb above 0.512"):
        plan_job(job, scan_workers=1)
    assert files_under(job_dir / "stores") == []


def test_changed_dataset_is_detected_and_reported(many_images_job):
    plan_job(many_images_job, scan_workers=1)
    images = many_images_job.base_dir / "images"
    (images / "img00000.png").unlink()
    write_images(images, 2, size=(140, 140), seed=99, prefix="new")
    with pytest.raises(PlanError, match=r"dataset changed since the job was planned: 2 added, 1 removed, 0 modified"):
        plan_job(many_images_job, scan_workers=1)
    replaced = plan_job(many_images_job, replace=True, scan_workers=1)
    assert replaced.written and "dataset changed" in replaced.notes[0]
    status = job_status(many_images_job)
    assert status["plan"]["id"] == replaced.plan_id and status["plan"]["images"] == 61


def test_status_json_has_the_documented_fields(job_dir, write_job):
    (job_dir / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (job_dir / "images" / "empty.jpg").write_bytes(b"")
    job = load_job(write_job(reserve_mb=0))
    plan_job(job, scan_workers=1)
    status = json.loads(json.dumps(job_status(job)))
    run = status["runs"][0]
    assert run["name"] == "decusr-x2" and run["steps_done"] == 0
    assert run["steps_total"] == 4 * (12 * 16 // 16)
    assert run["chunks"] == {"waiting": 0, "ready": 1, "running": 0, "done": 0}
    by_name = {a["name"]: a for a in status["accounts"]}
    alice = LocalStore(job_dir / "stores" / "alice").usage().used_bytes
    assert by_name["alice"]["used_bytes"] == alice and by_name["alice"]["quota_bytes"] == 15 * 10**9
    assert {(r["path"], r["reason"].split(":")[0].split(" (")[0]) for r in status["rejected"]} >= {
        ("empty.jpg", "empty file")}
    assert {r["path"] for r in status["rejected"]} == {"corrupt.png", "empty.jpg"}


def test_status_before_any_plan_says_so(write_job):
    status = job_status(load_job(write_job()))
    assert status["plan"] is None and status["runs"] == []
    assert "no plan yet" in status["notes"][0]


def test_missing_data_folder_and_folder_without_images(job_dir, write_job):
    with pytest.raises(DatasetError, match="absent"):
        plan_job(load_job(write_job(data="absent/")), scan_workers=1)
    (job_dir / "texts").mkdir()
    (job_dir / "texts" / "a.txt").write_text("hello")
    with pytest.raises(DatasetError, match="no usable image"):
        plan_job(load_job(write_job(data="texts/")), scan_workers=1)
    assert files_under(job_dir / "stores") == []


def test_a_runs_settings_reach_the_trainer_as_the_job_file_gave_them(job_dir, write_job):
    from shardrun.train.trainer import TrainConfig

    run = dict(name="x", model="espcn", scale=3, channels=3, epochs=2, batch_size=8, patch_size=24, seed=7,
               patches_per_image=5, learning_rate=0.0025, patches_per_second=100.0)
    path = write_job(runs=[run], reserve_mb=0)
    path.write_text(path.read_text() + "[runs.options]\nn1 = 8\nn2 = 4\n")
    job = load_job(path)
    (settings,) = [r.to_payload() for r in job.runs]
    plan_job(job, scan_workers=1)
    ledger = Ledger.open(job.ledger_path)
    recorded = json.loads(ledger.run("x")["config"])
    assert recorded == settings  # the plan carries the job file's run whole, through the ledger

    config = TrainConfig.from_run(recorded)
    assert config == TrainConfig.from_run(settings)
    assert config.options == {"n1": 8, "n2": 4} and config.learning_rate == 0.0025
    # Every setting of a run is either training's, and reaches the trainer as given, or
    # planning's: a key added to [[runs]] cannot be dropped on the way without this test naming it.
    planning = {"name", "patches_per_second"}
    assert set(settings) - {f.name for f in dataclasses.fields(config)} == planning
    assert {k: getattr(config, k) for k in settings if k not in planning} == \
        {k: v for k, v in settings.items() if k not in planning}


RUN_A = dict(name="a", model="decusr", scale=2, channels=1, epochs=4, batch_size=16, patch_size=32, seed=1,
             patches_per_second=100.0)
RUN_B = {**RUN_A, "name": "b"}


def progress_on(job, run: str) -> None:
    """A worker's claim and checkpoint on the run's first chunk, as the journal holds them."""
    from shardrun.journal import Journal

    home = LocalStore(job.base_dir / "stores" / "alice")
    journal = Journal(home, job.name)
    ledger = Ledger.open(job.ledger_path)
    ledger.sync(journal)
    journal.append("claim", "w1", run, 0, 0)
    journal.append("checkpoint", "w1", run, 0, 0, {"step": 3, "key": f"ck-{run}", "md5": "m"})
    ledger.sync(journal)
    ledger.close()


def test_adding_a_run_keeps_the_progress_of_every_unchanged_run(job_dir, write_job):
    job = load_job(write_job(runs=[RUN_A]))
    plan_job(job, scan_workers=1)
    progress_on(job, "a")
    job = load_job(write_job(runs=[RUN_A, RUN_B]))
    report = plan_job(job, scan_workers=1)  # no --replace needed: nothing is lost
    assert report.written and report.replan.kept == ["a"] and report.replan.added == ["b"]
    assert any("a keep their progress" in n and "b are planned new" in n for n in report.notes)
    ledger = Ledger.open(job.ledger_path)
    assert ledger.plan()["id"] == report.plan_id
    assert ledger.chunk("a", 0)["checkpoint_key"] == "ck-a" and ledger.chunk("b", 0)["state"] == "ready"


def test_changing_a_runs_settings_needs_replace_which_says_which_runs_start_over(job_dir, write_job):
    job = load_job(write_job(runs=[RUN_A, RUN_B]))
    plan_job(job, scan_workers=1)
    progress_on(job, "a")
    progress_on(job, "b")
    job = load_job(write_job(runs=[RUN_A, {**RUN_B, "epochs": 6}]))
    with pytest.raises(PlanError, match=r"training settings of b changed.*--replace.*b start over; a keep their progress"):
        plan_job(job, scan_workers=1)
    report = plan_job(job, replace=True, scan_workers=1)
    assert report.replan.restarted == ["b"] and report.replan.kept == ["a"]
    ledger = Ledger.open(job.ledger_path)
    assert ledger.chunk("a", 0)["checkpoint_key"] == "ck-a"
    assert ledger.chunk("b", 0)["checkpoint_key"] is None and ledger.chunk("b", 0)["state"] == "ready"


def test_changing_the_accounts_or_removing_a_run_needs_replace(job_dir, write_job):
    job = load_job(write_job(runs=[RUN_A, RUN_B]))
    plan_job(job, scan_workers=1)
    with pytest.raises(PlanError, match=r"runs removed: b.*b are dropped"):
        plan_job(load_job(write_job(runs=[RUN_A])), scan_workers=1)
    with pytest.raises(PlanError, match=r"the accounts changed \(bob: quota_bytes\)"):
        plan_job(load_job(write_job(runs=[RUN_A, RUN_B], accounts=[("alice", 15), ("bob", 14)])), scan_workers=1)


def test_run_settings_training_would_refuse_are_all_named_before_any_upload(job_dir, write_job):
    from shardrun.errors import ConfigError

    runs = [dict(name="a", model="decusr", scale=2, channels=1, epochs=4, batch_size=16, patch_size=32,
                 patches_per_second=100.0, schedule={"kind": "step", "milestones": [2, 9]}),
            dict(name="b", model="espcn", scale=2, channels=1, epochs=2, batch_size=16, patch_size=32,
                 patches_per_second=100.0, options={"depth": 3},
                 schedule={"kind": "cosine", "warmup_epochs": 2})]
    with pytest.raises(ConfigError) as caught:
        plan_job(load_job(write_job(runs=runs, reserve_mb=0)), scan_workers=1)
    assert caught.value.problems == [
        "runs[0].schedule.milestones = [2, 9]: 9 is past the run's end; milestones (in epochs) must be less "
        "than 4 (48 steps in all)",
        "runs[1]: option 'depth' is not known to espcn; allowed: n1, n2",
        "runs[1].schedule.warmup_epochs = 2: a warm-up of 24 steps is as long as the run or longer; it must be "
        "less than the run's 24 steps",
    ]
    assert files_under(job_dir / "stores") == []


NET = '''
import keras
import tensorflow as tf


def build(scale, channels, filters=4):
    inputs = keras.Input((None, None, channels))
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(channels * scale * scale, 3, padding="same")(x)
    return keras.Model(inputs, keras.layers.Lambda(lambda t: tf.nn.depth_to_space(t, scale))(x))


def same_size(scale, channels):
    inputs = keras.Input((None, None, channels))
    return keras.Model(inputs, keras.layers.Conv2D(channels, 3, padding="same")(inputs))
'''

OWN = dict(name="own", model="file:nets/mynet.py:build", scale=2, channels=1, epochs=2, batch_size=16,
           patch_size=16, patches_per_image=4, patches_per_second=100.0, seed=2)


def test_a_runs_own_network_and_init_weights_are_checked_built_and_uploaded_with_their_hash(job_dir, write_job):
    import numpy as np

    from tests.train.test_init import keras2_h5

    (job_dir / "nets").mkdir()
    (job_dir / "nets" / "mynet.py").write_text(NET)
    rng = np.random.default_rng(0)
    keras2_h5(job_dir / "init.h5", [("conv2d_1", [rng.random((3, 3, 1, 3), np.float32), rng.random(3, np.float32)]),
                                    ("conv2d_2", [rng.random((3, 3, 3, 4), np.float32), rng.random(4, np.float32)])])
    run = {**OWN, "options": {"filters": 3}, "init": "init.h5", "init_output_scale": 255}
    report = plan_job(load_job(write_job(runs=[run], reserve_mb=0)), scan_workers=1)
    files = report.run_files["own"]
    assert files["network"]["parameters"] == 3 * 9 + 3 + 4 * 27 + 4
    home = LocalStore(job_dir / "stores" / "alice")
    for kind, name in (("network", "nets/mynet.py"), ("init", "init.h5")):
        assert files[kind]["key"] == paths.run_file_key("test-job", files[kind]["sha256"], Path(name).suffix)
        assert home.get_bytes(files[kind]["key"]) == (job_dir / name).read_bytes()
    recorded = json.loads(Ledger.open(report.job.ledger_path).run("own")["config"])
    assert recorded["files"]["network"]["sha256"] == files["network"]["sha256"]
    assert "path" not in recorded["files"]["init"]  # this machine's paths stay here


def test_a_bad_network_file_or_init_file_is_named_before_any_upload(job_dir, write_job):
    from shardrun.errors import ConfigError
    from tests.train.test_init import keras2_h5
    import numpy as np

    (job_dir / "nets").mkdir()
    (job_dir / "nets" / "mynet.py").write_text(NET)
    keras2_h5(job_dir / "other.h5", [("conv2d_1", [np.zeros((5, 5, 1, 3), np.float32), np.zeros(3, np.float32)])])
    runs = [{**OWN, "name": "a", "model": "file:nets/absent.py:build"},
            {**OWN, "name": "b", "model": "file:nets/mynet.py:same_size"},
            {**OWN, "name": "c", "options": {"depth": 2}},
            {**OWN, "name": "d", "init": "other.h5"}]
    with pytest.raises(ConfigError) as caught:
        plan_job(load_job(write_job(runs=runs, reserve_mb=0)), scan_workers=1)
    problems = caught.value.problems
    assert len(problems) == 4
    assert problems[0].startswith("runs[0].model = 'file:nets/absent.py:build': no such file")
    assert problems[1] == ("runs[1].model = 'file:nets/mynet.py:same_size': same_size(2, 1) of nets/mynet.py turns "
                           "a 6x5 input into 6x5 with 1 channel(s); scale 2 needs 12x10 with 1")
    assert problems[2] == "runs[2]: option 'depth' is not taken by build of nets/mynet.py; it takes: filters"
    assert problems[3].startswith("runs[3].init = 'other.h5': init file other.h5 does not fit this network: "
                                  "layer 1 is ")
    assert files_under(job_dir / "stores") == []


def test_a_home_too_small_for_the_checkpoints_retention_keeps_is_refused_in_one_line(job_dir, write_job):
    # DECUSR (39,265 parameters): about 0.5 MB a checkpoint, some twenty kept at most: the home
    # (alice, 5 MB) cannot hold them, though bob could take every shard.
    job = load_job(write_job(accounts=[("alice", 0.005), ("bob", 15)], reserve_mb=0))
    with pytest.raises(PlanError) as refused:
        plan_job(job, scan_workers=1)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("The home account alice is too small for the checkpoints retention keeps there: up to ")
    assert "raise its quota_gb, lower reserve_mb, or list a larger account first" in message
    assert message.endswith("Nothing was written.")
    assert files_under(job_dir / "stores") == []


def test_the_home_keeps_room_for_its_checkpoints_and_shards_fill_only_the_rest(job_dir, write_job):
    shutil.rmtree(job_dir / "images")
    write_images(job_dir / "images", 60, size=(140, 140))
    keys = dict(**SMALL_SHARDS, validation_share=0)
    dry = plan_job(load_job(write_job(**keys)), dry_run=True, scan_workers=1)
    from shardrun.train.checkpoint import estimated_size
    from shardrun.train.models import build_model, count_parameters, resolve_model

    decusr = resolve_model("decusr", 2, 1)
    # Counted from the network: 12 bytes a parameter (weights, Adam's two moments) and the file's layout.
    assert 12 * count_parameters(decusr) < dry.retained.largest == estimated_size(build_model(decusr, 1))
    assert any(f"keeps room for the checkpoints retention keeps: up to {dry.retained.files} checkpoints" in n
               for n in dry.notes)
    # A home with room for the checkpoints and half a shard: every shard goes to bob.
    quota_gb = (dry.retained.bytes + 512 * 1024) / 1e9
    report = plan_job(load_job(write_job(accounts=[("alice", quota_gb), ("bob", 15)], **keys)), scan_workers=1)
    assert report.written and {s["account"] for s in report.shards} == {"bob"}
