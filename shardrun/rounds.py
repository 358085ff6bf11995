"""The worker's side of a collaborative run (docs/collaborative.md): starting a replica's unit
from the round's global weights, handing in its change of weights, closing a round that waited
past its deadline, and computing a round's outer step.

The protocol itself is the fold's (ledger/fold.py): a unit (round r, replica i) is claimed,
leased, fenced and resumed like a chunk; its `done` carries its change; the round closes when
every replica's change is in (or, past round_timeout in store time, with at least min_replicas);
then any worker computes the outer step (train/outer.py: numpy float32, a fixed order, so every
worker gets the same bytes) and writes `outer`, and the fold accepts the first one.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from shardrun import paths
from shardrun.errors import IntegrityError, NotFound, ShardrunError, StoreError
from shardrun.journal import LAG_S
from shardrun.train.outer import OuterSettings, OuterStepError, change_of, digest, outer_step, pack, unpack

log = logging.getLogger(__name__)


class RoundError(ShardrunError):
    """A round's inputs on the store are missing or fail their hash, or a replica diverged.
    `missing`: the object was not found; `transient`: worth looking again later."""

    def __init__(self, message: str, missing: bool = False, transient: bool = False):
        super().__init__(message)
        self.missing, self.transient = missing, transient


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Rounds:
    """One worker's collaborative runs: what a unit starts from, what it hands in, and the rounds'
    closing and outer steps. Every read of the store is hash-checked against the ledger."""

    def __init__(self, worker):  # a shardrun.worker.Worker
        self.worker = worker
        self._initial: dict[str, list[np.ndarray]] = {}  # run -> round 0's global weights
        self._globals: dict[tuple[str, int], tuple[str, list[np.ndarray]]] = {}  # (run, round) -> sha256, start weights

    def forget(self) -> None:
        """Drops what was read for a plan that has been replaced."""
        self._initial, self._globals = {}, {}

    # -- the store's objects of a round, verified --

    def _get(self, key: str, sha256: str, md5: str | None, what: str) -> list[np.ndarray]:
        try:
            data = self.worker.job.home.get_bytes(key, md5)
        except NotFound as e:
            raise RoundError(f"{what} ({key}) cannot be read: {e}", missing=True) from None
        except IntegrityError as e:
            raise RoundError(f"{what} ({key}) cannot be read: {e}") from None
        if _sha256(data) != sha256:
            raise RoundError(f"{what} ({key}) fails its sha256 ({_sha256(data)[:12]}, the journal says {sha256[:12]})")
        return unpack(data, f"{what} ({key})")

    def _put(self, key: str, arrays: list[np.ndarray]) -> dict:
        data = pack(arrays)
        stat = self.worker.job.home.put_bytes(key, data)
        return {"key": key, "sha256": _sha256(data), "md5": stat.md5, "size": len(data)}

    def initial_weights(self, run: str) -> list[np.ndarray]:
        """Returns round 0's global weights: the run's network as its seed (and init file) build it,
        the same on every worker."""
        if run not in self._initial:
            from shardrun.train.init import load_init_file
            from shardrun.train.models import build_model

            config = self.worker._train_config(run)
            model = build_model(config.resolve(), seed=config.seed)
            if config.init:
                load_init_file(model, config.init, config.init_sha256, config.init_output_scale)
            self._initial[run] = [np.asarray(w.numpy(), dtype=np.float32) for w in model.weights]
        return self._initial[run]

    def start_weights(self, run: str, round_: int) -> list[np.ndarray]:
        """Returns the global weights round `round_` starts from (the outer step of the round before,
        as the ledger accepted it now: a copy read before a refold is read again if it differs)."""
        if round_ == 0:
            return self.initial_weights(run)
        before = self._round(run, round_ - 1)
        if before is None or before["state"] != "done":
            raise RoundError(f"run {run!r}: round {round_} starts before round {round_ - 1}'s outer step")
        cached = self._globals.get((run, round_))
        if cached is None or cached[0] != before["weights_sha256"]:
            self._globals = {k: v for k, v in self._globals.items() if k[0] != run}  # one round's, per run
            weights = self._get(before["weights_key"], before["weights_sha256"], before["weights_md5"],
                                f"round {round_ - 1}'s global weights")
            self._globals[(run, round_)] = (before["weights_sha256"], weights)
        return self._globals[(run, round_)][1]

    def _momentum(self, run: str, round_: int) -> list[np.ndarray] | None:
        if round_ == 0:
            return None
        before = self._round(run, round_ - 1)
        return self._get(before["momentum_key"], before["momentum_sha256"], before["momentum_md5"],
                         f"round {round_ - 1}'s outer momentum")

    def _round(self, run: str, round_: int) -> dict | None:
        with self.worker._lock:
            rows = list(self.worker.ledger.db.query("SELECT * FROM rounds WHERE run = ? AND round = ?", [run, round_]))
        return rows[0] if rows else None

    # -- a unit: where it starts, what it hands in --

    def resume_candidates(self, run: str, chunk: dict) -> tuple[list[dict], list[dict]]:
        """Returns the checkpoints a unit may start from, newest first: its own (a resume
        mid-round), and its replica's last rounds' final ones (whose optimiser state the unit
        continues from the round's global weights)."""
        with self.worker._lock:
            ledger = self.worker.ledger
            resume_at = max(chunk["step_reached"], chunk["start_step"])
            own = [cp for cp in ledger.checkpoints(run, up_to_step=resume_at) if cp["chunk"] == chunk["idx"]]
            earlier = [c for c in ledger.chunks(run, state="done")
                       if c["replica"] == chunk["replica"] and c["round"] < chunk["round"]]
        earlier.sort(key=lambda c: c["round"], reverse=True)
        return own, [{"key": c["checkpoint_key"], "md5": c["checkpoint_md5"], "step": c["end_step"]}
                     for c in earlier[:1]]

    def begin_round(self, trainer, run: str, chunk: dict) -> None:
        """Sets a unit's trainer to the round's global weights at the round's first step (its
        optimiser state is the replica's own, restored or fresh)."""
        for variable, value in zip(trainer.model.weights, self.start_weights(run, chunk["round"])):
            variable.assign(value)
        trainer.step = chunk["start_step"]
        trainer.adam.iterations.assign(chunk["start_step"])

    def hand_in(self, trainer, run: str, chunk: dict, generation: int) -> dict:
        """Uploads the unit's change of weights over its round; returns the `done` event's `change`."""
        end = [np.asarray(w.numpy(), dtype=np.float32) for w in trainer.model.weights]
        start = self.start_weights(run, chunk["round"])
        change = change_of(start, end)
        if not all(np.isfinite(c).all() for c in change):
            raise RoundError(f"run {run!r} replica {chunk['replica']} diverged in round {chunk['round']}: its "
                             f"weights hold NaN or infinite values at step {trainer.step}; lower its learning rate "
                             f"(or outer_lr) and plan it again")
        key = paths.round_object_key(self.worker.job.name, run, chunk["round"],
                                     f"change-{chunk['replica']:03d}-g{generation}-{self.worker.id}-"
                                     f"{digest(change)[:16]}.arr")
        # `base` ties the change to the weights it was made from: the fold refuses a change made
        # from another copy of the round's weights (one read before a refold).
        return {**self._put(key, change), "base": digest(start)}

    # -- rounds: closing and the outer step --

    def due(self, trainer_for) -> bool:
        """Closes the rounds past their deadline that may close, and computes the outer step of
        every closed round; returns whether it wrote an event. `trainer_for(run)` returns a trainer
        of the run (validation and the global checkpoint use its network)."""
        wrote = False
        w = self.worker
        with w._lock:
            rounds = list(w.ledger.db.query("SELECT * FROM rounds WHERE state IN ('open', 'closed') ORDER BY run, round"))
        # Whoever handed in a round's last change (or closed it) computes its outer step at once;
        # the others only when it is still missing a while later (that worker may have died), so
        # a round is rarely stepped twice (a second copy is harmless: the same bytes, refused).
        grace = 2 * w.heartbeat_interval()
        for row in rounds:
            collab = w.ledger.collaborative(row["run"])
            if collab is None:
                continue
            if row["state"] == "open":
                now = w.server_now()
                waited = None if now is None or row["started_time"] is None else now - row["started_time"]
                if waited is not None and waited >= collab["round_timeout_minutes"] * 60:
                    with w._lock:
                        done = w.ledger.db.execute("SELECT COUNT(*) FROM chunks WHERE run = ? AND round = ? "
                                                   "AND state = 'done'", [row["run"], row["round"]]).fetchone()[0]
                    if done >= collab["min_replicas"]:
                        log.info("run %s round %d waited %.0f min: closing it with %d of %d replicas",
                                 row["run"], row["round"], waited / 60, done, collab["replicas"])
                        w._write("close", row["run"], row["round"], 0)
                        row = self._round(row["run"], row["round"])
                        # Refused when the store's time of the close is short of the timeout
                        # (this worker's estimate of it ran ahead): looked at again next time.
                        wrote = wrote or row["state"] == "closed"
                if row["state"] != "closed":
                    continue
            elif not self._closed_by_us(row):
                now = w.server_now()
                if now is not None and now - row["closed_time"] < grace:
                    continue
            try:
                self.outer(row, collab, trainer_for(row["run"]))
            except (RoundError, OuterStepError, StoreError) as e:
                # Never fatal to the worker (its other runs go on): the round waits, the log says
                # why, and the next pass tries again (a change not listed yet may be by then).
                log.warning("run %s round %d: the outer step cannot be computed now: %s", row["run"], row["round"], e)
                continue
            wrote = True
        if wrote:
            w.sync()
        return wrote

    def _closed_by_us(self, row: dict) -> bool:
        """True when this worker's event closed the round: its last change, or its `close`."""
        with self.worker._lock:
            last = self.worker.ledger.db.execute(
                "SELECT owner FROM chunks WHERE run = ? AND round = ? AND state = 'done' AND done_time = ?",
                [row["run"], row["round"], row["closed_time"]]).fetchone()
            closer = self.worker.ledger.db.execute(
                "SELECT worker FROM events WHERE kind = 'close' AND run = ? AND chunk = ? AND server_time = ?",
                [row["run"], row["round"], row["closed_time"]]).fetchone()
        return self.worker.id in {last and last[0], closer and closer[0]}

    def outer(self, row: dict, collab: dict, trainer) -> None:
        """Computes round `row`'s outer step from the changes it closed with, publishes the new
        global weights, outer momentum and a checkpoint of the global network, and writes `outer`."""
        w, run, round_ = self.worker, row["run"], row["round"]
        replicas = json.loads(row["replicas"])
        with w._lock:
            units = {c["replica"]: c for c in w.ledger.chunks(run) if c["round"] == round_}
        changes, unreadable = [], []
        now = w.server_now()
        for i in replicas:
            try:
                changes.append(self._get(units[i]["change_key"], units[i]["change_sha256"], units[i]["change_md5"],
                                         f"replica {i}'s change in round {round_}"))
            except RoundError as e:
                if e.missing and (now is None or now - units[i]["done_time"] < LAG_S):
                    # Drive's listings lag: a change handed in seconds ago may not be listed yet.
                    raise RoundError(f"{e} (handed in {0 if now is None else now - units[i]['done_time']:.0f} s "
                                     f"ago: looked for again later)", transient=True) from None
                unreadable.append((units[i], str(e)))
        if unreadable:
            for unit, reason in unreadable:  # the unit hands in its change again; the round waits for it
                log.warning("run %s: %s; replica %d trains its round's end again", run, reason, unit["replica"])
                w._write("reject", run, unit["idx"], unit["generation"], reason=reason)
            return
        start = self.start_weights(run, round_)
        weights, momentum = outer_step(start, self._momentum(run, round_), changes,
                                       OuterSettings(collab["outer_lr"], collab["outer_momentum"]))
        name = lambda kind, arrays: paths.round_object_key(  # noqa: E731
            w.job.name, run, round_, f"{kind}-{w.id}-{digest(arrays)[:16]}.arr")
        published = {"weights": self._put(name("weights", weights), weights),
                     "momentum": self._put(name("momentum", momentum), momentum)}
        step = units[replicas[0]]["end_step"]
        for variable, value in zip(trainer.model.weights, weights):
            variable.assign(value)
        trainer.step = step
        validation = w._validate(trainer, run, None, 0, step, pictures=False)
        (w.job.cache_dir / "rounds").mkdir(parents=True, exist_ok=True)
        path = trainer.save_checkpoint(w.job.cache_dir / "rounds" / f"{run}-global-{round_}.ckpt").path
        key = paths.round_object_key(w.job.name, run, round_, f"global-{w.id}-step-{step:012d}.ckpt")
        stat = w.job.home.put_file(key, path)
        path.unlink(missing_ok=True)
        extra = {"validation": validation} if validation is not None else {}
        log.info("run %s round %d: outer step over replicas %s (global weights %s)", run, round_, replicas,
                 published["weights"]["sha256"][:12])
        w._write("outer", run, round_, 0, replicas=replicas, step=step, base=digest(start),
                 changes=[units[i]["change_sha256"] for i in replicas],
                 checkpoint={"key": key, "md5": stat.md5, "step": step}, **published, **extra, **w.identity())
