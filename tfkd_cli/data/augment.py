"""Vectorised CIFAR-style augmentation on uint8 NCHW tensors (the fast path).

The official pipeline, per image, is PIL based:
    RandomCrop(32, padding=4) -> RandomHorizontalFlip() -> RandomRotation(15) -> ToTensor -> Normalize
with RandomRotation's defaults (nearest interpolation, expand=False, centre, fill 0).

Here the three geometric steps are folded into ONE integer index map per image: for every
output pixel we compute which source pixel (or the zero fill) it takes, then a single
`torch.gather` on the uint8 batch produces the augmented images, on any device.

The rotation reproduces Pillow's nearest-neighbour affine transform exactly: Pillow builds the
inverse matrix in double precision (`Image.rotate`), converts it to 16.16 fixed point and takes
`floor` of the fixed-point source coordinate of each destination pixel centre
(`affine_fixed` in libImaging/Geometry.c). We do the same integer arithmetic, so for the same
(crop offset, flip, angle) the result equals torchvision's PIL transforms pixel for pixel
(checked in tests/test_data.py), not just in distribution.

Random parameters come from an explicit `torch.Generator` (never the global RNG) with the same
distributions as torchvision's `get_params`: crop offsets uniform integers in [0, 2*pad],
flip with probability 0.5, angle uniform in [-deg, deg] (drawn in float32 like torchvision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["AugParams", "sample_params", "index_map", "apply_params", "normalize", "BatchAugmenter"]


@dataclass
class AugParams:
    """Per-image augmentation parameters (CPU tensors of length n).

    top/left: crop offset in the zero-padded image (torchvision RandomCrop.get_params i, j),
    flip: horizontal flip, angle: rotation in degrees (counter-clockwise, PIL convention).
    """

    top: Tensor  # int64
    left: Tensor  # int64
    flip: Tensor  # bool
    angle: Tensor  # float32, degrees

    def __len__(self) -> int:
        return int(self.top.shape[0])

    @staticmethod
    def cat(parts: Sequence["AugParams"]) -> "AugParams":
        if len(parts) == 1:
            return parts[0]
        return AugParams(*(torch.cat([getattr(p, f) for p in parts]) for f in ("top", "left", "flip", "angle")))


def sample_params(n: int, generator: torch.Generator, *, padding: int | None = 4,
                  degrees: float = 15.0, flip: bool = True) -> AugParams:
    """Draw n parameter sets from `generator` (CPU). Draw order is fixed: crop, flip, angle."""
    if padding:
        off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, dtype=torch.int64)
        top, left = off[0], off[1]
    else:
        top = left = torch.zeros(n, dtype=torch.int64)
    if flip:
        flips = torch.rand(n, generator=generator) < 0.5
    else:
        flips = torch.zeros(n, dtype=torch.bool)
    if degrees:
        angle = torch.empty(n, dtype=torch.float32).uniform_(-float(degrees), float(degrees), generator=generator)
    else:
        angle = torch.zeros(n, dtype=torch.float32)
    return AugParams(top, left, flips, angle)


def _pil_fixed_matrix(angle: Tensor, h: int, w: int) -> Tensor:
    """Pillow's 16.16 fixed-point inverse affine (a0, a1, a2, a3, a4, a5) for `Image.rotate(angle)`.

    Mirrors Image.rotate (angle % 360, -radians, cos/sin rounded to 15 decimals, centre w/2, h/2)
    and affine_fixed (FIX(v) = floor(v * 65536 + 0.5); the 0.5 pixel-centre offset folded into
    a2/a5). Returns an int64 tensor (n, 6) on angle's device.
    """
    a = torch.remainder(angle.to(torch.float64), 360.0)  # same as Python's float % (fmod + sign fix)
    rad = -(a * (math.pi / 180.0))  # math.radians(x) == x * (pi / 180)
    c = torch.round(torch.cos(rad), decimals=15)
    s = torch.round(torch.sin(rad), decimals=15)
    ns = torch.round(-torch.sin(rad), decimals=15)
    cx, cy = w / 2.0, h / 2.0
    # matrix = [c, s, 0, ns, c, 0]; translation = matrix applied to (-cx, -cy), then + centre
    m2 = (c * -cx + s * -cy + 0.0) + cx
    m5 = (ns * -cx + c * -cy + 0.0) + cy

    def fix(v: Tensor) -> Tensor:
        return torch.floor(v * 65536.0 + 0.5).to(torch.int64)

    a2 = fix(m2 + c * 0.5 + s * 0.5)
    a5 = fix(m5 + ns * 0.5 + c * 0.5)
    out = torch.stack([fix(c), fix(s), a2, fix(ns), fix(c), a5], dim=1)
    # PIL's rotate returns an unchanged copy when angle % 360 == 0 (no resampling at all)
    ident = torch.tensor([65536, 0, 32768, 0, 65536, 32768], dtype=torch.int64, device=angle.device)
    return torch.where((a == 0)[:, None], ident, out)


def _axis_tables(params: AugParams, h: int, w: int, padding: int | None) -> Tensor:
    """Everything per image that the index map needs, computed on the CPU: one float32 (n, K) tensor.

    Columns: xrow (h), xcol (w), yrow (h), ycol (w), col_lut (w+2), row_lut (h+2) -- see index_map.
    All values are exactly representable in float32 (multiples of 2^-16 below 2^8, small ints).
    """
    n = len(params)
    pad = padding or 0
    m = _pil_fixed_matrix(params.angle.cpu(), h, w)  # (n, 6) int64
    a0, a1, a2, a3, a4, a5 = (m[:, i : i + 1] for i in range(6))
    top = params.top.cpu().to(torch.int64)[:, None]
    left = params.left.cpu().to(torch.int64)[:, None]
    flip = params.flip.cpu().to(torch.bool)[:, None]
    xs = torch.arange(w, dtype=torch.int64)
    ys = torch.arange(h, dtype=torch.int64)
    one = 65536  # +1 folded in: lookup position k = xr + 1
    xrow, xcol = a2 + one + a1 * ys, a0 * xs  # fixed-point x: xx = a2 + y*a1 + x*a0
    yrow, ycol = a5 + one + a4 * ys, a3 * xs  # fixed-point y: yy = a5 + y*a4 + x*a3
    xr = torch.arange(-1, w + 1, dtype=torch.int64)[None, :]  # lookup positions k = 0..w+1
    yr = torch.arange(-1, h + 1, dtype=torch.int64)[None, :]
    xsrc = torch.where(flip, (w - 1 - xr) + left - pad, xr + left - pad)  # (n, w+2)
    ysrc = yr + top - pad
    okx = (xr >= 0) & (xr < w) & (xsrc >= 0) & (xsrc < w)
    oky = (yr >= 0) & (yr < h) & (ysrc >= 0) & (ysrc < h)
    col_lut = torch.where(okx, xsrc, w)
    row_lut = torch.where(oky, ysrc, h) * (w + 1)
    fixed = torch.cat([xrow, xcol, yrow, ycol], 1).to(torch.float64) * (1.0 / 65536.0)
    return torch.cat([fixed, col_lut.to(torch.float64), row_lut.to(torch.float64)], 1).to(torch.float32).view(n, -1)


def index_map(params: AugParams, h: int, w: int, padding: int | None, device: torch.device | str = "cpu") -> Tensor:
    """Source index of every output pixel, into the image extended by one zero row and column.

    The extended image is (h+1) x (w+1) (row h and column w are zeros), flattened; the result
    is int64 (n, h*w). Composition (official order): crop from the zero-padded image, then flip,
    then rotate. Output pixel (x, y) is rotated back to (xr, yr) in the cropped+flipped image
    (Pillow's fixed-point nearest rule); outside that image -> fill. Un-flip: xc = w-1-xr.
    Un-crop: source = (xc + left - pad, yr + top - pad) in the original; in the padding -> fill.

    Implementation: the fixed-point coordinates xx = a2 + y*a1 + x*a0 are integers below 2^24,
    so xx / 65536 = (a2 + y*a1)/65536 + (x*a0)/65536 is exact in float32 and its floor equals
    `xx >> 16`. Each axis then goes through a per-image lookup table over xr in [-1, w]
    (clamped; -1 and w mean "outside") that folds in flip, crop offset and validity. The small
    per-image tables are built on the CPU (so CPU and GPU give identical batches) and shipped in
    one transfer (pinned, non-blocking on CUDA); the device does ~10 full-size ops.
    """
    if max(h, w) > 128:
        raise ValueError("index_map: images up to 128x128 (float32 exactness)")
    device = torch.device(device)
    n = len(params)
    tab = _axis_tables(params, h, w, padding)
    if device.type == "cuda":
        tab = tab.pin_memory().to(device, non_blocking=True)
    else:
        tab = tab.to(device)
    o = [0, h, h + w, 2 * h + w, 2 * h + 2 * w, 2 * h + 3 * w + 2, 3 * h + 3 * w + 4]
    xrow, xcol, yrow, ycol = (tab[:, o[i]:o[i + 1]] for i in range(4))
    luts = tab[:, o[4]:].to(torch.int64)
    col_lut, row_lut = luts[:, : w + 2], luts[:, w + 2:]
    # k = clamp(xr + 1, 0, w + 1); values are >= 0 so truncation == floor
    kx = torch.add(xrow[:, :, None], xcol[:, None, :]).clamp_(0, w + 1).to(torch.int64).view(n, h * w)
    ky = torch.add(yrow[:, :, None], ycol[:, None, :]).clamp_(0, h + 1).to(torch.int64).view(n, h * w)
    return torch.gather(row_lut, 1, ky).add_(torch.gather(col_lut, 1, kx))


def apply_params(x: Tensor, params: AugParams, padding: int | None) -> Tensor:
    """Augment a uint8 (n, C, H, W) batch with given parameters; returns uint8 (n, C, H, W)."""
    n, c, h, w = x.shape
    idx = index_map(params, h, w, padding, x.device)
    ext = torch.nn.functional.pad(x, (0, 1, 0, 1)).view(n, c, (h + 1) * (w + 1))
    out = torch.gather(ext, 2, idx[:, None, :].expand(n, c, h * w))
    return out.view(n, c, h, w)


def normalize(x: Tensor, mean: Tensor, std: Tensor, channels_last: bool = False) -> Tensor:
    """uint8 NCHW -> float32 (x/255 - mean)/std, in the same float ops as ToTensor + Normalize."""
    # divide by a 0-dim tensor on x's device, not a Python number: CUDA replaces division by a
    # CPU scalar with multiplication by its reciprocal, which is not bit-identical to ToTensor
    c255 = torch.full((), 255.0, dtype=torch.float32, device=x.device)
    out = x.to(torch.float32).div_(c255).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class BatchAugmenter:
    """Augment + normalize uint8 batches on a device, parameters from a CPU generator."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, padding: int | None, degrees: float,
                 flip: bool = True, device: torch.device | str = "cpu", channels_last: bool = False):
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.padding = padding
        self.degrees = float(degrees or 0.0)
        self.flip = flip
        self.channels_last = channels_last

    def sample(self, n: int, generator: torch.Generator) -> AugParams:
        return sample_params(n, generator, padding=self.padding, degrees=self.degrees, flip=self.flip)

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 batch -> augmented, normalized float32 batch."""
        return self.apply(x, self.sample(x.shape[0], generator))

    def apply(self, x: Tensor, params: AugParams) -> Tensor:
        """uint8 batch + its parameters -> augmented, normalized float32 batch."""
        return self.normalize(apply_params(x, params, self.padding))

    def normalize(self, x: Tensor) -> Tensor:
        return normalize(x, self.mean, self.std, self.channels_last)
