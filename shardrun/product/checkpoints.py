"""Choosing a run's accepted checkpoint from the ledger and fetching it from the home store,
hash-verified, falling back to the previous accepted one when a file fails its hash."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardrun.config.job import JobConfig
from shardrun.errors import IntegrityError, NotFound, ShardrunError
from shardrun.ledger.db import Ledger
from shardrun.ledger.retention import best_checkpoint, checkpoint_validations

CHOICES = ("final", "latest", "best")


class ProductError(ShardrunError):
    """A run, checkpoint, model file or image that export, upscale or evaluate cannot use."""


@dataclass(frozen=True)
class Fetched:
    """A checkpoint fetched and verified: the local file, its ledger row and what was said."""

    run: str
    step: int
    path: Path
    key: str
    md5: str
    sha256: str
    meta: dict[str, Any]
    weights: list
    validation: dict[str, float] | None
    steps_total: int
    notices: list[str] = field(default_factory=list)


def parse_choice(text: str) -> str | int:
    """Returns "final", "latest", "best" or a step number from `--checkpoint`'s text."""
    value = str(text).strip().lower()
    if value in CHOICES:
        return value
    if value.isdigit():
        return int(value)
    raise ProductError(f"--checkpoint {text!r} is not final, latest, best or a step number")


def validations(ledger: Ledger, run: str) -> dict[str, dict]:
    """Returns checkpoint key -> the validation scores its checkpoint (or done/yield) event carried."""
    return checkpoint_validations(ledger, run)


def _run_row(ledger: Ledger, run: str) -> dict:
    row = ledger.run(run)
    if row is None:
        names = [r["name"] for r in ledger.runs()]
        raise ProductError(f"the job has no run named {run!r}; its runs are: {', '.join(names) or 'none'}")
    return row


def global_checkpoints(ledger: Ledger, run: str, collaborative: dict) -> list[dict]:
    """Returns a collaborative run's checkpoints of its global network, one per round whose outer
    step was accepted, newest first, as `ledger.checkpoints` rows (what a user exports: a
    replica's own weights are only ever resumed)."""
    from shardrun.ledger.fold import unit_bounds

    return [{"run": run, "step": unit_bounds(collaborative, r["round"])[1], "key": r["checkpoint_key"],
             "md5": r["checkpoint_md5"], "validation": json.loads(r["validation"]) if r["validation"] else None}
            for r in reversed(ledger.rounds(run)) if r["state"] == "done" and r["checkpoint_key"]]


def candidates(ledger: Ledger, run: str, choice: str | int) -> tuple[list[dict], dict]:
    """Returns the accepted checkpoints to try in order (the chosen one, then older ones) and the
    run's ledger row; raises ProductError when the run or the choice does not exist."""
    row = _run_row(ledger, run)
    collaborative = ledger.collaborative(run)
    accepted = ledger.checkpoints(run) if collaborative is None else global_checkpoints(ledger, run, collaborative)
    if not accepted and collaborative is not None:
        raise ProductError(f"collaborative run {run!r} has no global network yet: the first is published at "
                           f"the end of its first round (inner step {min(collaborative['sync_every'], row['steps_total'])} "
                           f"of {row['steps_total']})")
    if not accepted:
        chunks = ledger.chunks(run)
        first = min((c["end_step"] for c in chunks), default=row["steps_total"])
        raise ProductError(f"run {run!r} has no accepted checkpoint yet; the first is due by step {first} "
                           f"(the end of its first chunk) of {row['steps_total']}")
    scores = validations(ledger, run) if collaborative is None else {cp["key"]: cp["validation"] for cp in accepted}
    for cp in accepted:
        cp["validation"] = scores.get(cp["key"])
    if choice == "final":
        if accepted[0]["step"] < row["steps_total"]:
            raise ProductError(f"run {run!r} is not finished: its latest checkpoint is at step "
                               f"{accepted[0]['step']} of {row['steps_total']}; use --checkpoint latest or best")
        chosen = accepted[0]
    elif choice == "latest":
        chosen = accepted[0]
    elif choice == "best":
        # The same choice as retention's (ledger.retention), which keeps this checkpoint on the store.
        chosen = best_checkpoint(accepted, scores)
        if chosen is None:
            raise ProductError(f"run {run!r} has no checkpoint with validation scores; "
                               "use --checkpoint latest or a step")
    else:
        matching = [cp for cp in accepted if cp["step"] == choice]
        if not matching:
            steps = sorted({cp["step"] for cp in accepted})
            shown = ", ".join(map(str, steps[-10:]))
            raise ProductError(f"run {run!r} has no accepted checkpoint at step {choice}; "
                               f"accepted steps: {shown}{' (latest ten)' if len(steps) > 10 else ''}")
        chosen = matching[0]
    older = [cp for cp in accepted if cp["step"] < chosen["step"]]
    return [chosen] + older, row


def fetch_checkpoint(job: JobConfig, ledger: Ledger, run: str, choice: str | int = "final",
                     folder: Path | None = None) -> Fetched:
    """Returns the chosen accepted checkpoint of `run`, downloaded and verified (md5 from the
    ledger); when its file fails the hash or cannot be read, the previous accepted one, with a
    notice saying so."""
    from shardrun.train.trainer import CheckpointError, checkpoint_filename, file_sha256, read_checkpoint

    tries, row = candidates(ledger, run, choice)
    home = job.open_store(job.home)
    folder = folder or job.ledger_path.parent / "product" / run
    notices: list[str] = []
    for cp in tries:
        path = folder / checkpoint_filename(cp["step"])
        try:
            home.download(cp["key"], path, expected_md5=cp["md5"])
            meta, weights, _ = read_checkpoint(path)
        except (IntegrityError, NotFound, CheckpointError) as e:
            path.unlink(missing_ok=True)
            notices.append(f"checkpoint at step {cp['step']} of run {run!r} failed its check ({e}); "
                           "falling back to the previous accepted one")
            continue
        if notices:
            notices.append(f"using the accepted checkpoint at step {cp['step']} of run {run!r} instead")
        return Fetched(run, cp["step"], path, cp["key"], cp["md5"], file_sha256(path), meta, weights,
                       cp["validation"], row["steps_total"], notices)
    raise ProductError(f"no accepted checkpoint of run {run!r} at or before step {tries[0]['step']} "
                       f"passed its hash check: {'; '.join(notices)}")
