"""Workers training a collaborative run in-process (docs/collaborative.md): each unit on its own
part of the images, its change handed in, the outer steps chained exactly, a unit resumed
mid-round by another worker with the same result, and a straggler left behind at the timeout.
(test_worker_crash.py SIGKILLs worker processes on one.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.test_worker_faults import FAST, NO_LIMIT, RUN, fold_journal, home_store, plan_test_job
from shardrun.journal import Journal
from shardrun.ledger.db import Ledger
from shardrun.train.outer import OuterSettings, digest, outer_step, unpack
from shardrun.worker import Worker, WorkerJob

# 12 images in 3 parts of 4: 4 patches each, batches of 16, so one step per epoch; 6 epochs make
# 6 inner steps per replica, in rounds of 2.
TOGETHER = dict(RUN, name="c", epochs=6, mode="collaborative", replicas=3, sync_every=2)


def worker(job, account="alice", **settings) -> Worker:
    from dataclasses import replace

    return Worker(WorkerJob.from_config(job), account, NO_LIMIT, settings=replace(FAST, **settings))


def arrays(store, key, sha256):
    data = store.get_bytes(key)
    assert digest(unpack(data)) == sha256
    return unpack(data)


def final_global(ledger, store) -> str:
    last = ledger.rounds("c")[-1]
    assert last["state"] == "done"
    return last["weights_sha256"]


@pytest.fixture
def together(tmp_path):
    return plan_test_job(tmp_path / "job", [TOGETHER], platform="local", validation_share=0)


def test_one_worker_trains_every_replica_on_its_part_and_chains_the_outer_steps(together, tmp_path):
    w = worker(together)
    assert w.run() == "finished"
    store = home_store(together)
    ledger = fold_journal(together, tmp_path / "check.db")
    assert ledger.finished() and ledger.bad_events() == []
    record = ledger.collaborative("c")
    assert (record["rounds"], record["steps_per_replica"]) == (3, 6)
    rounds = ledger.rounds("c")
    assert [(r["state"], r["closed_by"], json.loads(r["replicas"])) for r in rounds] == [("done", "all", [0, 1, 2])] * 3
    assert all(json.loads(r["validation"])["psnr"] > 0 for r in rounds)

    # Each replica trained on its own part only: the images of its shards, none of another's.
    for replica, part in enumerate(record["parts"]):
        source = w._trainers[("c", replica)].source
        assert len(source) == part["images"] == 4
        assert {source.name(i) for i in range(len(source))}.isdisjoint(
            {w._trainers[("c", other)].source.name(i) for other in range(3) if other != replica for i in range(4)})

    # The chain of outer steps, recomputed here from the changes on the store, gives the same bytes.
    units = {(c["round"], c["replica"]): c for c in ledger.chunks("c")}
    weights = w.rounds.initial_weights("c")
    momentum = None
    for r in rounds:
        changes = [arrays(store, units[(r["round"], i)]["change_key"], units[(r["round"], i)]["change_sha256"])
                   for i in range(3)]
        weights, momentum = outer_step(weights, momentum, changes, OuterSettings(0.7, 0.9))
        assert digest(weights) == r["weights_sha256"] and digest(momentum) == r["momentum_sha256"]
        assert not all(np.array_equal(a, b) for a, b in zip(changes[0], changes[1]))  # the parts differ
    assert digest(arrays(store, rounds[-1]["weights_key"], rounds[-1]["weights_sha256"])) == digest(weights)
    # The global network's checkpoint of the last round holds those weights.
    from shardrun.train.trainer import read_checkpoint

    path = tmp_path / "global.ckpt"
    store.download(rounds[-1]["checkpoint_key"], path, expected_md5=rounds[-1]["checkpoint_md5"])
    meta, stored, _ = read_checkpoint(path)
    assert meta["step"] == 6 and digest([np.asarray(a, np.float32) for a in stored]) == digest(weights)


def test_a_unit_stopped_mid_round_is_resumed_by_another_worker_with_the_same_result(together, tmp_path):
    reference_job = tmp_path / "reference"
    shutil.copytree(together.base_dir, reference_job)
    from shardrun.config.job import load_job

    reference = load_job(reference_job / "job.toml")
    assert worker(reference).run() == "finished"
    expected = final_global(fold_journal(reference, tmp_path / "ref.db"), home_store(reference))

    first = worker(together)
    # Stop in the middle of round 1 (inner step 3 of [2, 4)), after a checkpoint at every step.
    first.on_progress = lambda run, chunk, step, end, loss: first.request_stop() if step >= 3 else None
    assert first.run() == "stopped"
    stopped = first.outcomes[-1]
    assert (stopped.result, stopped.step) == ("yield", 3) and stopped.chunk // 3 == 1
    second = worker(together, account="bob")
    assert second.run() == "finished"
    resumed = next(o for o in second.outcomes if o.chunk == stopped.chunk)
    assert (resumed.start_step, resumed.step, resumed.result) == (3, 4, "done")  # from its own checkpoint
    ledger = fold_journal(together, tmp_path / "check.db")
    assert final_global(ledger, home_store(together)) == expected


def test_a_straggler_is_left_behind_at_the_timeout_and_rejoins_from_the_global_weights(tmp_path):
    # 24 s of store time: round 0 waits for it (its replica 2 is held by a silent session); the
    # later rounds, all three replicas trained here, end well within it even on a loaded machine.
    run = dict(TOGETHER, min_replicas=2, round_timeout=0.4)
    job = plan_test_job(tmp_path / "job", [run], platform="local", validation_share=0, lease_minutes=30)
    w = worker(job)
    w.sync()
    # Another session claims replica 2 of round 0 and goes silent (its lease is 30 min).
    w.journal.append("claim", "ghost", "c", 2, 0, {})
    assert w.run() == "finished"
    ledger = fold_journal(job, tmp_path / "check.db")
    rounds = ledger.rounds("c")
    assert (rounds[0]["closed_by"], json.loads(rounds[0]["replicas"])) == ("timeout", [0, 1])
    assert rounds[0]["closed_time"] - rounds[0]["started_time"] >= 24
    assert [(r["closed_by"], json.loads(r["replicas"])) for r in rounds[1:]] == [("all", [0, 1, 2])] * 2
    units = {(c["round"], c["replica"]): c for c in ledger.chunks("c")}
    assert (units[(0, 2)]["state"], units[(0, 2)]["owner"]) == ("dropped", None)
    # The ghost's late change is refused: its unit was dropped.
    ghost = Journal(home_store(job), job.name)
    ghost.append("done", "ghost", "c", 2, 0, {"key": "k", "md5": "m", "change": {"key": "k", "sha256": "s", "size": 1}})
    ledger.sync(ghost)
    assert ledger.chunks("c")[2]["state"] == "dropped" and ledger.finished()
    # Round 0's outer step combined the two changes in, and nothing of the ghost's.
    store = home_store(job)
    changes = [arrays(store, units[(0, i)]["change_key"], units[(0, i)]["change_sha256"]) for i in (0, 1)]
    expected, _ = outer_step(w.rounds.initial_weights("c"), None, changes, OuterSettings(0.7, 0.9))
    assert digest(expected) == rounds[0]["weights_sha256"]


def test_a_replanned_collaborative_job_keeps_its_rounds(together, tmp_path):
    w = worker(together)
    w.on_progress = lambda run, chunk, step, end, loss: w.request_stop() if step >= 3 else None
    w.run()
    before = Ledger.open(together.ledger_path)
    done = [r["state"] for r in before.rounds("c")]
    from shardrun.plan.job import plan_job

    report = plan_job(together, scan_workers=1)
    assert not report.written  # the same job: the same plan
    assert [r["state"] for r in fold_journal(together, tmp_path / "again.db").rounds("c")] == done == [
        "done", "open", "waiting"]


def test_retention_keeps_what_the_next_rounds_and_export_read_and_lets_old_rounds_go(together, tmp_path):
    from shardrun import paths
    from shardrun.ledger.retention import RetentionRule
    from shardrun.sweep import Sweeper

    assert worker(together).run() == "finished"
    store = home_store(together)
    ledger = fold_journal(together, tmp_path / "check.db")
    rounds = ledger.rounds("c")
    listing = lambda r: {s.key for s in store.list(paths.round_prefix(together.name, "c", r))}  # noqa: E731
    before = [listing(r) for r in range(3)]
    assert all(len(keys) == 6 for keys in before)  # 3 changes, the weights, the momentum, the checkpoint

    # Not yet settled (the rounds after them are done less than a lease ago): nothing goes.
    sweeper = Sweeper(store, together.name, RetentionRule(keep_last=1))
    sweeper.tidy(ledger, now=rounds[-1]["done_time"])
    assert [listing(r) for r in range(3)] == before
    later = rounds[-1]["done_time"] + 10 * ledger.plan()["lease_seconds"]
    for _ in range(6):  # a few folders a pass
        sweeper.tidy(ledger, now=later)
    best = max(rounds, key=lambda r: (json.loads(r["validation"])["psnr"], r["round"]))
    for r in (0, 1):  # rounds whose next round is done and settled: only a kept global checkpoint stays
        assert listing(r) == ({rounds[r]["checkpoint_key"]} if r == best["round"] else set())
    assert listing(2) == before[2]  # the last round: its global weights are the run's result
    # Each replica keeps its last round's final checkpoint (a unit of a new round would start from it).
    left = {s.key for s in store.list(paths.checkpoints_prefix(together.name, "c"))}
    for c in ledger.chunks("c"):
        if c["round"] == 2:
            assert c["checkpoint_key"] in left
        else:
            assert c["checkpoint_key"] not in left  # an older round's: never read again


def test_export_takes_the_global_network_of_a_round(together, tmp_path):
    from click.testing import CliRunner

    from shardrun.cli.main import main

    toml = str(together.base_dir / "job.toml")
    result = CliRunner().invoke(main, ["export", toml, "--run", "c", "-o", str(tmp_path / "early.keras")])
    assert result.exit_code != 0 and "has no global network yet" in result.output
    assert worker(together).run() == "finished"
    out = tmp_path / "c.keras"
    result = CliRunner().invoke(main, ["export", toml, "--run", "c", "-o", str(out)])
    assert result.exit_code == 0, result.output
    import keras

    from shardrun.product.checkpoints import fetch_checkpoint
    from shardrun.product.export import model_config_of
    from shardrun.train.portable import model_from_weights

    ledger = fold_journal(together, tmp_path / "check.db")
    last = ledger.rounds("c")[-1]
    fetched = fetch_checkpoint(together, Ledger.open(together.ledger_path), "c", "final")
    # The last outer step's global weights, exactly, and the exported network computes with them.
    assert digest([np.asarray(w, np.float32) for w in fetched.weights]) == last["weights_sha256"]
    x = np.random.default_rng(0).random((1, 13, 11, 1)).astype(np.float32)
    expected = model_from_weights(model_config_of(fetched.meta), fetched.weights)(x).numpy()
    assert np.array_equal(keras.saving.load_model(out)(x).numpy(), expected)
    described = json.loads((tmp_path / "c.model.json").read_text())
    assert described["checkpoint"]["step"] == 6
    assert described["validation"]["psnr"] == json.loads(last["validation"])["psnr"]


def test_a_damaged_change_is_handed_in_again_and_the_result_is_unchanged(together, tmp_path):
    reference_job = tmp_path / "reference"
    shutil.copytree(together.base_dir, reference_job)
    from shardrun.config.job import load_job

    reference = load_job(reference_job / "job.toml")
    assert worker(reference).run() == "finished"
    expected = [r["weights_sha256"] for r in fold_journal(reference, tmp_path / "ref.db").rounds("c")]

    # A worker trains round 0's three units but stops before the outer step; then a replica's
    # change is damaged on the store.
    first = worker(together)
    assert first.run(max_chunks=3) == "max-chunks"
    ledger = fold_journal(together, tmp_path / "mid.db")
    assert ledger.rounds("c")[0]["state"] == "closed"
    damaged = ledger.chunks("c")[1]
    store = home_store(together)
    store.put_bytes(damaged["change_key"], b"SRARR1\n" + b"\0" * 40)
    second = worker(together, account="bob")
    assert second.run() == "finished"
    ledger = fold_journal(together, tmp_path / "check.db")
    unit = ledger.chunks("c")[1]
    assert unit["generation"] == 1 and unit["change_key"] != damaged["change_key"]
    assert "cannot be read" in unit["last_error"] and ledger.bad_events() == []
    assert [r["weights_sha256"] for r in ledger.rounds("c")] == expected


def test_the_worker_that_closes_a_round_steps_it_and_keeps_its_replicas_state(together, tmp_path):
    a = worker(together, heartbeat_seconds=10.0)  # another worker waits 2 heartbeats for the closer
    b = worker(together, account="bob", heartbeat_seconds=10.0)
    assert a.run(max_chunks=2) == "max-chunks"
    assert b.run(max_chunks=1) == "max-chunks"  # its change closes round 0
    trained_by_a = {o.replica for o in a.outcomes}
    assert len(trained_by_a) == 2 and {o.replica for o in b.outcomes} == {0, 1, 2} - trained_by_a
    assert a.loop() == "idle"  # round 0 is closed, but its closer computes the outer step
    assert b.loop() == "trained"
    ledger = fold_journal(together, tmp_path / "check.db")
    (outer,) = [e for e in ledger.db.query("SELECT worker FROM events WHERE kind = 'outer'")]
    assert outer["worker"] == b.id and ledger.rounds("c")[0]["state"] == "done"
    # Each keeps to its replicas, and starts their next rounds from the state it holds: no
    # checkpoint is downloaded to start a round.
    a.run(max_chunks=4)
    assert {o.replica for o in a.outcomes[2:]} == trained_by_a
    assert not (a.job.cache_dir / "restore").exists() or not any((a.job.cache_dir / "restore").iterdir())
    # The run's validation in status is the global network's (the rounds' outer steps).
    ledger = fold_journal(together, tmp_path / "later.db")
    metrics = ledger.run_metrics()["c"]
    assert metrics["psnr"] == json.loads(ledger.rounds("c")[metrics["val_step"] // 2 - 1]["validation"])["psnr"]


def test_a_replica_that_diverges_fails_its_unit_with_the_reason_and_the_worker_goes_on(tmp_path):
    run = dict(TOGETHER, learning_rate=1e30)  # Adam's first step takes the weights to 1e30: then inf, NaN
    job = plan_test_job(tmp_path / "job", [run, dict(RUN, name="plain")], platform="local", validation_share=0)
    w = worker(job)
    results = [w.loop() for _ in range(6)]  # three units fail, the plain chunk trains, then idle
    assert results.count("failed") == 3 and results[-1] == "idle"
    ledger = fold_journal(job, tmp_path / "check.db")
    failed = [c for c in ledger.chunks("c") if c["last_error"] and "diverged" in c["last_error"]]
    assert failed and "lower its learning rate" in failed[0]["last_error"]
    assert ledger.rounds("c")[0]["state"] == "open"  # nothing of a diverged replica is combined
    assert {c["state"] for c in ledger.chunks("plain")} == {"done"}  # the worker's other work went on
