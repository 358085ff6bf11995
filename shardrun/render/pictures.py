"""Validation pictures as inline HTML: each crop's bicubic enlargement, the network's and the
original side by side, with their PSNR, as data: URIs of PNGs (the page stays one file).

A picture strip (plan/validation.pictures_png) holds one row per crop; each row becomes an image
of its own. The page's pictures are bounded: at most MAX_PICTURE_BYTES of PNG in all, the rest
left out with a note."""

from __future__ import annotations

import base64
import html
import io

MAX_PICTURE_BYTES = 400_000


def _rows(png: bytes, crops: list[dict]) -> list[bytes]:
    """Returns each crop's row of the strip as a PNG of its own."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as strip:
        strip.load()
        rows = []
        for crop in crops:
            row = strip.crop((0, crop["top"], 3 * crop["width"], crop["top"] + crop["height"]))
            buffer = io.BytesIO()
            row.save(buffer, "PNG", optimize=True)
            rows.append(buffer.getvalue())
    return rows


def crops_html(png: bytes, crops: list[dict], budget: list[int]) -> str:
    """Returns the crops' figures; `budget` ([bytes left]) is shared by the whole page."""
    parts = []
    for crop, row in zip(crops, _rows(png, crops)):
        if len(row) > budget[0]:
            parts.append('<p class="note">More pictures left out: the page keeps its pictures under '
                         f'{MAX_PICTURE_BYTES // 1000} kB.</p>')
            break
        budget[0] -= len(row)
        uri = "data:image/png;base64," + base64.b64encode(row).decode()
        w = crop["width"]
        gain = crop["psnr"] - crop["bicubic_psnr"]
        parts.append(
            f'<figure class="crop"><img src="{uri}" width="{3 * w * 2}" height="{crop["height"] * 2}" '
            f'alt="{html.escape(crop["name"])}: bicubic, network, original" style="image-rendering: pixelated">'
            f'<figcaption>{html.escape(crop["name"])}: bicubic {crop["bicubic_psnr"]:.2f} dB · '
            f'network {crop["psnr"]:.2f} dB ({gain:+.2f}) · original</figcaption></figure>')
    return "".join(parts)


CSS = ".crop { margin: 6px 0; } .crop figcaption { font-size: 12px; color: #444; }"


def validation_pictures_html(status: dict) -> str:
    """Returns the status page's section of pictures: per run, its latest validation's crops."""
    budget, parts = [MAX_PICTURE_BYTES], []
    for run in status["runs"]:
        v = run.get("validation") or {}
        pictures = v.get("pictures") or {}
        if not pictures.get("png"):
            continue
        parts.append(f'<h3>{html.escape(run["name"])}: step {v["step"]:,}, '
                     f'{html.escape(v.get("set") or "validation set")}</h3>')
        parts.append(crops_html(pictures["png"], pictures["crops"], budget))
    if not parts:
        return "<p>No validation pictures yet.</p>"
    return "".join(parts)
