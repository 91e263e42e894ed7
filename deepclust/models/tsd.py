"""TSD (Wang et al., CVPR 2023): test-time adaptation by self-distillation on a support memory.

The math lives in :mod:`deepclust.nn.tsd` (on :func:`deepclust.ops.prototype_cross_entropy`);
this module keeps the memory and takes one optimiser step per test batch.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.tsd import select_supports, softmax_entropy, topk_cluster_loss, tsd_prototype_loss

__all__ = ["TSD"]


def _split(model: nn.Module):
    if hasattr(model, "featurizer") and hasattr(model, "classifier"):
        feat, clf = model.featurizer, model.classifier
    elif isinstance(model, nn.Sequential) and len(model) >= 2:
        feat, clf = model[:-1], model[-1]
    else:
        raise TypeError("model must have .featurizer and .classifier, or be an nn.Sequential ending in nn.Linear")
    lin = clf if isinstance(clf, nn.Linear) else getattr(clf, "fc", None)
    if not isinstance(lin, nn.Linear):
        raise TypeError("model's classifier must be an nn.Linear (or hold one as .fc)")
    return feat, clf, lin


class TSD(nn.Module):
    """Test-time Self-Distillation.

    The memory (supports, one-hot pseudo-labels, entropies, scores) starts from the classifier
    weights; each :meth:`forward` appends the batch, keeps per class the ``filter_K``
    lowest-entropy entries, builds the prototypes, and takes one optimiser step on
    ``prototype_loss + lam * topk_cluster_loss``.

    Args:
        model: ``.featurizer`` + ``.classifier`` (an ``nn.Linear``, or one as ``.fc``), or an
            ``nn.Sequential`` whose last layer is the ``nn.Linear`` classifier.
        optimizer: defaults to Adam over all the model's parameters with ``lr``.
        lr: learning rate of the default optimiser (default 1e-4).
        filter_K: supports kept per class (default 100; -1 keeps all).
        tau: prototype-logit temperature (default 1, as released).
        lam: weight of the top-k neighbour term (default 0, as released).
        k: neighbours of that term (default 3).
        soft, reverse_kl: the prototype loss variant, see
            :func:`deepclust.nn.tsd.tsd_prototype_loss` (default: the release's KL).
        impl: op path for the cross-entropy variants (``soft=False`` or ``reverse_kl=False``).
    """

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                 lr: float = 1e-4, filter_K: int = 100, tau: float = 1.0, lam: float = 0.0,
                 k: int = 3, soft: bool = True, reverse_kl: bool = True, impl: str = "auto"):
        super().__init__()
        self.model = model
        self.featurizer, self.classifier, lin = _split(model)
        self.optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
        self.filter_K, self.tau, self.lam, self.k = int(filter_K), float(tau), float(lam), int(k)
        self.soft, self.reverse_kl, self.impl = soft, reverse_kl, impl
        with torch.no_grad():
            w = lin.weight.detach().clone()
            logits = self.classifier(w)
            self.num_classes = w.shape[0]
            self._warmup = (w, F.one_hot(logits.argmax(1), self.num_classes).to(w.dtype),
                            softmax_entropy(logits), logits.softmax(1))
        self.reset()

    def reset(self) -> None:
        """Forget the test batches: the memory goes back to the classifier weights."""
        self.supports, self.labels, self.ent, self.scores = (t.clone() for t in self._warmup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt on the batch (one optimiser step) and return its logits (computed before the
        step, as released)."""
        z = self.featurizer(x)
        p = self.classifier(z)
        scores = p.softmax(1)
        with torch.no_grad():
            dev = z.device
            self.supports = torch.cat([self.supports.to(dev), z.detach()])
            self.labels = torch.cat([self.labels.to(dev), F.one_hot(p.argmax(1), self.num_classes).to(z.dtype)])
            self.ent = torch.cat([self.ent.to(dev), softmax_entropy(p.detach())])
            self.scores = torch.cat([self.scores.to(dev), scores.detach()])
            self.supports, self.labels, self.ent, self.scores = select_supports(
                self.supports, self.labels, self.ent, self.scores, self.filter_K)
        loss = tsd_prototype_loss(z, self.supports, self.labels, scores, self.tau, self.soft,
                                  self.reverse_kl, impl=self.impl)
        if self.lam != 0:
            loss = loss + self.lam * topk_cluster_loss(z.detach(), p, F.normalize(self.supports, dim=1),
                                                       self.scores, k=self.k)
        self.last_loss = float(loss.detach())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return p.detach()
