"""The job file (TOML) as typed objects.

Validation reads the whole file before it complains, so a user fixes every problem in one pass:
each problem names the key (`runs[1].scale`), the value given and what is allowed, and an
unknown key comes with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardrun.errors import ConfigError
from shardrun.storage import registry
from shardrun.storage.account import Account
from shardrun.storage.backend import Backend
from shardrun.storage.base import Store
from shardrun.validate import (
    Key,
    check_table,
    non_negative,
    one_of,
    positive,
    read_text_file,
    read_toml,
    show,
    unknown_key_problem,
)

GB = 1_000_000_000  # Drive counts quota in decimal gigabytes, and so do we
MB = 1_000_000

# Names of the model factories in shardrun.train.models, listed here so validating a job file
# never imports TensorFlow; tests/config/test_job.py checks the two lists agree.
MODEL_NAMES = ("srcnn-915", "srcnn-955", "fsrcnn", "espcn", "decusr", "vdsr", "edsr-baseline")
# A network of the team's own: `file:<path to a .py beside the job file>:<function>`.
CUSTOM_MODEL_PREFIX = "file:"
# Weights from another run of the job: `init = "run:<name>"`, that run's final network.
RUN_INIT_PREFIX = "run:"
LOSSES = ("mse", "l1", "charbonnier")
RUN_MODES = ("plain", "collaborative")
SCHEDULE_KINDS = ("constant", "step", "cosine")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


@dataclass(frozen=True)
class AccountConfig:
    name: str
    store: str
    quota_gb: float = 15.0
    # The store backend's typed settings, from the account's and the job's keys (for Drive,
    # how it signs in: docs/storage.md); never a secret in repr or messages.
    settings: Any = None

    @property
    def quota_bytes(self) -> int:
        return int(self.quota_gb * GB)


@dataclass(frozen=True)
class CollaborativeConfig:
    """A collaborative run's settings (docs/collaborative.md): `replicas` train their own parts
    of the images for `sync_every` inner steps a round, then an outer Nesterov step averages
    their changes."""

    replicas: int
    sync_every: int  # inner steps per round
    outer_lr: float = 0.7
    outer_momentum: float = 0.9  # Nesterov
    min_replicas: int | None = None  # the changes a round needs; the job file's default: replicas
    round_timeout: float | None = None  # minutes of store time; None: `plan` sets it from the round's length

    @property
    def required_replicas(self) -> int:
        """Returns how many replicas' changes a round needs before its outer step."""
        return self.replicas if self.min_replicas is None else self.min_replicas


@dataclass(frozen=True)
class RunConfig:
    name: str
    model: str
    scale: int
    channels: int
    epochs: int
    batch_size: int
    patch_size: int
    seed: int = 0
    patches_per_image: int = 16
    learning_rate: float = 1e-3
    options: dict[str, Any] = field(default_factory=dict)
    patches_per_second: float | None = None  # overrides the throughput profile for this run
    precision: str = "float32"  # or "mixed_float16", "bfloat16"
    xla: bool | None = None  # XLA-compile the step; None: on an accelerator unless deterministic
    deterministic: bool = True  # op determinism: exact resume on the same hardware
    loss: str | None = None  # None: the model's own default
    clip_norm: float | None = None
    schedule: dict[str, Any] | None = None  # [runs.schedule], the keys given (None: constant)
    init: str | None = None  # weights to start from: a path relative to the job file, or "run:NAME"
    init_output_scale: float | None = None
    collaborative: CollaborativeConfig | None = None  # None: a plain run (mode = "plain")

    @property
    def init_run(self) -> str | None:
        """Returns the run whose final network this run starts from (`init = "run:NAME"`), or None."""
        return init_run_of(self.init)

    @property
    def init_file(self) -> str | None:
        """Returns the weights file this run starts from (a path relative to the job file), or None."""
        return None if self.init_run is not None else self.init

    @property
    def mode(self) -> str:
        return "plain" if self.collaborative is None else "collaborative"

    @property
    def replicas(self) -> int:
        """Returns how many replicas train the run at once (1 for a plain run)."""
        return 1 if self.collaborative is None else self.collaborative.replicas

    @property
    def custom_network(self) -> tuple[str, str] | None:
        """Returns (file, function) of a `file:PATH:FUNC` model, or None for a built-in one."""
        return split_custom_model(self.model)

    def to_payload(self) -> dict[str, Any]:
        """Returns the run's settings as plain JSON values: what the plan records for the run and
        the trainer reads back (shardrun.train.trainer.TrainConfig.from_run).

        A plain run's payload has no `collaborative` key: it is what it was before collaborative
        runs existed, so a plan made by an older shardrun keeps its runs' progress."""
        payload = dataclasses.asdict(self)
        if self.collaborative is None:
            del payload["collaborative"]
        return payload


