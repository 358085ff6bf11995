"""The ledger's SQLite schema, built by numbered migrations (PRAGMA user_version counts them).

A ledger written by any older shardrun is brought up to date when opened, never rejected:
each migration adds what its version introduced; derived tables that a new version adds are
then filled by refolding the stored events once, after the last migration.
"""

from __future__ import annotations

from typing import Callable

import sqlite_utils

from shardrun.errors import LedgerError

DERIVED_TABLES = ("plan", "accounts", "shards", "runs", "chunks", "rejected", "checkpoints",
                  "workers", "run_metrics", "run_history", "hardware", "attempts", "validation_scores", "rounds")
CHUNK_STATES = ("waiting", "ready", "running", "done")
# A collaborative run's (round, replica) unit may also be "dropped": left out of a round that
# closed without it (docs/collaborative.md).
UNIT_STATES = CHUNK_STATES + ("dropped",)
ROUND_STATES = ("waiting", "open", "closed", "done")


def _migration_1(db: sqlite_utils.Database) -> None:
    db["events"].create(
        {"id": str, "server_time": float, "kind": str, "worker": str, "run": str,
         "chunk": int, "generation": int, "payload": str}, pk="id")
    db["events"].create_index(["server_time", "id"])
    db["bad_events"].create({"key": str, "reason": str}, pk="key")
    db["fold_state"].create({"name": str, "value": str}, pk="name")
    db["plan"].create(
        {"id": str, "job": str, "fingerprint": str, "server_time": float, "images": int,
         "image_bytes": int, "rejected": int, "manifest_key": str, "manifest_md5": str,
         "platform": str, "profile": str, "lease_seconds": float, "payload": str}, pk="id")
    db["accounts"].create(
        {"name": str, "position": int, "store": str, "quota_bytes": int, "reserve_bytes": int,
         "placed_bytes": int, "shards": int}, pk="name")
    db["shards"].create(
        {"id": str, "account": str, "key": str, "size": int, "md5": str, "images": int}, pk="id")
    db["runs"].create(
        {"name": str, "position": int, "model": str, "scale": int, "channels": int, "epochs": int,
         "batch_size": int, "patch_size": int, "steps_per_epoch": int, "steps_total": int,
         "step_seconds": float, "config": str}, pk="name")
    db["chunks"].create(
        {"run": str, "idx": int, "start_step": int, "end_step": int, "state": str,
         "generation": int, "owner": str, "claim_time": float, "heartbeat_time": float,
         "step_reached": int, "checkpoint_key": str, "checkpoint_md5": str,
         "start_checkpoint_key": str, "start_checkpoint_md5": str, "attempts": int,
         "last_error": str, "done_time": float}, pk=("run", "idx"))
    db["chunks"].create_index(["state"])
    db["rejected"].create({"path": str, "reason": str}, pk="path")


def _migration_2(db: sqlite_utils.Database) -> None:
    # Every checkpoint the fold accepted, so a worker can fall back to an older verified one when
    # the newest is damaged on the store. Derived, so it is filled by refolding the events.
    db["checkpoints"].create(
        {"run": str, "step": int, "key": str, "md5": str, "chunk": int, "generation": int,
         "worker": str, "server_time": float}, pk="key")
    db["checkpoints"].create_index(["run", "step"])
    _refold_later(db)


