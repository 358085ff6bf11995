"""The source paper (Temiz, Bilge, Uygur 2019): its name and its measured timings
(configs/paper_figures.toml), which `bench`, `advise` and the status page print beside ours."""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any


def paper_figures() -> dict[str, Any]:
    """Returns the source paper's timing tables from configs/paper_figures.toml."""
    text = resources.files("shardrun.configs").joinpath("paper_figures.toml").read_text("utf-8")
    return tomllib.loads(text)


PAPER = "Temiz, Bilge, Uygur 2019"
