"""TensorFlow's start-up lines held to `TF_CPP_MIN_LOG_LEVEL`, which TensorFlow itself applies too late.

TensorFlow (2.17 and later) logs through absl, and absl writes every message logged before
`absl::InitializeLog()` to stderr whatever the level: on each start that is absl's own notice
("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR") and
oneDNN's INFO line ("oneDNN custom operations are on..."), once per TensorFlow library loaded.
Neither comes from Python, so the only way to hold them back without touching TensorFlow's
settings (TF_ENABLE_ONEDNN_OPTS would change the numerics) is at the file descriptor: while the
`tensorflow` package is first imported, stderr goes through a pipe that forwards every line as it
comes except absl's lines below the level. Everything else (errors, Python warnings, any line
that is not absl's) passes through at once, so a crash during the import still shows its cause.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import threading

# absl's prefix: severity letter, date, time, thread id, file:line] -- e.g.
# "I0000 00:00:1796193404.958264   27843 port.cc:153] oneDNN custom operations are on. ..."
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_LEVELS = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}  # TF_CPP_MIN_LOG_LEVEL's numbering


def min_log_level() -> int:
    """Returns TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it: 0 (everything) when unset or not a number."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def keeps_line(line: bytes, min_level: int) -> bool:
    """Returns whether a line TensorFlow wrote to stderr is shown at `min_level`: only absl's own
    lines (its notice counts as a warning) are held back, below the level."""
    if line.rstrip(b"\r\n") == _ABSL_NOTICE:
        return _LEVELS[b"W"] >= min_level
    match = _ABSL_LINE.match(line)
    return match is None or _LEVELS[match.group(1)] >= min_level


class _FilteredStderr:
    """Fd 2 through a pipe while open: lines go on to the real stderr as they come, unless held back."""

    def __init__(self, min_level: int):
        self.min_level = min_level

    def __enter__(self) -> "_FilteredStderr":
        sys.stderr.flush()
        self.saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.thread = threading.Thread(target=self._forward, args=(read,), daemon=True,
                                       name="shardrun-tf-stderr")
        self.thread.start()
        return self

    def _forward(self, read: int) -> None:
        pending = b""
        with os.fdopen(read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                self._write([line + b"\n" for line in lines])
        self._write([pending] if pending else [])

    def _write(self, lines: list[bytes]) -> None:
        kept = b"".join(line for line in lines if keeps_line(line, self.min_level))
        if kept:
            os.write(self.saved, kept)

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)  # closes the pipe's last write end: the thread sees the end and stops
        self.thread.join()
        os.close(self.saved)


class _QuietFirstImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` the ordinary way and runs its first import with stderr filtered."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once is enough: the libraries load on the first import
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteringLoader(spec.loader)
        return spec


class _FilteringLoader(importlib.abc.Loader):
    """The real loader, its module run with stderr filtered; then the module gets the real one back."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module) -> None:
        # Put the real loader back first, so nothing TensorFlow reads during its import sees this one.
        module.__spec__.loader = module.__loader__ = self.real
        level = min_log_level()
        if level <= 0:
            self.real.exec_module(module)
            return
        with _FilteredStderr(level):
            self.real.exec_module(module)


def quiet_tensorflow_start() -> None:
    """Makes the first `import tensorflow` (shardrun's, Keras' or the user's) hold absl's start-up
    lines to TF_CPP_MIN_LOG_LEVEL; does nothing once TensorFlow is imported."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFirstImport) for f in sys.meta_path):
        return
    try:
        os.fstat(2)
    except OSError:
        return  # no stderr to filter
    sys.meta_path.insert(0, _QuietFirstImport())
