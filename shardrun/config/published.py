"""Published PSNR/SSIM of SR networks on benchmark sets (configs/published.toml), each with its source."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shardrun.errors import ConfigError

SOURCE = "configs/published.toml"


@dataclass(frozen=True)
class PublishedFigure:
    model: str  # "bicubic", "srcnn", "fsrcnn", "espcn", "decusr"
    dataset: str
    scale: int
    psnr: float
    ssim: float | None
    source: str


def load_published(text: str | None = None) -> list[PublishedFigure]:
    """Returns the shipped published figures (or those in `text`)."""
    if text is None:
        # A source checkout reads its own configs/ (an editable install may map the package's
        # `shardrun.configs` to another checkout's); an installed shardrun reads its package data.
        checkout = Path(__file__).resolve().parents[2] / "configs" / "published.toml"
        if checkout.is_file():
            text = checkout.read_text("utf-8")
        else:
            text = resources.files("shardrun.configs").joinpath("published.toml").read_text("utf-8")
    try:
        rows = tomllib.loads(text).get("figures", [])
        return [PublishedFigure(str(r["model"]), str(r["dataset"]), int(r["scale"]), float(r["psnr"]),
                                None if r.get("ssim") is None else float(r["ssim"]), str(r["source"]))
                for r in rows]
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(SOURCE, [f"cannot be read: {e}"]) from e


def family(model: str) -> str:
    """Returns the published family of a shardrun model name (srcnn-915 -> srcnn)."""
    return model.split("-", 1)[0]


def published_for(dataset: str, scale: int, figures: list[PublishedFigure] | None = None) -> list[PublishedFigure]:
    """Returns the figures published for a benchmark set (matched case-insensitively) at `scale`."""
    figures = load_published() if figures is None else figures
    return [f for f in figures if f.dataset.lower() == dataset.lower() and f.scale == scale]
