"""How many optimisation steps a run has; shared by the planner and the data pipeline.

Kept free of TensorFlow so that planning never imports it.
"""

from __future__ import annotations

import math


def steps_per_epoch(num_images: int, patches_per_image: int, batch_size: int) -> int:
    """Returns the steps in one epoch: every image contributes `patches_per_image` patches."""
    if num_images <= 0 or patches_per_image <= 0 or batch_size <= 0:
        raise ValueError(
            f"steps_per_epoch needs positive counts, got num_images={num_images}, "
            f"patches_per_image={patches_per_image}, batch_size={batch_size}"
        )
    return math.ceil(num_images * patches_per_image / batch_size)


def total_steps(num_images: int, patches_per_image: int, batch_size: int, epochs: int) -> int:
    """Returns the steps of a whole run of `epochs` epochs."""
    return epochs * steps_per_epoch(num_images, patches_per_image, batch_size)
