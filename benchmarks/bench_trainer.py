"""Is the trainer as fast as plain Keras, and is the input pipeline out of the way?

Measures, in one process, on the same model, data and batch size:

- trainer, real pipeline      : Trainer.train fed by the tf.data pipeline (decode, crop, bicubic),
                                one iterator kept across rounds (steady state), and a new pipeline
                                per call (what each slice of a run pays);
- trainer, in-memory batches  : Trainer.train fed batches already in memory;
- model.fit, in-memory batches: a plain compiled Keras model (Adam, MSE) on the same batches;
- model.fit, real pipeline    : the same, fed by the pipeline;
- pipeline alone              : batches drawn from the pipeline with no training at all,

and prints trainer/fit (want >= 0.95), pipeline/in-memory (want ~1: the input is not the
bottleneck; on a CPU-only machine the two share the cores) and pipeline alone/training (what the
pipeline could feed once the steps run on a GPU). Rounds alternate between the contenders and
the best round of each counts, which damps the noise of a shared machine.

    python benchmarks/bench_trainer.py --model espcn --batch-size 16 --steps 400 --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time

import keras
import tensorflow as tf

from shardrun.train.bench import device_description, sample_source
from shardrun.train.models import build_model
from shardrun.train.trainer import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="decusr")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=400,
                        help="timed steps per round (enough that prefetched batches do not flatter the pipeline)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    source = sample_source()
    config = TrainConfig(model=args.model, scale=args.scale, channels=args.channels,
                         patch_size=args.patch_size, batch_size=args.batch_size, epochs=1000,
                         seed=1)
    trainer = Trainer(config, source, tempfile.mkdtemp(prefix="bench-trainer-"))
    pipeline = trainer.dataset(0)
    # The in-memory batches are the pipeline's own first batches, materialised once.
    memory = tf.data.Dataset.from_tensor_slices(
        tuple(tf.stack(t) for t in zip(*pipeline.take(args.steps)))
    ).cache().repeat()

    model = build_model(trainer.model_config, seed=config.seed)
    model.compile(keras.optimizers.Adam(config.learning_rate, beta_1=config.beta_1), loss="mse")

    def run_trainer(batches):
        return trainer.train(trainer.step + args.steps, batches=batches,
                             checkpoint_at_end=False).elapsed_s

    def run_pipeline_alone(batches):
        started = time.perf_counter()
        for _ in range(args.steps):
            next(batches)
        return time.perf_counter() - started

    def run_fit(batches):
        started = time.perf_counter()
        model.fit(batches, steps_per_epoch=args.steps, epochs=1, verbose=0)
        return time.perf_counter() - started

    # One iterator kept across rounds measures the pipeline's steady state; a new pipeline per
    # round also pays its start (decoding the first window), as each slice of a run does.
    steady = iter(trainer.dataset())
    alone = iter(trainer.dataset())
    contenders = {
        "trainer, real pipeline": lambda: run_trainer(steady),
        "trainer, new pipeline per call": lambda: run_trainer(trainer.dataset()),
        "trainer, in-memory batches": lambda: run_trainer(memory),
        "model.fit, in-memory batches": lambda: run_fit(memory),
        "model.fit, real pipeline": lambda: run_fit(pipeline),
        # On a CPU-only machine the pipeline and the training steps share the same cores; its
        # capacity alone tells whether it could keep up once the steps run on a GPU.
        "pipeline alone (no training)": lambda: run_pipeline_alone(alone),
    }
    for run in contenders.values():  # warm-up: tracing, thread pools
        run()
    best = {name: float("inf") for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            best[name] = min(best[name], run())

    rate = {name: args.steps * args.batch_size / seconds for name, seconds in best.items()}
    print(f"device: {device_description()}; model {args.model}, scale {args.scale}, "
          f"{args.channels} channel(s), patch {args.patch_size}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds (best round)")
    for name in contenders:
        print(f"  {name:<30} {rate[name]:9.1f} patches/s  {1000 * best[name] / args.steps:8.1f} ms/step")
    print(f"trainer / model.fit (in memory)        : "
          f"{rate['trainer, in-memory batches'] / rate['model.fit, in-memory batches']:.3f}")
    print(f"trainer / model.fit (new pipeline each): "
          f"{rate['trainer, new pipeline per call'] / rate['model.fit, real pipeline']:.3f}")
    print(f"real pipeline / in-memory (trainer)    : "
          f"{rate['trainer, real pipeline'] / rate['trainer, in-memory batches']:.3f}")
    print(f"pipeline alone / training (in memory)  : "
          f"{rate['pipeline alone (no training)'] / rate['trainer, in-memory batches']:.3f}")


if __name__ == "__main__":
    main()
