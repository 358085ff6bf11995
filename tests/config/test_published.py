"""configs/published.toml: every figure has its source, scale, set and PSNR; the loader refuses
an entry without one; and the figures are consistent with each other."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from shardrun.config.published import family, load_published, published_for
from shardrun.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "published.toml"
FAMILIES = {"bicubic", "srcnn", "fsrcnn", "espcn", "decusr"}
SETS = {"Set5", "Set14"}


def test_every_entry_names_model_set_scale_psnr_and_its_source():
    rows = tomllib.loads(SHIPPED.read_text("utf-8"))["figures"]
    assert rows, "the shipped file holds no figure"
    for row in rows:
        assert {"model", "dataset", "scale", "psnr", "source"} <= row.keys(), row
        assert set(row) <= {"model", "dataset", "scale", "psnr", "ssim", "source"}, row
        assert row["model"] in FAMILIES and row["dataset"] in SETS and row["scale"] in (2, 3, 4), row
        assert isinstance(row["psnr"], float) and 20.0 < row["psnr"] < 45.0, row
        assert "ssim" not in row or (isinstance(row["ssim"], float) and 0.5 < row["ssim"] < 1.0), row
        # a source names a paper (authors and venue) and says where the figure was read
        assert len(row["source"]) > 40 and any(str(year) in row["source"] for year in range(2014, 2021)), row
    keys = [(r["model"], r["dataset"], r["scale"]) for r in rows]
    assert len(keys) == len(set(keys)), "one figure per model, set and scale"


def test_the_loader_reads_the_checkout_file_and_matches_by_set_and_scale():
    figures = load_published()
    assert figures == load_published(SHIPPED.read_text("utf-8"))
    # bicubic and SRCNN are known on both sets at every scale, from one table
    for dataset in SETS:
        for scale in (2, 3, 4):
            models = {f.model for f in published_for(dataset, scale)}
            assert {"bicubic", "srcnn"} <= models, (dataset, scale, models)
    assert [f.psnr for f in published_for("set5", 2) if f.model == "bicubic"] == [33.66]  # case-insensitive
    assert published_for("Urban100", 2) == [] and published_for("Set5", 8) == []
    # DECUSR's paper gives no Set5/Set14 figure: none is made up
    assert not [f for f in figures if f.model == "decusr"]


def test_every_network_beats_bicubic_and_the_figures_fall_with_the_scale():
    figures = load_published()
    for f in figures:
        bicubic = [b for b in published_for(f.dataset, f.scale, figures) if b.model == "bicubic"]
        assert len(bicubic) == 1, f
        if f.model != "bicubic":
            assert f.psnr > bicubic[0].psnr + 1.0, f
            assert f.ssim is None or f.ssim > bicubic[0].ssim, f
    for model in FAMILIES:
        for dataset in SETS:
            by_scale = [f.psnr for f in sorted(figures, key=lambda f: f.scale)
                        if f.model == model and f.dataset == dataset]
            assert by_scale == sorted(by_scale, reverse=True), (model, dataset)


@pytest.mark.parametrize("text, problem", [
    ('[[figures]]\nmodel = "srcnn"\ndataset = "Set5"\nscale = 2\npsnr = 36.66\n', "source"),
    ('[[figures]]\nmodel = "srcnn"\ndataset = "Set5"\npsnr = 36.66\nsource = "x"\n', "scale"),
    ('[[figures]]\nmodel = "srcnn"\ndataset = "Set5"\nscale = "two"\npsnr = 36.66\nsource = "x"\n', "two"),
    ("[[figures]\n", "cannot be read"),
])
def test_a_malformed_entry_is_a_config_error(text, problem):
    with pytest.raises(ConfigError) as raised:
        load_published(text)
    assert problem in str(raised.value) and "published.toml" in str(raised.value)


def test_runs_are_matched_by_family():
    assert family("srcnn-915") == family("srcnn-955") == "srcnn"
    assert family("decusr") == "decusr"