@dataclass(frozen=True)
class JobConfig:
    name: str
    data: str
    platform: str
    accounts: tuple[AccountConfig, ...]
    runs: tuple[RunConfig, ...]
    base_dir: Path  # the job file's folder: relative paths in the file are relative to it
    source: str = "<job>"
    shard_size_mb: int = 256
    reserve_mb: int = 512
    workers: int | None = None
    profile: str | None = None
    ledger: str | None = None
    lease_minutes: float = 10.0
    validation: str | None = None  # a held-out folder (like `data`); else validation_share is held out
    validation_share: float = 0.1

    @property
    def home(self) -> AccountConfig:
        return self.accounts[0]

    @property
    def shard_size_bytes(self) -> int:
        return self.shard_size_mb * MB

    @property
    def reserve_bytes(self) -> int:
        return self.reserve_mb * MB

    @property
    def parallel_workers(self) -> int:
        return self.workers or len(self.accounts)

    @property
    def ledger_path(self) -> Path:
        path = Path(self.ledger) if self.ledger else Path(".shardrun") / self.name / "ledger.db"
        return path if path.is_absolute() else self.base_dir / path

    def store_account(self, account: AccountConfig, fallback: Account | None = None) -> Account:
        """Returns the job's account as its store opens it: URL, quota and sign-in settings.

        `fallback`: signed in as instead where this machine has no credentials of the account's own.
        """
        return Account(account.name, account.store, account.quota_bytes, self.name, self.base_dir,
                       account.settings, fallback)

    def open_store(self, account: AccountConfig, fallback: Account | None = None) -> Store:
        """Returns the account's store, opened with its quota and sign-in settings."""
        return registry.open_store(self.store_account(account, fallback))

    def account(self, name: str) -> AccountConfig:
        for account in self.accounts:
            if account.name == name:
                return account
        raise ConfigError(self.source, [f"no account named {name!r}; the job has: "
                                        + ", ".join(a.name for a in self.accounts)])


# -- a small declarative validator --------------------------------------------------------------


def init_run_of(init) -> str | None:
    """Returns NAME of an `init = "run:NAME"` (a run's recorded settings say it so too), else None."""
    if isinstance(init, str) and init.startswith(RUN_INIT_PREFIX):
        return init[len(RUN_INIT_PREFIX):]
    return None


def split_custom_model(value: str) -> tuple[str, str] | None:
    """Returns (path, function) of `file:PATH:FUNC`, or None when `value` is not of that form."""
    if not isinstance(value, str) or not value.startswith(CUSTOM_MODEL_PREFIX):
        return None
    path, sep, function = value[len(CUSTOM_MODEL_PREFIX):].rpartition(":")
    if not sep or not path.endswith(".py") or not function.isidentifier():
        return None
    return path, function


def valid_model(value) -> str | None:
    if value in MODEL_NAMES or split_custom_model(value) is not None:
        return None
    return ("one of " + ", ".join(map(repr, MODEL_NAMES))
            + ", or 'file:PATH.py:FUNCTION' (your own network, a Python file beside the job file)")


def increasing_positive_integers(value) -> str | None:
    ok = (all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
          and all(a < b for a, b in zip(value, value[1:])) and len(value) > 0)
    return None if ok else "a non-empty list of increasing positive integers"


def valid_name(value) -> str | None:
    return None if _NAME.match(value) else NAME_RULE


def valid_store_url(value) -> str | None:
    scheme, sep, rest = value.partition("://")
    if sep and scheme in registry.schemes() and rest:
        return None
    return "a store URL: " + " or ".join(f"{s}://..." for s in registry.schemes())


