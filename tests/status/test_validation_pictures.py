"""Validation as a real worker does it: a held-out folder, per-image scores in the ledger at each
checkpoint, and the latest crops as pictures on the status page (checked in headless Chromium)."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from tests.conftest import job_text, write_images
from tests.status.test_report import chromium
from tests.test_worker import new_worker
from shardrun.config.job import load_job
from shardrun.ledger.db import Ledger
from shardrun.plan.job import plan_job
from shardrun.render.html import status_html
from shardrun.render.pictures import MAX_PICTURE_BYTES
from shardrun.status.report import job_status

RUN = dict(name="a", model="espcn", scale=2, channels=1, epochs=1, batch_size=16, patch_size=16,
           patches_per_image=4, patches_per_second=0.000943, seed=3)


def test_a_worker_validates_on_the_held_out_folder_and_status_shows_its_pictures(tmp_path):
    write_images(tmp_path / "images", 12, size=(48, 40))
    write_images(tmp_path / "val", 4, size=(160, 140), seed=9)
    (tmp_path / "job.toml").write_text(job_text(runs=[RUN], reserve_mb=0, validation="val/"))
    job = load_job(tmp_path / "job.toml")
    plan_job(job, scan_workers=1)
    worker = new_worker(job)
    assert worker.run() == "finished"

    ledger = Ledger.open(job.ledger_path)
    steps = [row[0] for row in ledger.db.execute("SELECT DISTINCT step FROM validation_scores ORDER BY step")]
    assert steps == [1, 2, 3]  # a checkpoint at every step, each with its per-image scores
    scores = ledger.validation_scores("a")
    assert len(scores) == 4 and all(s["step"] == 3 and 5 < s["bicubic_psnr"] <= 100 for s in scores)
    assert {s["image"] for s in scores} == {p.name for p in (tmp_path / "val").iterdir()}

    status = job_status(job, pictures=True)
    assert status["plan"]["validation"]["name"] == "val/" and status["plan"]["validation"]["images"] == 4
    v = status["runs"][0]["validation"]
    assert v["set"] == "val/" and v["images"] == 4 and v["step"] == 3
    pooled = -10 * np.log10(np.mean([10 ** (-s["bicubic_psnr"] / 10) for s in scores]))
    assert abs(v["bicubic_psnr"] - pooled) < 1e-6  # the pooled rule, from the per-image scores
    crops = v["pictures"]["crops"]
    assert len(crops) == 3 and all(c["width"] <= 96 and c["height"] <= 96 for c in crops)

    page = status_html(status)
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 3 and sum(len(base64.b64decode(u)) for u in uris) < MAX_PICTURE_BYTES
    for uri, crop in zip(uris, crops):
        with Image.open(io.BytesIO(base64.b64decode(uri))) as row:
            assert row.size == (3 * crop["width"], crop["height"])
        assert f"network {crop['psnr']:.2f} dB" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)

    path = tmp_path / "status.html"
    path.write_text(page)
    dom = chromium("--dump-dom", path.as_uri(), tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") == 3 and "Validation pictures" in dom.stdout
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))
    assert "validation: 4 images, val/" in text and "a: step 3, val/" in text
    shot = tmp_path / "shot.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1000,4000", "--hide-scrollbars", path.as_uri(),
                    tmp_path=tmp_path)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    # The pictures were drawn: the page holds the strips' random-noise texture, not just text.
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20
