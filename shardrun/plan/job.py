"""`shardrun plan`: scan the dataset, place and upload shards, and write the plan to the journal.

Order matters for "bad input loses nothing": everything that can fail on the inputs (job file,
scan, profile, space) is checked before the first write; uploads are idempotent (a shard that is
already on its account with the right hash is kept); the plan event is written last, so an
interrupted `plan` leaves no plan, only shards that the next run reuses.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shardrun import paths
from shardrun.clock import Clock, SystemClock
from shardrun.config.job import JobConfig
from shardrun.plan.dataset import DatasetChange, ScanResult, diff_datasets, scan_dataset
from shardrun.errors import ConfigError, PlanError, StoreError
from shardrun.journal import Journal
from shardrun.ledger.db import Ledger
from shardrun.ledger.fold import run_identity, unchanged_runs
from shardrun.plan.parts import collaborative_record, layout_part_shards, replica_problems, round_problems
from shardrun.plan.placement import (
    AccountSpace,
    Estimate,
    RunPlan,
    ShardToPlace,
    estimate,
    place_groups,
    place_shards,
    plan_run,
)
from shardrun.config.platforms import Platform, Profile, load_platforms, load_profile
from shardrun.plan.space import (RetainedSpace, home_space, home_too_small, home_too_small_for_rounds, retained_space,
                                 room_for_shards)
from shardrun.plan.validation import ValidationSet, choose_validation, upload_validation_set
from shardrun.plan.shards import BuiltShard, Manifest, ShardSpec, digest_shard, write_shard
from shardrun.errors import QuotaExceeded
from shardrun.storage.base import Stat, Store
from shardrun.storage.registry import absolute_url

PLANNER = "planner"  # the worker name plan events carry

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class AccountReport:
    name: str
    store: str
    quota_bytes: int
    used_before: int  # bytes on the account before this plan uploaded anything
    reserve_bytes: int
    shards: int = 0
    shard_bytes: int = 0  # this plan's shards on the account, kept or uploaded
    uploaded_bytes: int = 0  # of which this run of `plan` uploaded (or, dry, would upload)

    @property
    def free_after(self) -> int:
        return max(0, self.quota_bytes - self.used_before - self.uploaded_bytes)


@dataclass
class PlanReport:
    job: JobConfig
    platform: Platform
    profile: Profile | None
    scan: ScanResult
    shards: list[dict]  # id, account, key, size, md5, images, uploaded (bool)
    accounts: list[AccountReport]
    runs: list[RunPlan]
    estimate: Estimate
    plan_id: str
    dry_run: bool
    written: bool = False  # False: dry run, or the same plan was already in the journal
    change: DatasetChange | None = None
    notes: list[str] = field(default_factory=list)
    validation: ValidationSet | None = None
    replan: "Replan | None" = None  # how this plan differs from the one it replaces
    # run name -> kind ("network", "init") -> the file a run trains with: file (as the job file
    # names it), key on the home store, sha256, md5, size; a network's also its parameters
    run_files: dict[str, dict[str, dict]] = field(default_factory=dict)
    # What retention keeps on the home account at most (plan/space.py), counted in its space
    retained: RetainedSpace | None = None
    # run name -> a collaborative run's record (plan/parts.collaborative_record): its rounds and
    # each replica's part, with its shards
    collaborative: dict[str, dict] = field(default_factory=dict)


@dataclass
class Replan:
    """How a new plan differs from the plan in force, run by run (see `compare_plans`)."""

    replaces: str
    data: DatasetChange | None  # the dataset changed: every run starts over
    accounts: list[str]  # what changed in the accounts ("bob added", "alice: quota")
    kept: list[str]  # runs whose progress the new plan keeps
    restarted: list[str]  # runs that start over (changed settings, or new data)
    added: list[str]
    removed: list[str]

    @property
    def needs_replace(self) -> bool:
        """True when the new plan loses progress or moves the job (only with `--replace`)."""
        return bool(self.data or self.accounts or self.restarted or self.removed)

    def summary(self) -> str:
        what = []
        if self.data:
            what.append(f"the dataset changed ({self.data.summary()})")
        if self.accounts:
            what.append("the accounts changed (" + ", ".join(self.accounts) + ")")
        changed = [r for r in self.restarted if not self.data]
        if changed:
            what.append("the training settings of " + ", ".join(changed) + " changed")
        if self.removed:
            what.append("runs removed: " + ", ".join(self.removed))
        if self.added:
            what.append("runs added: " + ", ".join(self.added))
        return "; ".join(what) or "the shards moved"

    def consequences(self) -> str:
        parts = [("start over", self.restarted), ("are dropped", self.removed), ("keep their progress", self.kept),
                 ("are planned new", self.added)]
        return "; ".join(f"{', '.join(runs)} {verb}" for verb, runs in parts if runs) or "no run changes"



def _account_payload(job: JobConfig) -> list[dict]:
    # Absolute, so a worker started from the home URL on this machine finds every account.
    return [{"name": a.name, "store": absolute_url(a.store, job.base_dir), "quota_bytes": a.quota_bytes,
             "reserve_bytes": job.reserve_bytes} for a in job.accounts]


def compare_plans(ledger: Ledger, job: JobConfig, runs: list[RunPlan], fingerprint: str,
                  data: DatasetChange | None, run_files: dict[str, dict[str, dict]]) -> Replan:
    """Returns how a plan of `runs` on `fingerprint` differs from the ledger's plan, run by run,
    by the rule the fold applies (ledger.fold.unchanged_runs): a run keeps its progress when its
    training settings and chunks are the same, on the same data."""
    current = ledger.plan()
    old = {r["name"]: run_identity(r, [(c["start_step"], c["end_step"]) for c in ledger.chunks(r["name"])
                                        if c["round"] is None])
           for r in ledger.runs()}
    new = {p["name"]: run_identity(p, p["chunks"]) for p in (_run_payload(r, run_files) for r in runs)}
    kept = unchanged_runs(current["fingerprint"], old, fingerprint, new)
    was = {a["name"]: a for a in ledger.accounts()}
    now = {a["name"]: a for a in _account_payload(job)}
    accounts = [f"{n} added" for n in now if n not in was] + [f"{n} removed" for n in was if n not in now]
    for name in [n for n in now if n in was]:
        diff = [k for k in ("store", "quota_bytes", "reserve_bytes") if was[name][k] != now[name][k]]
        if diff:
            accounts.append(f"{name}: {', '.join(diff)}")
    return Replan(current["id"], data, accounts, kept=[n for n in new if n in kept],
                  restarted=[n for n in new if n in old and n not in kept],
                  added=[n for n in new if n not in old], removed=[n for n in old if n not in new])


def open_account_stores(job: JobConfig) -> dict[str, Store]:
    """Returns each account's store, opened with the account's quota and sign-in settings."""
    return {a.name: job.open_store(a) for a in job.accounts}


def load_job_ledger(job: JobConfig, home: Store, clock: Clock | None = None,
                    in_memory: bool = False) -> tuple[Ledger, Journal]:
    """Returns the job's ledger synced with its journal, seeded from the snapshot if new."""
    journal = Journal(home, job.name, clock)
    if in_memory:
        ledger = Ledger.open(None)
    else:
        ledger = Ledger.from_snapshot(home, job.name, job.ledger_path)
    ledger.sync(journal)
    return ledger, journal