def _migration_3(db: sqlite_utils.Database) -> None:
    # Summaries for status, kept by the fold so that status never reads the events table (a
    # year-long job holds millions of heartbeats): one row per worker process (a session), each
    # run's latest metrics, its history in HISTORY_POINTS step buckets, throughput per hardware
    # and run, and every chunk attempt (claim to done, yield, fail or expiry). All derived: a
    # refold fills them from the stored events.
    db["workers"].create(
        {"id": str, "account": str, "platform": str, "device": str, "first_time": float,
         "last_time": float, "last_kind": str, "run": str, "chunk": int, "step": int, "loss": float,
         "patches_per_second": float, "steps_per_second": float, "events": int, "claims": int,
         "chunks_done": int, "yields": int, "fails": int, "expired": int}, pk="id")
    db["workers"].create_index(["last_time"])
    db["run_metrics"].create(
        {"run": str, "loss": float, "loss_step": int, "loss_time": float, "best_loss": float,
         "best_loss_step": int, "patches_per_second": float, "steps_per_second": float,
         "rate_time": float, "val_step": int, "val_time": float, "psnr": float, "ssim": float,
         "bicubic_psnr": float, "bicubic_ssim": float, "val_images": int, "best_psnr": float,
         "best_psnr_step": int}, pk="run")
    db["run_history"].create(
        {"run": str, "bucket": int, "step_min": int, "step_max": int, "time_first": float,
         "time_last": float, "loss_sum": float, "loss_n": int, "loss_min": float, "psnr": float,
         "ssim": float, "bicubic_psnr": float, "bicubic_ssim": float, "val_step": int}, pk=("run", "bucket"))
    db["hardware"].create(
        {"device": str, "platform": str, "run": str, "samples": int, "pps_sum": float, "pps_max": float,
         "pps_last": float, "time_last": float}, pk=("device", "platform", "run"))
    db["attempts"].create(
        {"run": str, "chunk": int, "generation": int, "worker": str, "claim_time": float, "end_time": float,
         "outcome": str, "start_step": int, "step_reached": int, "checkpoint_step": int,
         "checkpoint_time": float}, pk=("run", "chunk", "generation"))
    db.execute("INSERT OR REPLACE INTO fold_state (name, value) VALUES ('event_count', "
               "(SELECT COUNT(*) FROM events))")
    _refold_later(db)


def _migration_4(db: sqlite_utils.Database) -> None:
    # Why a worker process left cleanly (its `leave` event: finished, deadline, max-chunks,
    # stopped), so status shows it ended at once instead of "alive" for a lease. Older journals
    # hold no leave events: nothing to refold.
    db["workers"].add_column("left_reason", str)


def _migration_5(db: sqlite_utils.Database) -> None:
    # Throughput per history bucket and the validation's own time, so status can draw (and
    # `status --tensorboard` export) patches/s along the steps, each point at its event's store
    # time. Derived: a refold fills them from the stored events.
    db["run_history"].add_column("pps_sum", float)
    db["run_history"].add_column("pps_n", int)
    db["run_history"].add_column("val_time", float)
    _refold_later(db)


def _migration_6(db: sqlite_utils.Database) -> None:
    # Honest validation (docs/status.md): each checkpoint's per-image scores, the validation set's
    # name, and the checkpoint's validation pictures (a PNG on the home store, with its md5 and the
    # crops' labels as JSON), so status can show the latest ones. Derived: refolded from the events.
    db["validation_scores"].create(
        {"run": str, "step": int, "image": str, "psnr": float, "ssim": float, "bicubic_psnr": float,
         "bicubic_ssim": float}, pk=("run", "step", "image"))
    db["run_metrics"].add_column("val_set", str)
    db["run_metrics"].add_column("val_pictures_key", str)
    db["run_metrics"].add_column("val_pictures_md5", str)
    db["run_metrics"].add_column("val_pictures", str)
    _refold_later(db)


def _migration_7(db: sqlite_utils.Database) -> None:
    # Journal v2: every event names the plan its writer knew (NULL: a v1 event, which belongs to
    # the plan in force at its time), and the fold is total: the refold below checks every stored
    # event as strictly as a new one and moves the malformed ones to bad_events, so this ledger
    # agrees with one folded afresh. (A text generation stored by an older shardrun was already
    # turned into a number by SQLite's column affinity and cannot be told apart any more.)
    db["events"].add_column("plan", str)
    _refold_later(db)


def _migration_8(db: sqlite_utils.Database) -> None:
    # The learning rate a run's worker reported last (heartbeats and checkpoints carry it since
    # schedules exist), and its step, so status shows where the schedule is. Derived.
    db["run_metrics"].add_column("learning_rate", float)
    db["run_metrics"].add_column("learning_rate_step", int)
    _refold_later(db)


