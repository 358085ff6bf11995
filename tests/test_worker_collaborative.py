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
    run = dict(TOGETHER, min_replicas=2, round_timeout=0.02)  # 1.2 s of store time
    job = plan_test_job(tmp_path / "job", [run], platform="local", validation_share=0, lease_minutes=30)
    w = worker(job)
    w.sync()
    # Another session claims replica 2 of round 0 and goes silent (its lease is 30 min).
    w.journal.append("claim", "ghost", "c", 2, 0, {})
    assert w.run() == "finished"
    ledger = fold_journal(job, tmp_path / "check.db")
    rounds = ledger.rounds("c")
    assert (rounds[0]["closed_by"], json.loads(rounds[0]["replicas"])) == ("timeout", [0, 1])
    assert rounds[0]["closed_time"] - rounds[0]["opened_time"] >= 1.2
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