def _store_problem(name: str, store: Store) -> str | None:
    """Returns why the account's store cannot hold the job (unreachable, or another job's folder), or None."""
    try:
        store.usage()
        for folder in paths.JOB_FOLDERS:
            found = store.list_keys(folder)
            if found:
                return (f"{store.url} already holds another job's objects ({found[0]}): the store is some job's own "
                        "folder, and every job keeps its objects under <job>/ in the account's folder; point the "
                        "account at the folder above it, or at a prefix of its own")
    except StoreError as e:
        return str(e).splitlines()[0]
    return None


def _check_stores(stores: dict[str, Store]) -> None:
    """Raises PlanError with one line per account whose store cannot be used, all asked in parallel."""
    with ThreadPoolExecutor(max(1, min(8, len(stores)))) as pool:
        problems = dict(zip(stores, pool.map(lambda item: _store_problem(*item), stores.items())))
    lines = [f"  - account {name}: {problem}" for name, problem in problems.items() if problem]
    if lines:
        noun = "account" if len(lines) == 1 else "accounts"
        raise PlanError(f"{len(lines)} {noun} cannot be used:\n" + "\n".join(lines))


def _plan_id(fingerprint: str, runs: list[RunPlan], shards: list[dict],
             run_files: dict[str, dict[str, dict]] | None = None, validation: ValidationSet | None = None) -> str:
    body = {
        "fingerprint": fingerprint,
        "runs": [{"config": _run_config(r, run_files or {}), "chunks": r.chunks} for r in runs],
        "shards": [(s["id"], s["account"]) for s in shards],
    }
    # A held-out set is part of the fingerprint already (its images left the scan); a folder of
    # its own is not, and a plan that ignored a changed folder would keep scoring the old one.
    if validation is not None and validation.source == "folder":
        body["validation"] = sorted(i.sha256 for i in validation.images)
    return "plan-" + hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _existing_shards(stores: dict[str, Store], job: str) -> dict[str, tuple[str, Stat]]:
    """Returns shard id -> (account, Stat) for this job's shards already on any account."""
    found: dict[str, tuple[str, Stat]] = {}
    for name, store in stores.items():
        for stat in store.list(paths.shards_prefix(job)):
            found.setdefault(paths.shard_id_of(stat.key), (name, stat))
    return found


