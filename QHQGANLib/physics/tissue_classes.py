"""Tissue classes of any CT, slice by slice, from HU thresholds and morphology (issue #30, item 2).

:func:`tissue_labels` gives every voxel of an axial CT one of the classes of
:data:`TISSUE_CLASSES`, so that every training patient has a label map, with or without an
organ segmentation. No model, no training: thresholds in HU, chosen from the textbook ranges of
each tissue, and morphology (:mod:`scipy.ndimage`) in physical units (the pixel spacing), applied
to each axial slice on its own. The result is a :class:`~QHQGANLib.core.volume.Volume` on the
input's grid (same geometry and metadata, a history note added) holding whole numbers stored as
float; the input is not modified.

The steps, per slice
--------------------
1. **Speckle**: a 3x3 median of the HU (:data:`MEDIAN_PX`) before any threshold, so noise does not
   scatter single voxels between classes (the sharp-kernel reconstruction of a chest slice gets the
   lung fraction of its smooth-kernel twin within 0.01).
2. **Body**: voxels above :data:`BODY_MIN_HU` (-500 HU), eroded by :data:`TABLE_CUT_MM` (4 mm, at
   least 2 pixels) so that the couch's thin shell and anything joined to the patient by a thin contact
   comes apart; the largest connected region, with every region of at least :data:`BODY_PART_FRACTION`
   (2 %) of its area (the arms beside the trunk), dilated back inside the threshold mask; holes filled.
   Everything else is class 0 (outside), whatever its HU: the couch is not body. A thick pad lying
   against the back (a gel pad) would be body.
3. **Air inside the body**: regions below :data:`AIR_MAX_HU` (-400 HU) inside the body that hold a
   voxel below -500 HU (the skin's partial-volume rim does not). A region is **lung** (2) when its
   area is at least :data:`LUNG_MIN_AREA_MM2` (3 cm^2) and its median lies within
   [:data:`LUNG_MIN_MEDIAN_HU`, :data:`LUNG_MAX_MEDIAN_HU`] = [-900, -600] HU (parenchyma: its
   vessels and partial volume raise it above the -1000 HU of gas; the trachea measures -970 to
   -930 HU), or when it is larger than :data:`LUNG_LARGE_AREA_MM2` (20 cm^2, no airway is) with a
   median above :data:`LUNG_LARGE_MIN_MEDIAN_HU` (-945 HU: emphysema); the vessels inside it (its
   holes) are lung too. The rest (airway, bowel gas) is **air inside the body** (1). The
   partial-volume rim (-400 to :data:`FAT_MIN_HU`, -200 HU) within :data:`RIM_MM` (2 mm) of an
   air region takes its class.
4. **Fat** (3) below :data:`FAT_MAX_HU` (-30 HU); **soft tissue** (4) from -30 HU to
   :data:`ENHANCED_MIN_HU` (150 HU).
5. **Bone** (6): connected regions above 150 HU that hold cortex, a voxel above
   :data:`BONE_CORE_HU` (400 HU), with the holes they enclose whose median is at least
   :data:`MARROW_MIN_HU` (90 HU: marrow; not the spinal canal or the brain). **Enhanced soft tissue
   and vessels** (5): the rest above 150 HU, i.e. iodine contrast (vessels 150-400 HU, enhancing
   organs, contrast-filled bowel; a documented choice: an unenhanced scan has next to none).

Known limits (per slice, thresholds only): a vessel whose wall is calcified, or which touches bone
above 150 HU, joins the bone; osteoporotic marrow below 150 HU not enclosed by cortex is soft
tissue; mottled bowel content (gas and stool) near the lung bases can pass as lung; on coarse grids
(3 mm pixels) the cortex is blurred below 400 HU and most bone is missed. Measured on the real CT
of ``../shared/data`` (``Testing/test_tissue_classes.py``, numbers in its docstrings): Dice 0.89
with TotalSegmentator's lungs (3 mm example), 0.71 with its bones (the 20-slice Siemens series).

A label map from elsewhere (a user's, a Slicer segmentation exported as a labelmap, an organ map) becomes
class codes with :func:`class_codes` (values recoded by a mapping; unknown values refused, named).

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.physics.tissue_classes import tissue_labels, TISSUE_CLASSES
    >>> labels = tissue_labels(q.read_volume("abdomen.nrrd"))
    >>> {TISSUE_CLASSES[c]: int((labels.array == c).sum()) for c in TISSUE_CLASSES}
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from ..core.constants import BODY_THRESHOLD_HU
from ..core.volume import Volume, require_finite

#: Class code -> name. Codes are ordered by HU inside the body (air, lung, fat, soft, enhanced, bone).
TISSUE_CLASSES: Dict[int, str] = {
    0: "outside the body",
    1: "air inside the body",
    2: "lung",
    3: "fat",
    4: "soft tissue",
    5: "enhanced soft tissue and vessels",
    6: "bone",
}
OUTSIDE, AIR, LUNG, FAT, SOFT, ENHANCED, BONE = range(7)

#: Body: tissue above this HU (air and the couch's foam are below; skin, fat, the couch's shell above).
BODY_MIN_HU = BODY_THRESHOLD_HU
#: Erosion radius (mm) that separates the couch and thin attachments from the body before the largest region.
TABLE_CUT_MM = 4.0
#: ... and at least this many pixels (coarse grids: a couch blurred over 3 mm pixels).
TABLE_CUT_MIN_PX = 2
#: Body regions besides the largest are kept when at least this fraction of its area (arms).
BODY_PART_FRACTION = 0.02
#: Air and lung: below this HU inside the body.
AIR_MAX_HU = -400.0
#: Partial volume between air and tissue: from AIR_MAX_HU up to this HU, given to the air class it borders.
FAT_MIN_HU = -200.0
#: Fat up to this HU; soft tissue from here.
FAT_MAX_HU = -30.0
#: Contrast-enhanced tissue and vessels from this HU (and bone candidates).
ENHANCED_MIN_HU = 150.0
#: A dense region is bone when it holds a voxel above this HU (cortex).
BONE_CORE_HU = 400.0
#: Holes of bone are marrow (bone) when their median is at least this HU (the spinal canal, 0-40 HU, and
#: the brain, 20-45 HU, are not).
MARROW_MIN_HU = 90.0
#: An air region is lung when its area is at least this (mm^2) and its median HU between
#: LUNG_MIN_MEDIAN_HU and LUNG_MAX_MEDIAN_HU (measured on ../shared/data: lung regions -880 to -650 HU
#: (the latter on 3 mm pixels), the trachea -970 to -930 HU, pure bowel gas about -1000 HU, the
#: partial-volume gap between the back and the couch on 3 mm pixels about -450 HU) ...
LUNG_MIN_AREA_MM2 = 300.0
LUNG_MIN_MEDIAN_HU = -900.0
LUNG_MAX_MEDIAN_HU = -600.0
#: ... or when its area is at least this (mm^2; larger than the trachea and main bronchi) and its median at
#: least LUNG_LARGE_MIN_MEDIAN_HU (emphysematous lung; gas in the bowel is -1000 HU, -970 to -955 HU on 3 mm pixels).
LUNG_LARGE_AREA_MM2 = 2000.0
LUNG_LARGE_MIN_MEDIAN_HU = -945.0
#: Median filter size (pixels) applied to the HU before thresholds.
MEDIAN_PX = 3
#: Width (mm) of the partial-volume rim around air regions given to their class.
RIM_MM = 2.0


def _disk(radius_px: float) -> np.ndarray:
    r = max(int(round(radius_px)), 1)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy**2 + xx**2) <= r * r + 0.25


def body_mask(hu: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The body of one slice (y, x) of median-filtered HU, holes filled (step 2 of the module doc)."""
    from scipy import ndimage as ndi

    tissue = hu > BODY_MIN_HU
    if not tissue.any():
        return tissue
    disk = _disk(max(TABLE_CUT_MM / pixel_mm, TABLE_CUT_MIN_PX))
    core = ndi.binary_erosion(tissue, structure=disk)
    if not core.any():  # a body thinner than the cut (a tiny crop): take the tissue itself
        core = tissue
    labels, n = ndi.label(core)
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas >= BODY_PART_FRACTION * areas.max()) + 1
    body = ndi.binary_dilation(np.isin(labels, keep), structure=disk) & tissue
    return ndi.binary_fill_holes(body)


