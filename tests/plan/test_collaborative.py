"""`plan` of a collaborative run on local stores: each replica's part of the images as whole
shards on few accounts, recorded in the plan for its worker, and the bad input refused."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import write_images
from shardrun import paths
from shardrun.config.job import load_job
from shardrun.errors import ConfigError, PlanError
from shardrun.journal import Journal
from shardrun.ledger.db import Ledger
from shardrun.plan.job import plan_job
from shardrun.plan.placement import AccountSpace, ShardToPlace, place_shards
from shardrun.plan.shards import Manifest, layout_shards
from shardrun.storage.local import LocalStore

KEYS = dict(shard_size_mb=1, reserve_mb=0, validation_share=0)  # several shards of ~1 MB, no hold-out
RUN = dict(model="espcn", scale=2, channels=1, epochs=4, batch_size=4, patch_size=16, patches_per_second=100.0)
TOGETHER = dict(name="together", **RUN, mode="collaborative", replicas=3, sync_every=20)


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def images60(job_dir):
    shutil.rmtree(job_dir / "images")
    write_images(job_dir / "images", 60, size=(140, 140))  # ~58 kB each: about 17 to a 1 MB shard
    return job_dir


def plan_event(job) -> dict:
    home = LocalStore(job.base_dir / "stores" / job.home.name)
    journal = Journal(home, job.name)
    events, _ = journal.read(journal.keys())
    (plan,) = [e for e in events if e.kind == "plan"]
    return plan.payload


def test_each_replica_gets_a_fixed_part_of_the_images_as_whole_shards_on_one_account(images60, write_job):
    job = load_job(write_job(runs=[TOGETHER], **KEYS))
    report = plan_job(job, scan_workers=1)
    assert report.written
    record = report.collaborative["together"]
    assert (record["replicas"], record["sync_every"], record["outer_lr"], record["outer_momentum"],
            record["min_replicas"]) == (3, 20, 0.7, 0.9, 3)
    # Each replica trains epochs over its own 20 images: 4 x 20 x 16 / 4 inner steps, 20 a round.
    assert record["steps_per_replica"] == 320 and record["rounds"] == 16
    parts = record["parts"]
    assert [p["replica"] for p in parts] == [0, 1, 2] and [p["images"] for p in parts] == [20, 20, 20]

    # The parts are the images sorted by content hash, cut in three: whole shards, disjoint, all.
    home = LocalStore(job.base_dir / "stores" / "alice")
    manifest = Manifest.from_json_bytes(home.get_bytes(paths.manifest_key(job.name, report.plan_id)))
    shas = {s.id: {i.sha256 for i in s.images} for s in manifest.shards}
    order = sorted(i.sha256 for i in report.scan.accepted)
    expected = [set(order[0:20]), set(order[20:40]), set(order[40:60])]
    for part, images in zip(parts, expected):
        assert set().union(*(shas[s] for s in part["shards"])) == images
        assert sum(len(shas[s]) for s in part["shards"]) == 20  # no shard holds another part's image
    assert sorted(s for p in parts for s in p["shards"]) == sorted(shas)

    # Each part's shards on as few accounts as possible (one: each account has room for a part),
    # the parts spread over the team, and each shard where the record says.
    by_id = {s["id"]: s for s in report.shards}
    for part in parts:
        assert len(part["accounts"]) == 1
        assert {by_id[s]["account"] for s in part["shards"]} == set(part["accounts"])
        assert part["bytes"] == sum(by_id[s]["size"] for s in part["shards"])
        for shard in part["shards"]:
            assert LocalStore(job.base_dir / "stores" / part["accounts"][0]).stat(by_id[shard]["key"]).md5 == \
                by_id[shard]["md5"]
    assert {p["accounts"][0] for p in parts} == {"alice", "bob"}

    # The plan event and the ledger record the mode and each replica's shards for its worker; the
    # plan holds no chunk (an older worker would train it as a plain chain): the ledger makes the
    # run's (round, replica) units from the record, round 0's ready, the rest waiting.
    (run,) = plan_event(job)["runs"]
    assert run["mode"] == "collaborative" and run["collaborative"] == record and run["chunks"] == []
    assert run["config"]["collaborative"]["replicas"] == 3
    ledger = Ledger.open(job.ledger_path)
    assert ledger.collaborative("together") == json.loads(json.dumps(record))
    units = ledger.chunks("together")
    assert [(c["round"], c["replica"], c["start_step"], c["end_step"]) for c in units] == [
        (r, i, 20 * r, 20 * r + 20) for r in range(16) for i in range(3)]
    assert [c["state"] for c in units] == ["ready"] * 3 + ["waiting"] * 45
    assert [(r["round"], r["state"]) for r in ledger.rounds("together")] == [(0, "open")] + [
        (r, "waiting") for r in range(1, 16)]
    assert ledger.run("together")["steps_total"] == 320
    # A replica trains with the run's own settings: the trainer reads them back from the ledger
    # as it reads a plain run's, the collaborative ones left to the rounds.
    from shardrun.train.trainer import TrainConfig

    from shardrun.status.report import job_status

    status = json.loads(json.dumps(job_status(job)))
    assert status["plan"]["collaborative"]["together"]["parts"] == json.loads(json.dumps(parts))
    assert status["runs"][0]["steps_total"] == 320
    recorded = json.loads(ledger.run("together")["config"])
    plain = {k: v for k, v in recorded.items() if k != "collaborative"}
    assert TrainConfig.from_run(recorded) == TrainConfig.from_run(plain)


def test_the_same_collaborative_job_plans_the_same_again(images60, write_job):
    job = load_job(write_job(runs=[TOGETHER], **KEYS))
    first = plan_job(job, scan_workers=1)
    again = plan_job(job, scan_workers=1)
    assert again.plan_id == first.plan_id and not again.written
    assert again.collaborative == first.collaborative
    assert sum(a.uploaded_bytes for a in again.accounts) == 0


def test_runs_of_different_replicas_and_a_plain_run_share_shards_no_part_mixes(images60, write_job):
    runs = [dict(name="plain", **RUN), TOGETHER, {**TOGETHER, "name": "pair", "replicas": 2, "sync_every": 40}]
    job = load_job(write_job(runs=runs, **KEYS))
    report = plan_job(job, scan_workers=1)
    order = sorted(i.sha256 for i in report.scan.accepted)
    home = LocalStore(job.base_dir / "stores" / "alice")
    manifest = Manifest.from_json_bytes(home.get_bytes(paths.manifest_key(job.name, report.plan_id)))
    shas = {s.id: {i.sha256 for i in s.images} for s in manifest.shards}
    for name, replicas in (("together", 3), ("pair", 2)):
        size = 60 // replicas
        for part in report.collaborative[name]["parts"]:
            held = set().union(*(shas[s] for s in part["shards"]))
            assert held == set(order[part["replica"] * size:(part["replica"] + 1) * size])
    # The plain run trains on the images in path order, as it would in a job of its own: the
    # parts' layout moves shards, never the order a plain run's samples are drawn in.
    assert manifest.images != manifest.training_images
    assert [i.path for i in manifest.training_images] == [i.path for i in report.scan.accepted]
    runs = {r["name"]: r for r in plan_event(job)["runs"]}
    assert runs["plain"]["mode"] == "plain" and "collaborative" not in runs["plain"]
    assert "collaborative" not in runs["plain"]["config"]
    ledger = Ledger.open(job.ledger_path)
    assert len(ledger.chunks("plain")) >= 1 and ledger.collaborative("plain") is None
    assert ledger.run("plain")["steps_total"] == 4 * 60 * 16 // 4  # all the images, as a plain run always had
    assert ledger.run("pair")["steps_total"] == 4 * 30 * 16 // 4  # each replica's, over its half
    assert {c["round"] for c in ledger.chunks("pair")} == set(range(ledger.collaborative("pair")["rounds"]))
    assert ledger.collaborative("pair")["replicas"] == 2


def test_a_plain_job_is_laid_out_and_placed_as_before(images60, write_job):
    job = load_job(write_job(runs=[dict(name="plain", **RUN)], **KEYS))
    report = plan_job(job, scan_workers=1)
    specs = layout_shards(report.scan.accepted, job.shard_size_bytes)
    assert [s["id"] for s in report.shards] == [s.id for s in specs]
    empty = [AccountSpace(a.name, a.quota_bytes, 0, 0, report.retained.bytes if a is job.home else 0)
             for a in job.accounts]
    assert {s["id"]: s["account"] for s in report.shards} == place_shards(
        [ShardToPlace(s.id, s.size) for s in specs], empty)
    (run,) = plan_event(job)["runs"]
    assert run["mode"] == "plain" and "collaborative" not in run and run["chunks"]
    manifest = Manifest.from_json_bytes(LocalStore(job.base_dir / "stores" / "alice").get_bytes(
        paths.manifest_key(job.name, report.plan_id)))
    assert manifest.training_images == manifest.images  # the order workers train in, as before
    from shardrun.status.report import job_status

    assert "collaborative" not in job_status(job)["plan"]
    assert report.collaborative == {} and report.retained.rounds == ()


def test_more_replicas_than_images_and_a_round_longer_than_the_run_are_refused_before_any_upload(job_dir, write_job):
    # 12 images: too few to hold any out for validation (docs/job-file.md), so 12 parts at most.
    runs = [{**TOGETHER, "name": "crowd", "replicas": 13},
            {**TOGETHER, "name": "slow", "replicas": 2, "sync_every": 100}]
    with pytest.raises(ConfigError) as refused:
        plan_job(load_job(write_job(runs=runs, reserve_mb=0)), scan_workers=1)
    assert refused.value.problems == [
        "runs[0].replicas = 13: run 'crowd' cannot be split into 13 parts: the data has 12 training images after "
        "the validation images are held out, and each replica needs one of its own at least; at most 12",
        "runs[1].sync_every = 100: longer than run 'slow''s 96 inner steps per replica (4 epochs of 24 steps over "
        "a part of 6 images); at most 96, or raise epochs",
    ]
    assert files_under(job_dir / "stores") == []


def test_a_home_without_room_for_a_rounds_changes_is_refused_in_one_line(images60, write_job):
    runs = [TOGETHER]
    dry = plan_job(load_job(write_job(runs=runs, accounts=[("alice", 15)], **KEYS)), dry_run=True, scan_workers=1)
    (round_space,) = dry.retained.rounds
    assert round_space.replicas == 3 and round_space.files == 5  # 3 changes, the global weights, the momentum
    from shardrun.train.models import build_model, resolve_model
    from shardrun.train.outer import pack

    network = build_model(resolve_model("espcn", 2, 1), seed=0)
    assert round_space.change_bytes == len(pack([w.numpy() for w in network.weights]))  # float32, as packed
    shard_bytes = sum(s["size"] for s in dry.shards)

    # One account: room for every shard and the checkpoints retention keeps, not for the round.
    short = (shard_bytes + dry.retained.bytes + round_space.bytes - round_space.change_bytes) / 1e9
    job = load_job(write_job(runs=runs, accounts=[("alice", short)], **KEYS))
    with pytest.raises(PlanError) as refused:
        plan_job(job, scan_workers=1)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("The home account alice is too small for the collaborative runs: a round of run "
                              "'together' (runs[0]) keeps its 3 replicas' changes, the global weights and the outer "
                              "momentum: 5 x ")
    assert "beside the checkpoints retention keeps (" in message and ") and the shards it must hold (" in message
    assert message.endswith("or list a larger account first (the first account is the home). Nothing was written.")
    assert files_under(job.base_dir / "stores") == []

    # A home with room for its checkpoints but not the round, though bob takes every shard.
    tight = (dry.retained.bytes + round_space.change_bytes) / 1e9
    with pytest.raises(PlanError, match=r"^The home account alice is too small for the collaborative runs: .* is "
                                        r"left on it beside the checkpoints retention keeps \([^)]*\) after "):
        plan_job(load_job(write_job(runs=runs, accounts=[("alice", tight), ("bob", 15)], **KEYS)), scan_workers=1)
    assert files_under(job.base_dir / "stores") == []

    # With the round's room too, the same account takes the job: the room is counted, not guessed.
    enough = (shard_bytes + dry.retained.total_bytes + 1000) / 1e9
    assert plan_job(load_job(write_job(runs=runs, accounts=[("alice", enough)], **KEYS)), scan_workers=1).written
