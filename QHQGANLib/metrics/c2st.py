"""Classifier two-sample test (C2ST): can a small CNN tell synthetic CT slices from real ones?

The test of Lopez-Paz & Oquab (2017) with cross-validation: both sets are windowed to
``WINDOW`` = [-1024, 1024] HU and standardised with one mean and sd over both; the larger set is
subsampled (seeded) to the size of the smaller one, so chance is exactly 0.5; a small CNN (three stride-2 convolutions,
average pooling to 4x4, one linear layer; any square size from 16 px, e.g. 64 or 128) is trained
on ``folds - 1`` folds of a stratified, seeded split and scored on the remaining fold, for every
fold. The accuracy over all held-out predictions is the statistic: about 0.5 when the classifier
finds nothing that separates the sets, 1.0 when it separates them perfectly.

The same test between two random halves of the real slices (``reference=True``) gives the level
to compare with: it should be near 0.5, and it shows the spread of the statistic at that sample
size (cross-validated accuracy on indistinguishable sets is slightly biased below 0.5).

Accuracy clearly *below* 0.5 is a finding too: it happens when every slice of one set has a near
twin in the other (copies, or neighbouring slices of the same patient: even vs odd slices of one
abdomen CT score ~0.2-0.3), because the network learns the twins' anatomy with the wrong label.
A synthetic set that copies training slices can therefore score at or below 0.5: read the C2ST
together with the memorization check.

Console usage::

    >>> from QHQGANLib.metrics.c2st import c2st_accuracy
    >>> result = c2st_accuracy(samples, real_slices, seed=0, reference=True)  # (n, H, W) HU each
    >>> result["accuracy"], result["ci95"], result["reference"]["accuracy"]   # e.g. 0.9, [0.85, 0.94], 0.47
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .features import WINDOW, SlicesLike, _as_slices

#: defaults of :func:`c2st_accuracy`: 5 x 120 or more updates of batch 32 (64x64: seconds on one free CPU
#: thread, ~15-30 s on a loaded 2-core machine; 128x128 about 4 times that)
C2ST_FOLDS = 5
C2ST_EPOCHS = 20
#: every fold's network gets at least this many Adam updates (small sets: more epochs)
C2ST_MIN_STEPS = 120
C2ST_WIDTH = 8
C2ST_BATCH = 32
C2ST_LR = 3e-3


def _build_classifier(width: int):
    """Conv(1->w, s2) -> Conv(w->2w, s2) -> Conv(2w->4w, s2), LeakyReLU, 4x4 average pool, linear logit."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(4 * width * 16, 1))


def _stratified_folds(labels: np.ndarray, folds: int, rng: np.random.Generator) -> List[np.ndarray]:
    """Test indices of each fold: every class shuffled and dealt round-robin, so folds keep the class ratio."""
    out: List[List[int]] = [[] for _ in range(folds)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        for j, i in enumerate(idx):
            out[j % folds].append(int(i))
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in out]


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion ``correct / n``."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if correct <= 0 else max(0.0, centre - half)
    high = 1.0 if correct >= n else min(1.0, centre + half)
    return (low, high)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    pos, neg = labels == 1, labels == 0
    if not pos.any() or not neg.any():
        return float("nan")
    ranks = rankdata(scores)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _to_unit(x: np.ndarray) -> np.ndarray:
    lo, hi = float(WINDOW[0]), float(WINDOW[1])
    return (2.0 * (np.clip(x, lo, hi) - lo) / (hi - lo) - 1.0).astype(np.float32)


