"""The paper's two experiments on whatever device this machine has: one epoch (or a fraction of
one) of Table 1 (500 ultrasound images, 1-channel DECUSR) and Table 2 (the 28,739-parameter RGB
DECUSR with 3 repeating blocks, 50,000 ImageNet images), deterministic vs fast mode, float32 vs
mixed_float16, the trainer vs a plain compiled `model.fit` on the same data, in the same run.

Each row is images/s (patches/s ÷ patches per image) and its ratio to the paper's K80 row
(configs/paper_figures.toml) and to `model.fit` in the same mode. The trainer is measured twice:
on its own input (decoded images, crops degraded in the step) and on the same in-memory float
(input, HR) pairs that `model.fit` gets. Images are generated (smooth random content) at the
assumed sizes below: the paper gives the image counts, not their sizes. Only the counts and the
images' sizes are the paper's; its patch layout is not printed, so images/s compare in order of
magnitude only.

    python benchmarks/bench_gpu.py                 # a small fraction of an epoch on a CPU
    python benchmarks/bench_gpu.py --fraction 1    # one full epoch of each (on a GPU)
"""

from __future__ import annotations

import argparse
import io
import math
import tempfile
import time

import numpy as np

from shardrun.config.paper import paper_figures
from shardrun.train.bench import device_description
from shardrun.train.crops import device_pairs
from shardrun.train.data import MemoryImageSource
from shardrun.train.trainer import PRECISIONS, TrainConfig, Trainer, _accelerators, set_determinism

EXPERIMENTS = {
    # name: (paper table, channels, options, assumed image size (w, h), format)
    "table1": ("ultrasound", 1, {}, (512, 512), "PNG"),
    "table2": ("imagenet", 3, {"blocks": 3}, (500, 375), "JPEG"),  # ~112 KB JPEGs: 5.58 GB / 50,000
}
MODES = [(p, d) for d in (True, False) for p in ("float32", "mixed_float16")]


def generated_images(count: int, size: tuple[int, int], fmt: str, seed: int) -> MemoryImageSource:
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    blobs = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), np.int16)
        noisy = np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        blobs.append(buffer.getvalue())
    return MemoryImageSource(blobs)


def measure(name: str, precision: str, deterministic: bool, args, source, steps: int) -> dict:
    import keras
    import tensorflow as tf

    table, channels, options, _, _ = EXPERIMENTS[name]
    config = TrainConfig(model="decusr", scale=2, channels=channels, options=options,
                         patch_size=args.patch_size, batch_size=args.batch_size,
                         patches_per_image=args.patches_per_image, epochs=args.epochs_needed[name],
                         seed=1, precision=precision, deterministic=deterministic)
    trainer = Trainer(config, source, tempfile.mkdtemp(prefix="bench-gpu-"))
    images_per_step = args.batch_size / args.patches_per_image
    warmup = args.warmup

    # the same (input, HR) pairs for model.fit and the trainer's in-memory row
    pairs = [device_pairs(tf.constant(c), tf.constant(o), trainer.patch_spec)
             for c, o in trainer.dataset(0).take(steps)]
    memory = tf.data.Dataset.from_tensor_slices(
        (tf.stack([p[0] for p in pairs]), tf.stack([p[1] for p in pairs]))).cache().repeat()

    trainer.train(warmup, checkpoint_at_end=False)
    own = trainer.train(warmup + steps, checkpoint_at_end=False).elapsed_s
    trainer.train(trainer.step + warmup, batches=memory, checkpoint_at_end=False)
    in_memory = trainer.train(trainer.step + steps, batches=memory, checkpoint_at_end=False).elapsed_s

    set_determinism(deterministic)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        from shardrun.train.models import build_model

        model = build_model(trainer.model_config, seed=1)
    finally:
        keras.config.set_dtype_policy(previous)
    adam = keras.optimizers.Adam(1e-3)
    model.compile(keras.optimizers.LossScaleOptimizer(adam) if precision == "mixed_float16" else adam,
                  loss="mse", jit_compile=trainer.jit_compile)
    model.fit(memory, steps_per_epoch=warmup, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(memory, steps_per_epoch=steps, epochs=1, verbose=0)
    fit = time.perf_counter() - started

    paper = paper_figures()["tables"][table]
    k80 = next(r for r in paper["rows"] if "K80" in r["device"])
    k80_ips = paper["images"] / k80["seconds"]
    rate = {k: steps * images_per_step / s for k, s in
            (("trainer", own), ("trainer_memory", in_memory), ("fit", fit))}
    return {"experiment": name, "precision": precision, "mode": "det" if deterministic else "fast",
            "xla": trainer.jit_compile, "steps": steps, **rate, "k80": k80_ips,
            "epoch_s": paper["images"] / rate["trainer"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    on_gpu = bool(_accelerators())
    parser.add_argument("--fraction", type=float, default=1.0 if on_gpu else 0.002,
                        help="of an epoch to time (default: 1 on an accelerator, 0.002 on a CPU)")
    parser.add_argument("--min-steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--patches-per-image", type=int, default=16)
    parser.add_argument("--experiments", default="table1,table2")
    parser.add_argument("--modes", default="all", help="all, or e.g. float32:det,mixed_float16:fast")
    args = parser.parse_args()
    modes = MODES if args.modes == "all" else [
        (p, d == "det") for p, d in (m.split(":") for m in args.modes.split(","))]

    print(f"device: {device_description()}; decusr x2, patch {args.patch_size}, batch {args.batch_size}, "
          f"{args.patches_per_image} patches per image; fraction of an epoch {args.fraction:g} "
          f"(at least {args.min_steps} steps)")
    print("| experiment | precision | mode | xla | steps | trainer img/s | trainer (in-memory pairs) img/s "
          "| model.fit img/s | trainer / fit | trainer / K80 | epoch at trainer speed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    args.epochs_needed = {}
    for name in args.experiments.split(","):
        table, channels, options, size, fmt = EXPERIMENTS[name]
        paper = paper_figures()["tables"][table]
        steps_epoch = math.ceil(paper["images"] * args.patches_per_image / args.batch_size)
        steps = max(args.min_steps, math.ceil(args.fraction * steps_epoch))
        # as many generated images as the timed steps draw (all of them for a full epoch)
        needed = (2 * args.warmup + steps) * args.batch_size // args.patches_per_image + 1
        count = min(paper["images"], needed)
        source = generated_images(count, size, fmt, seed=len(name))
        per_epoch = math.ceil(count * args.patches_per_image / args.batch_size)
        args.epochs_needed[name] = math.ceil((2 * args.warmup + 2 * steps + 1) / per_epoch) + 1
        for precision, deterministic in modes:
            r = measure(name, precision, deterministic, args, source, steps)
            print(f"| {name} ({count} of {paper['images']:,} images, {size[0]}x{size[1]}) | {precision} "
                  f"| {r['mode']} | {'on' if r['xla'] else 'off'} | {steps} | {r['trainer']:.2f} "
                  f"| {r['trainer_memory']:.2f} | {r['fit']:.2f} | {r['trainer_memory'] / r['fit']:.2f} "
                  f"(own input {r['trainer'] / r['fit']:.2f}) | {r['trainer'] / r['k80']:.2f} "
                  f"| {r['epoch_s'] / 60:.1f} min |", flush=True)


if __name__ == "__main__":
    main()
