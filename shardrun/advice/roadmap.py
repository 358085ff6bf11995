"""The source paper's roadmap as arithmetic: free sessions, renting or buying, for one job.

Temiz, Bilge and Uygur (2019): if a job fits in 12-hour pieces and 15 GB per account, train it
in free notebook sessions; otherwise compare renting a GPU with buying one. `advise` computes
each option from the job's work (GPU-hours from its throughput profile, as the planner counts
them) and the price file, and recommends one. Pure: no files, no printing.

Work moves between GPUs through speed factors (configs/prices.toml): hours on GPU g are hours
on the profile's GPU b times speed(b) / speed(g), per model family.

A collaborative run (docs/collaborative.md) is N replicas trained at once in rounds: its work is
N times one replica's, and its calendar time is counted with the team's workers. With N workers
or more the replicas train side by side, and the run takes one replica's training (and its
sessions' start-ups); with W < N workers a round waits for its replicas' turns: ⌈N / W⌉ turns of
a round's training — or, when the run needs fewer changes (min_replicas ≤ W), the round's timeout
if that comes first (collaborative_hours). The job's calendar is the estimate's schedule of
chains, and no less than its slowest collaborative run.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace

from shardrun.config.job import GB, RunConfig
from shardrun.config.paper import PAPER
from shardrun.errors import PlanError
from shardrun.plan.parts import round_timeout_minutes
from shardrun.plan.placement import RunPlan, estimate, plan_run
from shardrun.config.platforms import Platform, Profile
from shardrun.config.prices import Gpu, Prices, family_of
from shardrun.units import human_duration

SCHEMA = "shardrun.advice/1"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(h|hr|hrs|hours?|d|days?|w|weeks?)\s*$", re.IGNORECASE)
_UNIT_HOURS = {"h": 1, "d": 24, "w": 168}


def parse_duration_hours(text: str) -> float:
    """Returns the hours in `36h`, `3d`, `2.5 days` or `1w`; raises ValueError saying what is allowed."""
    found = _DURATION.match(text)
    if not found or float(found.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration; give a positive number with a unit, e.g. 36h, 3d or 2w")
    return float(found.group(1)) * _UNIT_HOURS[found.group(2)[0].lower()]


@dataclass(frozen=True)
class AdviceInput:
    """Everything the advice depends on, gathered by the caller (shardrun.advice.job)."""

    job: str
    runs: tuple[RunConfig, ...]
    num_images: int
    dataset_bytes: int
    team_accounts: int  # the job's accounts: team members, each with their own storage
    reserve_bytes: int  # kept free on each account (job.reserve_mb)
    workers: int  # sessions or GPUs at work at once
    profile: Profile  # the job's throughput profile; a run's own patches_per_second overrides it
    free_platform: Platform
    free_profile: Profile  # throughput on the free platform's GPU
    paid_platform: Platform  # a rented VM or a bought GPU: no session limit
    deadline_hours: float | None = None
    lease_seconds: float = 600.0  # the job's lease: a collaborative round's default timeout counts it


@dataclass(frozen=True)
class RunWork:
    name: str
    model: str
    family: str
    epochs: int
    steps_per_epoch: int
    steps_total: int
    epoch_hours: float  # on the work's GPU
    gpu_hours: float


@dataclass(frozen=True)
class GpuHours:
    gpu: str
    basis: str
    speed: float  # relative to the reference, for this job's mix of models
    hours: float  # training alone


@dataclass(frozen=True)
class Work:
    images: int
    dataset_bytes: int
    profile: str
    device: str
    gpu: str  # the price file's GPU that the profile's figures were measured (or estimated) on
    gpu_hours: float
    runs: list[RunWork]
    hours_by_gpu: list[GpuHours]


@dataclass(frozen=True)
class FreeRun:
    name: str
    epoch_hours: float  # one epoch on the free platform's GPU
    epochs_per_session: float  # in a whole session, as the paper counts (12 h / 1.52 h ~ 7.9)
    epochs_per_usable_session: float  # in the training time a session really offers
    chunks: int


@dataclass(frozen=True)
class FreeOption:
    platform: str
    gpu: str
    session_hours: float
    usable_hours: float | None
    sessions: int
    hours: float  # training plus each session's start-up
    calendar_hours: float
    workers: int
    quota_gb: float
    accounts_needed: int | None  # None: the reserve leaves no room on an account
    team_accounts: int
    pieces_fit: bool
    storage_fits: bool
    fits: bool  # the paper's test: 12-hour pieces and 15 GB per account
    meets_deadline: bool
    runs: list[FreeRun]


@dataclass(frozen=True)
class RentOption:
    provider: str
    gpu: str
    usd_per_hour: float
    date: str
    source: str
    offer: str
    historical: bool
    hours: float  # GPU-hours billed: training plus start-up
    calendar_hours: float
    cost_usd: float
    meets_deadline: bool

    @property
    def label(self) -> str:
        return f"rent {self.provider} {self.gpu}"


@dataclass(frozen=True)
class BuyOption:
    item: str
    gpu: str
    usd: float
    date: str
    source: str
    hours: float
    calendar_hours: float  # one card: the runs one after another
    cost_usd: float  # the price: this job alone pays for it
    break_even_hours: float | None  # hours of use at which buying beats the cheapest rental
    cheaper_than_renting: bool | None
    meets_deadline: bool

    @property
    def label(self) -> str:
        return f"buy {self.item}"


@dataclass(frozen=True)
class CollaborativeRun:
    """How a collaborative run's rounds fit the team's workers, on the free platform's GPU."""

    name: str
    replicas: int
    min_replicas: int
    rounds: int
    sync_every: int
    workers: int  # the job's workers at once
    turns_per_round: int  # ⌈replicas / workers⌉: how many times a round waits for a worker
    round_hours: float  # one replica's training of a whole round
    round_timeout_hours: float
    gpu_hours: float  # every replica's training
    calendar_hours: float  # with the job's workers (collaborative_hours)
    side_by_side_hours: float  # with a worker per replica: one replica's training


