"""PNG figures of CT slices side by side, with titles, drawn with Pillow (no matplotlib needed).

Console usage::

    >>> from QHQGANLib.core.figures import save_panels_png
    >>> save_panels_png([("normal dose", ct.array[0]), ("quarter dose", low.array[0])],
    ...                 "/tmp/compare.png", window=(-160, 240))
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

Panel = Tuple[str, np.ndarray]


def to_grey(slice_hu: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    """8-bit grey levels of a 2D HU slice in a (low, high) window."""
    low, high = window
    scaled = (np.clip(np.asarray(slice_hu, np.float64), low, high) - low) / (high - low)
    return np.round(scaled * 255).astype(np.uint8)


def save_panels_png(panels: Sequence[Panel], path, window: Tuple[float, float] = (-160.0, 240.0),
                    windows: Optional[Sequence[Tuple[float, float]]] = None,
                    min_panel_size: int = 256, footer: str = "") -> Path:
    """Write the 2D slices in ``panels`` side by side into a PNG, each titled.

    ``window`` applies to every panel unless ``windows`` gives one per panel (e.g. a
    symmetric window such as (-50, 50) for a difference image). Small slices are
    enlarged (nearest neighbour) to at least ``min_panel_size`` pixels.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not panels:
        raise ValueError("no panels to draw")
    windows = list(windows) if windows is not None else [window] * len(panels)
    if len(windows) != len(panels):
        raise ValueError("give one window per panel")
    tiles = []
    for (title, image), win in zip(panels, windows):
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"panel {title!r} is not a 2D slice (shape {image.shape})")
        tile = Image.fromarray(to_grey(image, win))
        factor = max(1, int(np.ceil(min_panel_size / max(image.shape))))
        if factor > 1:
            tile = tile.resize((image.shape[1] * factor, image.shape[0] * factor), Image.NEAREST)
        tiles.append((f"{title}  [{win[0]:g}, {win[1]:g}] HU", tile))
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    title_h, footer_h, gap = 22, (20 if footer else 0), 6
    width = sum(t.width for _, t in tiles) + gap * (len(tiles) + 1)
    height = max(t.height for _, t in tiles) + title_h + footer_h + 2 * gap
    canvas = Image.new("L", (width, height), color=0)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for title, tile in tiles:
        draw.text((x, gap), title, fill=255, font=font)
        canvas.paste(tile, (x, gap + title_h))
        x += tile.width + gap
    if footer:
        draw.text((gap, height - footer_h), footer, fill=200, font=font)
    path = Path(path)
    canvas.save(path)
    return path
