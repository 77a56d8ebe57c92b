"""Differentiable augmentation of the critic's inputs (Zhao et al. 2020, "DiffAugment").

Console usage::

    >>> from QHQGANLib.training.augment import diff_augment, parse_diffaugment
    >>> x = diff_augment(images, parse_diffaugment("translation,cutout"))   # (B, 1, s, s) in [-1, 1]
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

DIFFAUGMENT_OPS = ("translation", "cutout")


def parse_diffaugment(policy: str) -> List[str]:
    """``"translation,cutout"`` -> ``["translation", "cutout"]``; ``""`` -> no augmentation."""
    ops = [op.strip() for op in (policy or "").split(",") if op.strip()]
    unknown = [op for op in ops if op not in DIFFAUGMENT_OPS]
    if unknown:
        raise ValueError(f"unknown diffaugment operation(s) {unknown}; choose from {DIFFAUGMENT_OPS}")
    return ops


def diff_augment(x: torch.Tensor, ops: Sequence[str], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random translation (up to 1/8 of the side, air shifted in) and cutout (a square of
    half the side set to air) of a batch (B, 1, s, s) in [-1, 1], differentiable in ``x``.

    The critic sees real and generated images through the same random transformations, so
    it cannot memorise a small training set, while the generator still learns the
    un-augmented distribution (the transformations do not leak into the samples).
    The random numbers are drawn on ``x``'s device, from ``generator`` (which must live there).
    """
    if not ops:
        return x
    b, _, h, w = x.shape
    dev = x.device
    if "translation" in ops:
        shift = max(1, h // 8)
        pad = F.pad(x, (shift, shift, shift, shift), value=-1.0)  # air
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator, device=dev)
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator, device=dev)
        rows = (dy[:, None] + torch.arange(h, device=dev)[None])[:, None, :, None].expand(b, 1, h, w + 2 * shift)
        pad = pad.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w, device=dev)[None])[:, None, None, :].expand(b, 1, h, w)
        x = pad.gather(3, cols)
    if "cutout" in ops:
        ch, cw = h // 2, w // 2
        cy = torch.randint(0, h - ch + 1, (b,), generator=generator, device=dev)
        cx = torch.randint(0, w - cw + 1, (b,), generator=generator, device=dev)
        yy, xx = torch.arange(h, device=dev)[None, :, None], torch.arange(w, device=dev)[None, None, :]
        inside = ((yy >= cy[:, None, None]) & (yy < (cy + ch)[:, None, None])
                  & (xx >= cx[:, None, None]) & (xx < (cx + cw)[:, None, None]))
        x = torch.where(inside[:, None], torch.full_like(x, -1.0), x)
    return x