def _verified_existing(specs: list[ShardSpec], existing: dict[str, tuple[str, Stat]],
                       stores: dict[str, Store], check_hash: bool) -> tuple[dict[str, tuple[str, Stat]], dict[str, str]]:
    """Returns (shard id -> (account, Stat) of intact shards, shard id -> account of damaged ones).

    A damaged shard (a partial upload, or bytes changed on the store) is uploaded again onto the
    same account, replacing it rather than leaving an orphan behind.
    """
    intact, damaged = {}, {}
    for spec in specs:
        if spec.id not in existing:
            continue
        account, stat = existing[spec.id]
        if stat.size == spec.size:
            stat = stores[account].stat(stat.key)
            if not check_hash or stat.md5 == digest_shard(spec).md5:
                intact[spec.id] = (account, stat)
                continue
        damaged[spec.id] = account
    return intact, damaged


def _upload(spec: ShardSpec, account: str, stores: dict[str, Store], job: str, workdir: Path,
            progress: Progress | None = None) -> BuiltShard:
    built = write_shard(spec, workdir / f"{spec.id}.tar")
    # "shard-bytes": how far the current shard's upload has got (long on Drive: 256 MB each).
    on_bytes = (lambda done, total: progress("shard-bytes", done, total)) if progress else None
    try:
        stat = stores[account].put_file(paths.shard_key(job, spec.id), workdir / f"{spec.id}.tar", progress=on_bytes)
    finally:
        (workdir / f"{spec.id}.tar").unlink(missing_ok=True)
    if stat.md5 != built.md5:
        raise StoreError(f"{stores[account].url}: shard {spec.id} stored with md5 {stat.md5}, "
                         f"expected {built.md5}")
    return built


