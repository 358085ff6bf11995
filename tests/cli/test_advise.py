"""`shardrun advise` and plan's advice section, through the real command line on real images."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from shardrun.cli.main import main

from tests.price_files import MINIMAL
from shardrun.config.platforms import load_platforms

USABLE = load_platforms()["colab-free"].usable_seconds


def slow_run(train_hours: float) -> dict:
    """A run whose training takes `train_hours` on the profile's GPU: 48 steps of 16 patches (12 images)."""
    return dict(name="decusr-x2", model="decusr", scale=2, channels=1, epochs=4, batch_size=16, patch_size=32,
                patches_per_second=48 * 16 / (train_hours * 3600))


def advise(job, *args) -> dict:
    result = CliRunner().invoke(main, ["advise", str(job), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_advise_json_recommends_free_sessions_for_a_small_job(write_job):
    data = advise(write_job())
    assert data["schema"] == "shardrun.advice/1" and data["job"] == "test-job"
    assert data["work"]["images"] == 12 and data["work"]["gpu"] == "T4"
    assert data["work"]["runs"][0]["steps_total"] == 48
    assert data["free"]["platform"] == "colab-free" and data["free"]["fits"] is True
    assert data["free"]["team_accounts"] == 2 and data["workers"] == 2
    assert data["recommendation"]["kind"] == "free"
    assert any(r["historical"] and r["date"] == "2019" for r in data["rent"])
    assert all(r["cost_usd"] == pytest.approx(r["hours"] * r["usd_per_hour"]) for r in data["rent"])


def test_a_deadline_free_sessions_miss_turns_the_advice_to_renting(write_job):
    job = write_job(runs=[slow_run(20.0)])
    relaxed = advise(job, "--deadline", "3d")
    assert relaxed["deadline_hours"] == 72 and relaxed["recommendation"]["kind"] == "free"
    tight = advise(job, "--deadline", "12h")
    assert tight["free"]["calendar_hours"] > 20 and tight["free"]["meets_deadline"] is False
    assert tight["recommendation"]["kind"] == "rent"
    chosen = [r for r in tight["rent"] if f"rent {r['provider']} {r['gpu']}" == tight["recommendation"]["option"]]
    assert chosen and chosen[0]["calendar_hours"] <= 12 and not chosen[0]["historical"]


def test_workers_option_overrides_the_jobs(write_job):
    assert advise(write_job(), "--workers", "1")["free"]["workers"] == 1


def test_advise_prints_the_options_and_the_recommendation(write_job):
    result = CliRunner().invoke(main, ["advise", str(write_job(runs=[slow_run(30.0)]))])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Free sessions on colab-free (T4)" in out and "fits in 12-hour pieces" in out
    assert "Renting" in out and "2019 (paper)" in out and "Buying" in out
    assert "Recommendation: free sessions on colab-free." in out
    assert "docs/responsible-use.md" in out


def test_another_price_file_with_a_malformed_entry_is_named(write_job, tmp_path):
    prices = tmp_path / "mine.toml"
    prices.write_text(MINIMAL.replace("usd_per_hour = 1.99", "usd_per_hour = -1.99"))
    result = CliRunner().invoke(main, ["advise", str(write_job()), "--prices", str(prices)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {prices}: 1 problem:")
    assert "rent[1] (Amazon V100) usd_per_hour = -1.99: must be a finite number greater than 0" in result.output
    assert "Traceback" not in result.output


def test_another_price_file_is_used(write_job, tmp_path):
    prices = tmp_path / "mine.toml"
    prices.write_text(MINIMAL.replace('match = ["K80"]', 'match = ["K80", "T4"]'))
    data = advise(write_job(runs=[slow_run(30.0)]), "--prices", str(prices), "--deadline", "1d")
    assert data["prices"] == str(prices)
    assert [(r["provider"], r["gpu"]) for r in data["rent"]] == [("Google", "K80"), ("Amazon", "V100")]
    assert data["buy"] == []


@pytest.mark.parametrize("value", ["3", "soon", "-1d"])
def test_a_bad_deadline_is_refused_by_the_option(write_job, value):
    result = CliRunner().invoke(main, ["advise", str(write_job()), "--deadline", value])
    assert result.exit_code == 2 and "Invalid value for '--deadline'" in result.output
    assert "not a duration" in result.output


def test_plan_dry_run_ends_with_an_advice_section(job_dir, write_job):
    result = CliRunner().invoke(main, ["plan", str(write_job(reserve_mb=0)), "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("Estimate:") < out.index("Advice (the roadmap of Temiz, Bilge, Uygur 2019")
    assert "Renting (cheapest 3)" in out and "Recommendation: free sessions on colab-free." in out
    assert "2019 (paper)" not in out  # the compact section lists today's prices only
    assert not (job_dir / "stores").exists()


def test_advise_writes_nothing(job_dir, write_job):
    job = write_job()
    before = sorted(p.relative_to(job_dir) for p in job_dir.rglob("*"))
    advise(job)
    after = sorted(p.relative_to(job_dir) for p in job_dir.rglob("*"))
    assert after == before


def test_a_job_whose_data_is_missing_gives_a_one_line_error(write_job):
    result = CliRunner().invoke(main, ["advise", str(write_job(data="nowhere/"))])
    assert result.exit_code == 1 and result.output.startswith("Error: dataset folder 'nowhere/' does not exist")
    assert len(result.output.strip().splitlines()) == 1
