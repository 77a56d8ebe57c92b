"""Truncated fields of view: the body beyond the image edge, for the forward projection only.

The noise a dose reduction adds to a ray depends on how many photons survive the *whole*
patient along it, ``I0 exp(-p)``. When the patient is larger than the reconstructed field of
view (a cropped scan such as pydicom's 85 mm ``CT_small.dcm``, a small reconstruction
circle, a patient touching the edge), the image holds only part of every line, the
projections of the image alone are far too short and the simulated noise far too low
(``CT_small`` at 25 % dose: ~3 HU with a fixed photon count instead of tens of HU).

Model
-----
Per slice, :func:`detect_truncation` finds the patient (smoothed HU > -500, opened by a
3 mm disk so that thin table shells and cables drop out, largest connected part, holes
filled) and the edge of the field of view (the image border, or the rim of the
reconstruction circle where the scanner filled the outside with padding values below
-1500 HU). The slice is *truncated* when the patient touches that edge over at least
5 mm. The patient's full outline is then taken as an axis-aligned ellipse:

* **fitted** to the visible outline (the patient's boundary away from the field-of-view
  edge) by least squares, when at least 30 outline pixels cover 60 degrees or more around
  the fitted centre and the fit is a plausible body (semi-axes 30 to 350 mm);
* otherwise the **default** adult trunk, 350 mm x 265 mm (lateral x anterior-posterior: the
  median of the abdomen and chest patients in ``../shared/data``, whose main body measures
  308-376 mm x 229-306 mm), centred on the image (the position of a crop inside the patient
  is unknown; centring it is the neutral guess). A cropped *head* gets this trunk too.

An ellipse that leaves out a point where the patient touches the edge is enlarged, keeping
its shape, to pass 5 % beyond it (the patient continues there). :func:`plan_extension` pads
every slice symmetrically to hold its ellipse; :meth:`Extension.attenuation` fills the
pixels of the ellipse that lie outside the field of view with the mean attenuation of the
visible patient (its mean HU clipped to [-500, 100]: water-like for an abdomen, lighter
for a chest) and keeps the image inside. Only the forward projection, which sets the
photon count of every ray, sees the padded image; the noise is still reconstructed on the
input grid and added to the input.

How well it works (``Testing/test_lowdose_calibration.py``): a central 128 x 128 crop of a
full slice, simulated with a fixed photon count, gets 0.64x (TotalSegmentator DICOM, a
patient with the arms down, 490 mm wide with them) to 1.1x (KiTS abdomen) the noise that
the same region gets in the full-slice simulation, against 0.11-0.12x without the model.
Its limits: the size and position of the missing patient are a guess, the fill is uniform
(no bones, no lungs: a crop of the heart continues as soft tissue, and gets ~2x the noise
of the real chest with its lungs), and a patient touching the edge only in places is
completed by a fitted ellipse, which can misjudge the hidden part.

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.physics.truncation import detect_truncation, plan_extension
    >>> ct = q.read_volume(pydicom.data.get_testdata_file("CT_small.dcm"))
    >>> detect_truncation(ct.array[0], ct.spacing[0])
    SliceTruncation(truncated=True, touching_mm=211.0..., ellipse=Ellipse(...), source='default', fill_hu=60.47...)
    >>> ext = plan_extension(ct.array, ct.spacing[0], multiple=2)
    >>> ext.pad, ext.info["outline_mm"]               # ((140, 204), [350.0, 265.0])
    >>> q.simulate_low_dose(ct, 0.25, truncation="off")  # the image alone (old behaviour)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

#: Values below this (HU) are the scanner's padding outside the reconstruction circle.
PADDING_BELOW_HU = -1500.0
#: The patient: smoothed values above this (HU).
BODY_ABOVE_HU = -500.0
#: Default outline of a truncated patient without a usable visible outline: semi-axes (mm), (x, y).
DEFAULT_SEMI_AXES_MM: Tuple[float, float] = (175.0, 132.5)
#: A slice is truncated when the patient touches the field-of-view edge over at least this (mm).
MIN_TOUCH_MM = 5.0
#: The missing part of the patient gets the mean HU of the visible part, clipped to this range.
FILL_RANGE_HU: Tuple[float, float] = (-500.0, 100.0)
MODES = ("auto", "off")


@dataclass(frozen=True)
class Ellipse:
    """Axis-aligned ellipse in pixel coordinates of the slice: centre (row, col), semi-axes (rows, cols)."""

    cy: float
    cx: float
    ry: float
    rx: float

    def inside(self, rows: np.ndarray, cols: np.ndarray, scale: float = 1.0) -> np.ndarray:
        return ((rows - self.cy) / (self.ry * scale)) ** 2 + ((cols - self.cx) / (self.rx * scale)) ** 2 <= 1.0

    def radius(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Elliptic radius (1 on the outline) of points."""
        return np.sqrt(((rows - self.cy) / self.ry) ** 2 + ((cols - self.cx) / self.rx) ** 2)