@dataclass(frozen=True)
class Recommendation:
    kind: str  # free, rent, buy or none (nothing meets the deadline)
    option: str
    cost_usd: float | None
    calendar_hours: float | None
    reason: str


@dataclass(frozen=True)
class Advice:
    job: str
    prices: str
    reference_gpu: str
    deadline_hours: float | None
    workers: int
    work: Work
    free: FreeOption
    rent: list[RentOption]
    buy: list[BuyOption]
    recommendation: Recommendation
    notes: list[str] = field(default_factory=list)
    collaborative: list[CollaborativeRun] = field(default_factory=list)

    def cheapest_rent(self) -> RentOption | None:
        current = [r for r in self.rent if not r.historical]
        return min(current, key=lambda r: (r.cost_usd, r.calendar_hours)) if current else None

    def to_json(self) -> dict:
        """Returns the advice as the `shardrun.advice/1` object (docs/advice.md)."""
        return {"schema": SCHEMA, **_finite(asdict(self))}


def _finite(value):
    """Returns `value` with infinite floats as None: JSON has no infinity."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- the computation -----------------------------------------------------------------------------


def advise(inp: AdviceInput, prices: Prices) -> Advice:
    """Returns every option for the job and the roadmap's recommendation."""
    notes: list[str] = []
    base_gpu, base_profile = _work_gpu(inp, prices, notes)
    base = [plan_run(r, inp.num_images, base_profile, inp.paid_platform) for r in inp.runs]

    def plans_on(gpu: Gpu, platform: Platform) -> list[RunPlan]:
        return [plan_run(replace(p.run, patches_per_second=p.patches_per_second * _ratio(gpu, base_gpu, p.run.model)),
                         inp.num_images, None, platform) for p in base]

    work = _work(inp, prices, base_gpu, base_profile, base, plans_on)
    free = _free(inp, prices, plans_on)
    rent = [_rent(inp, prices, offer, plans_on) for offer in prices.rent]
    current = [r for r in rent if not r.historical]
    cheapest = min(current, key=lambda r: (r.cost_usd, r.calendar_hours))
    buy = [_buy(inp, prices, offer, plans_on, cheapest) for offer in prices.buy]
    recommendation = _recommend(inp, free, current, buy)
    if any(g.basis == "estimate" for g in (prices.gpus[r.gpu] for r in current)):
        notes.append("speeds marked 'estimate' come from FP32 peaks, not measurements; real speeds of small SR "
                     "networks can differ by 2x (docs/advice.md)")
    collaborative = _collaborative_runs(inp, prices, plans_on)
    return Advice(inp.job, prices.source, prices.reference, inp.deadline_hours, inp.workers, work, free,
                  sorted(rent, key=lambda r: (r.historical, r.cost_usd)), sorted(buy, key=lambda b: b.cost_usd),
                  recommendation, notes, collaborative)


