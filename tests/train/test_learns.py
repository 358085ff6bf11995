"""A short CPU training run on real photographs beats bicubic enlargement on held-out ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import skimage

from shardrun.train.data import MemoryImageSource, decode_rgb
from shardrun.train.trainer import TrainConfig, Trainer

DATA = Path(skimage.__file__).parent / "data"
TRAIN = ["astronaut.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
         "retina.jpg", "brick.png", "grass.png", "coins.png", "page.png", "ihc.png", "text.png",
         "moon.png"]
HELD_OUT = ["camera.png", "coffee.png", "chelsea.png"]  # a grayscale and two colour photographs
MARGIN_DB = 0.3


def centre(image, side=256):
    h, w = image.shape[:2]
    return image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]


@pytest.mark.slow
def test_a_small_decusr_beats_bicubic_on_held_out_photographs(tmp_path):
    source = MemoryImageSource([(DATA / name).read_bytes() for name in TRAIN], TRAIN)
    # DECUSR with one repeating block of 8 filters (2,601 parameters) on luma, x2; about 400
    # steps of 16 patches take under a minute on two cores.
    config = TrainConfig(model="decusr", scale=2, channels=1, options={"blocks": 1, "filters": 8},
                         patch_size=32, batch_size=16, patches_per_image=16, epochs=40, seed=1,
                         learning_rate=2e-3)
    trainer = Trainer(config, source, tmp_path)
    assert trainer.total_steps == 40 * 12  # 12 images x 16 patches / 16 per batch per epoch
    held_out = [centre(decode_rgb((DATA / name).read_bytes())) for name in HELD_OUT]
    before = trainer.evaluate(held_out, HELD_OUT)
    assert before.psnr < before.bicubic_psnr  # untrained, it is far from bicubic

    result = trainer.train(400)
    after = trainer.evaluate(held_out, HELD_OUT)
    assert result.step == 400
    assert after.gain_db >= MARGIN_DB, after
    assert all(image.psnr > image.bicubic_psnr for image in after.images), after.images
    assert after.ssim > after.bicubic_ssim