JOB_KEYS = {
    "name": Key(str, required=True, check=valid_name),
    "data": Key(str, required=True),
    "platform": Key(str, default="colab-free"),
    "shard_size_mb": Key(int, default=256, check=positive),
    "reserve_mb": Key(int, default=512, check=non_negative),
    "workers": Key(int, check=positive),
    "profile": Key(str),
    "ledger": Key(str),
    "lease_minutes": Key((int, float), default=10, check=positive),
    "validation": Key(str),
    "validation_share": Key((int, float), default=0.1, check=lambda v: None if 0 <= v < 0.5 else "a share from 0 to below 0.5"),
}
ACCOUNT_KEYS = {
    "name": Key(str, required=True, check=valid_name),
    "store": Key(str, required=True, check=valid_store_url),
    "quota_gb": Key((int, float), default=15.0, check=positive),
}
RUN_KEYS = {
    "name": Key(str, required=True, check=valid_name),
    "model": Key(str, required=True, check=valid_model),
    "scale": Key(int, required=True, check=one_of(2, 3, 4)),
    "channels": Key(int, required=True, check=one_of(1, 3)),
    "epochs": Key(int, required=True, check=positive),
    "batch_size": Key(int, required=True, check=positive),
    "patch_size": Key(int, required=True, check=positive),
    "seed": Key(int, default=0, check=non_negative),
    "patches_per_image": Key(int, default=16, check=positive),
    "learning_rate": Key((int, float), default=1e-3, check=positive),
    "options": Key(dict, default={}),
    "patches_per_second": Key((int, float), check=positive),
    "precision": Key(str, default="float32", check=one_of("float32", "mixed_float16", "bfloat16")),
    "xla": Key(bool),
    "deterministic": Key(bool, default=True),
    "loss": Key(str, check=one_of(*LOSSES)),
    "clip_norm": Key((int, float), check=positive),
    "schedule": Key(dict),
    "init": Key(str),
    "init_output_scale": Key((int, float), check=positive),
    "mode": Key(str, default="plain", check=one_of(*RUN_MODES)),
    # A collaborative run's keys (docs/collaborative.md); a plain run takes none of them.
    "replicas": Key(int, check=positive),
    "sync_every": Key(int, check=positive),
    "outer_lr": Key((int, float), check=positive),
    "outer_momentum": Key((int, float), check=lambda v: None if 0 <= v < 1 else "a number from 0 to below 1"),
    "min_replicas": Key(int, check=positive),
    "round_timeout": Key((int, float), check=positive),
}
COLLABORATIVE_KEYS = ("replicas", "sync_every", "outer_lr", "outer_momentum", "min_replicas", "round_timeout")
COLLABORATIVE_REQUIRED = ("replicas", "sync_every")
COLLABORATIVE_DEFAULTS = {"outer_lr": 0.7, "outer_momentum": 0.9}
SCHEDULE_KEYS = {
    "kind": Key(str, default="constant", check=one_of(*SCHEDULE_KINDS)),
    "milestones": Key(list, check=increasing_positive_integers),
    "milestones_in": Key(str, check=one_of("epochs", "steps")),
    "factor": Key((int, float), check=positive),
    "warmup_steps": Key(int, check=non_negative),
    "warmup_epochs": Key(int, check=non_negative),
    "min_lr": Key((int, float), check=non_negative),
}
# The keys each kind reads; any other is a mistake, not something to ignore.
_SCHEDULE_USES = {
    "constant": ("kind",),
    "step": ("kind", "milestones", "milestones_in", "factor", "warmup_steps", "warmup_epochs"),
    "cosine": ("kind", "warmup_steps", "warmup_epochs", "min_lr"),
}
TOP_KEYS = ("job", "accounts", "runs")


def _check_list(doc: dict, key: str, spec: dict[str, Key], problems: list[str]) -> list[dict]:
    items = doc.get(key)
    if items is None:
        problems.append(f"{key}: missing; add at least one [[{key}]] table")
        return []
    if not isinstance(items, list) or not items:
        problems.append(f"{key}: must be one or more [[{key}]] tables, got {items!r}")
        return []
    return [check_table(item, f"{key}[{i}].", spec, problems) for i, item in enumerate(items)]


def _check_unique(items: list[dict], list_name: str, field_name: str, problems: list[str]) -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = item.get(field_name)
        if value is None:
            continue
        if value in seen:
            problems.append(
                f"{list_name}[{i}].{field_name} = {value!r}: already used by "
                f"{list_name}[{seen[value]}]; each must be different"
            )
        else:
            seen[value] = i


def _check_schedule(run: dict, where: str, problems: list[str]) -> None:
    """Checks `[runs.schedule]` and leaves in `run` only the keys it gave (what the plan records);
    what needs the run's length (milestones, warm-up) is checked by `plan`."""
    table = run.get("schedule")
    if table is None:
        return
    where = f"{where}schedule."
    before = len(problems)
    values = check_table(table, where, SCHEDULE_KEYS, problems)
    kind = values.get("kind")
    if kind in _SCHEDULE_USES:
        for key in table:
            if key in SCHEDULE_KEYS and key not in _SCHEDULE_USES[kind]:
                problems.append(f"{where}{key} = {show(table[key])}: not used by kind = {kind!r}; "
                                f"it takes: {', '.join(_SCHEDULE_USES[kind][1:]) or 'nothing else'}")
        if kind == "step" and "milestones" not in table:
            problems.append(f"{where}milestones: missing (required for kind = 'step', a list of increasing "
                            "positive integers: epochs, or steps with milestones_in = 'steps')")
        if "warmup_steps" in table and "warmup_epochs" in table:
            problems.append(f"{where}warmup_epochs = {show(table['warmup_epochs'])}: give warmup_steps or "
                            "warmup_epochs, not both")
    run["schedule"] = {k: table[k] for k in table if k in SCHEDULE_KEYS} if len(problems) == before else None


