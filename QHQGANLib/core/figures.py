"""PNG figures of CT slices side by side, with titles, drawn with Pillow (no matplotlib needed).

Each panel has its title above it (wrapped to the panel's width, so titles never overlap or run off the
figure), then, with ``window_names``, the name of its display window, and with ``colorbar=True`` a grey
bar under it labelled in HU (the window's low end, centre and high end). A footer, wrapped to the
figure's width, goes under all panels. Figures never carry file names or paths: callers give titles
that say what each panel is.

Console usage::

    >>> from QHQGANLib.core.figures import save_panels_png
    >>> save_panels_png([("normal dose", ct.array[0]), ("quarter dose", low.array[0])],
    ...                 "/tmp/compare.png", window=(-160, 240))
    >>> save_panels_png(panels, "/tmp/demo.png", windows=[(-160, 240)] * 2,
    ...                 window_names=["soft-tissue window W 400 / L 40 HU"] * 2, colorbar=True)
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

Panel = Tuple[str, np.ndarray]
#: Pixels around and between panels, and the height of a colour bar.
GAP, BAR_HEIGHT = 12, 12


def to_grey(slice_hu: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    """8-bit grey levels of a 2D HU slice in a (low, high) window."""
    low, high = window
    scaled = (np.clip(np.asarray(slice_hu, np.float64), low, high) - low) / (high - low)
    return np.round(scaled * 255).astype(np.uint8)


def window_name(window: Tuple[float, float], name: str = "window") -> str:
    """``soft-tissue window W 400 / L 40 HU`` for ``((-160, 240), "soft-tissue window")``."""
    low, high = float(window[0]), float(window[1])
    return f"{name} W {high - low:g} / L {(low + high) / 2:g} HU"


def wrap(text: str, width: float, measure) -> List[str]:
    """``text`` broken into lines no wider than ``width`` (``measure(line)`` gives a line's width);
    explicit newlines are kept, a single word wider than ``width`` stays whole."""
    lines: List[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if line and measure(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def save_panels_png(panels: Sequence[Panel], path, window: Tuple[float, float] = (-160.0, 240.0),
                    windows: Optional[Sequence[Tuple[float, float]]] = None,
                    min_panel_size: int = 256, footer: str = "",
                    window_names: Optional[Sequence[str]] = None, colorbar: bool = False) -> Path:
    """Write the 2D slices in ``panels`` side by side into a PNG, each titled.

    ``window`` applies to every panel unless ``windows`` gives one per panel (e.g. a
    symmetric window such as (-50, 50) for a difference image). Small slices are
    enlarged (nearest neighbour) to at least ``min_panel_size`` pixels. Without
    ``window_names`` a title ends with its window (``[-160, 240] HU``); with them each
    panel's window name is its title's last line. ``colorbar`` draws a grey bar in HU
    under each panel.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not panels:
        raise ValueError("no panels to draw")
    windows = list(windows) if windows is not None else [window] * len(panels)
    if len(windows) != len(panels):
        raise ValueError("give one window per panel")
    if window_names is not None and len(window_names) != len(panels):
        raise ValueError("give one window name per panel")
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1))).textlength
    line_h = int(sum(font.getbbox("Hg")[1::2])) + 4
    tiles = []
    for index, ((title, image), win) in enumerate(zip(panels, windows)):
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"panel {title!r} is not a 2D slice (shape {image.shape})")
        tile = Image.fromarray(to_grey(image, win))
        factor = max(1, int(np.ceil(min_panel_size / max(image.shape))))
        if factor > 1:
            tile = tile.resize((image.shape[1] * factor, image.shape[0] * factor), Image.NEAREST)
        text = (f"{title}\n{window_names[index]}" if window_names is not None
                else f"{title}  [{win[0]:g}, {win[1]:g}] HU")
        tiles.append((wrap(text, tile.width, lambda s: measure(s, font=font)), tile, win))
    title_h = max(len(lines) for lines, _, _ in tiles) * line_h
    bar_h = (GAP + BAR_HEIGHT + line_h) if colorbar else 0
    width = sum(t.width for _, t, _ in tiles) + GAP * (len(tiles) + 1)
    footer_lines = wrap(footer, width - 2 * GAP, lambda s: measure(s, font=font)) if footer else []
    height = GAP + title_h + max(t.height for _, t, _ in tiles) + bar_h + len(footer_lines) * line_h + 2 * GAP
    canvas = Image.new("L", (width, height), color=0)
    draw = ImageDraw.Draw(canvas)
    x = GAP
    for lines, tile, win in tiles:
        for n, line in enumerate(lines):
            draw.text((x, GAP + n * line_h), line, fill=255, font=font)
        top = GAP + title_h
        canvas.paste(tile, (x, top))
        if colorbar:
            _draw_colorbar(canvas, draw, font, (x, top + tile.height + GAP), tile.width, win, measure)
        x += tile.width + GAP
    for n, line in enumerate(footer_lines):
        draw.text((GAP, height - GAP - (len(footer_lines) - n) * line_h), line, fill=200, font=font)
    path = Path(path)
    canvas.save(path)
    return path


def _draw_colorbar(canvas, draw, font, corner: Tuple[int, int], width: int, window, measure) -> None:
    """A grey ramp from the window's low to its high end, labelled low, centre and high (HU)."""
    from PIL import Image

    x, y = corner
    ramp = np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (BAR_HEIGHT, 1))
    canvas.paste(Image.fromarray(ramp), (x, y))
    low, high = float(window[0]), float(window[1])
    labels = [f"{low:g}", f"{(low + high) / 2:g}", f"{high:g} HU"]
    widths = [measure(label, font=font) for label in labels]
    places = [x, x + (width - widths[1]) / 2, x + width - widths[2]]
    for label, left in zip(labels, places):
        draw.text((left, y + BAR_HEIGHT + 2), label, fill=255, font=font)
