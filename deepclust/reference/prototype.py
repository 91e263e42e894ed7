"""Eager reference of the prototype cross-entropy (the core of PCL's ProtoNCE, TSD's prototype
loss and SwAV-style prediction)."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

from .._common import check_prototype_args, compute_dtype

__all__ = ["prototype_cross_entropy"]


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
    check_prototype_args(x, prototypes, target, temperature)
    cdt = compute_dtype(x)
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
