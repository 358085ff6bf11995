"""The session's deadline under schedulers: SLURM's end time (from the environment, squeue or
scontrol, through a fake command runner) and SkyPilot's name, with the injected clock."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from shardrun.clock import FakeClock
from shardrun.config.platforms import load_platforms
from shardrun.session import detect_platform, detect_session, parse_slurm_duration, slurm_deadline

# Read from the repository's file, not the installed package's data (an editable install made from
# another checkout would serve that checkout's configs/).
PLATFORMS = load_platforms((Path(__file__).resolve().parent.parent / "configs" / "platforms.toml").read_text("utf-8"))
NOW = 1_700_000_000.0


class FakeSlurm:
    """A command runner that answers squeue and scontrol from canned text, and records the calls."""

    def __init__(self, squeue=None, scontrol=None):
        self.answers = {"squeue": squeue, "scontrol": scontrol}
        self.calls: list[list[str]] = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        answer = self.answers[argv[0]]
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        return answer


def session(environ, runner, budget=None, job_platform="slurm"):
    return detect_session(PLATFORMS, job_platform, budget, clock=FakeClock(NOW), environ=environ, runner=runner)


def test_slurm_job_end_time_from_the_environment_is_the_deadline_and_no_command_runs():
    runner = FakeSlurm()
    s = session({"SLURM_JOB_ID": "42", "SLURM_JOB_END_TIME": str(int(NOW + 4 * 3600))}, runner)
    assert s.platform == "slurm" and s.deadline == NOW + 4 * 3600
    assert s.started_at == NOW and s.seconds_left(FakeClock(NOW + 600)) == 4 * 3600 - 600
    assert "SLURM_JOB_END_TIME" in s.source and "42" in s.source
    assert runner.calls == []


def test_without_the_variable_squeue_time_left_gives_the_deadline():
    runner = FakeSlurm(squeue="1-02:03:04\n")
    s = session({"SLURM_JOB_ID": "42"}, runner)
    assert s.deadline == NOW + 86400 + 2 * 3600 + 3 * 60 + 4
    assert runner.calls == [["squeue", "-h", "-j", "42", "-o", "%L"]]
    assert "1-02:03:04 left (squeue)" in s.source


@pytest.mark.parametrize("text, seconds", [("45", 45 * 60), ("12:30", 750), ("3:00:00", 3 * 3600),
                                           ("2-00", 2 * 86400), ("2-01:30", 2 * 86400 + 5400), ("x", None),
                                           ("1:2:3:4", None)])
def test_slurm_durations(text, seconds):
    assert parse_slurm_duration(text) == seconds


@pytest.mark.parametrize("answer", ["UNLIMITED", "NOT_SET", ""])
def test_a_job_without_a_time_limit_has_no_deadline(answer):
    s = session({"SLURM_JOB_ID": "7"}, FakeSlurm(squeue=answer + "\n"))
    assert s.deadline is None and "no time limit" in s.source


def test_squeue_missing_falls_back_to_scontrol_end_time():
    end = datetime.fromtimestamp(NOW + 5400).strftime("%Y-%m-%dT%H:%M:%S")
    runner = FakeSlurm(squeue=None, scontrol=f"JobId=42 JobName=sr\n   RunTime=00:10:00 TimeLimit=01:40:00 "
                                            f"TimeMin=N/A\n   StartTime=x EndTime={end} Deadline=N/A\n")
    s = session({"SLURM_JOB_ID": "42"}, runner)
    assert s.deadline == NOW + 5400 and "scontrol" in s.source
    assert [c[0] for c in runner.calls] == ["squeue", "scontrol"]


def test_scontrol_unlimited_time_limit_means_no_deadline():
    s = session({"SLURM_JOB_ID": "42"}, FakeSlurm(squeue="garbage", scontrol="TimeLimit=UNLIMITED EndTime=Unknown"))
    assert s.deadline is None and "TimeLimit=UNLIMITED" in s.source


def test_nothing_usable_is_no_deadline_with_the_reasons_never_a_crash():
    runner = FakeSlurm(squeue=subprocess.CalledProcessError(1, "squeue"), scontrol="EndTime=Unknown")
    s = session({"SLURM_JOB_ID": "42", "SLURM_JOB_END_TIME": "not-a-number"}, runner)
    assert s.deadline is None
    assert "end time unknown" in s.source and "exit status 1" in s.source and "EndTime" in s.source
    missing = session({"SLURM_JOB_ID": "42"}, FakeSlurm())
    assert missing.deadline is None and "not installed on this node" in missing.source


def test_a_stale_or_zero_end_time_is_not_trusted():
    deadline, how = slurm_deadline({"SLURM_JOB_ID": "9", "SLURM_JOB_END_TIME": "0"}, NOW, FakeSlurm(squeue="10:00"))
    assert deadline == NOW + 600 and "squeue" in how


def test_the_earlier_of_slurm_end_and_budget_wins():
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_END_TIME": str(int(NOW + 4 * 3600))}
    shorter = session(env, FakeSlurm(), budget=1)
    assert shorter.deadline == NOW + 3600 and "--budget" in shorter.source
    longer = session(env, FakeSlurm(), budget=10)
    assert longer.deadline == NOW + 4 * 3600 and "SLURM_JOB_END_TIME" in longer.source


def test_skypilot_is_named_and_has_no_limit_of_its_own():
    env = {"SKYPILOT_TASK_ID": "sky-managed-2026-01-01-00-00-00-000000_sr_1-0", "SKYPILOT_NODE_RANK": "0"}
    runner = FakeSlurm()
    s = session(env, runner, job_platform="skypilot")
    assert s.platform == "skypilot" and s.deadline is None and s.source == "no session limit"
    assert runner.calls == []
    # SkyPilot provisioning onto a SLURM cluster: named after SkyPilot, ended by SLURM.
    both = session({**env, "SLURM_JOB_ID": "5", "SLURM_JOB_END_TIME": str(int(NOW + 60))}, runner)
    assert both.platform == "skypilot" and both.deadline == NOW + 60


def test_notebooks_are_detected_before_schedulers():
    assert detect_platform({"COLAB_GPU": "1", "SLURM_JOB_ID": "1"}) == "colab"
    assert detect_platform({"SLURM_JOB_ID": "1"}) == "slurm"
    assert detect_platform({}) == "local"


def test_scheduler_platforms_have_no_session_limit_of_their_own():
    for name in ("slurm", "skypilot"):
        assert PLATFORMS[name].session_seconds is None and PLATFORMS[name].usable_seconds is None