def _check_mode(run: dict, table: dict, where: str, problems: list[str]) -> None:
    """Checks a run's mode against its collaborative keys, and replaces those keys in `run` by
    `collaborative` (a CollaborativeConfig, or None for a plain run)."""
    if not run:
        return  # not a table: check_table said so
    given = {key: run.pop(key) for key in COLLABORATIVE_KEYS}
    mode = run.pop("mode")
    name = f" {run['name']!r}" if isinstance(run.get("name"), str) else ""
    run["collaborative"] = None
    if mode not in RUN_MODES:
        return  # check_table named the mode; its keys mean nothing yet
    if mode != "collaborative":
        for key in COLLABORATIVE_KEYS:
            if key in table:
                problems.append(f"{where}{key} = {show(table[key])}: only a collaborative run takes {key}; "
                                f"set mode = 'collaborative' in run{name} or remove {key}")
        return
    before = len(problems)
    for key in COLLABORATIVE_REQUIRED:
        if key not in table:
            problems.append(f"{where}{key}: missing (required for mode = 'collaborative' in run{name}, "
                            "an integer greater than 0)")
    replicas, least = given["replicas"], given["min_replicas"]
    if isinstance(replicas, int) and isinstance(least, int) and least > replicas > 0:
        problems.append(f"{where}min_replicas = {least}: more than replicas = {replicas} in run{name}; "
                        f"a round can wait for at most its {replicas} replicas")
    if len(problems) > before or any(given[k] is None for k in COLLABORATIVE_REQUIRED):
        return
    values = {**COLLABORATIVE_DEFAULTS, "min_replicas": replicas, **{k: v for k, v in given.items() if v is not None}}
    for key in ("outer_lr", "outer_momentum", "round_timeout"):
        if key in values:
            values[key] = float(values[key])
    run["collaborative"] = CollaborativeConfig(**values)


def _check_run(run: dict, table: Any, where: str, problems: list[str]) -> None:
    _check_mode(run, table if isinstance(table, dict) else {}, where, problems)
    _check_schedule(run, where, problems)
    scale, patch = run.get("scale"), run.get("patch_size")
    if scale in (2, 3, 4) and isinstance(patch, int) and patch > 0:
        if patch % scale:
            problems.append(f"{where}patch_size = {patch}: must be a multiple of scale ({scale})")
        elif patch // scale < 4:
            problems.append(f"{where}patch_size = {patch}: must be at least {4 * scale} at scale {scale} "
                            "(a low-resolution patch of 4x4 pixels)")


def _check_run_inits(runs: list[dict], problems: list[str]) -> None:
    """Checks each `init = "run:NAME"`: NAME is another run of the job, the runs' inits form no
    cycle (a run waits for the run it starts from), and no init_output_scale (the weights are
    already a shardrun network's)."""
    inits = {r.get("name"): init_run_of(r.get("init")) for r in runs if init_run_of(r.get("init"))}
    names = [r.get("name") for r in runs]
    for i, run in enumerate(runs):
        source = inits.get(run.get("name"))
        if source is None:
            continue
        where = f"runs[{i}]."
        if source == run.get("name"):
            problems.append(f"{where}init = {run['init']!r}: a run cannot start from its own network; "
                            "name another run of the job")
        elif source not in names:
            problems.append(f"{where}init = {run['init']!r}: the job has no run named {source!r}; its runs are: "
                            + ", ".join(repr(n) for n in names if n != run.get("name")))
        else:
            chain, at = [run.get("name")], source
            while at in inits and at not in chain:
                chain.append(at)
                at = inits[at]
            if at == run.get("name"):  # a run that only leads into a cycle is not in it
                problems.append(f"{where}init = {run['init']!r}: the runs' inits form a cycle ("
                                + " -> ".join(map(repr, chain + [at])) + "); each run would wait for the other")
        if run.get("init_output_scale") is not None:
            problems.append(f"{where}init_output_scale = {run['init_output_scale']}: only for an init file; "
                            f"the network of run {source!r} already outputs what this run's does")


