"""`status --tensorboard DIR`: the ledger's curves read back with TensorBoard's own reader, and
written incrementally (a second call adds exactly the new points, never one twice)."""

from __future__ import annotations

import shutil
import sys

import pytest
from click.testing import CliRunner

from shardrun import paths
from shardrun.cli.main import main
from shardrun.errors import ShardrunError
from shardrun.ledger.db import Ledger
from shardrun.status import scalars
from shardrun.status.scalars import history_scalars
from shardrun.status.tensorboard import export_tensorboard
from tests.status.test_report import T0, VAL_1, ev, job, known_events, plan_event  # noqa: F401 (job is a fixture)

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

LATER = [ev(1200, "heartbeat", "w1", "r1", 1, step=160, loss=0.044, patches_per_second=150.0),
         ev(1210, "checkpoint", "w1", "r1", 1, step=170, key="k/r1-170", md5="d", loss=0.043, validation=VAL_1)]


def read_back(logdir) -> dict[tuple[str, str], list[tuple[int, float, float]]]:
    """Returns {(run, tag): [(step, value, wall time)]} as TensorBoard reads DIR."""
    out = {}
    for folder in sorted(p for p in logdir.iterdir() if p.is_dir()):
        acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            out[(folder.name, tag)] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)), e.wall_time)
                                       for e in acc.Tensors(tag)]
    return out


def ledger_points(ledger) -> dict[tuple[str, str], list[tuple[int, float, float]]]:
    out = {}
    for run in ledger.runs():
        for p in history_scalars(run["name"], ledger.history(run["name"])):
            out.setdefault((p.run, p.tag), []).append((p.step, p.value, p.wall_time))
    return out


@pytest.fixture
def ledger():
    ledger = Ledger.open(None)
    ledger.add_events(known_events())
    yield ledger
    ledger.close()


def test_the_ledgers_curves_read_back_with_tensorboards_reader(ledger, tmp_path):
    done = export_tensorboard(ledger, tmp_path / "tb", "test-job")
    got = read_back(tmp_path / "tb")
    assert got == ledger_points(ledger)
    assert done.total == sum(len(v) for v in got.values()) and set(done.points) == {"r1", "r2"}
    # the numbers are the events' own, at their steps, at the store's server time of the event
    # (step 40 holds a heartbeat's 0.05 and a checkpoint's 0.06: its point is their mean)
    assert got[("r1", scalars.LOSS)][:3] == [(20, 0.09, T0 + 130), (40, pytest.approx(0.055), T0 + 260),
                                             (60, 0.07, T0 + 370)]
    assert got[("r1", scalars.THROUGHPUT)][0] == (20, 80.0, T0 + 130)
    assert got[("r1", scalars.PSNR)] == [(40, 30.0, T0 + 260), (100, 31.0, T0 + 480)]
    assert got[("r1", scalars.BICUBIC_SSIM)] == [(40, 0.85, T0 + 260), (100, 0.85, T0 + 480)]
    assert got[("r1", scalars.GAIN)] == [(40, 2.0, T0 + 260), (100, 3.0, T0 + 480)]
    assert ("r2", scalars.PSNR) not in got  # r2 was never validated
    assert not any(tag.endswith("learning_rate") for _, tag in got)  # the ledger holds no rate


def test_a_second_call_adds_exactly_the_new_points_and_none_when_nothing_is_new(ledger, tmp_path):
    logdir = tmp_path / "tb"
    export_tensorboard(ledger, logdir, "test-job")
    before = read_back(logdir)
    files = sorted(logdir.rglob("*tfevents*"))

    nothing = export_tensorboard(ledger, logdir, "test-job")
    assert nothing.total == 0 and nothing.files == [] and sorted(logdir.rglob("*tfevents*")) == files
    assert read_back(logdir) == before

    ledger.add_events(LATER)
    more = export_tensorboard(ledger, logdir, "test-job")
    after = read_back(logdir)
    added = {k: v[len(before.get(k, [])):] for k, v in after.items() if v[len(before.get(k, [])):]}
    assert added == {("r1", scalars.LOSS): [(160, 0.044, T0 + 1200), (170, 0.043, T0 + 1210)],
                     ("r1", scalars.THROUGHPUT): [(160, 150.0, T0 + 1200)],
                     **{("r1", tag): [(170, value, T0 + 1210)] for tag, value in (
                         (scalars.PSNR, 30.0), (scalars.SSIM, 0.90), (scalars.BICUBIC_PSNR, 28.0),
                         (scalars.BICUBIC_SSIM, 0.85), (scalars.GAIN, 2.0))}}
    assert more.total == 8 and more.points == {"r1": 8}
    assert after == ledger_points(ledger)
    for series in after.values():
        steps = [s for s, _, _ in series]
        assert steps == sorted(set(steps))  # never a (tag, step) point twice


def test_a_call_cut_short_before_saving_its_state_leaves_no_duplicate(ledger, tmp_path):
    logdir = tmp_path / "tb"
    export_tensorboard(ledger, logdir, "test-job")
    first = next((logdir / "r1").glob("*tfevents*"))
    # What a crash between writing an event file and saving the state leaves: a file numbered
    # past the state's count, holding points the state does not record.
    shutil.copy(first, logdir / "r1" / paths.tensorboard_event_file(1))
    ledger.add_events(LATER)
    export_tensorboard(ledger, logdir, "test-job")
    assert read_back(logdir) == ledger_points(ledger)


def test_a_folder_of_another_plan_or_not_a_folder_is_refused(ledger, tmp_path):
    export_tensorboard(ledger, tmp_path / "tb", "test-job")
    with pytest.raises(ShardrunError, match="holds the curves of job 'test-job' plan 'plan-1', not job 'other'"):
        export_tensorboard(ledger, tmp_path / "tb", "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShardrunError, match="is a file; give a folder"):
        export_tensorboard(ledger, tmp_path / "file", "test-job")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / paths.TENSORBOARD_STATE).write_text("{not json")
    with pytest.raises(ShardrunError, match="cannot be read"):
        export_tensorboard(ledger, tmp_path / "bad", "test-job")


def test_status_cli_writes_tensorboard_and_says_how_many_points(job, tmp_path):
    result = CliRunner().invoke(main, ["status", str(job.base_dir / "job.toml"), "--json",
                                       "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    assert "TensorBoard: 0 new points" in result.output


def test_without_tensorboard_the_option_is_one_line_with_the_install_command(job, tmp_path, monkeypatch):
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)
    result = CliRunner().invoke(main, ["status", str(job.base_dir / "job.toml"), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --tensorboard needs the tensorboard package")
    assert "pip install 'shardrun[tensorboard]'" in lines[0]
    assert not (tmp_path / "tb").exists()
