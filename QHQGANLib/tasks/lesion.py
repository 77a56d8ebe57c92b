"""Rare cases in real scans: a synthetic lesion rendered into a painted region (issue #30, item 3).

:func:`insert_lesion` returns a new image and the label map of what it inserted; the input is
never modified. The new image is **synthetic** (a real patient's scan with a lesion that patient
does not have): ``metadata["synthetic"] = True``, so every file it is written to carries the mark
(NRRD/MetaImage header, NIfTI ``descrip`` and extension, DICOM ``SyntheticData`` YES: see
:mod:`QHQGANLib.core.io`) and the scene bridge marks its node; the command line requires
'synthetic' in its file names. The label map is the label of a synthetic image and is marked too.

Rendering
---------
* **Where**: the voxels of ``mask`` (a Volume on the image's grid, or a boolean array of its
  shape; any non-zero voxel is lesion). Refused, with one line saying why: an empty mask, another
  shape or grid, a mask reaching outside the body (:func:`QHQGANLib.physics.tissue_classes.body_masks`),
  or one larger than :data:`MAX_DIAMETER_MM` (a cross-section above the area of a disc of that
  diameter, or a volume above that of a sphere of it).
* **Mean**: ``hu`` when given; otherwise by ``kind`` (:data:`KINDS`): ``hypodense`` (a cyst or a
  hypovascular tumour) 40 HU below the median of the surrounding tissue, ``hyperdense`` 40 HU above,
  ``cyst`` 10 HU, ``calcification`` 400 HU. The surrounding tissue is the body within
  :data:`SURROUND_MM` (5 mm) of the mask in its slices, outside it.
* **Texture**: ``matched`` keeps the scan's own noise where it is: the high-frequency residual of the
  original (the original minus its Gaussian smoothing of :data:`RESIDUAL_SIGMA_MM`, 1.5 mm) is added to
  the lesion's mean, so the noise's level and grain are those of the surroundings (96 % of its standard
  deviation on a water phantom; the finest anatomy under the mask, e.g. a small vessel's edge, shows
  through faintly). ``smooth``: no noise (the mean alone). ``noise``: noise drawn with ``seed`` from the
  scan's own noise power spectrum (:func:`QHQGANLib.physics.noise_texture.estimate_nps`) at the level
  of the surroundings (the robust spread of the same high-frequency residual), independent of the
  anatomy under the mask. ``seed`` is used by ``noise`` only; the others are
  deterministic.
* **Edge**: the blend weight rises from 0 at the mask's border to 1 at ``edge_mm`` inside it
  (in-plane Euclidean distance from a voxel's centre to the nearest voxel outside the mask, less half a
  pixel, in mm from the pixel spacing);
  the result is ``original + weight x (lesion - original)``, so every voxel outside the mask is the
  input's, bit for bit. ``edge_mm=0``: a sharp edge.

The history note (``metadata["history"]``) says what was inserted, where (slices, voxels, volume) and
its mean; ``metadata["lesions"]`` lists the same as numbers. No patient information is added.

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.tasks.lesion import insert_lesion
    >>> ct = q.read_volume("abdomen.nrrd")
    >>> mask = q.read_volume("painted_region.nrrd", force=True)       # a label map on the CT's grid
    >>> image, label = insert_lesion(ct, mask, kind="hypodense", texture="matched")
    >>> q.write_volume(image, "abdomen_lesion_synthetic.nrrd")        # marked synthetic in the header
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import numpy as np

from ..core.constants import HU_MAX, HU_MIN
from ..core.volume import Volume, require_finite
from ..physics.tissue_classes import body_masks

#: Lesion kinds: (contrast to the surrounding median, or None; fixed mean HU, or None).
KINDS: Dict[str, Tuple[Optional[float], Optional[float]]] = {
    "hypodense": (-40.0, None),
    "hyperdense": (40.0, None),
    "cyst": (None, 10.0),
    "calcification": (None, 400.0),
}
TEXTURES = ("matched", "smooth", "noise")
#: The largest lesion accepted: a cross-section at most the area of a disc of this diameter (mm), and a
#: volume at most that of a sphere of it (80 mm: 5027 mm^2, 268 ml).
MAX_DIAMETER_MM = 80.0
#: The surrounding tissue: body voxels within this distance (mm, in-plane) outside the mask.
SURROUND_MM = 5.0
#: Gaussian (mm) whose smoothing, subtracted from the original, leaves the noise residual of ``matched``
#: (it keeps 96 % of the noise's standard deviation on the GE water phantom of ../shared/data, STANDARD kernel,
#: 0.49 mm pixels; less where the noise is coarser, e.g. iterative reconstruction).
RESIDUAL_SIGMA_MM = 1.5
#: The value of lesion voxels in the returned label map.
LESION_LABEL = 1.0

MaskLike = Union[Volume, np.ndarray]


def insert_lesion(volume: Volume, mask: MaskLike, *, kind: str = "hypodense", hu: Optional[float] = None,
                  texture: str = "matched", seed: int = 0, edge_mm: float = 1.5) -> Tuple[Volume, Volume]:
    """Render a synthetic lesion into a real scan inside ``mask`` (module doc).

    Returns ``(image, label)``: the new image, marked synthetic, and the lesion's label map
    (:data:`LESION_LABEL` inside the mask, 0 elsewhere; marked synthetic), both on ``volume``'s grid.
    ``volume`` and ``mask`` are not modified.
    """
    require_finite(volume, "insert_lesion")
    inside = _mask_array(volume, mask)
    if kind not in KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; choose one of {', '.join(KINDS)} (or give hu=)")
    if texture not in TEXTURES:
        raise ValueError(f"unknown texture {texture!r}; choose one of {', '.join(TEXTURES)}")
    edge_mm = float(edge_mm)
    if not np.isfinite(edge_mm) or edge_mm < 0:
        raise ValueError(f"edge_mm must be a finite number of mm >= 0, got {edge_mm}")
    if hu is not None and not (np.isfinite(float(hu)) and HU_MIN <= float(hu) <= HU_MAX):
        raise ValueError(f"hu must be a CT number within [{HU_MIN:.0f}, {HU_MAX:.0f}], got {hu}")
    _check_size(volume, inside)
    body = body_masks(volume)
    _check_in_body(inside, body)

    original = volume.array
    ring = _surroundings(volume, inside, body)
    surrounding = float(np.median(original[ring] if ring.any() else original[inside]))
    contrast, fixed = KINDS[kind]
    target = float(hu) if hu is not None else fixed if fixed is not None else surrounding + contrast
    lesion = np.full(original.shape, target, np.float32)
    if texture == "matched":
        lesion += _matched_residual(volume, inside)
    elif texture == "noise":
        lesion += _drawn_noise(volume, inside, ring, seed)
    weight = _edge_weight(volume, inside, edge_mm)
    out = original.copy()
    out[inside] = original[inside] + weight[inside] * (lesion[inside] - original[inside])

    info = _describe(volume, inside, kind, hu, target, surrounding, texture, seed, edge_mm)
    image = volume.with_array(out, note=info["note"])
    image.metadata["synthetic"] = True
    image.metadata["lesions"] = list(image.metadata.get("lesions", [])) + [info["numbers"]]
    label = volume.with_array(np.where(inside, LESION_LABEL, 0.0).astype(np.float32),
                              note=f"label of the {info['note']}")
    label.metadata["synthetic"] = True
    label.metadata["lesions"] = [info["numbers"]]
    label.metadata.pop("low_dose", None)
    return image, label


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------
def _mask_array(volume: Volume, mask: MaskLike) -> np.ndarray:
    """The mask as booleans of the volume's shape; another grid or shape, or an empty mask, refused."""
    if isinstance(mask, Volume):
        if not mask.same_geometry(volume, tol=1e-3):
            raise ValueError(f"the mask's grid (shape {mask.shape}, spacing {tuple(round(s, 4) for s in mask.spacing)}, "
                             f"origin {tuple(round(o, 3) for o in mask.origin)}) is not the image's (shape {volume.shape}, "
                             f"spacing {tuple(round(s, 4) for s in volume.spacing)}, origin "
                             f"{tuple(round(o, 3) for o in volume.origin)}): paint it on the image itself or "
                             "export the segmentation as a label map with the image as reference geometry")
        values = mask.array
    else:
        values = np.asarray(mask)
        if values.ndim == 2 and volume.shape[0] == 1:
            values = values[None]
        if values.shape != volume.shape:
            raise ValueError(f"the mask has shape {values.shape}, the image {volume.shape} (z, y, x): "
                             "the mask must be on the image's grid")
    if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
        raise ValueError(f"the mask must hold numbers or booleans, got dtype {values.dtype}")
    if values.dtype != bool and not np.all(np.isfinite(values)):
        raise ValueError("the mask holds NaN or infinite values")
    inside = values != 0
    if not inside.any():
        raise ValueError("the mask is empty: paint the region where the lesion goes (non-zero voxels)")
    return inside