@dataclass(frozen=True)
class _Keys:
    """The keys a job file may use: the generic ones plus each store backend's own."""

    job: dict[str, Key]
    account: dict[str, Key]
    owners: dict[str, tuple[str, ...]]  # a backend's account key -> the schemes that read it


def _keys() -> _Keys:
    """Returns the keys a job file may use, the registered backends' included."""
    job, account, owners = dict(JOB_KEYS), dict(ACCOUNT_KEYS), {}
    for scheme, backend in registry.backends().items():
        job.update(backend.job_keys)
        account.update(backend.account_keys)
        for key in backend.account_keys:
            owners[key] = owners.get(key, ()) + (scheme,)
    return _Keys(job, account, owners)


def _backend_of(account: dict) -> Backend | None:
    """Returns the backend of the account's store URL, or None where its scheme is not registered."""
    url = account.get("store")
    scheme = url.partition("://")[0] if isinstance(url, str) and "://" in url else None
    return registry.backend(scheme) if scheme in registry.schemes() else None


def _check_store_settings(keys: _Keys, account: dict, job: dict, base_dir: Path, where: str,
                          problems: list[str]) -> None:
    """Appends problems with the account's backend keys: another backend's keys, and its own
    backend's checks of their values."""
    if not isinstance(account.get("store"), str):
        return
    backend = _backend_of(account)
    own = backend.account_keys if backend else {}
    foreign = [key for key in keys.owners if key not in own and account.get(key) is not None]
    if foreign:
        schemes = " or ".join(f"{scheme}://" for scheme in keys.owners[foreign[0]])
        problems.append(f"{where}{foreign[0]}: only {schemes} stores sign in; remove it for {account['store']!r}")
        return
    if backend is not None:
        settings = backend.settings(account, job, base_dir)
        problems.extend(f"{where}{problem}" for problem in
                        backend.check(Account(account.get("name"), account["store"], settings=settings)))


def parse_job(text: str, base_dir: Path, source: str = "<job>", platforms: dict | None = None) -> JobConfig:
    """Returns the job described by TOML `text`, or raises ConfigError listing every problem."""
    doc = read_toml(text, source)
    problems: list[str] = []
    for key in doc:
        if key not in TOP_KEYS:
            problems.append(unknown_key_problem("", key, TOP_KEYS))
    if "job" not in doc:
        problems.append("job: missing; add a [job] table with at least name and data")
    keys = _keys()
    job = check_table(doc.get("job", {}), "job.", keys.job, problems)
    accounts = _check_list(doc, "accounts", keys.account, problems)
    runs = _check_list(doc, "runs", RUN_KEYS, problems)
    _check_unique(accounts, "accounts", "name", problems)
    _check_unique(accounts, "accounts", "store", problems)
    _check_unique(runs, "runs", "name", problems)
    tables = doc.get("runs") if isinstance(doc.get("runs"), list) else []
    for i, run in enumerate(runs):
        _check_run(run, tables[i] if i < len(tables) else {}, f"runs[{i}].", problems)
    _check_run_inits(runs, problems)
    for i, account in enumerate(accounts):
        _check_store_settings(keys, account, job, base_dir, f"accounts[{i}].", problems)
    if platforms is not None and isinstance(job.get("platform"), str) and job["platform"] not in platforms:
        problems.append(f"job.platform = {job['platform']!r}: must be one of "
                        + ", ".join(map(repr, sorted(platforms))) + " (from configs/platforms.toml)")
    if problems:
        raise ConfigError(source, problems)
    return JobConfig(
        name=job["name"],
        data=job["data"],
        platform=job["platform"],
        accounts=tuple(AccountConfig(a["name"], a["store"], float(a["quota_gb"]),
                                     _backend_of(a).settings(a, job, base_dir)) for a in accounts),
        runs=tuple(RunConfig(**{k: (float(v) if k in ("learning_rate", "patches_per_second", "clip_norm",
                                                  "init_output_scale")
                                        and v is not None else v)
                                for k, v in run.items()}) for run in runs),
        base_dir=base_dir,
        source=source,
        shard_size_mb=job["shard_size_mb"],
        reserve_mb=job["reserve_mb"],
        workers=job["workers"],
        profile=job["profile"],
        ledger=job["ledger"],
        lease_minutes=float(job["lease_minutes"]),
        validation=job["validation"],
        validation_share=float(job["validation_share"]),
    )


def load_job(path: str | Path, platforms: dict | None = None) -> JobConfig:
    """Returns the job in the TOML file at `path` (see parse_job)."""
    path = Path(path)
    text = read_text_file(path)
    if platforms is None:
        from shardrun.config.platforms import load_platforms

        platforms = load_platforms()
    return parse_job(text, path.resolve().parent, str(path), platforms)
