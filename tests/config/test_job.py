"""The job file: a valid file's typed values, and every kind of bad input reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardrun.config.job import GB, MODEL_NAMES, load_job, parse_job
from shardrun.errors import ConfigError
from shardrun.config.platforms import load_platforms

PLATFORMS = load_platforms()

VALID = """
[job]
name = "ultrasound-x2"
data = "images/"
platform = "colab-free"
[[accounts]]
name = "alice"
store = "local:///srv/shardrun/alice"
quota_gb = 15
[[accounts]]
name = "bob"
store = "local:///srv/shardrun/bob"
[[runs]]
name = "decusr-x2"
model = "decusr"
scale = 2
channels = 1
epochs = 4
batch_size = 64
patch_size = 32
seed = 1
[runs.options]
blocks = 4
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_job(text, Path("/jobs"), "job.toml", PLATFORMS)
    return info.value.problems


def test_valid_job_parses_into_typed_values():
    job = parse_job(VALID, Path("/jobs"), "job.toml", PLATFORMS)
    assert job.name == "ultrasound-x2" and job.platform == "colab-free"
    assert [a.name for a in job.accounts] == ["alice", "bob"]
    assert job.home.name == "alice"
    assert job.accounts[1].quota_bytes == 15 * GB  # default quota
    run = job.runs[0]
    assert (run.model, run.scale, run.channels, run.epochs, run.batch_size, run.patch_size, run.seed) == (
        "decusr", 2, 1, 4, 64, 32, 1)
    assert run.options == {"blocks": 4} and run.patches_per_image == 16
    assert job.shard_size_bytes == 256_000_000 and job.parallel_workers == 2
    assert job.ledger_path == Path("/jobs/.shardrun/ultrasound-x2/ledger.db")


def test_every_problem_is_reported_at_once_with_key_value_and_allowed():
    text = VALID.replace("scale = 2", "scale = 5").replace("epochs = 4", "epochs = 0").replace(
        "batch_size = 64", 'batch_size = "64"').replace("quota_gb = 15", "quota_gb = -1")
    found = problems(text)
    assert len(found) == 4, found
    assert "runs[0].scale = 5: must be one of 2, 3, 4" in found
    assert "runs[0].epochs = 0: must be a number greater than 0" in found
    assert "runs[0].batch_size = '64': must be an integer" in found
    assert "accounts[0].quota_gb = -1: must be a number greater than 0" in found


def test_unknown_keys_get_a_did_you_mean():
    found = problems(VALID.replace("epochs = 4", "epoch = 4").replace('platform = "colab-free"',
                                                                      'platfrom = "colab-free"'))
    assert "runs[0].epoch: unknown key; did you mean 'epochs'?" in found
    assert "runs[0].epochs: missing (required, an integer)" in found
    assert "job.platfrom: unknown key; did you mean 'platform'?" in found


def test_unknown_top_level_table_and_unrelated_key():
    found = problems(VALID + "\n[[run]]\nname = 'x'\n")
    assert any(p.startswith("run: unknown key; did you mean 'runs'?") for p in found)
    found = problems(VALID.replace("seed = 1", "zzz = 1"))
    assert any(p.startswith("runs[0].zzz: unknown key; allowed: name, model") for p in found)


def test_missing_tables_and_keys():
    found = problems('[job]\nname = "x"\n')
    assert "job.data: missing (required, a string)" in found
    assert "accounts: missing; add at least one [[accounts]] table" in found
    assert "runs: missing; add at least one [[runs]] table" in found


@pytest.mark.parametrize("replace, expected", [
    ('scale = 2', "runs[0].scale = true: must be an integer"),
    ('patch_size = 32', "runs[0].patch_size = -32: must be a number greater than 0"),
])
def test_wrong_types_and_negative_sizes(replace, expected):
    value = {"scale = 2": "scale = true", "patch_size = 32": "patch_size = -32"}[replace]
    assert expected in problems(VALID.replace(replace, value))


def test_zero_shard_size_and_negative_reserve():
    found = problems(VALID.replace('platform = "colab-free"', 'platform = "colab-free"\nshard_size_mb = 0\nreserve_mb = -1'))
    assert "job.shard_size_mb = 0: must be a number greater than 0" in found
    assert "job.reserve_mb = -1: must be a number of 0 or more" in found


def test_unknown_store_scheme_platform_and_model():
    found = problems(VALID.replace("local:///srv/shardrun/alice", "ftp://bucket/alice")
                     .replace('"colab-free"', '"colab-paid"').replace('"decusr"', '"unet"'))
    assert ("accounts[0].store = 'ftp://bucket/alice': must be a store URL: local://... or memory://... or drive://... "
            "or s3://... or gs://... or fsspec://...") in found
    assert any(p.startswith("job.platform = 'colab-paid': must be one of 'colab-free', 'colab-pro'") for p in found)
    assert any(p.startswith("runs[0].model = 'unet': must be one of 'srcnn-915'") for p in found)


