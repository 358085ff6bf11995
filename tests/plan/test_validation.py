"""The validation set: held out of training by content hash, or a folder of its own (never
overlapping the data), cropped for texture, scored by a rule no image dominates."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from tests.conftest import job_text, write_images
from shardrun.config.job import load_job
from shardrun.errors import PlanError
from shardrun.ledger.db import Ledger
from shardrun.plan.job import plan_job
from shardrun.plan.shards import Manifest
from shardrun.plan.validation import MIN_TO_HOLD_OUT, read_validation_file
from shardrun.storage.local import LocalStore
from shardrun.train.metrics import floored_psnr, pooled_psnr, texture_crop

RUN = dict(name="a", model="espcn", scale=2, channels=1, epochs=1, batch_size=16, patch_size=16,
           patches_per_image=4, patches_per_second=100.0)


def plan(tmp_path, **job_keys):
    (tmp_path / "job.toml").write_text(job_text(runs=[RUN], reserve_mb=0, **job_keys))
    job = load_job(tmp_path / "job.toml")
    report = plan_job(job, scan_workers=1)
    ledger = Ledger.open(job.ledger_path)
    recorded = json.loads(ledger.plan()["payload"])["validation"]
    home = LocalStore(tmp_path / "stores" / "alice")
    manifest = Manifest.from_json_bytes(home.get_bytes(ledger.plan()["manifest_key"]))
    names, crops = read_validation_file(home.get_bytes(recorded["key"], recorded["md5"]))
    return report, recorded, {i.path for i in manifest.images}, names, crops


def test_a_share_is_held_out_of_the_shards_by_content_and_replans_agree(tmp_path):
    write_images(tmp_path / "images", 40, size=(48, 40))
    report, recorded, trained, names, crops = plan(tmp_path, validation_share=0.1)
    # The rule, from the files' bytes: a hash below a tenth of 2^256, at least 2 of them.
    hashes = sorted((hashlib.sha256(p.read_bytes()).hexdigest(), p.name) for p in (tmp_path / "images").iterdir())
    below = sum(1 for h, _ in hashes if int(h, 16) < 2**256 // 10)
    expected = [name for _, name in hashes[:max(2, below)]]
    assert recorded["source"] == "held-out" and recorded["images"] == len(names) == len(expected)
    assert names == expected and recorded["name"] == f"{len(expected)} held out of images/"
    assert len(trained) == 40 - len(expected) and not set(names) & trained  # never in a shard
    assert all(c.shape == (40, 48, 3) and c.dtype == np.float32 for c in crops)
    # The same images again, planned from another folder: the same ones are held out.
    other = tmp_path / "again"
    shutil.copytree(tmp_path / "images", other / "images")
    assert plan(other, validation_share=0.1)[3] == names
    assert [i.path for i in report.validation.images] == names


def test_a_small_dataset_holds_none_out_and_says_so(tmp_path):
    write_images(tmp_path / "images", MIN_TO_HOLD_OUT - 1, size=(48, 40))
    report, recorded, trained, names, _ = plan(tmp_path)
    assert recorded["source"] == "training" and len(trained) == MIN_TO_HOLD_OUT - 1
    assert recorded["name"].startswith("training images (fewer than 20 images") and set(names) <= trained
    assert "validation: 4 images, training images" in " ".join(report.notes)


def test_a_validation_folder_is_used_and_an_overlap_is_refused(tmp_path):
    write_images(tmp_path / "images", 12, size=(48, 40))
    write_images(tmp_path / "val", 3, size=(64, 60), seed=7)
    _, recorded, trained, names, crops = plan(tmp_path, validation="val/")
    assert recorded == {**recorded, "name": "val/", "source": "folder", "images": 3}
    assert len(trained) == 12 and len(crops) == 3
    shutil.copyfile(sorted((tmp_path / "images").iterdir())[0], tmp_path / "val" / "copy.png")
    with pytest.raises(PlanError, match=r"shares 1 image\(s\) with the training data: copy.png"):
        plan(tmp_path, validation="val/")


def test_a_changed_validation_folder_makes_a_new_plan_that_keeps_the_runs(tmp_path):
    write_images(tmp_path / "images", 12, size=(48, 40))
    write_images(tmp_path / "val", 3, size=(64, 60), seed=7)
    first, recorded, _, names, _ = plan(tmp_path, validation="val/")
    assert plan(tmp_path, validation="val/")[0].plan_id == first.plan_id  # unchanged: no new plan
    write_images(tmp_path / "val", 4, size=(64, 60), seed=8)  # the team adds images to val/
    second, recorded_again, _, names_again, _ = plan(tmp_path, validation="val/")
    assert second.plan_id != first.plan_id and recorded_again["images"] == len(names_again) > len(names)
    assert second.replan is not None and not second.replan.needs_replace  # no run starts over


def test_the_crop_is_where_the_texture_is_not_the_centre():
    rng = np.random.default_rng(0)
    image = np.zeros((300, 400, 3))
    image[200:300, 0:100] = rng.random((100, 100, 3))  # texture in the bottom-left corner only
    top, left = texture_crop(image, 128)
    assert top >= 172 and left == 0  # the whole textured patch lies inside the crop
    assert texture_crop(image, 128) == (top, left)  # deterministic
    assert texture_crop(np.zeros((50, 60, 3)), 128) == (0, 0)


def test_a_nearly_black_crop_cannot_dominate_the_reported_psnr():
    # Today's failure: a black retina tile scored 168 dB by bicubic; a mean of PSNRs read 68.58 dB.
    black, others = 1.6e-17, [4e-3, 3e-3, 5e-3]
    mean_of_psnrs = np.mean([10 * np.log10(1 / m) for m in [black, *others]])
    assert mean_of_psnrs > 60
    pooled = pooled_psnr([black, *others])
    without = pooled_psnr(others)
    assert abs(pooled - without - 10 * np.log10(4 / 3)) < 1e-9  # it only weighs as one image of four
    assert 20 < pooled < 30
    assert floored_psnr(black) == 100.0 and floored_psnr(0.0) == 100.0