def plan_job(job: JobConfig, *, dry_run: bool = False, replace: bool = False,
             platforms: dict[str, Platform] | None = None, clock: Clock | None = None,
             on_progress: Progress | None = None, scan_workers: int | None = None) -> PlanReport:
    """Plans `job` (see the module docstring); returns what was planned and what it will cost."""
    clock = clock or SystemClock()
    progress = on_progress or (lambda phase, done, total: None)
    platforms = platforms or load_platforms()
    platform = platforms[job.platform]
    needs_profile = any(r.patches_per_second is None for r in job.runs)
    profile = load_profile(job.profile or platform.profile, job.base_dir) if needs_profile else None

    scan = scan_dataset(job.data, job.base_dir, min_side=max(r.patch_size for r in job.runs),
                        workers=scan_workers, on_progress=lambda d, t: progress("scan", d, t))
    # Validation images are taken out before anything is counted or packed: never in a shard.
    scan, vset = choose_validation(scan, job.validation, job.validation_share, job.base_dir,
                                   min_side=max(r.patch_size for r in job.runs), workers=scan_workers)
    runs = plan_runs(job, len(scan.accepted), profile, platform)
    checkpoint_sizes: dict[str, int] = {}
    change_sizes: dict[str, int] = {}
    run_files = check_training(job, runs, checkpoint_sizes, change_sizes)
    # A collaborative run's parts are whole shards: the layout cuts at every part's bounds
    # (plan/parts.py); a job of plain runs only is laid out as it always was.
    collaborative = [r.run.replicas for r in runs if r.run.collaborative is not None]
    groups = layout_part_shards(scan.accepted, collaborative, job.shard_size_bytes)
    specs = [spec for group in groups for spec in group]

    stores = open_account_stores(job)
    _check_stores(stores)
    home = stores[job.home.name]
    ledger, journal = load_job_ledger(job, home, clock, in_memory=dry_run)
    notes: list[str] = []
    current = ledger.plan()
    change = replan = None
    if current:
        if current["fingerprint"] != scan.fingerprint:
            old = Manifest.from_json_bytes(home.get_bytes(current["manifest_key"], current["manifest_md5"]))
            change = diff_datasets(old.images, scan)
        replan = compare_plans(ledger, job, runs, scan.fingerprint, change, run_files)
        if replan.needs_replace and not replace:
            what = (f"the dataset changed since the job was planned: {change.summary()}" if change else
                    f"the job changed since it was planned: {replan.summary()}")
            raise PlanError(f"{what}. With `shardrun plan --replace` the new plan replaces {current['id']}: "
                            f"{replan.consequences()}")
        if change:
            notes.append(f"dataset changed ({change.summary()}); the new plan replaces {current['id']}")

    existing = _existing_shards(stores, job.name)
    kept, damaged = _verified_existing(specs, existing, stores, check_hash=not dry_run)
    usages = {name: store.usage() for name, store in stores.items()}
    spaces = [AccountSpace(a.name, a.quota_bytes, usages[a.name].used_bytes, job.reserve_bytes)
              for a in job.accounts]
    # The home keeps room for the checkpoints retention keeps (this job's already there among them).
    retained = retained_space(runs, checkpoint_sizes, job.lease_minutes * 60, change_bytes=change_sizes)
    existing = sum(s.size for r in runs for s in home.list(paths.checkpoints_prefix(job.name, r.run.name)))
    home_now = home_space(next(s for s in spaces if s.name == job.home.name), existing)
    spaces = [room_for_shards(home_now, retained) if s.name == job.home.name else s for s in spaces]
    # Before the shards: a home with room for the checkpoints but not for the rounds beside them
    # is the reason to give, not a shortfall of room for shards.
    problem = home_too_small_for_rounds(home_now, retained)
    if problem:
        raise PlanError(problem)
    on_store = {**damaged, **{sid: acct for sid, (acct, _) in kept.items()}}
    if collaborative:  # each part's shards on as few accounts as possible
        to_place = [[ShardToPlace(s.id, s.size) for s in group] for group in groups]
        try:
            placement = place_groups(to_place, spaces, on_store)
        except PlanError:
            _refuse_for_rounds(to_place, spaces, on_store, home_now, retained)
            raise
    else:
        placement = place_shards([ShardToPlace(s.id, s.size) for s in specs], spaces, on_store)
    problem = home_too_small(home_now, retained)
    if problem:
        raise PlanError(problem)

    accounts = {a.name: AccountReport(a.name, a.store, a.quota_bytes, usages[a.name].used_bytes,
                                      job.reserve_bytes) for a in job.accounts}
    shards = []
    with tempfile.TemporaryDirectory(prefix="shardrun-plan-") as tmp:
        for n, spec in enumerate(specs):
            account = placement[spec.id]
            md5 = sha256 = None
            if spec.id in kept:
                md5, sha256 = kept[spec.id][1].md5, kept[spec.id][1].sha256
            elif not dry_run:
                account, built = _upload_with_fallback(spec, account, stores, spaces, job.name, Path(tmp), notes,
                                                       progress)
                md5, sha256 = built.md5, built.sha256
            report = accounts[account]
            report.shards += 1
            report.shard_bytes += spec.size
            if spec.id not in kept:
                report.uploaded_bytes += spec.size
            shards.append({"id": spec.id, "account": account, "key": paths.shard_key(job.name, spec.id),
                           "size": spec.size, "md5": md5, "sha256": sha256, "images": len(spec.members),
                           "uploaded": spec.id not in kept})
            progress("upload", n + 1, len(specs))

    if not dry_run:
        _upload_run_files(home, job.name, run_files)
    placed = {s["id"]: s["account"] for s in shards}  # where each shard went, fallbacks included
    records = {r.run.name: collaborative_record(r, groups, placed, job.lease_minutes * 60)
               for r in runs if r.run.collaborative is not None}
    est = estimate(runs, platform, job.parallel_workers)
    plan_id = _plan_id(scan.fingerprint, runs, shards, run_files, vset)
    notes.append(vset.describe())
    notes.append(f"the home account {job.home.name} keeps room for the checkpoints retention keeps: {retained.describe()}")
    report = PlanReport(job, platform, profile, scan, shards, list(accounts.values()), runs, est,
                        plan_id, dry_run, change=change, notes=notes, validation=vset, run_files=run_files,
                        retained=retained, collaborative=records)
    if dry_run or (current and current["id"] == plan_id):
        return report
    if replan is not None:
        report.replan = replan
        notes.append(f"the new plan replaces {current['id']}: {replan.consequences()}")

    manifest = _manifest(scan, specs, shards)
    manifest_stat = home.put_bytes(paths.manifest_key(job.name, plan_id), manifest.to_json_bytes())
    payload = _plan_payload(job, report, manifest_stat, replaces=current["id"] if current else None)
    payload["validation"] = upload_validation_set(vset, home, job.name)
    journal.append("plan", PLANNER, payload=payload)
    ledger.sync(journal)
    report.written = True
    try:
        ledger.publish(home, job.name)
    except QuotaExceeded as e:
        # The plan stands (its event is written); the snapshot only spares new readers a fold
        # from the start, and a worker publishes one later when there is room.
        notes.append(f"the ledger snapshot was not published ({e}); new workers fold the journal from its start")
    return report


