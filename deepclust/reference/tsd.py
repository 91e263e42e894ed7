"""Eager references of TSD (Wang et al., CVPR 2023, "Feature Alignment and Uniformity for Test
Time Adaptation"): the entropy-filtered support memory, the prototype loss and the top-k
neighbour loss, following the released code's formulas.

Differences from the released code, all deliberate:

* ``select_supports(filter_K=-1)`` keeps every entry, as the paper and SPEC intend; the release
  slices each class with ``[:filter_K]``, which for ``-1`` drops each class's last entry;
* the sort by entropy is stable, so ties keep memory order (the release's order is unspecified).

These are the ground truth of :mod:`deepclust.nn.tsd`, which the model uses.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .._common import check_int, check_positive, check_tensor

__all__ = ["softmax_entropy", "select_supports", "tsd_prototypes", "tsd_prototype_loss", "topk_cluster_loss"]


def _cdt(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per row: ``-(softmax * log_softmax).sum(1)`` (N,)."""
    lc = logits.to(_cdt(logits))
    return -(lc.softmax(1) * lc.log_softmax(1)).sum(1).to(logits.dtype)


def select_supports(
    supports: torch.Tensor,
    labels: torch.Tensor,
    entropies: torch.Tensor,
    scores: torch.Tensor,
    filter_K: int = 100,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Filter TSD's memory: per predicted class keep the ``filter_K`` lowest-entropy entries.

    The predicted class of an entry is ``labels.argmax(1)``. The result is ordered by class,
    then by increasing entropy (ties in memory order), like the release.

    Args:
        supports: features (M x d).
        labels: one-hot pseudo-labels (M x C).
        entropies: prediction entropies (M,).
        scores: softmax scores (M x C).
        filter_K: entries kept per class; ``-1`` keeps all (default 100).

    Returns:
        ``(supports, labels, entropies, scores)`` restricted to the kept entries.
    """
    check_tensor(supports, "supports", ndim=2)
    check_tensor(labels, "labels", ndim=2)
    check_tensor(entropies, "entropies", ndim=1)
    check_tensor(scores, "scores", ndim=2)
    M = supports.shape[0]
    if labels.shape[0] != M or entropies.shape[0] != M or scores.shape[0] != M:
        raise ValueError("supports, labels, entropies and scores must have the same number of rows")
    filter_K = check_int(filter_K, "filter_K", minimum=-1)
    if filter_K == 0:
        raise ValueError("filter_K must be -1 (keep all) or >= 1, got 0")
    y = labels.argmax(1)
    order = torch.sort(entropies, stable=True).indices
    order = order[torch.sort(y[order], stable=True).indices]  # by class, then entropy
    if filter_K == -1:
        keep = order
    else:
        ys = y[order]
        counts = torch.bincount(ys, minlength=labels.shape[1])
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(M, device=y.device) - starts[ys]
        keep = order[rank < filter_K]
    return supports[keep], labels[keep], entropies[keep], scores[keep]


def tsd_prototypes(supports: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Class prototypes ``(normalize(supports)^T @ labels)^T`` (C x d), not normalised."""
    cdt = _cdt(supports)
    return (F.normalize(supports.to(cdt), dim=1).t() @ labels.to(cdt)).t().to(supports.dtype)


def tsd_prototype_loss(
    z: torch.Tensor,
    supports: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    tau: float = 1.0,
    soft: bool = True,
    reverse_kl: bool = True,
) -> torch.Tensor:
    r"""TSD's prototype loss of a test batch against prototypes built from the support memory.

    Prototypes ``p_c = sum_{m: labels_m = c} supports_m / |supports_m|`` (:func:`tsd_prototypes`),
    logits ``s = normalize(z) @ normalize(p)^T / tau`` (B x C), and with the scores
    ``y = scores`` (the batch's softmax scores, detached):

    * ``soft=True, reverse_kl=True`` (the release's line, default):
      ``L = mean_i sum_c softmax(s)_ic (log_softmax(s)_ic - log_softmax(y)_ic)``, i.e.
      ``KL(softmax(s) || softmax(y))``. The release calls ``softmax_kl_loss(scores, dist)``,
      whose first argument is treated as *logits*: the probabilities are passed through a
      second softmax (which flattens the target), and the gradient flows through the
      ``softmax(s)`` side. Both are kept here.
    * ``soft=True, reverse_kl=False`` (the release's commented alternative,
      "comparable results"): ``KL(softmax(y) || softmax(s))``
      ``= -sum_c softmax(y)_c log_softmax(s)_c - H(softmax(y))`` (mean over the rows).
    * ``soft=False``: ``F.cross_entropy(s, y.argmax(1))``.

    Args:
        z: batch features (B x d).
        supports: support features (M x d) (normalised or not: they are normalised here).
        labels: one-hot labels of the supports (M x C).
        scores: the batch's softmax scores (B x C); no gradient flows into them.
        tau: temperature > 0 (the release uses 1).
        soft: soft KL (default) or hard cross-entropy.
        reverse_kl: see above.

    Returns:
        The scalar loss in ``z.dtype``.
    """
    for name, t in (("z", z), ("supports", supports), ("labels", labels), ("scores", scores)):
        check_tensor(t, name, ndim=2)
    tau = check_positive(tau, "tau")
    if supports.shape[1] != z.shape[1]:
        raise ValueError(f"supports must be (M x {z.shape[1]}), got {tuple(supports.shape)}")
    if labels.shape[0] != supports.shape[0]:
        raise ValueError("labels must have one row per support")
    if scores.shape != (z.shape[0], labels.shape[1]):
        raise ValueError(f"scores must have shape ({z.shape[0]}, {labels.shape[1]}), got {tuple(scores.shape)}")
    cdt = _cdt(z)
    zn = F.normalize(z.to(cdt), dim=1)
    pn = F.normalize(tsd_prototypes(supports.to(cdt), labels.to(cdt)), dim=1)
    y = scores.detach().to(cdt)
    s = zn @ pn.t() / tau
    if not soft:
        loss = F.cross_entropy(s, y.argmax(1))
    elif reverse_kl:
        ls = s.log_softmax(1)
        loss = (ls.exp() * (ls - y.log_softmax(1))).sum(1).mean()
    else:
        t = y.softmax(1)
        ent = -(t * y.log_softmax(1)).sum(1).mean()
        loss = -(t * s.log_softmax(1)).sum(1).mean() - ent
    return loss.to(z.dtype)


def topk_cluster_loss(
    feats: torch.Tensor,
    preds: torch.Tensor,
    supports: torch.Tensor,
    support_scores: torch.Tensor,
    k: int = 3,
) -> torch.Tensor:
    r"""TSD's top-k neighbour term (``topk_cluster`` in the release; weight ``lam``, default 0).

    With cosine similarities ``S = normalize(feats) @ normalize(supports)^T`` (B x M), the ``k``
    most similar supports ``j in N(i)``, and their (detached) scores ``y_j``:

    .. math::
        L = \frac{1}{Bk}\sum_i \sum_{j\in N(i)} -S_{ij}\,\lVert \mathrm{preds}_i - y_j\rVert^2

    This is the release's formula, sign included: minimising it *increases* the distance to the
    neighbours' scores, and ``preds`` are the classifier's logits (not probabilities), as in the
    release. The release calls it with ``feats = z.detach()``; detaching is left to the caller.

    Args:
        feats: batch features (B x d).
        preds: classifier outputs of the batch (B x C).
        supports: support features (M x d).
        support_scores: softmax scores of the supports (M x C); no gradient flows into them.
        k: neighbours (default 3; at most M).

    Returns:
        The scalar loss in ``preds.dtype``.
    """
    for name, t in (("feats", feats), ("preds", preds), ("supports", supports),
                    ("support_scores", support_scores)):
        check_tensor(t, name, ndim=2)
    k = check_int(k, "k", minimum=1)
    if supports.shape[1] != feats.shape[1]:
        raise ValueError(f"supports must be (M x {feats.shape[1]}), got {tuple(supports.shape)}")
    if preds.shape[0] != feats.shape[0] or support_scores.shape != (supports.shape[0], preds.shape[1]):
        raise ValueError("preds must be (B x C) and support_scores (M x C)")
    cdt = _cdt(preds)
    sim = F.normalize(feats.to(cdt), dim=1) @ F.normalize(supports.to(cdt), dim=1).t()
    top, idx = torch.topk(sim, min(k, supports.shape[0]), dim=1)
    near = support_scores.detach().to(cdt)[idx]  # B x k x C
    diff = ((preds.to(cdt).unsqueeze(1) - near) ** 2).sum(-1)
    return (-top * diff).mean().to(preds.dtype)