def _cross_validate(images: np.ndarray, labels: np.ndarray, *, seed: int, folds: int, epochs: int,
                    min_steps: int, width: int, batch_size: int, lr: float, device: str) -> Dict[str, Any]:
    """Cross-validated accuracy of the CNN; ``images`` (n, H, W) windowed to [-1, 1], ``labels`` 0/1."""
    import torch

    rng = np.random.default_rng(seed)
    test_sets = _stratified_folds(labels, folds, rng)
    n = images.shape[0]
    # one mean and sd over all images of both classes (no label in it): the CNN trains faster and more
    # reliably on zero-mean, unit-variance input than on windowed CT, which is mostly air at -1
    sd = float(images.std())
    images = ((images - float(images.mean())) / (sd if sd > 1e-8 else 1.0)).astype(np.float32)
    scores = np.zeros(n, dtype=np.float64)
    fold_acc: List[float] = []
    x_all = torch.from_numpy(images[:, None])
    y_all = torch.from_numpy(labels.astype(np.float32))
    fork = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    for f, test in enumerate(test_sets):
        train = np.setdiff1d(np.arange(n), test)
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(seed * 1000 + f)
            gen = torch.Generator().manual_seed(seed * 1000 + f)
            model = _build_classifier(width).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            loss_fn = torch.nn.BCEWithLogitsLoss()
            xt, yt = x_all[train], y_all[train]
            model.train()
            per_epoch = -(-len(train) // batch_size)
            for _ in range(max(int(epochs), -(-int(min_steps) // per_epoch))):
                order = torch.randperm(len(train), generator=gen)
                for b in range(0, len(train), batch_size):
                    i = order[b:b + batch_size]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model(xt[i].to(device)).squeeze(1), yt[i].to(device))
                    loss.backward()
                    opt.step()
            model.eval()
            with torch.no_grad():
                logits = torch.cat([model(x_all[test][b:b + 256].to(device)).squeeze(1).cpu()
                                    for b in range(0, len(test), 256)])
        scores[test] = logits.double().numpy()
        fold_acc.append(float(np.mean((scores[test] > 0) == (labels[test] == 1))))
    correct = int(np.sum((scores > 0) == (labels == 1)))
    lo, hi = wilson_interval(correct, n)
    from scipy.stats import binomtest

    return {
        "accuracy": correct / n, "fold_accuracies": fold_acc, "ci95": [lo, hi],
        "p_value": float(binomtest(correct, n, 0.5, alternative="greater").pvalue),
        "auc": _auc(scores, labels), "n_per_class": int(n // 2), "n_test": int(n),
    }


def c2st_accuracy(samples: SlicesLike, real: SlicesLike, *, seed: int = 0, folds: int = C2ST_FOLDS,
                  epochs: int = C2ST_EPOCHS, min_steps: int = C2ST_MIN_STEPS, width: int = C2ST_WIDTH,
                  batch_size: int = C2ST_BATCH, lr: float = C2ST_LR, reference: bool = False,
                  device: Optional[str] = None) -> Dict[str, Any]:
    """Cross-validated accuracy of a small CNN telling ``samples`` from ``real`` slices (HU).

    Args:
        samples: synthetic slices ``(n, H, W)`` in HU (or a Volume / list of 2D arrays).
        real: real slices of the same ``H x W`` (square, at least 16 px).
        seed: seeds the class balancing, the folds, the network's initialisation and batch order;
            the same seed gives the same result on the same device.
        folds: folds of the stratified cross-validation (every slice is scored once, by a network
            that did not see it).
        epochs, min_steps, width, batch_size, lr: the CNN's training (Adam; ``epochs`` passes over
            the training folds, more when needed for ``min_steps`` updates) and channel width.
        reference: also run the same test between two random halves of ``real`` (key
            ``reference``: the level of indistinguishable sets, ~0.5).
        device: ``"cpu"`` (None) or ``"cuda"``.

    Returns:
        JSON-friendly dict: ``accuracy`` (pooled over all held-out predictions), ``fold_accuracies``,
        ``ci95`` (95 % Wilson interval of the pooled accuracy), ``p_value`` (one-sided binomial test
        of accuracy > 0.5), ``auc`` (of the held-out logits), ``n_per_class``, ``n_test``,
        ``reference`` (the same dict for real vs real, or None) and ``settings``.

    Raises:
        ValueError: sets of different sizes, too few slices (each class needs at least ``folds``),
            or slices smaller than 16 px.
    """
    s = _as_slices(samples, "samples")
    r = _as_slices(real, "real")
    if s.shape[1:] != r.shape[1:]:
        raise ValueError(f"samples {s.shape[1:]} and real slices {r.shape[1:]} differ in size")
    if min(s.shape[1:]) < 16:
        raise ValueError(f"the C2ST needs slices of at least 16x16 pixels, got {s.shape[1:]}")
    folds = int(folds)
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    m = min(s.shape[0], r.shape[0])
    if m < folds:
        raise ValueError(f"the C2ST needs at least {folds} slices per set (one per fold); got {m}")
    device = "cpu" if device in (None, "auto") else str(device)
    kwargs = dict(folds=folds, epochs=int(epochs), min_steps=int(min_steps), width=int(width),
                  batch_size=int(batch_size), lr=float(lr), device=device)
    rng = np.random.default_rng(seed)
    # the same number of slices from each set (seeded subsample of the larger): chance is 0.5
    s_idx = np.sort(rng.choice(s.shape[0], m, replace=False))
    r_idx = np.sort(rng.choice(r.shape[0], m, replace=False))
    images = _to_unit(np.concatenate([s[s_idx], r[r_idx]]))
    labels = np.concatenate([np.ones(m, np.int64), np.zeros(m, np.int64)])
    result = _cross_validate(images, labels, seed=seed, **kwargs)
    result["reference"] = None
    if reference:
        half = r.shape[0] // 2
        if half < folds:
            raise ValueError(f"the real-vs-real reference needs at least {2 * folds} real slices; got {r.shape[0]}")
        perm = np.random.default_rng(seed + 1).permutation(r.shape[0])
        a, b = np.sort(perm[:half]), np.sort(perm[half:2 * half])
        ref_images = _to_unit(np.concatenate([r[a], r[b]]))
        ref_labels = np.concatenate([np.ones(half, np.int64), np.zeros(half, np.int64)])
        result["reference"] = _cross_validate(ref_images, ref_labels, seed=seed, **kwargs)
    result["settings"] = {
        "classifier": f"CNN: 3 stride-2 3x3 convs ({width}, {2 * width}, {4 * width} channels, LeakyReLU 0.2), "
                      "4x4 average pool, linear logit; BCE, Adam",
        "window_hu": list(WINDOW), "input": "windowed, then one mean and sd over both sets",
        "balanced": "larger set subsampled to the smaller (seeded)",
        "reference_split": "two random halves of the real slices" if reference else None,
        "folds": folds, "epochs": int(epochs), "min_steps": int(min_steps), "width": int(width),
        "batch_size": int(batch_size),
        "lr": float(lr), "seed": int(seed), "device": device,
    }
    return result


__all__ = ["c2st_accuracy", "wilson_interval", "C2ST_EPOCHS", "C2ST_FOLDS"]