def _refuse_for_rounds(groups: list[list[ShardToPlace]], spaces: list[AccountSpace], on_store: dict[str, str],
                       home: AccountSpace, retained: RetainedSpace) -> None:
    """Raises the rounds' one-line reason (space.home_too_small_for_rounds) when the shards that
    did not fit would fit without the room kept for the collaborative runs' rounds; returns
    otherwise, and the shortfall of room for shards is the reason."""
    without = [room_for_shards(home, RetainedSpace(retained.files, retained.bytes, retained.largest))
               if s.name == home.name else s for s in spaces]
    try:
        placement = place_groups(groups, without, on_store)
    except PlanError:
        return
    sizes = {s.id: s.size for group in groups for s in group}
    on_home = sum(sizes[sid] for sid, account in placement.items() if account == home.name and sid not in on_store)
    problem = home_too_small_for_rounds(home, retained, on_home)
    if problem:
        raise PlanError(problem)


def plan_runs(job: JobConfig, images: int, profile: Profile | None, platform: Platform) -> list[RunPlan]:
    """Returns the job's runs cut into chunks on `images` training images; raises ConfigError
    naming every collaborative run the data cannot carry (more replicas than images, a round
    longer than a replica's steps), all at once, before any upload."""
    problems = replica_problems(job.runs, images)
    runs = [None if i in problems else plan_run(r, images, profile, platform) for i, r in enumerate(job.runs)]
    problems.update(round_problems(runs, images))
    if problems:
        raise ConfigError(job.source, [problems[i] for i in sorted(problems)])
    return runs