def _ratio(target: Gpu, base: Gpu, model: str) -> float:
    family = family_of(model)
    return target.speed(family) / base.speed(family)


def _work_gpu(inp: AdviceInput, prices: Prices, notes: list[str]) -> tuple[Gpu, Profile]:
    """Returns the GPU the work is measured on and the profile to read it from."""
    gpu = prices.gpu_for_device(inp.profile.device)
    if gpu is not None:
        return gpu, inp.profile
    free_gpu = prices.gpu_for_device(inp.free_profile.device)
    if free_gpu is None:
        raise PlanError(f"neither the job's throughput profile ({inp.profile.name}: {inp.profile.device!r}) nor "
                        f"the free platform's ({inp.free_profile.name}: {inp.free_profile.device!r}) names a GPU of "
                        f"{prices.source} [gpus]; add the device there with its speed")
    notes.append(f"the throughput profile {inp.profile.name} ({inp.profile.device}) names no GPU of the price file, "
                 f"so the work is counted from profile {inp.free_profile.name} ({free_gpu.id}) instead")
    return free_gpu, inp.free_profile


def _hours(plans: list[RunPlan]) -> float:
    """Returns the plans' GPU-hours of training: every replica's, for a collaborative run."""
    return sum(p.train_seconds * p.replicas for p in plans) / 3600


def _round_seconds(p: RunPlan) -> list[float]:
    """Returns one replica's training time of each round of a collaborative run."""
    h = p.run.collaborative.sync_every
    return [(min(p.steps_total, (r + 1) * h) - r * h) * p.step_seconds for r in range(p.rounds)]


def collaborative_hours(p: RunPlan, platform: Platform, workers: int, lease_seconds: float) -> float:
    """Returns a collaborative run's calendar hours with `workers` at once (none busy elsewhere).

    A round of t seconds a replica takes t with a worker per replica; with W < N workers its N
    replicas take ⌈N / W⌉ turns, unless min_replicas m lets the round close at its timeout T
    with the replicas done by then: min(⌈N/W⌉ t, max(⌈m/W⌉ t, T)). Each turn's sessions start up
    as a replica's chain of chunks does.
    """
    collab = p.run.collaborative
    w = max(1, workers)
    full, least = math.ceil(p.replicas / w), math.ceil(collab.required_replicas / w)
    timeout = round_timeout_minutes(p, lease_seconds) * 60
    seconds = sum(min(full * t, max(least * t, timeout)) for t in _round_seconds(p))
    return (seconds + full * len(p.chunks) * platform.startup_minutes * 60) / 3600


def _calendar_hours(plans: list[RunPlan], platform: Platform, workers: int, lease_seconds: float,
                    scheduled: float) -> float:
    """Returns the job's calendar hours: the estimate's schedule of chains (`scheduled`), and no
    less than its slowest collaborative run with the workers (collaborative_hours)."""
    rounds = [collaborative_hours(p, platform, workers, lease_seconds) for p in plans if p.run.collaborative]
    return max([scheduled, *rounds])


