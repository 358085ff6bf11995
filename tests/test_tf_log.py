"""TensorFlow's start-up lines held to TF_CPP_MIN_LOG_LEVEL: absl's notice and oneDNN's INFO line,
which absl writes before TensorFlow applies the level, leave a worker's stderr; nothing else does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardrun.tf_log import _FilteredStderr, keeps_line

ROOT = Path(__file__).resolve().parents[1]
NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN = (b"I0000 00:00:1796193404.958264   27843 port.cc:153] oneDNN custom operations are on. You may see "
          b"slightly different numerical results due to floating-point round-off errors.\n")
ERROR = b"E0000 00:00:1796193404.958264   27843 cuda_dnn.cc:8310] Unable to register cuDNN factory\n"


def test_absl_lines_below_the_level_are_held_back_and_every_other_line_kept():
    assert not keeps_line(ONEDNN, 2) and not keeps_line(NOTICE, 2) and not keeps_line(ONEDNN, 1)
    assert keeps_line(NOTICE, 1) and keeps_line(ONEDNN, 0) and keeps_line(NOTICE, 0)
    assert keeps_line(ERROR, 2) and not keeps_line(ERROR, 3)
    for line in (b"Traceback (most recent call last):\n", b"/x/y.py:3: UserWarning: careful\n", b"I said so\n"):
        assert keeps_line(line, 3)


def test_the_filter_forwards_what_it_keeps_as_it_comes(capfd):
    with _FilteredStderr(2):
        os.write(2, NOTICE + ONEDNN[:40])
        os.write(2, ONEDNN[40:] + ERROR + b"a line of its own\nno newline at the end")
    assert capfd.readouterr().err == (ERROR + b"a line of its own\nno newline at the end").decode()


def start_tensorflow(**env) -> str:
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", "import shardrun; import tensorflow; print('ok')"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**base, "PYTHONPATH": str(ROOT), **env})
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
    return result.stderr


@pytest.mark.slow  # two TensorFlow start-ups: ~10 s
def test_importing_tensorflow_after_shardrun_prints_no_absl_or_onednn_start_up_lines():
    shown = start_tensorflow(TF_CPP_MIN_LOG_LEVEL="0")  # the user's level wins: all of it
    if "absl::InitializeLog" not in shown:
        pytest.skip("this TensorFlow build logs nothing before absl starts")
    quiet = start_tensorflow()  # shardrun's default level, 2
    assert "absl::InitializeLog" not in quiet and "oneDNN custom operations" not in quiet, quiet