def check_training(job: JobConfig, runs: list[RunPlan], checkpoint_sizes: dict[str, int] | None = None,
                   change_sizes: dict[str, int] | None = None) -> dict[str, dict[str, dict]]:
    """Returns the files each run trains with (its own network, its init weights: see
    PlanReport.run_files, keys not yet uploaded); raises ConfigError naming every run setting
    that training would refuse (model options, loss, schedule against the run's length, a
    network file that does not import or builds the wrong shape, init weights that do not fit),
    all at once, before any upload.

    A run with its own network or init weights has its network built here, in this process:
    the network file is the team's own code (docs/training.md). Into `checkpoint_sizes` goes each
    run's checkpoint size (train/checkpoint.estimated_size of its network, built once), and into
    `change_sizes` each collaborative run's change (train/outer.packed_size of its weights).
    """
    from shardrun.storage.base import digest_file
    from shardrun.train.init import InitError
    from shardrun.train.models import ModelError
    from shardrun.train.schedule import ScheduleError
    from shardrun.train.trainer import TrainConfig

    problems: list[str] = []
    run_files: dict[str, dict[str, dict]] = {}
    sources = {r.run.init_run for r in runs if r.run.init_run}
    shapes: dict[str, list[tuple[int, ...]]] = {}  # run -> its network's weight shapes
    for i, r in enumerate(runs):
        where = f"runs[{i}]."
        given = {}
        if r.run.custom_network:
            given["network"] = ("model", r.run.custom_network[0])
        if r.run.init_file:
            given["init"] = ("init", r.run.init_file)
        files, local = {}, {}
        for kind, (key, name) in given.items():
            path = job.base_dir / name
            if not path.is_file():
                problems.append(f"{where}{key} = {r.run.model if kind == 'network' else name!r}: no such file "
                                f"{path}; a path relative to the job file's folder")
                continue
            digest = digest_file(path)
            files[kind] = {"file": name, "sha256": digest.sha256, "md5": digest.md5, "size": digest.size,
                           "key": paths.run_file_key(job.name, digest.sha256, Path(name).suffix),
                           "path": str(path)}
            local[kind] = str(path)
        if len(files) < len(given):
            continue
        # Another run's network (init = "run:NAME") is checked against this run's below: it
        # does not exist before that run has trained.
        config = TrainConfig.from_run({**r.run.to_payload(), "init": r.run.init_file, "files": files}, local)
        model_config = None
        try:
            model_config = config.resolve()
        except ModelError as error:
            problems.extend(f"{where[:-1]}: {part}" for part in error.problems)
        try:
            config.lr_schedule(r.steps_per_epoch, r.steps_total)
        except ScheduleError as error:
            problems.extend(f"{where}{part}" for part in error.problems)
        if model_config is not None and files:
            try:
                parameters, model = _check_network(config, model_config)
                files.get("network", {})["parameters"] = parameters
            except InitError as error:
                problems.append(f"{where}init = {r.run.init!r}: {error}")
            except ModelError as error:
                problems.append(f"{where}model = {r.run.model!r}: {error}")
            else:
                _record_size(checkpoint_sizes, r.run.name, model)
                _record_change(change_sizes, r, model)
                shapes[r.run.name] = [tuple(w.shape) for w in model.weights]
        elif model_config is not None and (checkpoint_sizes is not None or change_sizes is not None
                                           or r.run.name in sources or r.run.init_run):
            from shardrun.train.models import build_model

            model = build_model(model_config, seed=config.seed)
            _record_size(checkpoint_sizes, r.run.name, model)
            _record_change(change_sizes, r, model)
            shapes[r.run.name] = [tuple(w.shape) for w in model.weights]
        if files:
            run_files[r.run.name] = files
    problems.extend(_run_init_problems(runs, shapes))
    if problems:
        raise ConfigError(job.source, problems)
    return run_files


def _run_init_problems(runs: list[RunPlan], shapes: dict[str, list[tuple[int, ...]]]) -> list[str]:
    """Returns one line for each run whose `init = "run:NAME"` names a run whose network's
    weights have other shapes than its own (the job file has already checked that NAME exists)."""
    problems = []
    for i, r in enumerate(runs):
        source = r.run.init_run
        if source is None or r.run.name not in shapes or source not in shapes:
            continue
        ours, theirs = shapes[r.run.name], shapes[source]
        if ours == theirs:
            continue
        first = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        shown = lambda ws: str(list(ws[first])) if first < len(ws) else "none"  # noqa: E731
        problems.append(f"runs[{i}].init = {r.run.init!r}: the network of run {source!r} does not fit this run's "
                        f"({len(theirs)} weights there, {len(ours)} here; weight {first + 1} is "
                        f"{shown(theirs)} there, {shown(ours)} here)")
    return problems


def _record_size(sizes: dict[str, int] | None, run: str, model) -> None:
    if sizes is not None:
        from shardrun.train.checkpoint import estimated_size

        sizes[run] = estimated_size(model)


def _record_change(sizes: dict[str, int] | None, r: RunPlan, model) -> None:
    if sizes is not None and r.run.collaborative is not None:
        from shardrun.train.outer import packed_size

        sizes[r.run.name] = packed_size([tuple(w.shape) for w in model.weights])


def _check_network(config, model_config):
    """Returns the trainable parameters of the run's network and the network, built once and
    checked: its shape (a network of the team's own) and its init weights, loaded as a worker
    will load them."""
    from shardrun.train.init import load_init_file
    from shardrun.train.models import build_model, check_network

    model = build_model(model_config, seed=config.seed)
    if model_config.network is not None:
        check_network(model_config, model)
    if config.init:
        load_init_file(model, config.init, config.init_sha256, config.init_output_scale)
    return int(sum(int(w.numpy().size) for w in model.trainable_weights)), model


