"""Times `shardrun plan` end to end on many small generated images (issue: minutes, not hours).

    .venv/bin/python benchmarks/bench_plan.py [--images 200000] [--side 48] [--data DIR]

Generates N noisy PNGs (or uses --data), writes a job with two local-store accounts, and times,
in the same run: the baseline — copying every image file once into another folder, which is the
least any tool that uploads a dataset must do — then `plan_job` (scan with content checks and
hashing, shard layout, building and uploading every shard with md5 verification, manifest,
journal, ledger), then a re-run of `plan` on the unchanged data (verifies every shard, uploads
nothing). Prints seconds, images/s and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_scan import generate  # noqa: E402

from shardrun.config.job import load_job  # noqa: E402
from shardrun.plan.job import plan_job  # noqa: E402

JOB = """
[job]
name = "bench"
data = "{data}"
platform = "colab-free"
shard_size_mb = 256
reserve_mb = 0
[[accounts]]
name = "alice"
store = "local://stores/alice"
[[accounts]]
name = "bob"
store = "local://stores/bob"
[[runs]]
name = "decusr-x2"
model = "decusr"
scale = 2
channels = 1
epochs = 10
batch_size = 64
patch_size = 32
patches_per_second = 5000
"""


def copy_all(source: Path, dest: Path) -> int:
    total = 0
    for folder, _, names in os.walk(source):
        out = dest / os.path.relpath(folder, source)
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(os.path.join(folder, name), out / name)
            total += 1
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--side", type=int, default=48)
    parser.add_argument("--data", type=Path, help="use this folder of images instead of generating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        base = Path(tmp)
        data = args.data
        if data is None:
            data = base / "images"
            started = time.perf_counter()
            generate(data, args.images, args.side)
            print(f"generated {args.images:,} images of {args.side}x{args.side} in {time.perf_counter() - started:.0f} s")
        (base / "job.toml").write_text(JOB.format(data=data.resolve()))
        job = load_job(base / "job.toml")

        started = time.perf_counter()
        copied = copy_all(data, base / "copy")
        copy_s = time.perf_counter() - started
        shutil.rmtree(base / "copy")
        print(f"baseline: copying {copied:,} files once: {copy_s:.1f} s")

        started = time.perf_counter()
        report = plan_job(job)
        plan_s = time.perf_counter() - started
        n = len(report.scan.accepted)
        print(f"plan: {plan_s:.1f} s for {n:,} images ({n / plan_s:,.0f} images/s), {len(report.shards)} shards, "
              f"{len(report.scan.rejected)} rejected — {plan_s / copy_s:.1f}x the baseline")

        started = time.perf_counter()
        again = plan_job(job)
        again_s = time.perf_counter() - started
        print(f"re-run of plan (nothing to upload: {not any(s['uploaded'] for s in again.shards)}): "
              f"{again_s:.1f} s — {again_s / copy_s:.1f}x the baseline")


if __name__ == "__main__":
    main()
