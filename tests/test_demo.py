"""`shardrun demo` end to end: plan, two workers, every chunk done, a gain over bicubic."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from shardrun.cli.main import main
from shardrun.ledger.db import Ledger


@pytest.mark.slow
def test_demo_trains_the_whole_job_and_beats_bicubic(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--folder", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
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