def _check_size(volume: Volume, inside: np.ndarray) -> None:
    sx, sy, sz = volume.spacing
    area = float(inside.sum(axis=(1, 2)).max()) * sx * sy
    max_area = np.pi * (MAX_DIAMETER_MM / 2) ** 2
    ml = float(inside.sum()) * sx * sy * sz / 1000.0
    max_ml = np.pi / 6 * MAX_DIAMETER_MM ** 3 / 1000.0
    if area > max_area or ml > max_ml:
        raise ValueError(f"the mask is too large for a lesion ({area:.0f} mm^2 in one slice, {ml:.1f} ml): at most "
                         f"{max_area:.0f} mm^2 and {max_ml:.0f} ml (a {MAX_DIAMETER_MM:.0f} mm lesion)")


def _check_in_body(inside: np.ndarray, body: np.ndarray) -> None:
    outside = inside & ~body
    if outside.any():
        raise ValueError(f"the mask reaches outside the body ({int(outside.sum())} of {int(inside.sum())} voxels "
                         "in air, on the couch or beyond the patient): a lesion goes inside the patient")


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------
def _surroundings(volume: Volume, inside: np.ndarray, body: np.ndarray) -> np.ndarray:
    """The body within SURROUND_MM (in-plane) of the mask, outside it, in the mask's slices."""
    from scipy import ndimage as ndi

    ring = np.zeros_like(inside)
    r = SURROUND_MM / np.array([volume.spacing[1], volume.spacing[0]])
    yy, xx = np.mgrid[-int(np.ceil(r[0])):int(np.ceil(r[0])) + 1, -int(np.ceil(r[1])):int(np.ceil(r[1])) + 1]
    disk = (yy / r[0]) ** 2 + (xx / r[1]) ** 2 <= 1.0
    for k in _lesion_slices(inside):
        ring[k] = ndi.binary_dilation(inside[k], structure=disk) & ~inside[k]
    return ring & body


