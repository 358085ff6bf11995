"""`shardrun demo` end to end: plan, two workers, every chunk done, a gain over bicubic."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from click.testing import CliRunner

from shardrun.cli.main import main
from shardrun.ledger.db import Ledger


@pytest.mark.slow
def test_demo_trains_the_whole_job_and_beats_bicubic(tmp_path):
    started = time.monotonic()
    result = CliRunner().invoke(main, ["demo", "--folder", str(tmp_path / "demo")])
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    print(f"demo wall time: {took:.0f} s")
    ledger = Ledger.open(tmp_path / "demo" / ".shardrun" / "demo" / "ledger.db")
    chunks = ledger.chunks()
    assert len(chunks) == 8 and all(c["state"] == "done" for c in chunks)
    assert {r["steps_done"] for r in ledger.runs()} == {360}
    # Both workers took part: chunks were handed from one to the other through the journal.
    owners = {row[0] for row in ledger.db.execute("SELECT DISTINCT worker FROM events WHERE kind = 'done'")}
    assert len(owners) == 2
    assert {s["account"] for s in ledger.shards()} == {"alice", "bob"}
    gains = [line for line in result.output.splitlines() if line.startswith("│ decusr") and " dB " in line]
    assert len(gains) == 2
    for line in gains:
        gain = float(line.split("│")[4].strip().removesuffix(" dB"))
        assert gain > 0.1, line
    # It ends with a result: the better run exported, a held-out photo enlarged, a comparison.
    folder = tmp_path / "demo" / "result"
    (model,) = folder.glob("*.keras")
    assert (folder / "chelsea_x2.png").exists()
    comparison = folder / "chelsea-bicubic-network-original.png"
    with Image.open(comparison) as image:
        side = np.asarray(image)
    with Image.open(tmp_path / "demo" / "heldout" / "chelsea.png") as image:
        width, height = image.size
    assert side.shape[0] == height // 2 * 2 and side.shape[1] == 3 * (width // 2 * 2) + 16
    flat = " ".join(result.output.split())
    assert str(model.name) in flat and "chelsea-bicubic-network-original.png" in flat
    # The held-out photographs were the validation set: named in status, never in a shard.
    assert "Validation: 3 images, heldout/" in flat
