"""Enlarging an image of any size by tiles with overlap, so memory stays bounded.

A fully convolutional network's output pixel depends only on the input pixels within its
receptive radius. Each tile is cut with `margin` extra input pixels on every side (fewer at the
image's edges, where the whole-image run sees zero padding too), enlarged, and only its centre is
kept: with `margin` at least the radius, every kept pixel is computed from the same input values
as in a whole-image run — and, because every operation here sums its taps in a fixed order, to
the same bits (tests/product/test_product.py checks exact equality).

`enlarge_rgb` is the SR papers' pipeline for one tile: an RGB network enlarges RGB; a one-channel
network enlarges BT.601 Y while Cb and Cr are enlarged by MATLAB-style bicubic; an "upsampled"
network (SRCNN) is fed the bicubic enlargement of its input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from shardrun.train.imresize import imresize, rgb_to_ycbcr, ycbcr_to_rgb

# The bicubic kernel reaches 2 input pixels; one more keeps the mirrored edge of a tile's own
# enlargement out of what the network sees of the kept centre.
BICUBIC_MARGIN = 3


@dataclass(frozen=True)
class Tile:
    """One tile: the input region read (with margin) and the part of it kept, in input pixels."""

    top: int
    left: int
    bottom: int
    right: int
    keep_top: int
    keep_left: int
    keep_bottom: int
    keep_right: int


def plan_tiles(height: int, width: int, tile: int, margin: int) -> list[Tile]:
    """Returns the tiles covering a height×width input: kept parts of at most tile×tile that
    partition the image, each read with `margin` more pixels on every side inside the image."""
    if tile < 1:
        raise ValueError(f"tile={tile!r} must be a positive number of pixels")
    tiles = []
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            tiles.append(Tile(max(0, top - margin), max(0, left - margin), min(height, bottom + margin),
                              min(width, right + margin), top, left, bottom, right))
    return tiles


def enlarge_tiles(image: np.ndarray, enlarge: Callable[[np.ndarray], np.ndarray], scale: int, tile: int,
                  margin: int, on_tile: Callable[[int, int], None] | None = None
                  ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yields (top, left, block) of the enlarged image, in output pixels, one tile at a time.

    `enlarge` maps an input region (h, w, C) to its enlargement (h·scale, w·scale, C').
    """
    tiles = plan_tiles(image.shape[0], image.shape[1], tile, margin)
    for done, t in enumerate(tiles, 1):
        out = enlarge(image[t.top:t.bottom, t.left:t.right])
        y0, x0 = (t.keep_top - t.top) * scale, (t.keep_left - t.left) * scale
        y1, x1 = y0 + (t.keep_bottom - t.keep_top) * scale, x0 + (t.keep_right - t.keep_left) * scale
        yield t.keep_top * scale, t.keep_left * scale, out[y0:y1, x0:x1]
        if on_tile:
            on_tile(done, len(tiles))


def enlarge_whole(image: np.ndarray, enlarge: Callable[[np.ndarray], np.ndarray], scale: int, tile: int,
                  margin: int, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Returns the enlarged image assembled from its tiles (float64)."""
    out = None
    for top, left, block in enlarge_tiles(image, enlarge, scale, tile, margin, on_tile):
        if out is None:
            out = np.zeros((image.shape[0] * scale, image.shape[1] * scale, block.shape[-1]), np.float64)
        out[top:top + block.shape[0], left:left + block.shape[1]] = block
    return out


def network_enlarger(predict: Callable[[np.ndarray], np.ndarray], scale: int, channels: int,
                     input_kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """Returns the function enlarging an RGB region (h, w, 3 or more; extra channels such as alpha
    are enlarged by bicubic) with the network `predict` ((1, h, w, C) float32 -> (1, H, W, C))."""

    def run(x: np.ndarray) -> np.ndarray:
        if input_kind == "upsampled":
            x = imresize(x, scale)
        out = np.asarray(predict(x[None].astype(np.float32)))[0]
        return out.astype(np.float64)

    def enlarge(region: np.ndarray) -> np.ndarray:
        rgb, extra = region[..., :3], region[..., 3:]
        if channels == 3:
            out = np.clip(run(rgb), 0.0, 1.0)
        else:
            ycbcr = rgb_to_ycbcr(rgb)
            y = np.clip(run(ycbcr[..., :1]), 0.0, 1.0)
            chroma = imresize(ycbcr[..., 1:], scale)
            out = np.clip(ycbcr_to_rgb(np.concatenate([y, chroma], axis=-1)), 0.0, 1.0)
        if extra.shape[-1]:
            out = np.concatenate([out, np.clip(imresize(extra, scale), 0.0, 1.0)], axis=-1)
        return out

    return enlarge


def margin_for(radius: int, scale: int, input_kind: str) -> int:
    """Returns the tile margin, in input pixels, that makes tiled enlargement exact."""
    if input_kind == "upsampled":
        # The radius is in the enlarged image's pixels there; the bicubic stage adds its own.
        return -(-radius // scale) + BICUBIC_MARGIN
    return radius + BICUBIC_MARGIN