def _collaborative_runs(inp: AdviceInput, prices: Prices, plans_on) -> list[CollaborativeRun]:
    gpu = prices.gpu_for_device(inp.free_profile.device)
    out = []
    for p in plans_on(gpu, inp.free_platform):
        collab = p.run.collaborative
        if collab is None:
            continue
        w = max(1, inp.workers)
        rounds = _round_seconds(p)
        out.append(CollaborativeRun(
            p.run.name, p.replicas, collab.required_replicas, p.rounds, collab.sync_every, w,
            math.ceil(p.replicas / w), max(rounds, default=0.0) / 3600,
            round_timeout_minutes(p, inp.lease_seconds) / 60, _hours([p]),
            collaborative_hours(p, inp.free_platform, w, inp.lease_seconds),
            collaborative_hours(p, inp.free_platform, p.replicas, inp.lease_seconds)))
    return out


def _work(inp: AdviceInput, prices: Prices, base_gpu: Gpu, base_profile: Profile, base: list[RunPlan],
          plans_on) -> Work:
    gpu_hours = _hours(base)
    runs = [RunWork(p.run.name, p.run.model, family_of(p.run.model), p.run.epochs, p.steps_per_epoch,
                    p.steps_total, p.steps_per_epoch * p.step_seconds / 3600, _hours([p])) for p in base]
    # The job's work in hours on the reference GPU; a GPU's speed for this job's mix of models is
    # that work over its own hours.
    reference_hours = sum(_hours([p]) * base_gpu.speed(family_of(p.run.model)) for p in base)
    by_gpu = []
    for gpu in prices.gpus.values():
        hours = _hours(plans_on(gpu, inp.paid_platform))
        by_gpu.append(GpuHours(gpu.id, gpu.basis, reference_hours / hours if hours else 0.0, hours))
    return Work(inp.num_images, inp.dataset_bytes, base_profile.name, base_profile.device, base_gpu.id, gpu_hours,
                runs, sorted(by_gpu, key=lambda g: g.hours))


def _meets(calendar_hours: float, deadline: float | None) -> bool:
    return deadline is None or calendar_hours <= deadline


def _free(inp: AdviceInput, prices: Prices, plans_on) -> FreeOption:
    platform = inp.free_platform
    gpu = prices.gpu_for_device(inp.free_profile.device)
    if gpu is None:
        raise PlanError(f"the free platform's profile {inp.free_profile.name} ({inp.free_profile.device!r}) names "
                        f"no GPU of {prices.source} [gpus]")
    plans = plans_on(gpu, platform)
    est = estimate(plans, platform, inp.workers)
    calendar = _calendar_hours(plans, platform, inp.workers, inp.lease_seconds, est.calendar_hours)
    usable = platform.usable_seconds
    pieces_fit = usable is not None and all(p.chunk_seconds(i) <= usable + 1e-9
                                            for p in plans for i in range(len(p.chunks)))
    room = prices.free.quota_gb * GB - inp.reserve_bytes
    accounts_needed = max(1, math.ceil(inp.dataset_bytes / room)) if room > 0 else None
    storage_fits = accounts_needed is not None and accounts_needed <= inp.team_accounts
    runs = []
    for p in plans:
        epoch_hours = p.steps_per_epoch * p.step_seconds / 3600
        runs.append(FreeRun(p.run.name, epoch_hours,
                            platform.session_hours / epoch_hours if platform.session_hours else math.inf,
                            usable / 3600 / epoch_hours if usable else math.inf, len(p.chunks)))
    return FreeOption(platform.name, gpu.id, platform.session_hours, usable / 3600 if usable else None,
                      est.sessions, est.session_hours, calendar, est.workers, prices.free.quota_gb,
                      accounts_needed, inp.team_accounts, pieces_fit, storage_fits, pieces_fit and storage_fits,
                      _meets(calendar, inp.deadline_hours), runs)


