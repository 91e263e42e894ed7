"""Image augmentations in plain torch for small image sets (digits, USPS, MNIST).

Batched and differentiable-free: each function takes ``x`` of shape (N, C, H, W) with values in
[0, 1] and an optional ``torch.Generator``, and draws its random parameters per image. Geometry
goes through one ``affine_grid``/``grid_sample`` per batch, so they run on the CPU or the GPU
without torchvision. ``multi_crop`` is SwAV's multi-crop; ``weak_augment`` and
``strong_augment`` are the two views TCL contrasts.
"""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F

__all__ = ["random_resized_crop", "jitter", "multi_crop", "random_affine", "random_erase",
           "weak_augment", "strong_augment"]


def random_resized_crop(x: torch.Tensor, out_hw, scale=(0.5, 1.0), max_rot=0.25,
                         max_shift=0.1, generator=None) -> torch.Tensor:
    """Random area-scaled crops with a small rotation and translation, resampled to ``out_hw``
    by one affine grid per image (bilinear, zero padding). ``x`` is (N, C, H, W)."""
    n = x.shape[0]
    kw = dict(device=x.device, dtype=x.dtype)
    u = torch.rand(n, 4, generator=generator).to(**kw)
    s = torch.sqrt(scale[0] + (scale[1] - scale[0]) * u[:, 0])  # side fraction of the crop
    r = (2 * u[:, 1] - 1) * max_rot                               # radians
    room = (1 - s) + max_shift
    tx, ty = (2 * u[:, 2] - 1) * room, (2 * u[:, 3] - 1) * room
    cos, sin = torch.cos(r) * s, torch.sin(r) * s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (n, x.shape[1], *out_hw), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def jitter(x: torch.Tensor, noise=0.05, contrast=0.3, generator=None) -> torch.Tensor:
    """Random contrast/brightness per image and Gaussian pixel noise, clamped to [0, 1]."""
    n = x.shape[0]
    u = torch.rand(n, 2, generator=generator).to(x.device, x.dtype)
    c = 1 + (2 * u[:, 0] - 1) * contrast
    b = (2 * u[:, 1] - 1) * 0.1
    x = x * c.view(n, 1, 1, 1) + b.view(n, 1, 1, 1)
    x = x + noise * torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return x.clamp_(0, 1)


def multi_crop(x: torch.Tensor, n_global=2, n_local=2, generator=None) -> List[torch.Tensor]:
    """SwAV's multi-crop: ``n_global`` full-resolution crops (area 50-100%) and ``n_local``
    crops at 3/4 resolution (area 25-55%)."""
    H, W = x.shape[-2:]
    lh, lw = max(4, int(round(0.75 * H))), max(4, int(round(0.75 * W)))
    crops = [jitter(random_resized_crop(x, (H, W), (0.5, 1.0), generator=generator), generator=generator)
             for _ in range(n_global)]
    crops += [jitter(random_resized_crop(x, (lh, lw), (0.25, 0.55), generator=generator), generator=generator)
              for _ in range(n_local)]
    return crops


def random_affine(x: torch.Tensor, max_rot: float, scale: tuple, max_shift: float, max_shear: float,
                  g: torch.Generator) -> torch.Tensor:
    """Random rotation (degrees), zoom, shear and translation (fraction of the size) per image,
    by ``affine_grid``/``grid_sample``; zeros outside."""
    b = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=g, device=x.device, dtype=x.dtype)  # noqa: E731
    ang = u(-max_rot, max_rot) * math.pi / 180
    sh = u(-max_shear, max_shear)
    s = 1.0 / u(*scale)  # the grid maps output to input: zoom in = sample a smaller area
    cos, sin = torch.cos(ang) * s, torch.sin(ang) * s
    theta = torch.stack([
        torch.stack([cos, -sin + sh * cos, u(-max_shift, max_shift) * 2], 1),
        torch.stack([sin, cos + sh * sin, u(-max_shift, max_shift) * 2], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_erase(x: torch.Tensor, p: float, area: tuple, g: torch.Generator) -> torch.Tensor:
    """Random erasing: with probability ``p`` zero one rectangle of ``area`` (fraction)."""
    b, _, h, w = x.shape
    dev = x.device
    a = area[0] + (area[1] - area[0]) * torch.rand(b, generator=g, device=dev)
    ratio = torch.exp((torch.rand(b, generator=g, device=dev) - 0.5) * math.log(3.0))
    eh = (torch.sqrt(a * ratio) * h).clamp(1, h)
    ew = (torch.sqrt(a / ratio) * w).clamp(1, w)
    y0 = torch.rand(b, generator=g, device=dev) * (h - eh)
    x0 = torch.rand(b, generator=g, device=dev) * (w - ew)
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    box = ((ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
           & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None]))
    on = torch.rand(b, generator=g, device=dev) < p
    return x.masked_fill((box & on[:, None, None])[:, None], 0.0)


def weak_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild geometry: rotation +-10 deg, zoom 0.9..1.1, translation +-8%."""
    return random_affine(x, 10.0, (0.9, 1.1), 0.08, 0.0, g).clamp_(0, 1)


def strong_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Rotation +-25 deg, zoom 0.75..1.2, shear, translation +-15%, brightness/contrast jitter,
    Gaussian noise and random erasing."""
    b = x.shape[0]
    x = random_affine(x, 25.0, (0.75, 1.2), 0.15, 0.2, g)
    contrast = 0.6 + 0.8 * torch.rand(b, 1, 1, 1, generator=g, device=x.device)
    bright = 0.2 * (torch.rand(b, 1, 1, 1, generator=g, device=x.device) - 0.5)
    x = x * contrast + bright
    x = x + 0.1 * torch.randn(x.shape, generator=g, device=x.device)
    return random_erase(x.clamp(0, 1), 0.5, (0.05, 0.2), g)