def _upload_run_files(home: Store, job: str, run_files: dict[str, dict[str, dict]]) -> None:
    """Puts each run file on the home store under its content's key (kept when already there)."""
    for name, files in run_files.items():
        for kind, f in files.items():
            if home.exists(f["key"]) and home.stat(f["key"]).md5 == f["md5"]:
                continue
            stat = home.put_file(f["key"], f["path"]) if "path" in f else None
            if stat is not None and stat.md5 != f["md5"]:
                raise StoreError(f"{home.url}: {kind} file {f['file']} of run {name} stored with md5 "
                                 f"{stat.md5}, expected {f['md5']}")


def _upload_with_fallback(spec: ShardSpec, account: str, stores: dict[str, Store],
                          spaces: list[AccountSpace], job: str, workdir: Path,
                          notes: list[str], progress: Progress | None = None) -> tuple[str, BuiltShard]:
    """Uploads a shard, moving to the next account with room if its account turns out full."""
    tried = []
    candidates = [account] + [s.name for s in spaces if s.name != account]
    for name in candidates:
        try:
            built = _upload(spec, name, stores, job, workdir, progress)
        except QuotaExceeded as e:
            tried.append(name)
            notes.append(f"account {name} is full ({e}); shard {spec.id} placed elsewhere")
            continue
        return name, built
    raise PlanError(f"shard {spec.id} ({spec.size:,} bytes) fits on no account: "
                    f"{', '.join(tried)} are full. Shards uploaded so far are kept; "
                    "add an account and run `shardrun plan` again")


def _manifest(scan: ScanResult, specs: list[ShardSpec], shards: list[dict]) -> Manifest:
    by_id = {s["id"]: s for s in shards}
    built = [BuiltShard(spec.id, spec.size, by_id[spec.id]["md5"], by_id[spec.id]["sha256"] or "", spec.members)
             for spec in specs]
    return Manifest.build(scan.fingerprint, built)


# The run's settings the ledger keeps as columns of its runs table (status reads them without
# parsing `config`); `config` holds them all, and is what the trainer reads back.
_RUN_COLUMNS = ("model", "scale", "channels", "epochs", "batch_size", "patch_size")


def _run_config(r: RunPlan, run_files: dict[str, dict[str, dict]]) -> dict:
    """Returns a run's settings as the plan records them: the job file's, plus the files it
    trains with (`files`: key, hashes, size; where it has any)."""
    settings = r.run.to_payload()
    if r.run.name in run_files:
        settings["files"] = {kind: {k: v for k, v in f.items() if k != "path"}
                             for kind, f in run_files[r.run.name].items()}
    return settings


def _run_payload(r: RunPlan, run_files: dict[str, dict[str, dict]], collaborative: dict | None = None) -> dict:
    """Returns the plan event's entry for one run: its settings (`config`), as the job file gave
    them, its mode and its plan (steps, chunks).

    A collaborative run has no chunks in the ledger (a worker would train them as a plain
    chain): its work is its rounds, and `collaborative` (plan/parts.collaborative_record) says
    which shards are each replica's. Its steps are each replica's.
    """
    settings = _run_config(r, run_files)
    payload = {"name": r.run.name, "mode": r.run.mode, **{key: settings[key] for key in _RUN_COLUMNS},
               "steps_per_epoch": r.steps_per_epoch, "steps_total": r.steps_total, "step_seconds": r.step_seconds,
               "config": settings, "chunks": [list(c) for c in r.chunks] if r.run.collaborative is None else []}
    if collaborative is not None:
        payload["collaborative"] = collaborative
    return payload


def _plan_payload(job: JobConfig, report: PlanReport, manifest: Stat, replaces: str | None) -> dict:
    est = report.estimate
    return {
        "plan_id": report.plan_id,
        "replaces": replaces,
        "job": job.name,
        "fingerprint": report.scan.fingerprint,
        "images": len(report.scan.accepted),
        "image_bytes": report.scan.total_bytes,
        "manifest_key": manifest.key,
        "manifest_md5": manifest.md5,
        "platform": job.platform,
        "profile": report.profile.name if report.profile else "",
        "lease_seconds": job.lease_minutes * 60,
        "accounts": _account_payload(job),
        "shards": [{k: s[k] for k in ("id", "account", "key", "size", "md5", "images")} for s in report.shards],
        "runs": [_run_payload(r, report.run_files, report.collaborative.get(r.run.name)) for r in report.runs],
        "rejected": [{"path": r.path, "reason": r.reason} for r in report.scan.rejected],
        "estimate": {"gpu_hours": est.gpu_hours, "sessions": est.sessions,
                     "calendar_hours": est.calendar_hours, "workers": est.workers},
    }

