"""A run that starts from another run's final network (`init = "run:NAME"`, docs/training.md): a
plain warm-up before a collaborative run (docs/collaborative.md), or a fine-tuning chain. No
worker starts it before the other run has finished; it then starts from exactly that network."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.test_worker_collaborative import TOGETHER, worker
from tests.test_worker_faults import RUN, fold_journal, home_store, plan_test_job
from shardrun.errors import ConfigError
from shardrun.train.checkpoint import read_checkpoint
from shardrun.train.outer import digest

WARM = dict(RUN, name="warm")  # 2 epochs of 3 steps: chunks of 2 steps on colab-free


def final_weights(job, ledger, run: str, folder) -> list[np.ndarray]:
    final = ledger.final_network(run)
    path = folder / f"{run}-final.ckpt.npz"
    home_store(job).download(final["key"], path, expected_md5=final["md5"])
    _, weights, _ = read_checkpoint(path)
    return [np.asarray(w, np.float32) for w in weights]


def test_a_run_waits_for_the_run_it_starts_from(tmp_path):
    job = plan_test_job(tmp_path / "job", [WARM, dict(RUN, name="fine", init="run:warm", learning_rate=1e-4)],
                        platform="local", validation_share=0, lease_minutes=30)
    w = worker(job)
    w.sync()
    assert w.ledger.waits_for("fine") == "warm" and w.ledger.waits_for("warm") is None
    # Another session holds warm's first chunk: fine's first chunk is ready, but it waits.
    w.journal.append("claim", "ghost", "warm", 0, 0, {})
    assert w.loop() == "idle"
    assert [c["state"] for c in w.ledger.chunks("fine")][0] == "ready"
    assert w.ledger.db.execute("SELECT COUNT(*) FROM events WHERE kind = 'claim' AND run = 'fine'").fetchone()[0] == 0


def test_a_plain_run_starts_from_the_final_network_of_the_run_it_names(tmp_path):
    fine = dict(RUN, name="fine", init="run:warm", learning_rate=1e-4, seed=5)
    job = plan_test_job(tmp_path / "job", [WARM, fine], platform="local", validation_share=0)
    assert worker(job).run() == "finished"
    ledger = fold_journal(job, tmp_path / "check.db")
    assert ledger.run_finished("warm") and ledger.run_finished("fine") and ledger.waits_for("fine") is None
    warm_done = max(c["done_time"] for c in ledger.chunks("warm"))
    first_claim = ledger.db.execute("SELECT MIN(server_time) FROM events WHERE kind = 'claim' AND run = 'fine'").fetchone()[0]
    assert first_claim >= warm_done

    # The same run with warm's final checkpoint given as an init file ends with the same weights.
    reference = tmp_path / "reference"
    reference.mkdir()
    warm = final_weights(job, ledger, "warm", reference)
    shutil.copy(reference / "warm-final.ckpt.npz", reference / "start.ckpt.npz")
    ref_job = plan_test_job(reference / "job", [dict(fine, init="../start.ckpt.npz")], platform="local",
                            validation_share=0)
    assert worker(ref_job).run() == "finished"
    ref_ledger = fold_journal(ref_job, tmp_path / "ref.db")
    ours = final_weights(job, ledger, "fine", tmp_path)
    theirs = final_weights(ref_job, ref_ledger, "fine", reference)
    assert digest(ours) == digest(theirs)
    assert digest(ours) != digest(warm)  # fine trained on from there


def test_a_collaborative_run_starts_its_rounds_from_a_plain_warm_up(tmp_path):
    job = plan_test_job(tmp_path / "job", [WARM, dict(TOGETHER, init="run:warm")], platform="local",
                        validation_share=0)
    w = worker(job)
    assert w.run() == "finished"
    ledger = fold_journal(job, tmp_path / "check.db")
    warm = final_weights(job, ledger, "warm", tmp_path)
    assert digest(w.rounds.initial_weights("c")) == digest(warm)
    assert ledger.rounds("c")[0]["base_sha256"] == digest(warm)
    assert all(r["state"] == "done" for r in ledger.rounds("c"))


def test_a_run_that_names_a_network_of_another_shape_is_refused_at_plan(tmp_path):
    with pytest.raises(ConfigError) as error:
        plan_test_job(tmp_path / "job", [WARM, dict(RUN, name="x3", scale=3, patch_size=24, init="run:warm")],
                      platform="local")
    (line,) = [p for p in error.value.problems if "runs[1].init" in p]
    assert "the network of run 'warm' does not fit this run's" in line
    assert "weight 5 is [3, 3, 32, 4] there, [3, 3, 32, 9] here" in line
