"""TSD's pieces (Wang et al., CVPR 2023) as the model runs them: the entropy-filtered support
memory, the class prototypes, the prototype loss (its cross-entropy variants through the fused
:func:`deepclust.ops.prototype_cross_entropy`) and the top-k neighbour loss.

Their eager twins, which the tests hold them to, are in :mod:`deepclust.reference.tsd`.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .._common import check_int, check_positive, compute_dtype
from ..ops import prototype_cross_entropy

__all__ = ["softmax_entropy", "select_supports", "tsd_prototypes", "tsd_prototype_loss",
           "topk_cluster_loss"]


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per row (N,), ``-sum exp(ls) * ls`` with
    ``ls = log_softmax(logits)``: accurate down to the tiny entropies of confident rows, which
    ``logsumexp(l) - sum softmax(l) * l`` would round to 0 and so lose their order."""
    ls = torch.log_softmax(logits.to(compute_dtype(logits)), dim=1)
    return torch.sum(ls.exp() * ls, dim=1).neg().to(logits.dtype)


def select_supports(supports: torch.Tensor, labels: torch.Tensor, entropies: torch.Tensor,
                    scores: torch.Tensor, filter_K: int = 100
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep per predicted class (``labels.argmax(1)``) the ``filter_K`` lowest-entropy entries
    of the memory (``-1``: all), ordered by class, then entropy, ties in memory order."""
    filter_K = check_int(filter_K, "filter_K", minimum=-1)
    if filter_K == 0:
        raise ValueError("filter_K must be -1 (keep all) or >= 1, got 0")
    if not supports.shape[0] == labels.shape[0] == entropies.shape[0] == scores.shape[0]:
        raise ValueError("supports, labels, entropies and scores must have the same number of rows")
    by_entropy = torch.argsort(entropies, stable=True)
    cls = labels.argmax(1)[by_entropy]
    by_class = torch.argsort(cls, stable=True)
    keep, cls = by_entropy[by_class], cls[by_class]
    if filter_K > 0:  # rank within the class: position minus the class's first position
        first = torch.searchsorted(cls, cls)
        keep = keep[torch.arange(cls.numel(), device=cls.device) - first < filter_K]
    return supports[keep], labels[keep], entropies[keep], scores[keep]


def tsd_prototypes(supports: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Class prototypes ``labels^T @ normalize(supports)`` (C x d), not normalised."""
    cdt = compute_dtype(supports)
    return torch.mm(labels.to(cdt).t(), F.normalize(supports.to(cdt), dim=1)).to(supports.dtype)


def tsd_prototype_loss(z: torch.Tensor, supports: torch.Tensor, labels: torch.Tensor,
                       scores: torch.Tensor, tau: float = 1.0, soft: bool = True,
                       reverse_kl: bool = True, *, impl: str = "auto") -> torch.Tensor:
    """TSD's prototype loss of a batch ``z`` (B x d) against the prototypes of the memory
    (``supports`` M x d, one-hot ``labels`` M x C), with the batch's softmax ``scores``
    (B x C, detached): ``KL(softmax(s) || softmax(scores))`` (the release's), or with
    ``reverse_kl=False`` ``KL(softmax(scores) || softmax(s))``, or with ``soft=False`` the
    cross-entropy against ``scores.argmax(1)``; ``s = normalize(z) @ normalize(p)^T / tau``.
    The last two run through the fused :func:`deepclust.ops.prototype_cross_entropy` (``impl``).
    Returns a scalar in ``z.dtype``."""
    tau = check_positive(tau, "tau")
    if scores.shape != (z.shape[0], labels.shape[1]):
        raise ValueError(f"scores must have shape ({z.shape[0]}, {labels.shape[1]}), got {tuple(scores.shape)}")
    zn = F.normalize(z, dim=1)
    pn = F.normalize(tsd_prototypes(supports, labels), dim=1).to(zn.dtype)
    y = scores.detach().to(compute_dtype(z))
    if not soft:
        return prototype_cross_entropy(zn, pn, y.argmax(1), tau, impl=impl)
    log_y = y.log_softmax(1)
    if reverse_kl:  # the gradient flows through softmax(s): the release's
        log_s = torch.log_softmax(zn.to(y.dtype) @ pn.to(y.dtype).t() / tau, dim=1)
        return torch.sum(log_s.exp() * (log_s - log_y), dim=1).mean().to(z.dtype)
    t = log_y.exp()
    neg_entropy = (t * log_y).sum(1).mean()
    return (prototype_cross_entropy(zn, pn, t.to(zn.dtype), tau, impl=impl) + neg_entropy).to(z.dtype)


def topk_cluster_loss(feats: torch.Tensor, preds: torch.Tensor, supports: torch.Tensor,
                      support_scores: torch.Tensor, k: int = 3) -> torch.Tensor:
    """TSD's top-k neighbour term ``mean_{i, j in N(i)} -S_ij |preds_i - y_j|^2`` over the
    ``k`` supports of highest cosine similarity ``S`` to each row of ``feats`` (the release's
    sign; ``support_scores`` detached). Returns a scalar in ``preds.dtype``."""
    k = min(check_int(k, "k", minimum=1), supports.shape[0])
    cdt = compute_dtype(preds)
    sim = torch.mm(F.normalize(feats.to(cdt), dim=1), F.normalize(supports.to(cdt), dim=1).t())
    top, idx = sim.topk(k, dim=1)
    sq = torch.linalg.vector_norm(preds.to(cdt)[:, None, :] - support_scores.detach().to(cdt)[idx], dim=2) ** 2
    return -(top * sq).mean().to(preds.dtype)