@dataclass(frozen=True)
class SliceTruncation:
    """What :func:`detect_truncation` found in one slice."""

    truncated: bool
    touching_mm: float
    ellipse: Optional[Ellipse] = None
    source: str = "none"  # "fitted", "default" or "none"
    fill_hu: float = 0.0  # what the missing part of the patient is filled with


def field_of_view(image: np.ndarray, outside: Optional[np.ndarray] = None) -> np.ndarray:
    """Reconstructed pixels: all but the scanner's padding (values below -1500 HU, and the ``outside``
    mask where the padding is known: DICOM PixelPaddingValue, :mod:`QHQGANLib.core.padding`)."""
    fov = np.asarray(image) > PADDING_BELOW_HU
    return fov if outside is None else fov & ~np.asarray(outside, dtype=bool)


def body_mask(image: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The patient: largest connected part of smoothed HU > -500 after a 3 mm opening, holes filled."""
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(np.asarray(image, np.float64), max(0.5, 1.0 / pixel_mm))
    body = smooth > BODY_ABOVE_HU
    r = max(1, int(round(3.0 / pixel_mm)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (yy * yy + xx * xx) <= r * r  # opening that does not shrink the patient at the image edge
    body = ndi.binary_dilation(ndi.binary_erosion(body, disk, border_value=1), disk) & body
    labels, n = ndi.label(body)
    if n == 0:
        return body
    sizes = ndi.sum(body, labels, index=np.arange(1, n + 1))
    return ndi.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def _fit_outline(rows: np.ndarray, cols: np.ndarray, pixel_mm: float) -> Optional[Ellipse]:
    """Least-squares axis-aligned ellipse through outline points, or None when implausible."""
    if rows.size < 30:
        return None
    y0, x0, s = rows.mean(), cols.mean(), max(rows.std(), cols.std(), 1.0)
    y, x = (rows - y0) / s, (cols - x0) / s
    design = np.stack([x * x, y * y, x, y], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.ones_like(x), rcond=None)
    a, c, d, e = coef
    if a <= 0 or c <= 0:
        return None
    g = 1.0 + d * d / (4 * a) + e * e / (4 * c)
    if g <= 0:
        return None
    ell = Ellipse(y0 - s * e / (2 * c), x0 - s * d / (2 * a), s * math.sqrt(g / c), s * math.sqrt(g / a))
    if not all(30.0 <= r * pixel_mm <= 350.0 for r in (ell.ry, ell.rx)):
        return None
    angles = np.arctan2((rows - ell.cy) / ell.ry, (cols - ell.cx) / ell.rx)
    hist = np.histogram(angles, bins=24, range=(-np.pi, np.pi))[0]
    if np.count_nonzero(hist) < 4:  # less than 60 degrees of outline
        return None
    return ell


def detect_truncation(image: np.ndarray, pixel_mm: float, outside: Optional[np.ndarray] = None) -> SliceTruncation:
    """Whether the patient in a 2D slice touches the edge of the field of view, and its outline ellipse
    (``outside``: the slice's known padding, see :func:`field_of_view`)."""
    from scipy import ndimage as ndi

    image = np.asarray(image, np.float64)
    ny, nx = image.shape
    fov = field_of_view(image, outside)
    fov_edge = fov & ~ndi.binary_erosion(fov, border_value=0)
    body = body_mask(image, pixel_mm) & fov
    touching = body & fov_edge
    touching_mm = float(touching.sum() * pixel_mm)
    if touching_mm < MIN_TOUCH_MM:
        return SliceTruncation(False, touching_mm)
    outline = body & ~ndi.binary_erosion(body, border_value=0) & ~ndi.binary_dilation(fov_edge, iterations=2)
    rows, cols = np.nonzero(outline)
    ell = _fit_outline(rows.astype(float), cols.astype(float), pixel_mm)
    source = "fitted"
    if ell is None:
        source = "default"
        rx, ry = (v / pixel_mm for v in DEFAULT_SEMI_AXES_MM)
        ell = Ellipse((ny - 1) / 2.0, (nx - 1) / 2.0, ry, rx)
    t_rows, t_cols = np.nonzero(touching)
    reach = float(ell.radius(t_rows.astype(float), t_cols.astype(float)).max())
    if reach > 1.0:  # the patient continues beyond the points where it touches the edge
        ell = Ellipse(ell.cy, ell.cx, ell.ry * reach * 1.05, ell.rx * reach * 1.05)
    fill = float(np.clip(image[body].mean(), *FILL_RANGE_HU))
    return SliceTruncation(True, touching_mm, ell, source, fill)


@dataclass
class Extension:
    """Per-slice outline ellipses and the symmetric padding (rows, cols) that holds them all."""

    shape: Tuple[int, int]
    pad: Tuple[int, int] = (0, 0)
    ellipses: Dict[int, Ellipse] = field(default_factory=dict)
    fill_hu: Dict[int, float] = field(default_factory=dict)
    info: Dict[str, object] = field(default_factory=dict)
    outside: Optional[np.ndarray] = None  # the known padding (z, y, x), outside the field of view

    def attenuation(self, k: int, image: np.ndarray, mu: np.ndarray, water: float) -> np.ndarray:
        """``mu`` (the attenuation of slice ``k``) on the padded grid; the missing part of the patient
        gets ``water * (1 + fill/1000)`` (``water``: the attenuation of water in the units of ``mu``)."""
        py, px = self.pad
        ell = self.ellipses.get(k)
        if ell is None and not (py or px):
            return mu
        ny, nx = self.shape
        out = np.zeros((ny + 2 * py, nx + 2 * px), dtype=np.float64)
        out[py:py + ny, px:px + nx] = mu
        if ell is not None:
            rows, cols = np.mgrid[-py:ny + py, -px:nx + px]
            missing = np.ones(out.shape, bool)
            missing[py:py + ny, px:px + nx] = ~field_of_view(image, None if self.outside is None else self.outside[k])
            out[missing & ell.inside(rows, cols)] = water * (1.0 + self.fill_hu.get(k, 0.0) / 1000.0)
        return out


def plan_extension(array: np.ndarray, pixel_mm: float, mode: str = "auto", multiple: int = 1,
                   max_canvas: int = 4096, outside: Optional[np.ndarray] = None) -> Extension:
    """Detect truncation in every slice of ``array`` (z, y, x) and the padding the ellipses need.

    ``mode``: ``"auto"`` (extend truncated slices) or ``"off"`` (project the image alone).
    ``multiple``: the padding is a multiple of it (the projector's grid coarsening). The padded
    canvas is at most ``max_canvas`` pixels on a side. ``outside``: the known padding (z, y, x) of
    ``array`` (its voxels may then hold anything, e.g. air), outside the field of view. ``info``
    summarises the result for the output's metadata.
    """
    if mode not in MODES:
        raise ValueError(f"truncation must be one of {', '.join(MODES)}, got {mode!r}")
    nz, ny, nx = array.shape
    ext = Extension((ny, nx), outside=outside)
    if mode == "off":
        ext.info = {"mode": "off"}
        return ext
    sources, touching = [], []
    for k in range(nz):
        found = detect_truncation(array[k], pixel_mm, None if outside is None else outside[k])
        if found.truncated:
            ext.ellipses[k] = found.ellipse
            ext.fill_hu[k] = found.fill_hu
            sources.append(found.source)
            touching.append(found.touching_mm)
    need_y = need_x = 0.0
    for ell in ext.ellipses.values():
        need_y = max(need_y, ell.ry - ell.cy, ell.cy + ell.ry - (ny - 1))
        need_x = max(need_x, ell.rx - ell.cx, ell.cx + ell.rx - (nx - 1))
    m = max(1, int(multiple))
    cap_y, cap_x = max(0, (max_canvas - ny) // 2), max(0, (max_canvas - nx) // 2)
    py = min(cap_y, m * math.ceil((max(0.0, need_y) + 2.0) / m)) if ext.ellipses else 0
    px = min(cap_x, m * math.ceil((max(0.0, need_x) + 2.0) / m)) if ext.ellipses else 0
    py, px = py - py % m, px - px % m
    ext.pad = (py, px)
    ext.info = {"mode": "auto", "truncated_slices": len(ext.ellipses), "slices": nz}
    if ext.ellipses:
        axes = np.array([(2 * e.rx * pixel_mm, 2 * e.ry * pixel_mm) for e in ext.ellipses.values()])
        ext.info.update(source="fitted" if all(s == "fitted" for s in sources) else
                        ("default" if all(s == "default" for s in sources) else "fitted+default"),
                        touching_mm=round(float(np.median(touching)), 1),
                        fill_hu=round(float(np.median(list(ext.fill_hu.values()))), 1),
                        outline_mm=[round(float(v), 1) for v in np.median(axes, axis=0)],
                        pad_px=[py, px])
    return ext
