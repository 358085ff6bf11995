"""`shardrun models` and `shardrun bench`: what they print, write and refuse."""

from __future__ import annotations

import json
import tomllib

import click
import pytest
from click.testing import CliRunner

from shardrun.config.platforms import load_profile
from shardrun.cli.main import main
from shardrun.cli.train import bench, models


@pytest.mark.parametrize("command", [models, bench])
def test_commands_and_options_have_help(command):
    assert command.help and len(command.help.strip()) > 20
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{command.name} {param.opts[0]} has no help text"


def test_models_lists_parameter_counts_as_json():
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listed = {m["name"]: m for m in json.loads(result.output)["models"]}
    assert set(listed) == {"srcnn-915", "srcnn-955", "fsrcnn", "espcn", "decusr", "vdsr", "edsr-baseline"}
    assert listed["vdsr"]["parameters"] == 665_921 and listed["vdsr"]["input"] == "upsampled"
    assert listed["edsr-baseline"]["loss"] == "l1" and listed["decusr"]["loss"] == "mse"
    assert listed["srcnn-915"]["parameters"] == 8_129
    assert listed["decusr"]["parameters"] == 39_265
    assert listed["decusr"]["options"] == {"blocks": 4, "filters": 16}
    assert listed["espcn"]["input"] == "low" and listed["srcnn-955"]["input"] == "upsampled"


def test_models_for_rgb_and_a_scale_only_some_models_support():
    result = CliRunner().invoke(main, ["models", "--channels", "3", "--scale", "8"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "40,995" in lines["decusr"]
    assert lines["srcnn-915"].split()[1] == "-"  # SRCNN has no x8 network


def test_models_refuses_a_scale_no_model_supports():
    result = CliRunner().invoke(main, ["models", "--scale", "5"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: scale=5 is not supported by any model; supported: 2, 3, 4, 8"


def test_bench_writes_a_profile_the_planner_reads(tmp_path):
    output = tmp_path / "cpu.toml"
    result = CliRunner().invoke(main, ["bench", 
        "--model", "espcn", "--option", "n1=4", "--option", "n2=4", "--patch-size", "16",
        "--batch-size", "8", "--steps", "2", "--warmup", "1", "--images", "50000",
        "--output", str(output), "--name", "test machine",
    ])
    assert result.exit_code == 0, result.output
    profile = tomllib.loads(output.read_text())
    measured = profile["models"]["espcn"]
    assert measured["patches_per_second"] > 0
    assert (measured["patch_size"], measured["scale"], measured["channels"], measured["batch_size"]) == (16, 2, 1, 8)
    assert profile["profile"]["name"] == "test machine" and profile["profile"]["source"] == "shardrun bench"
    loaded = load_profile(str(output))
    assert loaded.models["espcn"].patches_per_second == measured["patches_per_second"]
    # The paper's figures are printed beside the measurement.
    assert "8.85 h" in result.output and "1.52 h" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("espcn"))
    assert abs(float(row.split()[2]) - measured["patches_per_second"]) <= 0.051


def test_bench_reports_bad_models_and_options_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--model", "nope", "--output", str(tmp_path / "p.toml")])
    assert result.exit_code == 1 and result.output.startswith("Error: model='nope' is not a known model")
    result = CliRunner().invoke(main, ["bench", "--option", "blocks", "--output", str(tmp_path / "p.toml")])
    assert result.exit_code == 2 and "is not KEY=INTEGER" in result.output
    result = CliRunner().invoke(main, ["bench", "--model", "espcn", "--patch-size", "6",
                                        "--output", str(tmp_path / "p.toml")])
    assert result.exit_code == 1 and "patch_size=6 is too small" in result.output
    assert not (tmp_path / "p.toml").exists()
