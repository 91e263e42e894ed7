"""Eager references for SwAV: Sinkhorn-Knopp codes and the swapped-prediction loss.

Faithful to SPEC.md (SwAV section) and to Caron et al., "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020. The only departure from the
published ``distributed_sinkhorn`` is that the global (all-reduced) maximum of ``scores / eps`` is
subtracted before the exponential. Every step of the algorithm divides by a sum, so a global
factor ``exp(-max)`` cancels exactly: the result is mathematically identical, and the
exponential can no longer overflow (it still underflows to 0 for entries more than ~87 below
the maximum in fp32; a sample whose whole row underflows then gives NaN, as the published code
would; the fused op in :mod:`deepclust.ops.swav` works in the log domain and has no such
limit).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .._common import (
    all_reduce_max,
    all_reduce_sum,
    check_same_device,
    check_sinkhorn_args,
    check_swav_args,
    check_tensor,
    world_size,
)

__all__ = ["sinkhorn", "sinkhorn_from_embeddings", "swav_loss"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, n_iters: int = 3, group=None) -> torch.Tensor:
    """Sinkhorn-Knopp equipartition codes of prototype scores (SwAV).

    With ``out = scores / eps`` (B x K), ``Q = exp(out - max(out))^T`` (K x B), ``Q /= sum(Q)``,
    then ``n_iters`` times: ``Q /= row sums``, ``Q /= K``, ``Q /= column sums``,
    ``Q /= B_total``; finally ``Q *= B_total`` and the codes are ``Q^T``. ``B_total = B x
    world_size``; the maximum, the total and the per-prototype (row) sums are all-reduced over
    ``group``; the per-sample (column) sums are local. Subtracting the global maximum is exact
    (every step is invariant to a global scale of ``Q``).

    Args:
        scores: prototype scores (B x K), usually ``z @ prototypes.T`` with unit-norm rows.
        eps: entropy weight (> 0), default 0.05.
        n_iters: Sinkhorn iterations (>= 1), default 3.
        group: process group for the all-reduces; ``None`` is the default group when
            ``torch.distributed`` is initialised, else a single process.

    Returns:
        Codes (B x K), float32 (float64 for float64 input), each row summing to 1, no gradient.
    """
    check_tensor(scores, "scores", ndim=2)
    eps, n_iters = check_sinkhorn_args(eps, n_iters)
    out = scores.detach().to(_compute_dtype(scores.dtype)) / eps
    B, K = out.shape
    b_total = B * world_size(group)
    gmax = all_reduce_max(out.max(), group)
    Q = torch.exp(out - gmax).t()  # K x B
    Q /= all_reduce_sum(Q.sum(), group)
    for _ in range(n_iters):
        Q /= all_reduce_sum(Q.sum(dim=1, keepdim=True), group)
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= b_total
    Q *= b_total
    return Q.t()


@torch.no_grad()
def sinkhorn_from_embeddings(z: torch.Tensor, prototypes: torch.Tensor, eps: float = 0.05,
                             n_iters: int = 3, group=None) -> torch.Tensor:
    """:func:`sinkhorn` of ``z @ prototypes.T``.

    Args:
        z: embeddings (B x d).
        prototypes: prototypes (K x d), same dtype as ``z``.
        eps, n_iters, group: as in :func:`sinkhorn`.

    Returns:
        Codes (B x K), float32 (float64 for float64 input), rows summing to 1.
    """
    check_tensor(z, "z", ndim=2)
    check_tensor(prototypes, "prototypes", ndim=2)
    check_same_device(z=z, prototypes=prototypes)
    if z.shape[1] != prototypes.shape[1]:
        raise ValueError(f"prototypes must have {z.shape[1]} columns like z, got {tuple(prototypes.shape)}")
    ct = _compute_dtype(z.dtype)
    scores = z.detach().to(ct) @ prototypes.detach().to(ct).t()
    return sinkhorn(scores, eps=eps, n_iters=n_iters, group=group)


def swav_loss(crop_scores: Union[Sequence[torch.Tensor], torch.Tensor],
              crops_for_assign: Sequence[int] = (0, 1), tau: float = 0.1, eps: float = 0.05,
              n_iters: int = 3, group=None,
              queue_scores: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
    """SwAV swapped-prediction loss.

    For each assignment crop ``c``: ``q = sinkhorn(out_c)`` (no gradient; with a queue, the
    queue's scores are prepended and the last B rows of the codes kept);
    ``subloss_c = sum_{v != c} -mean_i sum_k q_ik log_softmax(out_v / tau)_ik``; the loss is the
    mean over assignment crops of ``subloss_c / (n_crops - 1)``.

    Args:
        crop_scores: the prototype scores of every crop, either a list/tuple of V tensors
            (B x K) (all with the same B, K, dtype and device) or one tensor (V x B x K).
        crops_for_assign: indices of the crops whose codes are targets, default ``(0, 1)``.
        tau: softmax temperature (> 0), default 0.1.
        eps, n_iters: Sinkhorn parameters, defaults 0.05 and 3.
        group: process group of the Sinkhorn all-reduces. The loss itself is the local mean
            over this process's rows (DDP's gradient averaging then gives the global mean).
        queue_scores: optional, one entry per assignment crop: a (L x K) tensor of queue scores
            (``queue_embeddings @ prototypes.T``) prepended before Sinkhorn, or ``None``.

    Returns:
        The scalar loss (computed in float32, float64 for float64 input, and cast back to the
        scores' dtype), with gradient to the scores.
    """
    crops, assign, queues, tau, eps, n_iters = check_swav_args(
        crop_scores, crops_for_assign, tau, eps, n_iters, queue_scores)
    n = len(crops)
    B, K = crops[0].shape
    ct = _compute_dtype(crops[0].dtype)
    loss = torch.zeros((), dtype=ct, device=crops[0].device)
    for a, c in enumerate(assign):
        with torch.no_grad():
            out = crops[c].detach()
            if queues[a] is not None:
                out = torch.cat([queues[a].detach().to(out.dtype), out])
            q = sinkhorn(out, eps=eps, n_iters=n_iters, group=group)[-B:]
        subloss = torch.zeros((), dtype=ct, device=crops[0].device)
        for v in range(n):
            if v == c:
                continue
            x = crops[v].to(ct) / tau
            subloss = subloss - torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss = loss + subloss / (n - 1)
    return (loss / len(assign)).to(crops[0].dtype)
