"""Times scanning, laying out and digesting the shards of many small images.

    python benchmarks/bench_scan.py [--images 200000] [--side 48] [--shard-mb 256] [--keep DIR]

Generates N noisy PNGs (noise is the worst case for PNG size) in a temporary folder, then times,
in the same run and on the same warm page cache:
  baseline  walk the folder, read and sha256 every file (no decoding), in one process;
  scan      scan_dataset (reads once, hashes, decodes; worker processes);
  layout    layout_shards;
  digest    digest_shard of every shard (re-reads and re-hashes each image, md5+sha256 of the tar).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardrun.plan.dataset import scan_dataset  # noqa: E402
from shardrun.plan.shards import digest_shard, layout_shards  # noqa: E402

PER_FOLDER = 1000


def _generate(args: tuple[str, int, int, int]) -> int:
    root, start, stop, side = args
    rng = np.random.default_rng(start)
    for n in range(start, stop):
        folder = os.path.join(root, f"{n // PER_FOLDER:04d}")
        os.makedirs(folder, exist_ok=True)
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{n:07d}.png"))
    return stop - start


def generate(root: Path, count: int, side: int) -> None:
    step = 2000
    jobs = [(str(root), s, min(s + step, count), side) for s in range(0, count, step)]
    with ProcessPoolExecutor() as pool:
        for _ in pool.map(_generate, jobs):
            pass


def baseline(root: Path) -> tuple[int, int]:
    files = total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                data = handle.read()
            hashlib.sha256(data).hexdigest()
            files += 1
            total += len(data)
    return files, total


def timed(label: str, count: int, func, *args):
    start = time.perf_counter()
    result = func(*args)
    seconds = time.perf_counter() - start
    print(f"{label:<9} {seconds:8.2f} s  {count / seconds:10,.0f} images/s", flush=True)
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--side", type=int, default=48)
    parser.add_argument("--shard-mb", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    args = parser.parse_args()

    temp = None if args.keep else tempfile.mkdtemp(prefix="shardrun-bench-")
    root = args.keep or Path(temp)
    try:
        n = args.images
        cores = len(os.sched_getaffinity(0))
        print(f"{n:,} PNGs of {args.side}x{args.side} px in {root}, {cores} cores, "
              f"workers={args.workers or cores}", flush=True)
        if not any(root.glob("*/*.png")):
            timed("generate", n, generate, root, n, args.side)
        (files, size), base_s = timed("baseline", n, baseline, root)
        print(f"          {files:,} files, {size / 1e6:,.1f} MB")
        scan, scan_s = timed("scan", n, lambda: scan_dataset(
            str(root), Path("."), min_side=32, workers=args.workers))
        specs, layout_s = timed("layout", n, layout_shards, scan.accepted, args.shard_mb * 2**20)
        _, digest_s = timed("digest", n, lambda: [digest_shard(s) for s in specs])
        total = scan_s + layout_s + digest_s
        print(f"accepted {len(scan.accepted):,}, rejected {len(scan.rejected):,}, "
              f"{len(specs)} shards of at most {args.shard_mb} MiB")
        print(f"total     {total:8.2f} s  {n / total:10,.0f} images/s "
              f"(scan+layout+digest); scan is {scan_s / base_s:.2f}x the read+hash baseline")
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
