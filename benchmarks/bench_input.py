"""How many patches per second the input alone delivers: data.py's tf.data pipeline (decode,
crop and bicubic on the host, every epoch) vs the cached, on-device one (crops.py: each image
decoded once, the host gathers uint8 crops, the degradation is a compiled function).

Same run, same images (scikit-image's sample photographs, as bench.py uses), same sample order.
"new, pairs" includes turning the crops into (input, HR) pairs in a compiled function — on a
CPU-only machine that runs on the same cores; "new, host" is what the host alone gathers, the
figure that matters once the pairs are made on a GPU. The cache is warmed first (the first
epoch's decoding happens once per session). Rounds alternate; the median counts.

    python benchmarks/bench_input.py --batches 300 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import tensorflow as tf

from shardrun.train.bench import device_description, sample_source
from shardrun.train.cache import DecodedImages
from shardrun.train.crops import crop_dataset, device_pairs
from shardrun.train.data import PatchSpec, SampleOrder, make_dataset


def rate(dataset, batches: int, batch_size: int, step=None) -> float:
    """Returns patches/s drawn from `dataset` over `batches` batches (after one untimed)."""
    iterator = iter(dataset)
    first = next(iterator)
    if step is not None:
        step(*first)
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        if step is not None:
            out = step(*batch)
    if step is not None:
        out[0].numpy()
    return batches * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--kind", default="low", choices=("low", "upsampled"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patches-per-image", type=int, default=16)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    source = sample_source()
    spec = PatchSpec(args.scale, args.channels, args.patch_size, args.kind)
    order = SampleOrder(len(source), args.patches_per_image, args.batch_size, seed=1)
    images = DecodedImages(source)
    images.ensure(range(len(source)))
    pairs = tf.function(lambda crops, offsets: device_pairs(crops, offsets, spec))
    found: dict[str, list[float]] = {"old pipeline": [], "new, host": [], "new, pairs": []}
    for _ in range(args.rounds):
        found["old pipeline"].append(rate(make_dataset(source, order, spec), args.batches, args.batch_size))
        found["new, host"].append(rate(crop_dataset(images, order, spec), args.batches, args.batch_size))
        found["new, pairs"].append(rate(crop_dataset(images, order, spec), args.batches, args.batch_size,
                                        pairs))
    load = os.getloadavg()
    print(f"device: {device_description()}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{len(source)} images, x{args.scale}, {args.channels} channel(s), patch {args.patch_size} "
          f"({args.kind} input), batch {args.batch_size}, {args.batches} batches x {args.rounds} rounds")
    old = statistics.median(found["old pipeline"])
    for name, rates in found.items():
        median = statistics.median(rates)
        print(f"{name:14s} {median:10.0f} patches/s (median; {min(rates):.0f}-{max(rates):.0f})"
              f"  {median / old:5.1f}x old")


if __name__ == "__main__":
    main()
