"""Where the slices of a series lie along their normal (one regular grid, uneven gaps, several
blocks), and resampling them onto a regular grid on request.

Clinical series are often not one regular stack: a head series whose last slice is 1.0 mm from its
neighbour instead of 1.5 mm, a missing slice, or the GE two-block head protocol (14 slices at 4 mm
then 14 at 7 mm). A volume on a regular grid (NRRD, NIfTI, a derived DICOM series) would claim
positions such slices do not have, so :func:`QHQGANLib.core.io.read_volume` refuses them with an
:class:`UnevenSeriesError` that says where the gaps are and what helps:

* ``resample_z=MM`` (``--resample-z MM``): :func:`resample_slices`, linear interpolation along the
  slice normal, pixel by pixel, between the two real slices around each position of a regular grid
  of MM spacing that starts on the first slice and ends on or before the last (no extrapolation);
  a grid position on a real slice takes that slice unchanged; the history says so;
* ``series_block=N`` (``--series-block N``): the N-th regular block (1-based, in slice order) read
  alone, as acquired (:func:`gap_blocks`); blocks also end where the slice orientation (a
  different gantry tilt) or the slice thickness changes.

Console usage::

    >>> import numpy as np
    >>> from QHQGANLib.core.slice_grid import gap_blocks, resample_slices
    >>> gap_blocks(np.array([0.0, 4, 8, 12, 19, 26, 33]))          # 4 slices at 4 mm then 3 at 7 mm
    [(0, 4), (4, 7)]
    >>> thin = resample_slices(np.zeros((3, 2, 2), np.float32), np.array([0.0, 3, 5]), 1.0)
    >>> thin.shape
    (6, 2, 2)
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from .file_checks import VolumeReadError

#: Relative tolerance on slice-to-slice spacing before a series counts as uneven.
SPACING_TOLERANCE = 0.01
#: Two slice positions closer than this (mm) are one position.
POSITION_TOLERANCE = 1e-3
#: Exceptions to the main gap that a message lists one by one; with more it describes the blocks.
EXCEPTIONS_LISTED = 3
#: Blocks a message describes one by one.
BLOCKS_LISTED = 4


class UnevenSeriesError(VolumeReadError):
    """A series whose slices are not on one regular grid. ``description`` says where the gaps are,
    ``n_blocks`` how many regular blocks it holds, ``suggested_mm`` a spacing for ``resample_z``
    (the finest regular gap), ``mixed_orientation`` whether the blocks differ in orientation
    (then they cannot be resampled onto one grid) and ``kind`` what is wrong (``"missing slice(s)"``, ...)."""

    def __init__(self, message: str, *, description: str, n_blocks: int, suggested_mm: float,
                 mixed_orientation: bool = False, kind: str = "uneven slice spacing") -> None:
        super().__init__(message)
        self.description = description
        self.kind = kind
        self.n_blocks = n_blocks
        self.suggested_mm = suggested_mm
        self.mixed_orientation = mixed_orientation


def mm(value: float) -> str:
    """A length for a message: ``4.0``, ``1.25``, ``0.625``."""
    text = f"{float(value):.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def same_gap(a: float, b: float) -> bool:
    """True when two slice gaps (mm) are equal within the tolerance of a regular series."""
    return abs(a - b) <= SPACING_TOLERANCE * max(abs(a), abs(b)) + POSITION_TOLERANCE


def is_regular(heights: Sequence[float]) -> bool:
    """True when the sorted positions ``heights`` (mm along the normal) are evenly spaced."""
    steps = np.diff(np.asarray(heights, dtype=np.float64))
    if steps.size < 2:
        return True
    median = float(np.median(steps))
    return bool(np.all(np.abs(steps - median) <= SPACING_TOLERANCE * median + POSITION_TOLERANCE))


def gap_blocks(heights: Sequence[float], labels: Optional[Sequence] = None) -> List[Tuple[int, int]]:
    """The regular blocks of sorted slice positions, as ``(first, stop)`` slice indices in order.

    A block is a maximal run of two or more equal gaps; a slice both runs share goes to the earlier
    one, a single odd gap separates blocks, a slice in no run is a block of its own. Where
    ``labels`` (one per slice: orientation, thickness) change, a block ends whatever the gaps.
    """
    heights = np.asarray(heights, dtype=np.float64)
    n = len(heights)
    cuts = [0] + [k for k in range(1, n) if labels is not None and labels[k] != labels[k - 1]] + [n]
    blocks: List[Tuple[int, int]] = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        blocks.extend((a + lo, b + lo) for a, b in _runs(heights[lo:hi]))
    return blocks


def _runs(heights: np.ndarray) -> List[Tuple[int, int]]:
    n = len(heights)
    if n <= 2 or is_regular(heights):
        return [(0, n)]
    steps = np.diff(heights)
    blocks: List[Tuple[int, int]] = []
    claimed, i = 0, 0
    while i < len(steps):
        j = i
        while j + 1 < len(steps) and same_gap(steps[j + 1], steps[i]):
            j += 1
        if j > i:  # gaps i..j, slices i..j+1
            start = max(i, claimed)
            blocks.extend((s, s + 1) for s in range(claimed, start))
            blocks.append((start, j + 2))
            claimed = j + 2
        i = j + 1
    blocks.extend((s, s + 1) for s in range(claimed, n))
    return blocks


def block_gap(heights: np.ndarray, block: Tuple[int, int]) -> Optional[float]:
    """The gap (mm) within a block, None for a block of one slice."""
    a, b = block
    return float(np.median(np.diff(heights[a:b]))) if b - a >= 2 else None


def describe_blocks(heights: np.ndarray, blocks: Sequence[Tuple[int, int]]) -> str:
    """``2 blocks: 14 slices at 4.0 mm then 14 at 7.0 mm``."""
    parts = []
    for number, block in enumerate(blocks[:BLOCKS_LISTED]):
        count, gap = block[1] - block[0], block_gap(heights, block)
        what = "1 slice" if count == 1 else f"{count} slices" if number == 0 else f"{count}"
        parts.append(what + (f" at {mm(gap)} mm" if gap is not None else ""))
    more = f" and {len(blocks) - BLOCKS_LISTED} more" if len(blocks) > BLOCKS_LISTED else ""
    return f"{len(blocks)} blocks: {' then '.join(parts)}{more}"


def describe_gaps(heights: Sequence[float], blocks: Sequence[Tuple[int, int]], names: Sequence[str],
                  by_blocks: bool = False) -> Tuple[str, str, float]:
    """(kind, where the gaps are, the spacing to suggest for resampling) of an uneven series.

    A few odd gaps are listed (``gaps 1.5 mm except 1.0 mm between slices 28 and 29 (a.dcm and
    b.dcm)``, slices numbered from 1 along the normal); more, or ``by_blocks``, give the blocks.
    The suggestion is the finest gap of a block of three slices or more (no acquired detail lost).
    """
    heights = np.asarray(heights, dtype=np.float64)
    steps = np.diff(heights)
    main = max(blocks, key=lambda b: b[1] - b[0])
    main_gap = block_gap(heights, main) or float(np.median(steps))
    gaps = [block_gap(heights, b) for b in blocks if b[1] - b[0] >= 3]
    suggested = min(gaps) if gaps else float(np.median(steps))
    odd = [k for k in range(len(steps)) if not same_gap(steps[k], main_gap)]
    if not by_blocks and 0 < len(odd) <= EXCEPTIONS_LISTED and len(odd) < len(steps) / 2:
        kind = "missing slice(s)" if any(steps[k] > 1.5 * main_gap for k in odd) else "uneven slice spacing"
        where = " and ".join(f"{mm(steps[k])} mm between slices {k + 1} and {k + 2}" for k in odd)
        text = f"gaps {mm(main_gap)} mm except {where} ({names[odd[0]]} and {names[odd[0] + 1]})"
        return kind, text, main_gap
    if len(blocks) > 2 * BLOCKS_LISTED:
        text = (f"gaps from {mm(steps.min())} to {mm(steps.max())} mm (median {mm(np.median(steps))} mm), "
                f"{len(odd)} of {len(steps)} off the main gap of {mm(main_gap)} mm")
        return "uneven slice spacing", text, suggested
    return "uneven slice spacing", describe_blocks(heights, blocks), suggested


def uneven_error(source, heights: Sequence[float], names: Sequence[str], labels: Optional[Sequence] = None, *,
                 mixed_orientation: bool = False, blocks_offered: bool = True) -> UnevenSeriesError:
    """The one-line refusal of an uneven series: where the gaps are, and the options that help."""
    heights = np.asarray(heights, dtype=np.float64)
    blocks = gap_blocks(heights, labels)
    kind, text, suggested = describe_gaps(heights, blocks, names, by_blocks=mixed_orientation)
    options = []
    if mixed_orientation:
        kind = "blocks of different slice orientations (a gantry tilt per block?)"
    else:
        options.append(f"resample it along z with resample_z=MM (--resample-z MM, e.g. --resample-z "
                       f"{mm(suggested)}: its finest regular gap)")
    if len(blocks) > 1 and blocks_offered:
        options.append(f"read one regular block with series_block=N (--series-block N, N from 1 to {len(blocks)})")
    where = "one grid cannot hold them" if mixed_orientation else \
        "a regular grid would claim slice positions these slices do not have"
    message = f"{source}: {kind}: {text}; {where}: {' or '.join(options)}"
    return UnevenSeriesError(message, description=text, n_blocks=len(blocks), suggested_mm=suggested,
                             mixed_orientation=mixed_orientation, kind=kind)


def check_step(step: float) -> float:
    """A resampling step in mm: a finite number above zero (ValueError otherwise)."""
    try:
        value = float(step)
    except (TypeError, ValueError):
        raise ValueError(f"resample_z must be a spacing in mm, got {step!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"resample_z must be a spacing in mm above 0, got {step!r}")
    return value


def grid_size(heights: Sequence[float], step: float) -> int:
    """Slices of the regular grid of ``step`` mm from the first position to (at most) the last."""
    extent = float(heights[-1]) - float(heights[0])
    return int(np.floor(extent / step + POSITION_TOLERANCE / step)) + 1


def resample_slices(array: np.ndarray, heights: Sequence[float], step: float) -> np.ndarray:
    """Slices ``array`` (z, y, x) at sorted positions ``heights`` (mm), resampled onto the grid
    ``heights[0] + k * step``: linear, pixel by pixel, between the two real slices around each grid
    position; a grid position on a real slice (within 0.001 mm) takes that slice as it is."""
    heights = np.asarray(heights, dtype=np.float64)
    if len(heights) < 2:
        raise ValueError("resampling along z needs two slices or more")
    out = np.empty((grid_size(heights, step),) + array.shape[1:], dtype=np.float32)
    for k in range(out.shape[0]):
        z = heights[0] + k * step
        i = int(np.clip(np.searchsorted(heights, z, side="right") - 1, 0, len(heights) - 2))
        below, above = z - heights[i], heights[i + 1] - z
        if below <= POSITION_TOLERANCE:
            out[k] = array[i]
        elif above <= POSITION_TOLERANCE:
            out[k] = array[i + 1]
        else:
            t = np.float32(below / (heights[i + 1] - heights[i]))
            np.multiply(array[i], np.float32(1.0) - t, out=out[k])
            out[k] += t * array[i + 1]
    return out


def resample_note(heights: Sequence[float], step: float, n_out: int) -> str:
    """The history note of :func:`resample_slices`."""
    heights = np.asarray(heights, dtype=np.float64)
    steps = np.diff(heights)
    source = (f"{len(heights)} slices {mm(np.median(steps))} mm apart" if is_regular(heights) else
              f"{len(heights)} slices at uneven positions (gaps {mm(steps.min())}-{mm(steps.max())} mm)")
    grid = heights[0] + step * np.arange(n_out)
    kept = int(sum(np.min(np.abs(heights - z)) <= POSITION_TOLERANCE for z in grid))
    return (f"resampled along z to {mm(step)} mm from {source}: {n_out} slices, {kept} of them real slices "
            f"unchanged, {n_out - kept} interpolated (linear between the two nearest real slices: smoother, less "
            f"noise), from the first slice to {mm((n_out - 1) * step)} mm after it (the last real slice at "
            f"{mm(heights[-1] - heights[0])} mm; no extrapolation)")
