"""`status --tensorboard DIR`: the ledger's curves as TensorBoard event files, one folder per run.

The shell around status/scalars.py: it reads each run's history from a synced ledger, keeps
only the points past what DIR's state file says was written, writes them as one new event file
per run and call, and then records them in the state file. Both writes are atomic (a temporary
file, then a rename), and a call cut short between the two leaves event files numbered past the
state's count, which the next call deletes before it writes the same points again: a (tag, step)
point is never in DIR twice.

Events are written with TensorBoard's own protos and record writer, which need neither
TensorFlow nor TensorBoard's event-file writer (that one loads TensorFlow when it is installed,
seconds that status should not spend).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from shardrun.errors import ShardrunError
from shardrun.ledger.db import Ledger
from shardrun.paths import TENSORBOARD_STATE, tensorboard_event_file, tensorboard_run_folder
from shardrun.status.scalars import Scalar, advanced, history_scalars, new_scalars

STATE_SCHEMA = "shardrun.tensorboard/1"
INSTALL = "pip install 'shardrun[tensorboard]'"
_OUR_FILE = re.compile(r"^events\.out\.tfevents\.(\d{10})\.shardrun$")


@dataclass
class TensorBoardExport:
    logdir: Path
    points: dict[str, int] = field(default_factory=dict)  # run -> points written by this call
    files: list[Path] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.points.values())


def require_tensorboard() -> None:
    """Returns None if the tensorboard package can be imported; raises ShardrunError saying how to install it."""
    try:
        _protos()
    except ImportError as e:
        raise ShardrunError(f"--tensorboard needs the tensorboard package ({e.name or e}): {INSTALL}") from e


def _protos():
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    from tensorboard.util import tensor_util

    return event_pb2, summary_pb2, RecordWriter, tensor_util


def export_tensorboard(ledger: Ledger, logdir: str | os.PathLike, job: str) -> TensorBoardExport:
    """Returns what was written to `logdir`: each run's points newer than its state file records."""
    require_tensorboard()
    logdir = Path(logdir)
    plan = ledger.plan()
    plan_id = plan["id"] if plan else None
    state = _read_state(logdir, job, plan_id)
    points = [p for run in ledger.runs() for p in history_scalars(run["name"], ledger.history(run["name"]))]
    fresh = new_scalars(points, state["written"])
    result = TensorBoardExport(logdir)
    sequence = state["files"]
    by_run: dict[str, list[Scalar]] = {}
    for p in fresh:
        by_run.setdefault(p.run, []).append(p)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        for run, run_points in by_run.items():
            folder = logdir / tensorboard_run_folder(run)
            folder.mkdir(parents=True, exist_ok=True)
            _drop_unrecorded(folder, sequence)
            path = folder / tensorboard_event_file(sequence)
            _write_events(path, run_points)
            result.points[run], result.files = len(run_points), result.files + [path]
        if fresh:
            state = {**state, "files": sequence + 1, "written": advanced(state["written"], fresh)}
            _write_atomic(logdir / TENSORBOARD_STATE, json.dumps(state, indent=1, sort_keys=True).encode())
    except OSError as e:
        raise ShardrunError(f"--tensorboard {logdir}: cannot write there ({e.strerror or e})") from e
    return result


def _read_state(logdir: Path, job: str, plan_id: str | None) -> dict:
    """Returns DIR's state (a fresh one if DIR has none); raises if DIR belongs to another job or plan."""
    fresh = {"schema": STATE_SCHEMA, "job": job, "plan": plan_id, "files": 0, "written": {}}
    path = logdir / TENSORBOARD_STATE
    if logdir.exists() and not logdir.is_dir():
        raise ShardrunError(f"--tensorboard {logdir}: is a file; give a folder (it is created if missing)")
    try:
        state = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return fresh
    except (OSError, ValueError) as e:
        raise ShardrunError(f"--tensorboard {logdir}: {TENSORBOARD_STATE} cannot be read ({e}); "
                            "give an empty folder") from e
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA or not isinstance(state.get("written"), dict):
        raise ShardrunError(f"--tensorboard {logdir}: {TENSORBOARD_STATE} is not a shardrun TensorBoard state; "
                            "give an empty folder")
    if state.get("job") != job or state.get("plan") != plan_id:
        # A new plan restarts its runs' steps: TensorBoard would read them as a restart and drop
        # the old curves' tails, so the new plan's curves go to a folder of their own.
        raise ShardrunError(f"--tensorboard {logdir}: holds the curves of job {state.get('job')!r} plan "
                            f"{state.get('plan')!r}, not job {job!r} plan {plan_id!r}; give another folder")
    return state


def _drop_unrecorded(folder: Path, sequence: int) -> None:
    """Deletes our event files numbered `sequence` or later: a call cut short before its state was saved."""
    for child in folder.iterdir():
        m = _OUR_FILE.match(child.name)
        if m and int(m.group(1)) >= sequence:
            child.unlink()


def _write_events(path: Path, points: list[Scalar]) -> None:
    event_pb2, summary_pb2, RecordWriter, tensor_util = _protos()
    records = [event_pb2.Event(wall_time=points[0].wall_time, file_version="brain.Event:2").SerializeToString()]
    for p in points:
        # A float64 tensor with the scalars plugin's metadata, as tf.summary.scalar writes it
        # (but without float32's rounding of the ledger's numbers).
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DataClass.DATA_CLASS_SCALAR)
        event = event_pb2.Event(wall_time=p.wall_time, step=p.step)
        event.summary.value.add(tag=p.tag, tensor=tensor_util.make_tensor_proto(float(p.value), dtype="float64"),
                          metadata=metadata)
        records.append(event.SerializeToString())

    class _Buffer(list):
        def write(self, data):
            self.append(data)

        def flush(self):
            pass

        def close(self):
            pass

    buffer = _Buffer()
    writer = RecordWriter(buffer)
    for record in records:
        writer.write(record)
    _write_atomic(path, b"".join(buffer))


def _write_atomic(path: Path, data: bytes) -> None:
    # The temporary name has no "tfevents" in it, so TensorBoard never reads a half-written file.
    tmp = path.with_name(f".{path.name.replace('tfevents', 'partial')}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