def _marrow(bone: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """The holes of ``bone`` whose median is at least MARROW_MIN_HU (marrow; not the spinal canal or the brain)."""
    from scipy import ndimage as ndi

    holes = ndi.binary_fill_holes(bone) & ~bone
    labels, n = ndi.label(holes)
    if not n:
        return holes
    index = np.arange(1, n + 1)
    return np.isin(labels, index[ndi.median(hu, labels, index) >= MARROW_MIN_HU])


def _bone(hu: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """The dense regions (above ENHANCED_MIN_HU) holding cortex (above BONE_CORE_HU), with the marrow they
    enclose (step 5 of the module doc)."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(dense)
    if not n:
        return dense
    index = np.arange(1, n + 1)
    bone = np.isin(labels, index[ndi.maximum(hu, labels, index) >= BONE_CORE_HU])
    return bone | _marrow(bone, hu)


def _slice_labels(hu_raw: np.ndarray, pixel_mm: float) -> np.ndarray:
    from scipy import ndimage as ndi

    hu = ndi.median_filter(hu_raw, size=MEDIAN_PX, mode="nearest")
    out = np.zeros(hu.shape, np.uint8)
    body = body_mask(hu, pixel_mm)
    if not body.any():
        return out
    pixel_area = pixel_mm * pixel_mm
    # soft tissue by default, then fat, dense classes, air classes on top
    out[body] = SOFT
    out[body & (hu < FAT_MAX_HU)] = FAT
    air = body & (hu < AIR_MAX_HU)
    lung = np.zeros_like(air)
    labels, n = ndi.label(air)
    if n:
        index = np.arange(1, n + 1)
        areas = ndi.sum_labels(np.ones_like(hu), labels, index) * pixel_area
        medians = ndi.median(hu, labels, index)
        real = ndi.minimum(hu, labels, index) <= BODY_MIN_HU  # not the skin's partial-volume rim
        low = np.where(areas >= LUNG_LARGE_AREA_MM2, LUNG_LARGE_MIN_MEDIAN_HU, LUNG_MIN_MEDIAN_HU)
        is_lung = real & (areas >= LUNG_MIN_AREA_MM2) & (medians >= low) & (medians <= LUNG_MAX_MEDIAN_HU)
        lung = ndi.binary_fill_holes(np.isin(labels, index[is_lung])) & body  # its vessels are lung
        air = np.isin(labels, index[real])
    other_air = air & ~lung
    rim = body & (hu >= AIR_MAX_HU) & (hu < FAT_MIN_HU)
    near = _disk(RIM_MM / pixel_mm)
    lung_rim = rim & ndi.binary_dilation(lung, structure=near)
    air_rim = rim & ~lung_rim & ndi.binary_dilation(other_air, structure=near)
    dense = body & ~lung & (hu >= ENHANCED_MIN_HU)
    out[dense] = ENHANCED
    out[_bone(hu, dense) & body & ~lung] = BONE
    out[other_air | air_rim] = AIR
    out[lung | lung_rim] = LUNG
    return out


def tissue_labels(volume: Volume) -> Volume:
    """Tissue class of every voxel (codes of :data:`TISSUE_CLASSES`), slice by slice (module doc).

    Returns a Volume on the input's grid and with its metadata (a synthetic input gives a
    synthetic-marked label map), values whole numbers 0-6 stored as float32; ``volume`` is not
    modified.
    """
    require_finite(volume, "tissue_labels")
    pixel_mm = _pixel_mm(volume)
    labels = np.stack([_slice_labels(s, pixel_mm) for s in volume.array])
    counts = np.bincount(labels.ravel(), minlength=len(TISSUE_CLASSES))
    inside = max(int(counts[1:].sum()), 1)
    summary = ", ".join(f"{TISSUE_CLASSES[c]} {counts[c] / inside:.0%}" for c in range(1, len(TISSUE_CLASSES)))
    return volume.with_array(labels.astype(np.float32),
                             note=f"tissue classes by HU and morphology (of the body: {summary})")


def body_masks(volume: Volume) -> np.ndarray:
    """The body of every slice, ``(z, y, x)`` booleans (steps 1-2 of the module doc), e.g. to check that a
    painted region lies inside the patient."""
    from scipy import ndimage as ndi

    require_finite(volume, "body_masks")
    pixel_mm = _pixel_mm(volume)
    return np.stack([body_mask(ndi.median_filter(s, size=MEDIAN_PX, mode="nearest"), pixel_mm)
                     for s in volume.array])


def _pixel_mm(volume: Volume) -> float:
    return float(np.sqrt(volume.spacing[0] * volume.spacing[1]))


def class_fractions(labels: Volume) -> Dict[str, float]:
    """Fraction of the body (classes 1-6) in each class, by name (0 is the fraction of the whole grid)."""
    codes = np.rint(labels.array).astype(np.int64)
    counts = np.bincount(codes.ravel(), minlength=len(TISSUE_CLASSES))
    inside = max(int(counts[1:].sum()), 1)
    fractions = {TISSUE_CLASSES[c]: float(counts[c] / inside) for c in range(1, len(TISSUE_CLASSES))}
    fractions[TISSUE_CLASSES[0]] = float(counts[0] / codes.size)
    return fractions


def class_codes(labels, mapping: Optional[Mapping[float, int]] = None, what: str = "the label map") -> np.ndarray:
    """A label map's voxels as tissue class codes 0-6 (:data:`TISSUE_CLASSES`), int64 of the same shape.

    ``labels``: a Volume or an array of whole numbers (a map from :func:`tissue_labels`, a user's own, a Slicer
    segmentation exported as a labelmap). ``mapping`` ({value: class}) recodes values first (e.g. an organ map's
    labels to classes); values it does not name keep their value. Refused with one line naming them: values
    that are not whole numbers, and values that are not classes 0-6 after the mapping.
    """
    array = np.asarray(labels.array if isinstance(labels, Volume) else labels)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} holds non-finite values (NaN or infinity); a label map holds whole class numbers")
    values = np.unique(array)
    fractional = values[values != np.round(values)]
    if fractional.size:
        raise ValueError(f"{what} holds values that are not whole numbers ({_listed(fractional)}): a label map "
                         "holds class numbers, not HU (a CT given as labels?)")
    table = {}
    for value, code in (mapping or {}).items():
        if int(code) not in TISSUE_CLASSES or float(code) != int(code):
            raise ValueError(f"mapping {value!r} -> {code!r}: classes are 0-6 ({_class_names()})")
        table[float(value)] = int(code)
    codes = {float(v): table.get(float(v), int(v)) for v in values}
    unknown = [v for v, c in codes.items() if c not in TISSUE_CLASSES]
    if unknown:
        raise ValueError(f"{what} holds label value(s) {_listed(np.array(unknown))} that are not tissue classes "
                         f"0-6 ({_class_names()}); map them to classes (mapping={{value: class}}, the CLI's --map "
                         "VALUE=CLASS)")
    lut_values = np.array(sorted(codes), dtype=np.float64)
    out = np.array([codes[v] for v in lut_values], dtype=np.int64)
    return out[np.searchsorted(lut_values, array.astype(np.float64))]


def _class_names() -> str:
    return ", ".join(f"{c} {name}" for c, name in TISSUE_CLASSES.items())


def _listed(values: np.ndarray, most: int = 8) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:most])
    return shown + (f" and {values.size - most} more" if values.size > most else "")
