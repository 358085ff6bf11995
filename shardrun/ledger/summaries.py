"""The fold's summaries for `status`: workers (one per worker process, i.e. per session), each
run's latest metrics and downsampled history, throughput per hardware, and chunk attempts.

A year-long job with 20 workers heartbeating every 2 minutes writes about five million events;
status must answer in well under a second or two, so it reads only these tables, whose size does
not grow with the number of heartbeats: a worker row is updated in place, a run's history is cut
into HISTORY_POINTS step buckets (loss summed and counted, the last validation kept), hardware
rows are keyed by (device, platform, run) and attempts by (run, chunk, generation).

Like the rest of the fold, these are a pure function of the events in (server time, id) order:
the fold calls `seen` for every event and the other methods for events it accepted (from the
chunk's owner, in its generation), so a run's curves hold no numbers from a fenced-off worker.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from shardrun.journal import Event

HISTORY_POINTS = 400
UNKNOWN = "unknown"
# Events that describe the worker's own chunk (an expire names someone else's).
OWN_CHUNK_KINDS = ("claim", "heartbeat", "checkpoint", "yield", "done", "fail")


def number(value: Any) -> float | None:
    """Returns `value` as a finite float, or None (payloads come from any version of any worker)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def validation_of(payload: dict) -> dict[str, float] | None:
    """Returns the payload's validation scores if they are complete numbers, else None."""
    v = payload.get("validation")
    if not isinstance(v, dict):
        return None
    scores = {k: number(v.get(k)) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
    if any(x is None for x in scores.values()):
        return None
    images = v.get("images")
    scores["images"] = images if isinstance(images, int) and not isinstance(images, bool) else None
    scores["set"] = _text(v.get("set"))
    per_image = v.get("scores")
    scores["scores"] = [row for row in per_image if isinstance(row, list) and len(row) == 5
                        and isinstance(row[0], str) and all(number(x) is not None for x in row[1:])
                        ][:256] if isinstance(per_image, list) else []
    pictures = v.get("pictures")
    ok = isinstance(pictures, dict) and _text(pictures.get("key")) and _text(pictures.get("md5"))
    scores["pictures"] = pictures if ok else None
    return scores


class Summaries:
    """Keeps the summary tables of one connection up to date, one event at a time."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._runs: dict[str, tuple[int, int]] | None = None  # run -> (bucket width, batch size)

    def forget_runs(self) -> None:
        """Drops the cached run layout (a new plan was applied)."""
        self._runs = None

    def _run(self, run: str) -> tuple[int, int] | None:
        if self._runs is None:
            self._runs = {
                name: (max(1, math.ceil(total / HISTORY_POINTS)), batch)
                for name, total, batch in self.conn.execute("SELECT name, steps_total, batch_size FROM runs")}
        return self._runs.get(run)

    def _rates(self, event: Event) -> tuple[float | None, float | None]:
        """Returns (patches/s, steps/s) of the payload; steps/s from the run's batch size if absent."""
        pps = number(event.payload.get("patches_per_second"))
        sps = number(event.payload.get("steps_per_second"))
        if sps is None and pps is not None and event.run is not None:
            layout = self._run(event.run)
            sps = pps / layout[1] if layout and layout[1] else None
        return pps, sps

    # -- every event --

    def seen(self, event: Event) -> None:
        """Records a sign of life of the event's worker (fenced or not: it was alive)."""
        p = event.payload
        own = event.kind in OWN_CHUNK_KINDS
        step = p.get("step")
        step = step if own and isinstance(step, int) and not isinstance(step, bool) else None
        pps, sps = self._rates(event) if own else (None, None)
        self.conn.execute(
            "INSERT INTO workers (id, account, platform, device, first_time, last_time, last_kind, run, chunk, "
            " step, loss, patches_per_second, steps_per_second, events, claims, chunks_done, yields, fails, expired) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 0, 0, 0, 0, 0) "
            "ON CONFLICT(id) DO UPDATE SET account = COALESCE(excluded.account, account), "
            " platform = COALESCE(excluded.platform, platform), device = COALESCE(excluded.device, device), "
            " last_time = excluded.last_time, "
            # A leave keeps the kind of the worker's last work: it tells how the session ended.
            " last_kind = CASE excluded.last_kind WHEN 'leave' THEN last_kind ELSE excluded.last_kind END, "
            " run = COALESCE(excluded.run, run), chunk = COALESCE(excluded.chunk, chunk), "
            " step = COALESCE(excluded.step, step), loss = COALESCE(excluded.loss, loss), "
            " patches_per_second = COALESCE(excluded.patches_per_second, patches_per_second), "
            " steps_per_second = COALESCE(excluded.steps_per_second, steps_per_second), events = events + 1",
            (event.worker, _text(p.get("account")), _text(p.get("platform")), _text(p.get("device")),
             event.server_time, event.server_time, event.kind, event.run if own else None,
             event.chunk if own else None, step, number(p.get("loss")) if own else None, pps, sps))

    def left(self, event: Event) -> None:
        """Records why a worker process left (its last event)."""
        self.conn.execute("UPDATE workers SET left_reason = ? WHERE id = ?",
                          (_text(event.payload.get("reason")) or "left", event.worker))

    def count(self, worker: str, column: str) -> None:
        """Adds one to a worker's counter (claims, chunks_done, yields, fails, expired)."""
        self.conn.execute(f"UPDATE workers SET {column} = {column} + 1 WHERE id = ?", (worker,))

    # -- accepted events --

    def claimed(self, event: Event, chunk: dict) -> None:
        self.count(event.worker, "claims")
        self.conn.execute(
            "INSERT OR REPLACE INTO attempts (run, chunk, generation, worker, claim_time, end_time, outcome, "
            " start_step, step_reached, checkpoint_step, checkpoint_time) VALUES (?, ?, ?, ?, ?, NULL, NULL, ?, ?, NULL, NULL)",
            (chunk["run"], chunk["idx"], chunk["generation"], event.worker, event.server_time,
             max(chunk["step_reached"], chunk["start_step"]), max(chunk["step_reached"], chunk["start_step"])))

    def progress(self, event: Event, chunk: dict, step: int, checkpoint: bool) -> None:
        """Records an owner's report at `step`: loss, throughput, validation, history, attempt."""
        run, t, p = chunk["run"], event.server_time, event.payload
        loss = number(p.get("loss"))
        pps, sps = self._rates(event)
        val = validation_of(p)
        self.conn.execute("INSERT OR IGNORE INTO run_metrics (run) VALUES (?)", (run,))
        if loss is not None:
            self.conn.execute(
                "UPDATE run_metrics SET loss = ?, loss_step = ?, loss_time = ?, "
                " best_loss_step = CASE WHEN best_loss IS NULL OR ? < best_loss THEN ? ELSE best_loss_step END, "
                " best_loss = CASE WHEN best_loss IS NULL OR ? < best_loss THEN ? ELSE best_loss END WHERE run = ?",
                (loss, step, t, loss, step, loss, loss, run))
        rate = number(p.get("learning_rate"))
        if rate is not None:
            self.conn.execute("UPDATE run_metrics SET learning_rate = ?, learning_rate_step = ? WHERE run = ?",
                              (rate, step, run))
        if sps is not None:
            self.conn.execute("UPDATE run_metrics SET patches_per_second = ?, steps_per_second = ?, rate_time = ? "
                              "WHERE run = ?", (pps, sps, t, run))
        if val is not None:
            self.conn.execute(
                "UPDATE run_metrics SET val_step = ?, val_time = ?, psnr = ?, ssim = ?, bicubic_psnr = ?, "
                " bicubic_ssim = ?, val_images = ?, "
                " best_psnr_step = CASE WHEN best_psnr IS NULL OR ? > best_psnr THEN ? ELSE best_psnr_step END, "
                " best_psnr = CASE WHEN best_psnr IS NULL OR ? > best_psnr THEN ? ELSE best_psnr END WHERE run = ?",
                (step, t, val["psnr"], val["ssim"], val["bicubic_psnr"], val["bicubic_ssim"], val["images"],
                 val["psnr"], step, val["psnr"], val["psnr"], run))
            self._validation_details(run, step, val)
        layout = self._run(run)
        if layout is not None:
            v = val or {}
            self.conn.execute(
                "INSERT INTO run_history (run, bucket, step_min, step_max, time_first, time_last, loss_sum, loss_n, "
                " loss_min, psnr, ssim, bicubic_psnr, bicubic_ssim, val_step, pps_sum, pps_n, val_time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(run, bucket) DO UPDATE SET step_min = MIN(step_min, excluded.step_min), "
                " step_max = MAX(step_max, excluded.step_max), time_last = excluded.time_last, "
                " loss_sum = loss_sum + excluded.loss_sum, loss_n = loss_n + excluded.loss_n, "
                " loss_min = CASE WHEN excluded.loss_min IS NULL THEN loss_min WHEN loss_min IS NULL THEN excluded.loss_min "
                "                 ELSE MIN(loss_min, excluded.loss_min) END, "
                " psnr = COALESCE(excluded.psnr, psnr), ssim = COALESCE(excluded.ssim, ssim), "
                " bicubic_psnr = COALESCE(excluded.bicubic_psnr, bicubic_psnr), "
                " bicubic_ssim = COALESCE(excluded.bicubic_ssim, bicubic_ssim), val_step = COALESCE(excluded.val_step, val_step), "
                " pps_sum = COALESCE(pps_sum, 0) + excluded.pps_sum, pps_n = COALESCE(pps_n, 0) + excluded.pps_n, "
                " val_time = COALESCE(excluded.val_time, val_time)",
                (run, step // layout[0], step, step, t, t, loss or 0.0, 0 if loss is None else 1, loss,
                 v.get("psnr"), v.get("ssim"), v.get("bicubic_psnr"), v.get("bicubic_ssim"),
                 step if val is not None else None, pps or 0.0, 0 if pps is None else 1,
                 t if val is not None else None))
        if pps is not None:
            self.conn.execute(
                "INSERT INTO hardware (device, platform, run, samples, pps_sum, pps_max, pps_last, time_last) "
                "VALUES (?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT(device, platform, run) DO UPDATE SET "
                " samples = samples + 1, pps_sum = pps_sum + excluded.pps_sum, pps_max = MAX(pps_max, excluded.pps_max), "
                " pps_last = excluded.pps_last, time_last = excluded.time_last",
                (_text(p.get("device")) or UNKNOWN, _text(p.get("platform")) or UNKNOWN, run, pps, pps, pps, t))
        self.conn.execute(
            "UPDATE attempts SET step_reached = MAX(step_reached, ?), "
            " checkpoint_step = CASE WHEN ? THEN ? ELSE checkpoint_step END, "
            " checkpoint_time = CASE WHEN ? THEN ? ELSE checkpoint_time END "
            "WHERE run = ? AND chunk = ? AND generation = ?",
            (step, checkpoint, step, checkpoint, t, run, chunk["idx"], chunk["generation"]))

    def _validation_details(self, run: str, step: int, val: dict) -> None:
        """Records a validation's set name, per-image scores and pictures (older workers send none)."""
        pictures = val["pictures"]
        self.conn.execute(
            "UPDATE run_metrics SET val_set = ?, val_pictures_key = ?, val_pictures_md5 = ?, val_pictures = ? "
            "WHERE run = ?",
            (val["set"], pictures and pictures["key"], pictures and pictures["md5"],
             json.dumps(pictures.get("crops", [])) if pictures else None, run))
        self.conn.executemany(
            "INSERT OR REPLACE INTO validation_scores (run, step, image, psnr, ssim, bicubic_psnr, bicubic_ssim) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", [(run, step, *row) for row in val["scores"]])

    def ended(self, event: Event, chunk: dict, outcome: str) -> None:
        """Closes the chunk's current attempt: "done", "yield", "fail" or "expired"."""
        self.conn.execute("UPDATE attempts SET end_time = ?, outcome = ? WHERE run = ? AND chunk = ? AND generation = ?",
                          (event.server_time, outcome, chunk["run"], chunk["idx"], chunk["generation"]))
        column = {"done": "chunks_done", "yield": "yields", "fail": "fails", "expired": "expired"}[outcome]
        self.count(chunk["owner"] if outcome == "expired" else event.worker, column)
