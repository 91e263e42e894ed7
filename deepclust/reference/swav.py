"""Eager reference of SwAV's swapped-prediction loss.

Faithful to SPEC.md (SwAV section) and to Caron et al., "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020. The codes are those of the
reference Sinkhorn, :func:`deepclust.reference.sinkhorn_knopp.sinkhorn` (one reference of the
formula, shared, like :mod:`.pcl` shares :mod:`.prototype`'s).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .._common import check_swav_args, compute_dtype
from .sinkhorn_knopp import sinkhorn

__all__ = ["swav_loss"]


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
    ct = compute_dtype(crops[0])
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
