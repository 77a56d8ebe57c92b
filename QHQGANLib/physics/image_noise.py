"""Image-domain CT noise of a fixed standard deviation: an evaluation noise model independent of the simulator.

``simulate_low_dose`` (``physics/lowdose.py``) inserts noise in the projection domain and is
what the enhancement models are trained on. Evaluating them only on that simulator would
reward learning its particular noise; ``add_ct_noise`` gives a second, independent test
condition: correlated Gaussian noise of an exactly known level (e.g. 20, 40 and 80 HU) added
directly to the image.

Method
------
For every axial slice, white Gaussian noise ``w`` is filtered in 2D Fourier space,
``n = IFFT(H * FFT(w))``, with the amplitude filter

* ``nps="ramp"`` (default): ``H(f) = sqrt(|f|) * W(f)``, so the noise power spectrum is
  ``NPS(f) = |H(f)|^2 ~ |f| * W(f)^2``: the NPS of filtered back-projection (the ramp
  filter ``|f|`` squared, times the ``1/|f|`` density of radial projection samples in the 2D
  Fourier plane), rising linearly from zero at low frequencies and apodised by a Hann window
  ``W(f) = 0.5 * (1 + cos(pi f / f_c))`` for ``f < f_c``, 0 above: zero at the cutoff
  ``f_c = cutoff * Nyquist``. Noise of this texture is fine-grained, like real CT noise;
* ``nps="white"``: ``H = 1`` except the zero frequency (flat NPS, uncorrelated pixels).

``|f|`` is the radial frequency on the pixel grid, in units of the Nyquist frequency of each
axis (``sqrt((fx / 0.5)^2 + (fy / 0.5)^2)`` with ``fx, fy`` in cycles per pixel), i.e. the
texture is defined per pixel, as an FBP reconstruction on that grid would be. The zero
frequency is removed, so every slice's noise has mean exactly 0; each slice's noise is then
scaled so that its standard deviation over the slice is exactly ``std_hu``. Values are not
clipped (clipping would change the noise level); the input is never modified. Padding recorded
by DICOM (``metadata["padding_hu"]``, :mod:`QHQGANLib.core.padding`) lies outside the patient: it
gets no noise and keeps its value, and the patient gets the same noise as with air there.

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.physics.image_noise import add_ct_noise
    >>> ct = q.read_volume("abdomen-ct-kits/CT26.dcm")
    >>> noisy = add_ct_noise(ct, std_hu=40, seed=0)           # ramp NPS, Hann to Nyquist
    >>> float((noisy.array - ct.array).std())                 # 40.0
    >>> noisy.metadata["image_noise"]                         # {'std_hu': 40.0, 'nps': 'ramp', ...}
    >>> white = add_ct_noise(ct, std_hu=20, seed=1, nps="white")
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..core.padding import padding_mask, padding_value, restore_padding
from ..core.volume import Volume, require_finite

NPS_SHAPES: Tuple[str, ...] = ("ramp", "white")


def radial_frequency(shape: Tuple[int, int]) -> np.ndarray:
    """Radial frequency of every 2D FFT bin of a ``(ny, nx)`` slice, in units of the Nyquist frequency.

    1.0 is the Nyquist frequency along an axis; corners of the Fourier plane reach sqrt(2).
    """
    ny, nx = shape
    fy = np.fft.fftfreq(ny)[:, None] / 0.5
    fx = np.fft.fftfreq(nx)[None, :] / 0.5
    return np.sqrt(fy * fy + fx * fx)


def noise_filter(shape: Tuple[int, int], nps: str = "ramp", cutoff: float = 1.0) -> np.ndarray:
    """The amplitude filter ``H`` (``NPS = H^2``) applied to white noise in a ``(ny, nx)`` FFT plane.

    ``"ramp"``: ``sqrt(|f|) * Hann(|f| / cutoff)``; ``"white"``: 1. The zero frequency is 0 in both.
    """
    if nps not in NPS_SHAPES:
        raise ValueError(f"nps must be one of {NPS_SHAPES}, got {nps!r}")
    if not (np.isfinite(cutoff) and 0.0 < cutoff <= np.sqrt(2.0)):
        raise ValueError(f"cutoff must be in (0, sqrt(2)] (a fraction of the Nyquist frequency), got {cutoff!r}")
    f = radial_frequency(shape)
    if nps == "white":
        h = np.ones(shape)
    else:
        window = np.where(f < cutoff, 0.5 * (1.0 + np.cos(np.pi * np.minimum(f / cutoff, 1.0))), 0.0)
        h = np.sqrt(f) * window
    h[0, 0] = 0.0
    return h


def _seed_entropy(seed: Optional[int]) -> int:
    """The integer entropy that reproduces the run (drawn from the OS when ``seed`` is None)."""
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def add_ct_noise(volume: Volume, std_hu: float, seed: Optional[int] = None, nps: str = "ramp",
                 cutoff: float = 1.0) -> Volume:
    """Add CT-like correlated Gaussian noise of exactly ``std_hu`` HU to every axial slice.

    Args:
        volume: the clean CT (finite HU values); never modified.
        std_hu: the standard deviation of the added noise over each slice, in HU (>= 0).
        seed: non-negative integer for reproducible noise; None draws fresh entropy, which is
            recorded in the metadata so the result can still be reproduced.
        nps: ``"ramp"`` (FBP-like, ``NPS ~ |f| * Hann^2``) or ``"white"`` (flat).
        cutoff: where the Hann window of the ramp reaches 0, as a fraction of the Nyquist
            frequency (1.0: at Nyquist; smaller values give a smoother, blotchier texture).

    Returns:
        A new Volume on the same grid, with ``metadata["image_noise"] = {"std_hu", "nps",
        "seed", "cutoff"}`` and a ``history`` note.

    Console usage::

        >>> noisy = add_ct_noise(ct, 80, seed=3)
        >>> noisy.same_geometry(ct), noisy.metadata["image_noise"]["std_hu"]
        (True, 80.0)
    """
    require_finite(volume, "add_ct_noise")
    std_hu = float(std_hu)
    if not np.isfinite(std_hu) or std_hu < 0:
        raise ValueError(f"std_hu must be a finite number >= 0 (HU), got {std_hu!r}")
    h = noise_filter(volume.shape[1:], nps=nps, cutoff=cutoff)
    if int(np.count_nonzero(h)) < 2:
        raise ValueError(f"the slices ({volume.shape[1]}x{volume.shape[2]}) are too small to carry "
                         f"{nps} noise with cutoff {cutoff}")
    entropy = _seed_entropy(seed)
    rng = np.random.default_rng(entropy)
    out = volume.array.astype(np.float64)
    for k in range(volume.shape[0]):
        white = rng.standard_normal(volume.shape[1:])
        noise = np.fft.ifft2(np.fft.fft2(white) * h).real
        noise -= noise.mean()  # already ~0 (no DC); removes the round-off
        sd = float(noise.std())
        out[k] += noise * (std_hu / sd) if sd > 0 else 0.0
    note = f"add_ct_noise(std_hu={std_hu:g}, nps={nps}, cutoff={cutoff:g}, seed={entropy})"
    result = restore_padding(volume.with_array(out, note=note), padding_mask(volume), padding_value(volume))
    result.metadata["image_noise"] = {"std_hu": std_hu, "nps": nps, "seed": entropy, "cutoff": float(cutoff)}
    return result
