"""MLP autoencoder pieces (DEC's stacked autoencoder, Xie et al., ICML 2016): the layer stack
and the input corruption of denoising pretraining."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["mlp", "check_noise", "corrupt"]

NOISE_TYPES = ("dropout", "gaussian")


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """``nn.Linear`` layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ReLU between
    them and none after the last (a linear embedding or reconstruction)."""
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def check_noise(noise: float, noise_type: str) -> float:
    """``noise`` as a float: a dropout probability in ``[0, 1)``, or a finite Gaussian standard
    deviation ``>= 0``; raises ``ValueError`` otherwise or for another ``noise_type``."""
    noise = float(noise)
    if noise_type == "dropout":
        if not 0.0 <= noise < 1.0:
            raise ValueError(f"noise must be in [0, 1) for dropout, got {noise}")
    elif noise_type == "gaussian":
        if not (math.isfinite(noise) and noise >= 0.0):
            raise ValueError(f"noise must be finite and >= 0 for gaussian noise, got {noise}")
    else:
        raise ValueError(f"noise_type must be 'dropout' or 'gaussian', got {noise_type!r}")
    return noise


def corrupt(x: Tensor, noise: float, noise_type: str = "dropout",
            generator: Optional[torch.Generator] = None) -> Tensor:
    """The corrupted input of a denoising autoencoder: with ``"dropout"`` every entry is
    zeroed with probability ``noise`` and the rest scaled by ``1 / (1 - noise)``; with
    ``"gaussian"`` ``noise * N(0, 1)`` is added. ``noise = 0`` returns ``x`` itself. The
    random numbers come from ``generator`` (on ``x``'s device)."""
    if noise <= 0:
        return x
    if noise_type == "gaussian":
        return x + noise * torch.randn(x.shape, generator=generator, device=x.device)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= noise
    return x * keep / (1.0 - noise)
