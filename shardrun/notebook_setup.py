"""Installs shardrun's dependencies into a notebook runtime without replacing its TensorFlow.

shardrun declares `tensorflow-cpu` on x86-64 so that laptops and CI do not download the CUDA
libraries. Colab (and Kaggle) ship the GPU build, `tensorflow`; both wheels install the same
`tensorflow` package, so a plain `pip install shardrun` would write the CPU build over the GPU
one. shardrun only needs `import tensorflow` to work, which either build gives. So the notebook
installs shardrun with `--no-deps` and then calls `install_missing()`, which installs only the
requirements this runtime lacks or has too old — never TensorFlow while one is importable —
and leaves every other package of the runtime as it is.

Imports nothing but the standard library and `packaging` (which notebooks ship), because it runs
before shardrun's own dependencies are installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from typing import Callable, Iterable

from packaging.requirements import Requirement

TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu")


def installed_version(name: str) -> str | None:
    """Returns the installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: Iterable[str], version_of: Callable[[str], str | None],
                         has_tensorflow: bool) -> list[str]:
    """Returns the requirements (as written) that `version_of` shows missing or too old.

    Extras ([gpu], [test]) and lines for other kinds of machine are skipped; so are TensorFlow's
    lines when `has_tensorflow`, whichever distribution provides it.
    """
    needed = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if has_tensorflow and _canonical(requirement.name) in TENSORFLOW_DISTRIBUTIONS:
            continue
        version = version_of(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            needed.append(str(requirement))
    return needed


def install_missing(say: Callable[[str], None] = lambda line: None) -> list[str]:
    """Installs what the installed shardrun requires and this runtime lacks; returns it.

    `say` receives one line before installing and one saying what was installed and which
    TensorFlow was kept (the notebook passes `print`).
    """
    has_tensorflow = importlib.util.find_spec("tensorflow") is not None
    needed = missing_requirements(importlib.metadata.requires("shardrun") or [], installed_version, has_tensorflow)
    if needed:
        say("Installing: " + ", ".join(needed))
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *needed], check=True)
    tensorflow = next((f"{name} {installed_version(name)}" for name in TENSORFLOW_DISTRIBUTIONS
                       if installed_version(name)), "none")
    say(f"shardrun {installed_version('shardrun')}; TensorFlow: {tensorflow} (kept as installed); "
          f"{len(needed)} other dependencies installed.")
    return needed


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")