def _rent(inp: AdviceInput, prices: Prices, offer, plans_on) -> RentOption:
    plans = plans_on(prices.gpus[offer.gpu], inp.paid_platform)
    est = estimate(plans, inp.paid_platform, inp.workers)
    calendar = _calendar_hours(plans, inp.paid_platform, inp.workers, inp.lease_seconds, est.calendar_hours)
    return RentOption(offer.provider, offer.gpu, offer.usd_per_hour, offer.date, offer.source, offer.offer,
                      offer.historical, est.session_hours, calendar, est.session_hours * offer.usd_per_hour,
                      _meets(calendar, inp.deadline_hours))


def _buy(inp: AdviceInput, prices: Prices, offer, plans_on, cheapest: RentOption) -> BuyOption:
    plans = plans_on(prices.gpus[offer.gpu], inp.paid_platform)
    est = estimate(plans, inp.paid_platform, 1)
    calendar = _calendar_hours(plans, inp.paid_platform, 1, inp.lease_seconds, est.calendar_hours)
    # Renting the same work costs cheapest.cost_usd, spread over est.session_hours of this card's use.
    break_even = offer.usd * est.session_hours / cheapest.cost_usd if cheapest.cost_usd > 0 else None
    return BuyOption(offer.item, offer.gpu, offer.usd, offer.date, offer.source, est.session_hours,
                     calendar, offer.usd, break_even, offer.usd < cheapest.cost_usd,
                     _meets(calendar, inp.deadline_hours))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _recommend(inp: AdviceInput, free: FreeOption, rent: list[RentOption], buy: list[BuyOption]) -> Recommendation:
    deadline = inp.deadline_hours
    if free.fits and free.meets_deadline:
        return Recommendation(
            "free", f"free sessions on {free.platform}", 0.0, free.calendar_hours,
            f"the job fits in 12-hour pieces and 15 GB per account (the roadmap of {PAPER}): "
            f"{_count(free.sessions, 'session')} on {free.platform} and {free.accounts_needed} of the team's "
            f"{free.team_accounts} accounts, {human_duration(free.calendar_hours * 3600)} with "
            f"{_count(free.workers, 'worker')}, "
            "each member in their own sessions")
    why = []
    if not free.pieces_fit:
        why.append(f"one step is longer than a {free.platform} session's {free.usable_hours or 0:.1f} h of training, "
                   "so the job cannot be cut into 12-hour pieces")
    if not free.storage_fits:
        why.append(f"its data needs {free.accounts_needed if free.accounts_needed else 'more'} accounts of "
                   f"{free.quota_gb:g} GB, the team has {free.team_accounts}")
    if free.fits and not free.meets_deadline:
        why.append(f"free sessions need {human_duration(free.calendar_hours * 3600)}, "
                   f"past the deadline of {human_duration(deadline * 3600)}")
    options: list[RentOption | BuyOption] = [*rent, *buy]
    meeting = [o for o in options if o.meets_deadline]
    if not meeting:
        fastest = min(options, key=lambda o: (o.calendar_hours, o.cost_usd))
        return Recommendation("none", "", None, None,
                              "; ".join(why) + "; and no rental or purchase meets the deadline of "
                              f"{human_duration(deadline * 3600)}: "
                              f"the fastest, {fastest.label}, takes {human_duration(fastest.calendar_hours * 3600)} "
                              f"(${fastest.cost_usd:,.2f}). Move the deadline, add workers or shorten the job")
    best = min(meeting, key=lambda o: (o.cost_usd, o.calendar_hours))
    kind = "rent" if isinstance(best, RentOption) else "buy"
    within = f" within the deadline of {human_duration(deadline * 3600)}" if deadline is not None else ""
    return Recommendation(kind, best.label, best.cost_usd, best.calendar_hours,
                          "; ".join(why) + f"; the cheapest option{within} is to {best.label}: "
                          f"${best.cost_usd:,.2f}, done in {human_duration(best.calendar_hours * 3600)}")
