"""Eager reference of the prototype cross-entropy (the core of PCL's ProtoNCE, TSD's prototype
loss and SwAV-style prediction)."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

from .._utils import _is_tracing, check_positive, check_tensor

__all__ = ["prototype_cross_entropy"]


def _check_args(x, prototypes, target, temperature):
    check_tensor(x, "x", ndim=2)
    check_tensor(prototypes, "prototypes", ndim=2)
    if prototypes.dtype != x.dtype:
        raise TypeError(f"prototypes must have the dtype of x ({x.dtype}), got {prototypes.dtype}")
    if prototypes.shape[1] != x.shape[1]:
        raise ValueError(
            f"prototypes must have x's feature size {x.shape[1]}, got shape {tuple(prototypes.shape)}"
        )
    if x.device != prototypes.device:
        raise ValueError(f"prototypes is on {prototypes.device} but x is on {x.device}")
    n, k = x.shape[0], prototypes.shape[0]
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != x.device:
        raise ValueError(f"target is on {target.device} but x is on {x.device}")
    if target.dtype in (torch.int64, torch.int32):
        if target.shape != (n,):
            raise ValueError(f"target (class indices) must have shape ({n},), got {tuple(target.shape)}")
        if not _is_tracing() and bool(((target < 0) | (target >= k)).any()):
            raise ValueError(f"target holds class indices outside [0, {k})")
    elif target.is_floating_point():
        if target.shape != (n, k):
            raise ValueError(f"target (distribution) must have shape ({n}, {k}), got {tuple(target.shape)}")
    else:
        raise TypeError(f"target must be int64 class indices or a float distribution, got {target.dtype}")
    if isinstance(temperature, torch.Tensor):
        check_tensor(temperature, "temperature", ndim=None)
        if temperature.dim() == 0:
            check_positive(float(temperature), "temperature")
        else:
            if temperature.shape != (k,):
                raise ValueError(
                    f"temperature must be a number or a tensor of shape ({k},), got {tuple(temperature.shape)}"
                )
            if temperature.device != x.device:
                raise ValueError(f"temperature is on {temperature.device} but x is on {x.device}")
            if not _is_tracing() and not bool(((temperature > 0) & torch.isfinite(temperature)).all()):
                raise ValueError("temperature must be finite and > 0 everywhere")
    else:
        check_positive(temperature, "temperature")


def prototype_cross_entropy(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    target: torch.Tensor,
    temperature: Union[float, torch.Tensor] = 0.1,
) -> torch.Tensor:
    r"""Mean cross-entropy of ``softmax(x @ prototypes^T / temperature)`` against a target.

    .. math::
        \ell_{ik} = \frac{x_i \cdot c_k}{T_k}, \qquad
        L = \frac1N \sum_i \Big( \big(\textstyle\sum_k t_{ik}\big)\,
            \operatorname{logsumexp}_k \ell_{ik} - \sum_k t_{ik}\,\ell_{ik} \Big)

    With class indices ``target`` (``t`` one-hot) this is ``F.cross_entropy(logits, target)``;
    with a distribution it is ``-(t * log_softmax(logits)).sum(1).mean()`` (a "soft" CE, rows of
    ``t`` need not sum to one).

    Args:
        x: features (N x d), fp32/fp16/bf16/fp64.
        prototypes: prototypes (K x d), same dtype as ``x``.
        target: int64 class indices (N,) in ``[0, K)``, or a float distribution (N x K).
        temperature: a number > 0, or a tensor (K,) of per-prototype temperatures > 0 (PCL's
            concentrations ``phi``). Default 0.1.

    Returns:
        The scalar mean cross-entropy in ``x.dtype`` (computed in fp32, or fp64 for fp64 input).

    Used by PCL (Li et al., ICLR 2021) for ProtoNCE, TSD (Wang et al., CVPR 2023) for its
    prototype loss and SwAV (Caron et al., NeurIPS 2020) for the swapped prediction.
    """
    _check_args(x, prototypes, target, temperature)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    logits = x.to(cdt) @ prototypes.to(cdt).t()
    if isinstance(temperature, torch.Tensor):
        logits = logits / temperature.to(cdt)
    else:
        logits = logits / float(temperature)
    if target.is_floating_point():
        loss = -(target.to(cdt) * F.log_softmax(logits, dim=1)).sum(1).mean()
    else:
        loss = F.cross_entropy(logits, target.long())
    return loss.to(x.dtype)
