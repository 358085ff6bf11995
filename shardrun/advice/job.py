"""Gathers what the advice needs for a job (its data, throughput profiles, platforms) and asks
shardrun.advice.roadmap, which does the arithmetic. Reads the dataset and the config files; writes nothing.
"""

from __future__ import annotations

from typing import Callable

from shardrun.advice.roadmap import Advice, AdviceInput, advise
from shardrun.config.job import JobConfig
from shardrun.plan.job import PlanReport
from shardrun.plan.dataset import scan_dataset
from shardrun.errors import ConfigError
from shardrun.config.platforms import Platform, load_platforms, load_profile
from shardrun.config.prices import Prices

# A rented VM or a bought GPU runs like a local machine: no session limit (configs/platforms.toml).
PAID_PLATFORM = "local"


def free_platform_name(job: JobConfig, prices: Prices) -> str:
    """Returns the free platform to count sessions on: the job's own if it is free, else the default."""
    return job.platform if job.platform in prices.free.platforms else prices.free.default


def advice_input(job: JobConfig, num_images: int, dataset_bytes: int, prices: Prices, *,
                 workers: int | None = None, deadline_hours: float | None = None,
                 platforms: dict[str, Platform] | None = None) -> AdviceInput:
    """Returns the advisor's inputs for `job` with `num_images` images of `dataset_bytes` in all."""
    platforms = platforms or load_platforms()
    free_name = free_platform_name(job, prices)
    for name, where in ((free_name, "free.default"), (PAID_PLATFORM, "the paid platform")):
        if name not in platforms:
            raise ConfigError(prices.source, [f"{where} = {name!r}: not a platform of configs/platforms.toml "
                                              f"(known: {', '.join(sorted(platforms))})"])
    free = platforms[free_name]
    profile = load_profile(job.profile or platforms[job.platform].profile, job.base_dir)
    free_profile = profile if free.profile == (job.profile or platforms[job.platform].profile) \
        else load_profile(free.profile, job.base_dir)
    return AdviceInput(
        job=job.name, runs=tuple(job.runs), num_images=num_images, dataset_bytes=dataset_bytes,
        team_accounts=len(job.accounts), reserve_bytes=job.reserve_bytes,
        workers=workers or job.parallel_workers, profile=profile, free_platform=free,
        free_profile=free_profile, paid_platform=platforms[PAID_PLATFORM], deadline_hours=deadline_hours,
        lease_seconds=job.lease_minutes * 60)


def advise_job(job: JobConfig, prices: Prices, *, workers: int | None = None, deadline_hours: float | None = None,
               on_progress: Callable[[int, int], None] | None = None, scan_workers: int | None = None) -> Advice:
    """Scans the job's dataset (as `plan` does, writing nothing) and returns the advice for it."""
    scan = scan_dataset(job.data, job.base_dir, min_side=max(r.patch_size for r in job.runs),
                        workers=scan_workers, on_progress=on_progress)
    return advise(advice_input(job, len(scan.accepted), scan.total_bytes, prices, workers=workers,
                               deadline_hours=deadline_hours), prices)


def advise_plan(report: PlanReport, prices: Prices) -> Advice:
    """Returns the advice for a plan just made, from the data it scanned."""
    return advise(advice_input(report.job, len(report.scan.accepted), report.scan.total_bytes, prices,
                               workers=report.estimate.workers), prices)
