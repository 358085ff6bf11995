"""The `shardrun` command: documented help, rendered output and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from shardrun.cli.main import main


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


def test_every_command_and_option_has_help_text():
    assert main.help and len(main.help) > 40
    commands = list(all_commands(main))
    assert {"plan", "status"} <= {path[-1] for path, _ in commands}
    for path, command in commands:
        assert command.help and len(command.help.strip()) > 20, f"{' '.join(path)} has no help text"
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0
        assert " ".join(command.help.split()[:4]) in " ".join(result.output.split())


def test_console_script_answers_help():
    result = subprocess.run([sys.executable, "-m", "shardrun", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "plan" in result.stdout and "status" in result.stdout


def test_plan_prints_data_accounts_runs_and_estimates(job_dir, write_job):
    (job_dir / "images" / "notes.png").write_text("not really a png")
    job = write_job(reserve_mb=0)
    result = CliRunner().invoke(main, ["plan", str(job), "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "12 images" in out and "1 rejected" in out
    assert "notes.png" in out and "not an image" in out
    assert "Shards per account" in out and "alice" in out and "bob" in out
    assert "decusr-x2" in out and "chunks" in out
    assert "GPU-hours" in out and "sessions" in out and "2 workers in parallel" in out
    assert "Dry run: nothing was written" in out
    assert not (job_dir / "stores").exists()


def test_plan_shows_a_collaborative_runs_rounds_and_each_replicas_part(job_dir, write_job):
    run = dict(name="together", model="espcn", scale=2, channels=1, epochs=2, batch_size=4, patch_size=16,
               patches_per_second=100.0, mode="collaborative", replicas=3, sync_every=16)
    result = CliRunner().invoke(main, ["plan", str(write_job(runs=[run], reserve_mb=0)), "--dry-run"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    # Each replica: 2 epochs over its 4 of the 12 images, 16 patches each, 4 a step: 32 steps.
    assert "Collaborative run together: 3 replicas, 2 rounds of 16 inner steps each" in out
    assert "Replicas of together: each downloads only its part" in out
    assert "32 x3" in out  # each replica's steps, side by side
    refused = CliRunner().invoke(main, ["plan", str(write_job(runs=[{**run, "replicas": 20}], reserve_mb=0))])
    assert refused.exit_code == 1 and refused.output.startswith("Error: ")
    assert "runs[0].replicas = 20: run 'together' cannot be split into 20 parts" in refused.output
    assert not (job_dir / "stores").exists()


def test_plan_then_status_table_and_json(job_dir, write_job):
    job = write_job(reserve_mb=0)
    assert CliRunner().invoke(main, ["plan", str(job)]).exit_code == 0
    table = CliRunner().invoke(main, ["status", str(job)])
    assert table.exit_code == 0 and "decusr-x2" in table.output and "alice" in table.output
    data = json.loads(CliRunner().invoke(main, ["status", str(job), "--json"]).output)
    assert data["schema"] == "shardrun.status/1"
    assert data["runs"][0]["steps_total"] == 48 and data["runs"][0]["chunks"]["ready"] == 1
    assert [a["name"] for a in data["accounts"]] == ["alice", "bob"]


@pytest.mark.parametrize("text, message", [
    ("[job\n", "not valid TOML"),
    ('[job]\nname = "x"\n', "job.data: missing"),
])
def test_bad_job_files_give_an_error_and_exit_1(tmp_path, text, message):
    path = tmp_path / "job.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["plan", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert "Traceback" not in result.output


def test_library_errors_are_one_line(job_dir, write_job):
    job = write_job(data="absent/")
    result = CliRunner().invoke(main, ["plan", str(job)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "absent" in lines[0]