def _migration_9(db: sqlite_utils.Database) -> None:
    # The bucketed journal (docs/worker.md, "The journal's layout"). A ledger now drops the events
    # its base (a copy of the derived tables at a fold point hours back) already holds, so:
    # - flat_ids: the ids of events read from the flat v1 folder, kept when those events are
    #   dropped, so that a later look at that folder reads only what is new. Every event of an
    #   older ledger came from it.
    # - checkpoints.validation: each accepted checkpoint's validation, which product/ read from
    #   the events themselves. Derived: the refold below fills it.
    # - fold_state 'seen_time': the store time of the newest event, where the sync cursor starts.
    # - misplaced: journal objects in a bucket far from their store time, which every reader
    #   ignores (journal.MISPLACED); kept here only so that a sync does not read them again.
    db["flat_ids"].create({"id": str}, pk="id")
    db["misplaced"].create({"key": str, "reason": str}, pk="key")
    db.execute("INSERT OR IGNORE INTO flat_ids (id) SELECT id FROM events")
    db.execute("INSERT OR REPLACE INTO fold_state (name, value) SELECT 'seen_time', MAX(server_time) FROM events "
               "HAVING MAX(server_time) IS NOT NULL")
    db["checkpoints"].add_column("validation", str)
    _refold_later(db)


def _migration_10(db: sqlite_utils.Database) -> None:
    # Collaborative runs (docs/collaborative.md): each (round, replica) is a unit in `chunks`
    # (its round and replica, and the change of weights its `done` handed in), and each round a
    # row of `rounds`: open, closed (which replicas' changes it combines, and why), done (the
    # outer step accepted: the global weights and outer momentum it published, and the global
    # model's validation). Derived: refolded from the events.
    for column in ("round", "replica", "change_size"):
        db["chunks"].add_column(column, int)
    for column in ("change_key", "change_sha256", "change_md5"):
        db["chunks"].add_column(column, str)
    db["rounds"].create(
        {"run": str, "round": int, "state": str, "base_sha256": str, "opened_time": float, "started_time": float,
         "closed_time": float, "closed_by": str,
         "replicas": str, "change_bytes": int, "weights_key": str, "weights_sha256": str, "weights_md5": str,
         "weights_size": int, "momentum_key": str, "momentum_sha256": str, "momentum_md5": str,
         "momentum_size": int, "outer_worker": str, "done_time": float, "validation": str,
         "checkpoint_key": str, "checkpoint_md5": str}, pk=("run", "round"))
    _refold_later(db)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migration_1, _migration_2, _migration_3,
                                                               _migration_4, _migration_5, _migration_6,
                                                               _migration_7, _migration_8, _migration_9,
                                                               _migration_10]
SCHEMA_VERSION = len(MIGRATIONS)


def _refold_later(db: sqlite_utils.Database) -> None:
    """Marks the derived tables for a refold once every migration has run.

    A migration cannot refold by itself: today's fold writes tables that later migrations create.
    """
    db.execute("INSERT OR REPLACE INTO fold_state (name, value) VALUES ('refold', '1')")


def migrate(db: sqlite_utils.Database, refold: Callable[[sqlite_utils.Database], None]) -> int:
    """Brings the schema to SCHEMA_VERSION, refolding with `refold` if a migration asked for it;
    returns the version the database had before."""
    before = None
    while True:
        # The version is read under the write lock, so two processes opening a new ledger at
        # once do not both run the same migration.
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            version = db.conn.execute("PRAGMA user_version").fetchone()[0]
            before = version if before is None else before
            if version > SCHEMA_VERSION:
                raise LedgerError(f"ledger schema version {version} is newer than this shardrun understands "
                                  f"({SCHEMA_VERSION}); upgrade shardrun")
            if version == SCHEMA_VERSION:
                if db.conn.execute("SELECT 1 FROM fold_state WHERE name = 'refold'").fetchone():
                    refold(db)
                    db.conn.execute("DELETE FROM fold_state WHERE name = 'refold'")
                db.conn.execute("COMMIT")
                return before
            MIGRATIONS[version](db)
            db.conn.execute(f"PRAGMA user_version = {version + 1}")
            db.conn.execute("COMMIT")
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