def test_two_accounts_with_the_same_name_or_store():
    text = VALID.replace('name = "bob"\nstore = "local:///srv/shardrun/bob"',
                         'name = "alice"\nstore = "local:///srv/shardrun/alice"')
    found = problems(text)
    assert "accounts[1].name = 'alice': already used by accounts[0]; each must be different" in found
    assert "accounts[1].store = 'local:///srv/shardrun/alice': already used by accounts[0]; each must be different" in found


def test_patch_size_must_suit_the_scale():
    assert "runs[0].patch_size = 33: must be a multiple of scale (2)" in problems(
        VALID.replace("patch_size = 32", "patch_size = 33"))
    assert any("must be at least 8 at scale 2" in p for p in problems(VALID.replace("patch_size = 32", "patch_size = 6")))


def test_not_toml_is_one_clear_problem(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[job\nname = ")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("not valid TOML")
    assert str(path) in str(info.value)


def test_missing_and_binary_job_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_job(tmp_path / "absent.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_job(binary)


def test_invalid_names_are_refused():
    found = problems(VALID.replace('name = "ultrasound-x2"', 'name = "../escape"'))
    assert any(p.startswith("job.name = '../escape': must be 1-64 letters") for p in found)


def test_model_names_match_the_training_registry():
    from shardrun.train import models
    assert list(MODEL_NAMES) == models.model_names()


def test_shipped_example_jobs_are_valid():
    folder = Path(__file__).resolve().parents[2] / "configs" / "examples"
    examples = sorted(folder.glob("*.toml"))
    assert examples
    for path in examples:
        job = load_job(path)
        assert job.accounts and job.runs


RUN = VALID.split("[[runs]]")[0] + "[[runs]]\n" + VALID.split("[[runs]]")[1].split("[runs.options]")[0]


def test_schedule_loss_and_clipping_parse_into_the_run():
    job = parse_job(RUN + 'loss = "l1"\nclip_norm = 0.4\n[runs.schedule]\nkind = "step"\nmilestones = [2, 3]\n'
                    'factor = 0.1\n', Path("/jobs"), "job.toml", PLATFORMS)
    run = job.runs[0]
    assert run.loss == "l1" and run.clip_norm == 0.4
    assert run.schedule == {"kind": "step", "milestones": [2, 3], "factor": 0.1}
    assert run.to_payload()["schedule"] == run.schedule
    plain = parse_job(RUN, Path("/jobs"), "job.toml", PLATFORMS).runs[0]
    assert (plain.loss, plain.clip_norm, plain.schedule) == (None, None, None)


def test_bad_schedules_losses_and_clipping_are_all_reported():
    found = problems(RUN + 'loss = "l2"\nclip_norm = -1\n[runs.schedule]\nkind = "cosine"\nmilestones = [3, 2]\n'
                     'warmup_steps = 5\nwarmup_epochs = 1\nmin_lr = "0"\n')
    assert "runs[0].loss = 'l2': must be one of 'mse', 'l1', 'charbonnier'" in found
    assert "runs[0].clip_norm = -1: must be a number greater than 0" in found
    assert "runs[0].schedule.milestones = [3, 2]: must be a non-empty list of increasing positive integers" in found
    assert "runs[0].schedule.min_lr = '0': must be an integer or a number" in found
    assert any(p.startswith("runs[0].schedule.milestones = [3, 2]: not used by kind = 'cosine'") for p in found)
    assert any(p.startswith("runs[0].schedule.warmup_epochs = 1: give warmup_steps or warmup_epochs") for p in found)
    found = problems(RUN + '[runs.schedule]\nkind = "exponential"\n')
    assert found == ["runs[0].schedule.kind = 'exponential': must be one of 'constant', 'step', 'cosine'"]
    found = problems(RUN + '[runs.schedule]\nkind = "step"\nwarmup = 3\n')
    assert "runs[0].schedule.milestones: missing" in found[-1]
    assert found[0].startswith("runs[0].schedule.warmup: unknown key; did you mean")


# -- collaborative runs (docs/collaborative.md) ---------------------------------------------------

COLLAB = RUN + 'mode = "collaborative"\nreplicas = 4\nsync_every = 50\n'


def test_a_collaborative_run_parses_with_its_defaults_and_records_its_settings():
    run = parse_job(COLLAB, Path("/jobs"), "job.toml", PLATFORMS).runs[0]
    assert run.mode == "collaborative" and run.replicas == 4
    c = run.collaborative
    assert (c.replicas, c.sync_every, c.outer_lr, c.outer_momentum, c.min_replicas, c.round_timeout) == (
        4, 50, 0.7, 0.9, 4, None)
    assert run.to_payload()["collaborative"] == {"replicas": 4, "sync_every": 50, "outer_lr": 0.7,
                                                 "outer_momentum": 0.9, "min_replicas": 4, "round_timeout": None}
    given = parse_job(COLLAB + "outer_lr = 1\nouter_momentum = 0\nmin_replicas = 3\nround_timeout = 90\n",
                      Path("/jobs"), "job.toml", PLATFORMS).runs[0].collaborative
    assert (given.outer_lr, given.outer_momentum, given.min_replicas, given.round_timeout) == (1.0, 0.0, 3, 90.0)
    assert isinstance(given.outer_lr, float)


def test_a_plain_run_is_what_it_was_before_collaborative_runs():
    for text in (RUN, RUN + 'mode = "plain"\n'):
        run = parse_job(text, Path("/jobs"), "job.toml", PLATFORMS).runs[0]
        assert run.mode == "plain" and run.collaborative is None and run.replicas == 1
        # No new key in what the plan records: a plan made before keeps its runs' progress.
        assert "collaborative" not in run.to_payload() and "mode" not in run.to_payload()


def test_bad_collaborative_settings_are_each_one_line_naming_the_run_and_the_key():
    found = problems(COLLAB.replace("replicas = 4", "replicas = 2") + "min_replicas = 3\nouter_momentum = 1\n"
                     "outer_lr = 0\nround_timeout = -5\n")
    assert found == [
        "runs[0].outer_lr = 0: must be a number greater than 0",
        "runs[0].outer_momentum = 1: must be a number from 0 to below 1",
        "runs[0].round_timeout = -5: must be a number greater than 0",
        "runs[0].min_replicas = 3: more than replicas = 2 in run 'decusr-x2'; a round can wait for at most its "
        "2 replicas",
    ]
    assert problems(RUN + 'mode = "collaborative"\n') == [
        "runs[0].replicas: missing (required for mode = 'collaborative' in run 'decusr-x2', an integer greater than 0)",
        "runs[0].sync_every: missing (required for mode = 'collaborative' in run 'decusr-x2', an integer greater "
        "than 0)",
    ]
    assert problems(COLLAB.replace("replicas = 4", "replicas = 0")) == [
        "runs[0].replicas = 0: must be a number greater than 0"]
    assert problems(RUN + 'mode = "federated"\nreplicas = 2\n') == [
        "runs[0].mode = 'federated': must be one of 'plain', 'collaborative'"]
    assert all("\n" not in p for p in found)


def test_collaborative_keys_on_a_plain_run_are_refused_not_ignored():
    found = problems(RUN + "replicas = 3\nsync_every = 10\n")
    assert found == [
        "runs[0].replicas = 3: only a collaborative run takes replicas; set mode = 'collaborative' in run "
        "'decusr-x2' or remove replicas",
        "runs[0].sync_every = 10: only a collaborative run takes sync_every; set mode = 'collaborative' in run "
        "'decusr-x2' or remove sync_every",
    ]


def test_a_collaborative_job_file_loads_through_the_loader(tmp_path):
    from tests.conftest import job_text

    path = tmp_path / "job.toml"
    path.write_text(job_text(runs=[dict(name="together", model="espcn", scale=2, channels=1, epochs=2,
                                        batch_size=4, patch_size=16, mode="collaborative", replicas=3,
                                        sync_every=25, min_replicas=2)]))
    job = load_job(path)
    assert job.runs[0].collaborative.min_replicas == 2 and job.runs[0].collaborative.sync_every == 25


def _runs(*tables: str) -> str:
    head = VALID.split("[[runs]]")[0]
    body = "\n".join(f'[[runs]]\nname = "{name}"\nmodel = "espcn"\nscale = 2\nchannels = 1\nepochs = 4\n'
                     f'batch_size = 16\npatch_size = 32\n{extra}' for name, extra in tables)
    return head + body


def test_a_run_may_start_from_another_runs_network():
    job = parse_job(_runs(("warm", ""), ("main", 'init = "run:warm"\n'), ("fine", 'init = "run:main"\n')),
                    Path("/jobs"), "job.toml", PLATFORMS)
    assert [(r.init_run, r.init_file) for r in job.runs] == [(None, None), ("warm", None), ("main", None)]
    assert job.runs[1].to_payload()["init"] == "run:warm"  # what the workers read back from the plan
    with_file = parse_job(_runs(("a", 'init = "weights.h5"\n')), Path("/jobs"), "job.toml", PLATFORMS).runs[0]
    assert (with_file.init_run, with_file.init_file) == (None, "weights.h5")


def test_a_run_init_must_name_another_run_without_a_cycle_or_an_output_scale():
    assert problems(_runs(("a", 'init = "run:b"\n'), ("b", 'init = "run:a"\n'), ("c", 'init = "run:c"\n'),
                          ("d", 'init = "run:nope"\n'), ("e", 'init = "run:a"\ninit_output_scale = 255\n'))) == [
        "runs[0].init = 'run:b': the runs' inits form a cycle ('a' -> 'b' -> 'a'); each run would wait for the other",
        "runs[1].init = 'run:a': the runs' inits form a cycle ('b' -> 'a' -> 'b'); each run would wait for the other",
        "runs[2].init = 'run:c': a run cannot start from its own network; name another run of the job",
        "runs[3].init = 'run:nope': the job has no run named 'nope'; its runs are: 'a', 'b', 'c', 'e'",
        "runs[4].init_output_scale = 255: only for an init file; the network of run 'a' already outputs what "
        "this run's does",
    ]
