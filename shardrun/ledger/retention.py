"""Retention: which of a run's objects under `checkpoints/` the home store keeps, and which may go.

Pure decisions over the ledger's rows (`run_view` gathers them; `decide` judges one listing);
`shardrun.sweep` lists the store and deletes. The rule and why it is safe: docs/worker.md,
"Retention".

Kept, per run, on the ledger as it stands:
- every chunk's final checkpoint (the `done` one; the next chunk starts from it),
- for each ready or running chunk, the `fallbacks` newest accepted checkpoints at or before its
  resume point (where a resume starts, and the one it falls back to),
- the `keep_last` newest accepted checkpoints, and the best by validation PSNR (`export
  --checkpoint best` takes it: `best_checkpoint` is that choice, product/ uses it too),
- the validation pictures of every checkpoint kept, and the pictures status shows.

And, because readers lag (listings lag; a reader may not have folded the last events), an accepted
checkpoint goes only once at least `fallbacks` newer accepted ones are *settled*: written at least
the horizon (`horizon_leases` leases) before the store's time now. Objects no accepted event
points at (an upload whose worker died before its `checkpoint` event, a fenced worker's, their
pictures) go once they are settled too and the attempt that wrote them can never again be
accepted. Times are the store's own (event server times, the listing's mtimes), never a
writer's clock.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterable

from shardrun import paths
from shardrun.storage.base import Stat

# How often workers checkpoint at most (the shortest interval they use, docs/worker.md): `plan`
# counts the checkpoints written within a horizon with it.
SHORTEST_CHECKPOINT_SECONDS = 120.0


@dataclass(frozen=True)
class RetentionRule:
    keep_last: int = 3  # the run's newest accepted checkpoints, for a user (`export --checkpoint latest`, a step)
    fallbacks: int = 2  # per resume point: the checkpoint and the one a damaged file falls back to
    horizon_leases: float = 1.0  # how old (in leases, store time) a superseding checkpoint must be

    def horizon(self, lease_seconds: float) -> float:
        return self.horizon_leases * lease_seconds


@dataclass(frozen=True)
class RunView:
    """What retention reads of one run in the ledger (`run_view`)."""

    job: str
    run: str
    accepted: list[dict]  # the checkpoints table's rows, newest first (step, then store time)
    scores: dict[str, dict]  # checkpoint key -> the validation its event carried
    chunks: list[dict]
    attempts: dict[tuple[int, int], dict]  # (chunk, generation) -> worker, claim_time, end_time
    pictures_key: str | None  # the validation pictures status shows (run_metrics)
    plan_time: float  # the store time of the plan in force
    lease_seconds: float


@dataclass
class Verdict:
    """One listing judged: what stays (with why), what may be deleted now, and what is left for later."""

    keep: dict[str, str] = field(default_factory=dict)  # key -> reason
    delete: list[str] = field(default_factory=list)
    later: list[str] = field(default_factory=list)  # neither kept for good nor deletable yet


def checkpoint_validations(ledger, run: str) -> dict[str, dict]:
    """Returns checkpoint key -> the validation scores its checkpoint (or done/yield) event carried
    (the fold keeps them with the accepted checkpoint: a ledger drops events behind its base)."""
    return {row["key"]: json.loads(row["validation"]) for row in ledger.db.query(
        "SELECT key, validation FROM checkpoints WHERE run = ? AND validation IS NOT NULL", [run])}


def best_checkpoint(accepted: list[dict], scores: dict[str, dict]) -> dict | None:
    """Returns the accepted checkpoint with the highest validation PSNR (then the highest step; of
    equals, the first in `accepted`'s order, newest first), or None when none has a validation."""
    scored = [cp for cp in accepted if scores.get(cp["key"]) is not None]
    return max(scored, key=lambda cp: (scores[cp["key"]]["psnr"], cp["step"])) if scored else None


def run_view(ledger, run: str) -> RunView | None:
    """Returns the ledger's rows retention judges `run` by (None: no plan, or no such run)."""
    plan = ledger.plan()
    if plan is None or ledger.run(run) is None:
        return None
    attempts = {(a["chunk"], a["generation"]): a for a in ledger.db.query(
        "SELECT chunk, generation, worker, claim_time, end_time FROM attempts WHERE run = ?", [run])}
    metrics = ledger.run_metrics().get(run) or {}
    return RunView(plan["job"], run, ledger.checkpoints(run), checkpoint_validations(ledger, run),
                   ledger.chunks(run), attempts, metrics.get("val_pictures_key"), plan["server_time"],
                   plan["lease_seconds"])


def kept_checkpoints(view: RunView, now: float, rule: RetentionRule) -> dict[str, str]:
    """Returns the accepted checkpoints (and any key a chunk names) that stay, each with its reason."""
    keep: dict[str, str] = {}
    order = view.accepted  # newest first
    settled = now - rule.horizon(view.lease_seconds)
    # A collaborative run's unit starts from its replica's last round's final checkpoint (the
    # optimiser state), or resumes from its own: an older round's final is never read again once
    # the replica's next round is done, settled (a reader that has not folded that yet may still
    # start the next round from it).
    superseded = set()
    finals: dict[int, list[dict]] = {}
    for c in view.chunks:
        if c.get("round") is not None and c["state"] == "done":
            finals.setdefault(c["replica"], []).append(c)
    for done in finals.values():
        done.sort(key=lambda c: c["round"])
        superseded |= {c["idx"] for c, later in zip(done, done[1:]) if later["done_time"] <= settled}
    for c in view.chunks:
        unit = c.get("round") is not None
        if c["checkpoint_key"] and not (unit and (c["idx"] in superseded or c["state"] == "dropped")):
            keep.setdefault(c["checkpoint_key"], f"{'final' if c['state'] == 'done' else 'latest'} of chunk {c['idx']}")
        if c["start_checkpoint_key"]:
            keep.setdefault(c["start_checkpoint_key"], f"start of chunk {c['idx']}")
        if c["state"] in ("ready", "running"):
            resume = max(c["step_reached"], c["start_step"])
            for cp in [cp for cp in order if cp["step"] <= resume and (not unit or cp["chunk"] == c["idx"])
                       ][:rule.fallbacks]:
                keep.setdefault(cp["key"], f"resume point of chunk {c['idx']}")
    # A user's checkpoints (latest, best) of a collaborative run are its global network's, one a
    # round (round_objects_kept): a replica's own weights are only ever resumed.
    if not any(c.get("round") is not None for c in view.chunks):
        for cp in order[:rule.keep_last]:
            keep.setdefault(cp["key"], "latest")
        best = best_checkpoint(order, view.scores)
        if best is not None:
            keep.setdefault(best["key"], "best validation")
    # Readers lag: one that has not folded the newest events resumes from an older checkpoint. So
    # a checkpoint stays until `fallbacks` newer ones are settled: every reader has seen those.
    newer_settled = 0
    for cp in order:
        if newer_settled < rule.fallbacks:
            keep.setdefault(cp["key"], "not yet superseded for good")
        if cp["server_time"] <= settled:
            newer_settled += 1
    return keep


def _attempt_over(view: RunView, found: dict, written: float, settled: float) -> bool:
    """True when the attempt that wrote an object no accepted event names can never have it accepted:
    it is settled (older than the horizon) and its writer does not own its chunk's generation, or
    owned it in an attempt that ended, settled."""
    if written > settled or view.plan_time > settled:
        return False
    chunk = next((c for c in view.chunks if c["idx"] == found["chunk"]), None)
    if chunk is None:
        return True  # a chunk the plan in force does not have (a plan replaced long ago)
    if (chunk["state"] == "running" and chunk["owner"] == found["worker"]
            and chunk["generation"] == found["generation"]):
        return False  # its writer owns the chunk: a late event may still accept it
    attempt = view.attempts.get((found["chunk"], found["generation"]))
    if attempt is not None and attempt["worker"] == found["worker"]:
        return attempt["end_time"] is not None and attempt["end_time"] <= settled
    # Another worker won this generation, or nobody did: the writer's claim lost. Its claim came
    # before the object, so before the horizon: every reader has folded it, and it stays lost.
    return True


def decide(view: RunView, listed: Iterable[Stat], now: float, rule: RetentionRule | None = None) -> Verdict:
    """Judges the listed objects of `view`'s run at store time `now`: keep, delete now, or later.

    Keys of other shapes than checkpoints and their pictures are left alone (neither kept nor deleted).
    """
    rule = rule or RetentionRule()
    keep = kept_checkpoints(view, now, rule)
    accepted = {cp["key"] for cp in view.accepted}
    settled = now - rule.horizon(view.lease_seconds)
    verdict = Verdict()
    for stat in listed:
        found = paths.checkpoint_object_of(view.job, stat.key)
        if found is None or found["run"] != view.run:
            continue
        checkpoint = paths.checkpoint_key(view.job, view.run, found["chunk"], found["generation"], found["worker"],
                                          found["step"])
        if stat.key == view.pictures_key:
            verdict.keep[stat.key] = "the validation pictures status shows"
        elif checkpoint in keep:
            verdict.keep[stat.key] = keep[checkpoint] + ("" if found["kind"] == "ckpt" else " (its pictures)")
        elif checkpoint in accepted or _attempt_over(view, found, stat.mtime, settled):
            verdict.delete.append(stat.key)
        else:
            verdict.later.append(stat.key)
    return verdict


def retained_bound(chunks: int, lease_seconds: float, checkpoint_seconds: float = SHORTEST_CHECKPOINT_SECONDS,
                   rule: RetentionRule | None = None, writers: int = 2) -> int:
    """Returns the most checkpoint files a run of `chunks` chunks holds on the home store at once
    under `rule`, while `writers` attempts write to it at a time (its owner and one stray: killed,
    or fenced), each checkpointing at most once every `checkpoint_seconds` of store time.

    Kept for good: a final per chunk, `keep_last`, the best, `fallbacks` per resume point (one
    chunk of a run is ready or running at a time) and `fallbacks` settled ones that supersede the
    rest; besides these, whatever was written within a horizon, plus each writer's upload in flight.
    Validation pictures: as many again, at most, and the one status shows.
    """
    rule = rule or RetentionRule()
    recent = writers * (math.floor(rule.horizon(lease_seconds) / checkpoint_seconds) + 2)
    return chunks + rule.keep_last + 1 + 2 * rule.fallbacks + recent


def round_objects_kept(rounds: list[dict], now: float, horizon: float, rule: RetentionRule) -> tuple[set[str], list[int]]:
    """Returns, for a collaborative run's rounds (in order), the keys of old rounds' objects that
    stay, and the rounds whose folder may be tidied now.

    A round's objects (its replicas' changes, the global weights and outer momentum it published,
    the global network's checkpoint, and any copy a killed or slower worker left) are read while
    its round and the next one are played: the next round's units start from its global weights.
    So a round's folder may be tidied once the round after it is done, settled (done a horizon
    before `now`, store time: every reader has folded it). What stays of it: the global
    checkpoints of the `keep_last` newest done rounds and of the best round by validation PSNR,
    which `export` reads.
    """
    done = [r for r in rounds if r["state"] == "done"]
    keep = {r["checkpoint_key"] for r in done[-rule.keep_last:] if r["checkpoint_key"]}
    scored = [r for r in done if r["validation"] and r["checkpoint_key"]]
    if scored:
        best = max(scored, key=lambda r: (json.loads(r["validation"])["psnr"], r["round"]))
        keep.add(best["checkpoint_key"])
    by_round = {r["round"]: r for r in rounds}
    sweepable = [r["round"] for r in done
                 if by_round.get(r["round"] + 1, {}).get("state") == "done"
                 and by_round[r["round"] + 1]["done_time"] <= now - horizon]
    return keep, sweepable
