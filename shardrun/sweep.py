"""Deleting what retention lets go (shardrun.ledger.retention decides; docs/worker.md, "Retention").

A worker calls `Sweeper.tidy(ledger)` after each accepted checkpoint and at the end of a chunk.
A pass lists the folders of the chunks in play (ready or running, with an attempt behind them)
every time, and those of done chunks a few at a time until each holds only what stays for good;
what a listing showed is remembered, so a checkpoint that retention lets go later (the best moved
on, newer ones settled) is deleted without listing again. Nothing here is fatal: a delete or a
listing that fails is logged and left for a later pass, which judges everything afresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from shardrun import paths
from shardrun.errors import NotFound, StoreError
from shardrun.ledger.retention import RetentionRule, decide, run_view
from shardrun.storage.base import Stat, Store

log = logging.getLogger("shardrun.sweep")


@dataclass
class TidyResult:
    deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one line each: what could not be done, and why
    listed: int = 0  # folders listed


class Sweeper:
    """Deletes a job's checkpoints (and validation pictures) on its home store that retention lets go."""

    def __init__(self, store: Store, job: str, rule: RetentionRule | None = None, *, listings_per_pass: int = 4):
        self.store = store
        self.job = job
        self.rule = rule or RetentionRule()
        self.listings_per_pass = listings_per_pass  # folders of done chunks listed per pass, at most
        self._known: dict[str, dict[str, Stat]] = {}  # chunk folder -> its objects, as last listed, less those deleted
        self._clean: set[str] = set()  # done chunks' folders that hold only what stays for good
        self._swept_rounds: set[tuple[str, int]] = set()  # collaborative rounds whose folder was tidied
        self._round_kept: set[str] = set()  # what those folders still hold (global checkpoints kept)
        self.deleted: list[str] = []  # every key this sweeper deleted (or found gone)
        self.failures: list[str] = []  # every failure, one line each

    def tidy(self, ledger, now: float | None = None) -> TidyResult:
        """Deletes what retention lets go at store time `now` (default: the latest event the
        ledger folded, a store time no later than the store's now); returns what it did.

        Never raises: retention is housekeeping, and the training it serves goes on regardless.
        """
        result = TidyResult()
        try:
            now = ledger.latest_time() if now is None else now
            if now is None or ledger.plan() is None:
                return result
            budget = [self.listings_per_pass]
            for run in ledger.runs():
                if not self._tidy_run(ledger, run["name"], now, budget, result):
                    break  # the store refused a delete: leave the rest for a later pass
                if not self._tidy_rounds(ledger, run["name"], now, budget, result):
                    break
        except Exception as e:  # noqa: BLE001 - a broken sweep must not stop training
            result.failed.append(f"retention pass failed: {type(e).__name__}: {e}")
            log.warning(result.failed[-1])
        self.failures += result.failed
        return result

    def _tidy_run(self, ledger, run: str, now: float, budget: list[int], result: TidyResult) -> bool:
        view = run_view(ledger, run)
        if view is None:
            return True
        settled = now - self.rule.horizon(view.lease_seconds)
        folders = {}
        for chunk in view.chunks:
            folder = paths.checkpoints_prefix(self.job, run, chunk["idx"])
            # In play: ready or running with an attempt behind it. A chunk never claimed under this
            # plan is listed once all the same: a replaced plan may have left checkpoints there.
            in_play = chunk["state"] in ("ready", "running") and chunk["attempts"] > 0
            if in_play:
                self._clean.discard(folder)  # new objects appear there: listed on every pass
            if in_play or (folder not in self._clean and budget[0] > 0):
                budget[0] -= 0 if in_play else 1
                try:
                    self._known[folder] = {s.key: s for s in self.store.list(folder)}
                    result.listed += 1
                except StoreError as e:
                    result.failed.append(f"listing {folder} failed ({e}); trying again later")
                    log.warning(result.failed[-1])
            if folder in self._known:
                folders[folder] = chunk
        listed = [stat for folder in folders for stat in self._known[folder].values()]
        verdict = decide(view, listed, now, self.rule)
        for key in verdict.delete:
            folder = paths.checkpoints_prefix(self.job, run, paths.checkpoint_object_of(self.job, key)["chunk"])
            try:
                self.store.delete(key)
            except NotFound:
                pass  # deleted by another worker meanwhile, or a listing that lagged: gone either way
            except StoreError as e:
                result.failed.append(f"deleting {key} failed ({e}); trying again later")
                log.warning(result.failed[-1])
                return False
            self._known.get(folder, {}).pop(key, None)
            result.deleted.append(key)
            self.deleted.append(key)
        waiting = set(verdict.later)
        for folder, chunk in folders.items():
            # A done chunk's folder is clean once its end is settled and nothing in it waits: all
            # that is left stays for good until retention lets it go, which needs no listing. So is
            # a folder of a chunk never claimed, once nothing in it waits: a claim puts it in play.
            ended = chunk["state"] == "done" and chunk["done_time"] is not None and chunk["done_time"] <= settled
            if (ended or chunk["attempts"] == 0) and not waiting.intersection(self._known[folder]):
                self._clean.add(folder)
        return True

    def _tidy_rounds(self, ledger, run: str, now: float, budget: list[int], result: TidyResult) -> bool:
        """Deletes the objects of a collaborative run's old rounds (retention.round_objects_kept
        says which stay); a round's folder is listed once it may go, a few rounds a pass."""
        from shardrun.ledger.retention import round_objects_kept

        rounds = ledger.rounds(run)
        plan = ledger.plan()
        keep, sweepable = round_objects_kept(rounds, now, self.rule.horizon(plan["lease_seconds"]), self.rule)
        gone = [key for key in sorted(self._round_kept) if key not in keep and paths.round_of(self.job, key)[0] == run]
        for r in sweepable:
            if (run, r) in self._swept_rounds or budget[0] <= 0:
                continue
            budget[0] -= 1
            folder = paths.round_prefix(self.job, run, r)
            try:
                listed = self.store.list(folder)
            except StoreError as e:
                result.failed.append(f"listing {folder} failed ({e}); trying again later")
                log.warning(result.failed[-1])
                continue
            result.listed += 1
            self._round_kept |= {stat.key for stat in listed if stat.key in keep}
            gone += [stat.key for stat in listed if stat.key not in keep]
            self._swept_rounds.add((run, r))
        for key in gone:
            try:
                self.store.delete(key)
            except NotFound:
                pass  # deleted by another worker meanwhile
            except StoreError as e:
                result.failed.append(f"deleting {key} failed ({e}); trying again later")
                log.warning(result.failed[-1])
                return False
            self._round_kept.discard(key)
            result.deleted.append(key)
            self.deleted.append(key)
        return True