def _lesion_slices(inside: np.ndarray) -> np.ndarray:
    return np.flatnonzero(inside.any(axis=(1, 2)))


def _matched_residual(volume: Volume, inside: np.ndarray) -> np.ndarray:
    """The original's high-frequency residual (the original minus its Gaussian smoothing) in the lesion's slices."""
    from scipy import ndimage as ndi

    sigma = (RESIDUAL_SIGMA_MM / volume.spacing[1], RESIDUAL_SIGMA_MM / volume.spacing[0])
    residual = np.zeros(volume.shape, np.float32)
    for k in _lesion_slices(inside):
        image = volume.array[k].astype(np.float64)
        residual[k] = image - ndi.gaussian_filter(image, sigma)
    return residual


def _drawn_noise(volume: Volume, inside: np.ndarray, ring: np.ndarray, seed: int) -> np.ndarray:
    """Noise of the scan's own spectrum, drawn with ``seed`` in the lesion's slices, at the level of the
    surroundings: its high-frequency residual's robust spread (1.4826 x MAD) equals theirs."""
    from ..physics.noise_texture import estimate_nps

    try:
        texture = estimate_nps(volume)
    except ValueError as exc:
        raise ValueError(f"texture 'noise': {exc}; use texture='matched' or 'smooth'") from None
    slices = _lesion_slices(inside)
    drawn = texture.sample((len(slices),) + volume.shape[1:], np.random.default_rng(seed))
    noise = np.zeros(volume.shape, np.float32)
    noise[slices] = drawn
    around = ring if ring.any() else inside
    level = _robust_std(_matched_residual(volume, inside)[around])
    spread = _robust_std(_matched_residual(Volume(noise, volume.spacing), inside)[inside])
    if level > 0 and spread > 0:
        noise *= np.float32(level / spread)
    return noise


def _robust_std(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) if values.size else 0.0


def _edge_weight(volume: Volume, inside: np.ndarray, edge_mm: float) -> np.ndarray:
    """0 at the mask's border rising to 1 at ``edge_mm`` inside (in-plane distance, mm)."""
    from scipy import ndimage as ndi

    weight = inside.astype(np.float32)
    if edge_mm <= 0:
        return weight
    sampling = (volume.spacing[1], volume.spacing[0])
    half = 0.5 * min(sampling)
    for k in _lesion_slices(inside):
        # distance (mm) from each lesion voxel's centre to the nearest voxel outside, less half a pixel: to the border
        padded = np.pad(inside[k], 1, constant_values=False)
        distance = ndi.distance_transform_edt(padded, sampling=sampling)[1:-1, 1:-1] - half
        weight[k] = np.clip(distance / edge_mm, 0.0, 1.0) * inside[k]
    return weight


def _describe(volume: Volume, inside: np.ndarray, kind: str, hu, target: float, surrounding: float,
              texture: str, seed: int, edge_mm: float) -> dict:
    slices = _lesion_slices(inside)
    sx, sy, sz = volume.spacing
    voxels = int(inside.sum())
    ml = voxels * sx * sy * sz / 1000.0
    what = kind if hu is None else f"{kind} (hu={float(hu):g})"
    where = f"slice {slices[0]}" if len(slices) == 1 else f"slices {slices[0]}-{slices[-1]}"
    note = (f"SYNTHETIC lesion inserted: {what}, mean {target:.0f} HU (surrounding tissue median {surrounding:.0f} HU), "
            f"{voxels} voxels ({ml:.2f} ml) in {where}, texture {texture}"
            + (f" (seed {seed})" if texture == "noise" else "") + f", edge {edge_mm:g} mm")
    numbers = {"kind": kind, "mean_hu": round(target, 2), "surrounding_median_hu": round(surrounding, 2),
               "voxels": voxels, "volume_ml": round(ml, 4), "slices": [int(slices[0]), int(slices[-1])],
               "texture": texture, "seed": int(seed), "edge_mm": edge_mm}
    if hu is not None:
        numbers["hu"] = float(hu)
    return {"note": note, "numbers": numbers}
