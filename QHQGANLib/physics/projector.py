"""A pure-numpy 2D parallel-beam projector and FBP: the fallback when ASTRA cannot be imported.

``astra-toolbox`` publishes wheels for Linux and Windows only (and not for every Python),
so on macOS, or in a Slicer whose Python has no wheel, :func:`make_parallel_beam` returns
:class:`NumpyParallelBeam` instead of the ASTRA projector of :mod:`.lowdose`. It has the
same interface (``project_coarse``, ``fbp``, ``close``) and the same conventions as ASTRA's
``"linear"`` parallel projector and CPU ``FBP`` (checked against ASTRA by
``Testing/test_slicer_app_projector.py``):

* a volume of ``rows x cols`` pixels spans ``[minx, maxx] x [miny, maxy]`` (default: unit
  pixels centred on the origin), row 0 at ``maxy``, column 0 at ``minx``;
* view ``theta`` measures ``t = x cos(theta) + y sin(theta)``; bin ``k`` is centred at
  ``(k - (n_det - 1) / 2) * width``;
* forward projection: Joseph's method (one linearly interpolated sample per pixel column or
  row along each ray, weighted by the step length), the scheme of ASTRA's ``linear`` kernel;
* FBP: ASTRA's filter (the FFT of the sampled Ram-Lak kernel on a zero-padded power-of-two
  length, times ``2``, with the same ``shepp-logan``/``cosine``/``hamming``/``hann`` windows),
  back-projection by the adjoint of Joseph's projector, scaled by ``pi / (2 n_views pixel_area)``.

Sinograms and FBP agree with ASTRA's to ~1e-5 (relative) on the tested geometries, so the
noise law of the simulator is the same with either backend. Slower than ASTRA (a few times,
on one core), and pure numpy: no torch, no compiled code.

Console usage::

    >>> from QHQGANLib.physics.projector import NumpyParallelBeam, astra_available
    >>> beam = NumpyParallelBeam(128, 128, n_views=180, recon_filter="hann")
    >>> sino = beam.project_coarse(image)          # (views, bins) line integrals in pixel lengths
    >>> back = beam.fbp(sino)                       # (128, 128)
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import numpy as np

#: The backend names :func:`make_parallel_beam` reports (``beam.backend``).
BACKENDS = ("astra", "numpy")
_WINDOWS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


def astra_available() -> bool:
    """True when ``import astra`` works here."""
    try:
        import astra  # noqa: F401
    except Exception:  # ImportError, or a broken binary wheel (OSError)
        return False
    return True


def make_parallel_beam(astra_class, *args, backend: Optional[str] = None, **kwargs):
    """``astra_class(*args, **kwargs)`` when ASTRA imports (or ``backend="astra"``), else the numpy fallback.

    ``backend="numpy"`` (or the environment variable ``QHQGAN_PROJECTOR=numpy``) forces the fallback.
    """
    backend = backend or os.environ.get("QHQGAN_PROJECTOR") or None
    if backend not in (None,) + BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "astra" or (backend is None and astra_available()):
        beam = astra_class(*args, **kwargs)
        beam.backend = "astra"
        return beam
    return NumpyParallelBeam(*args, **kwargs)


class _Grid:
    """Pixel centres of a volume geometry (ASTRA's ``create_vol_geom(rows, cols, minx, maxx, miny, maxy)``)."""

    def __init__(self, rows: int, cols: int, bounds: Optional[Tuple[float, float, float, float]] = None):
        minx, maxx, miny, maxy = bounds if bounds is not None else (-cols / 2.0, cols / 2.0, -rows / 2.0, rows / 2.0)
        self.rows, self.cols = rows, cols
        self.dx, self.dy = (maxx - minx) / cols, (maxy - miny) / rows
        self.x = minx + (np.arange(cols) + 0.5) * self.dx  # column centres
        self.y = maxy - (np.arange(rows) + 0.5) * self.dy  # row centres (row 0 at the top)


def _joseph(img: np.ndarray, grid: _Grid, angles: np.ndarray, n_det: int, width: float) -> np.ndarray:
    """Line integrals (views, n_det) of ``img`` by Joseph's method."""
    img = np.asarray(img, np.float64)
    t = (np.arange(n_det) - (n_det - 1) / 2.0) * width
    rows = np.pad(img, ((1, 1), (0, 0)))  # zero outside: one padded row / column each side
    cols = np.pad(img, ((0, 0), (1, 1)))
    sino = np.empty((len(angles), n_det))
    for v, theta in enumerate(angles):
        c, s = math.cos(theta), math.sin(theta)
        if abs(s) >= abs(c):  # the ray runs mostly along x: one sample per column
            y = (t[:, None] - grid.x[None, :] * c) / s  # (bins, cols)
            pos = (grid.y[0] - y) / grid.dy + 1.0  # fractional row index in the padded image
            i0 = np.floor(pos).astype(np.int64)
            w = pos - i0
            ok = (i0 >= 0) & (i0 < grid.rows + 1)
            i0 = np.clip(i0, 0, grid.rows)
            col = np.broadcast_to(np.arange(grid.cols), i0.shape)
            vals = rows[i0, col] * (1 - w) + rows[i0 + 1, col] * w
            sino[v] = np.where(ok, vals, 0.0).sum(axis=1) * grid.dx / abs(s)
        else:  # mostly along y: one sample per row
            x = (t[:, None] - grid.y[None, :] * s) / c  # (bins, rows)
            pos = (x - grid.x[0]) / grid.dx + 1.0
            i0 = np.floor(pos).astype(np.int64)
            w = pos - i0
            ok = (i0 >= 0) & (i0 < grid.cols + 1)
            i0 = np.clip(i0, 0, grid.cols)
            row = np.broadcast_to(np.arange(grid.rows), i0.shape)
            vals = cols[row, i0] * (1 - w) + cols[row, i0 + 1] * w
            sino[v] = np.where(ok, vals, 0.0).sum(axis=1) * grid.dy / abs(c)
    return sino


def fbp_filter(n_det: int, recon_filter: str = "ram-lak") -> Tuple[np.ndarray, int]:
    """ASTRA's FBP filter for ``n_det`` bins: (the rfft-domain weights, the padded length)."""
    name = recon_filter.lower()
    if name not in _WINDOWS:
        raise ValueError(f"recon_filter must be one of {', '.join(_WINDOWS)}, got {recon_filter!r}")
    n = 1 << int(math.ceil(math.log2(max(2, 2 * n_det))))  # next power of two >= 2 n_det
    h = np.zeros(n)
    h[0] = 0.25
    k = np.arange(1, n)
    j = np.where(2 * k > n, n - k, k)
    h[1:] = np.where(k % 2 == 1, -1.0 / (np.pi * j) ** 2, 0.0)
    filt = 2.0 * np.real(np.fft.fft(h))[: n // 2 + 1]
    w = 2.0 * np.pi * np.arange(n // 2 + 1) / n
    window = {"ram-lak": np.ones_like(w), "cosine": np.cos(w / 2.0), "hann": (1.0 + np.cos(w)) / 2.0,
              "hamming": 0.54 + 0.46 * np.cos(w)}.get(name)
    if name == "shepp-logan":
        window = np.ones_like(w)
        window[1:] = np.sin(w[1:] / 2.0) / (w[1:] / 2.0)
    window[0] = 1.0  # ASTRA leaves the DC term of every window alone
    return filt * window, n


class NumpyParallelBeam:
    """The numpy twin of :class:`QHQGANLib.physics.lowdose._ParallelBeam` (same arguments, same methods)."""

    backend = "numpy"

    def __init__(self, ny: int, nx: int, n_views: int, recon_filter: str, downsample: int = 2,
                 pad: Tuple[int, int] = (0, 0)):
        self.ny, self.nx, self.n_views = ny, nx, n_views
        py, px = pad
        self.n_det = int(math.ceil(math.hypot(ny, nx))) + 2
        self.angles = np.linspace(0.0, np.pi, n_views, endpoint=False)
        self.recon_filter = recon_filter
        self._filter, self._n_fft = fbp_filter(self.n_det, recon_filter)
        self.grid = _Grid(ny, nx)
        self.fwd_grid = _Grid(ny + 2 * py, nx + 2 * px, (-nx / 2.0 - px, nx / 2.0 + px, -ny / 2.0 - py, ny / 2.0 + py))
        self.f = f = max(1, int(downsample))
        self.cny, self.cnx = -(-(ny + 2 * py) // f), -(-(nx + 2 * px) // f)
        self.c_views = -(-n_views // f)
        self.c_det = int(math.ceil(self.n_det / f)) + 2
        x0, y1 = -nx / 2.0 - px, ny / 2.0 + py
        self.c_grid = _Grid(self.cny, self.cnx, (x0, x0 + self.cnx * f, y1 - self.cny * f, y1))
        self.c_angles = self.angles[::f]
        t = np.arange(self.n_det) - (self.n_det - 1) / 2.0
        self._t_idx = t / f + (self.c_det - 1) / 2.0

    def close(self) -> None:
        """Nothing to free (ASTRA's projector frees its objects here)."""

    def project_coarse(self, img: np.ndarray) -> np.ndarray:
        """Line integrals on the full (views, bins) grid, computed ``f``-times coarser and interpolated."""
        f = self.f
        if f == 1:
            return _joseph(img, self.fwd_grid, self.angles, self.n_det, 1.0)
        return self._interpolate(_joseph(_block_mean_local(img, f), self.c_grid, self.c_angles, self.c_det, float(f)))

    def _interpolate(self, sino: np.ndarray) -> np.ndarray:
        f = self.f
        ci = self._t_idx
        i0 = np.clip(np.floor(ci).astype(int), 0, self.c_det - 2)
        w = ci - i0
        sino = sino[:, i0] * (1 - w) + sino[:, i0 + 1] * w
        wrapped = np.concatenate([sino, sino[:1, ::-1]], axis=0)  # p(theta + pi, t) = p(theta, -t)
        pos = np.arange(self.n_views) / f
        j0 = np.floor(pos).astype(int)
        wv = (pos - j0)[:, None]
        step_last = (np.pi - self.c_angles[-1]) / (np.pi / self.n_views) / f
        last = j0 == self.c_views - 1
        wv[last, 0] = (pos[last] - j0[last]) / step_last
        return np.clip(wrapped[j0] * (1 - wv) + wrapped[j0 + 1] * wv, 0.0, None)

    def filter_sinogram(self, sino: np.ndarray) -> np.ndarray:
        spectrum = np.fft.rfft(np.asarray(sino, np.float64), n=self._n_fft, axis=1)
        return np.fft.irfft(spectrum * self._filter, n=self._n_fft, axis=1)[:, : self.n_det]

    def fbp(self, sino: np.ndarray) -> np.ndarray:
        """Filtered back-projection onto the (ny, nx) unit-pixel grid (float32).

        The back-projection is the adjoint of Joseph's projector (as ASTRA's): a pixel at
        detector position ``t`` gets ``(1/m) * max(0, 1 - |t - t_k| / m)`` of bin ``k``, with
        ``m = max(|cos|, |sin|)`` of the view (plain linear interpolation only at 0 and 90 degrees).
        """
        filtered = self.filter_sinogram(sino)
        grid = self.grid
        x, y = np.meshgrid(grid.x, grid.y)
        out = np.zeros(x.shape)
        centre = (self.n_det - 1) / 2.0
        padded = np.pad(filtered, ((0, 0), (0, 2)))  # zero beyond the last bin
        for v, theta in enumerate(self.angles):
            c, s = math.cos(theta), math.sin(theta)
            m = max(abs(c), abs(s))
            pos = x * c + y * s + centre
            i0 = np.floor(pos).astype(np.int64)
            frac = pos - i0
            ok = (i0 >= -1) & (i0 < self.n_det)
            i0 = np.clip(i0, -1, self.n_det - 1)
            row = padded[v]  # row[-1] is a padded zero
            w0 = np.clip(1.0 - frac / m, 0.0, None)
            w1 = np.clip(1.0 - (1.0 - frac) / m, 0.0, None)
            out += np.where(ok, row[i0] * w0 + row[i0 + 1] * w1, 0.0) / m
        return (out * (np.pi / (2.0 * self.n_views * grid.dx * grid.dy))).astype(np.float32)


def _block_mean_local(img: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks of the last two axes (edge-padded), as :func:`.lowdose._block_mean`."""
    ny, nx = img.shape[-2:]
    py, px = (-ny) % f, (-nx) % f
    if py or px:
        img = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(0, py), (0, px)], mode="edge")
    ny, nx = img.shape[-2:]
    return img.reshape(img.shape[:-2] + (ny // f, f, nx // f, f)).mean(axis=(-3, -1))
