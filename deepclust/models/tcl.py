"""TCL: Twin Contrastive Learning for online clustering (Li et al., 2022).

A backbone feeds two heads: an instance projector (MLP, L2-normalised output) trained with the
instance-level contrastive loss over the augmented views, and a cluster projector (MLP,
softmax over K clusters) trained with the cluster-level contrastive loss and its entropy term.
Both losses are the fused ops of :mod:`deepclust.ops.contrastive`. Clusters are the argmax of
the cluster head. (The paper's second stage, self-labelling with confident pseudo-labels, is
not included.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .._common import check_int, check_positive
from ..ops.contrastive import cluster_contrastive_loss, instance_contrastive_loss
from ..data.augment import strong_augment, weak_augment
from ._images import ImageMLP
from .base import FitConfig, LossOutput

__all__ = ["TCL", "cli_fit"]


class TCL(nn.Module):
    """Backbone + instance head + cluster head, trained with TCL's two contrastive losses.

    Args:
        backbone: module mapping a batch of inputs to features (batch x ``feat_dim``).
        feat_dim: backbone output size.
        n_clusters: number of clusters ``K``.
        instance_dim: instance embedding size. Default 128.
        tau_instance: temperature of the instance loss. Default 0.5.
        tau_cluster: temperature of the cluster loss. Default 1.0.
        impl: op path, ``"auto"``, ``"triton"`` or ``"torch"``.
        group: process group of the two losses (``None``: the default group when
            ``torch.distributed`` is initialised, else one process); see :meth:`loss`.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, n_clusters: int,
                 instance_dim: int = 128, tau_instance: float = 0.5, tau_cluster: float = 1.0,
                 impl: str = "auto", group=None):
        super().__init__()
        feat_dim = check_int(feat_dim, "feat_dim", minimum=1)
        n_clusters = check_int(n_clusters, "n_clusters", minimum=2)
        instance_dim = check_int(instance_dim, "instance_dim", minimum=1)
        self.tau_instance = check_positive(tau_instance, "tau_instance")
        self.tau_cluster = check_positive(tau_cluster, "tau_cluster")
        self.impl = impl
        self.group = group
        self.n_clusters = n_clusters
        self.backbone = backbone
        self.instance_projector = nn.Sequential(
            nn.Linear(feat_dim, feat_dim), nn.ReLU(), nn.Linear(feat_dim, instance_dim))
        self.cluster_projector = nn.Sequential(
            nn.Linear(feat_dim, feat_dim), nn.ReLU(), nn.Linear(feat_dim, n_clusters))

    def forward(self, x: torch.Tensor):
        """Instance embeddings (L2-normalised) and cluster probabilities of a batch."""
        h = self.backbone(x)
        z = F.normalize(self.instance_projector(h), dim=1)
        c = torch.softmax(self.cluster_projector(h), dim=1)
        return z, c

    def loss(self, views: Sequence[torch.Tensor]) -> LossOutput:
        """TCL's loss on ``m >= 2`` augmented views of one batch (each of the same shape):
        ``instance_contrastive_loss(z) + cluster_contrastive_loss(c)`` over the stacked views.

        Distributed (a process group of ``W`` ranks): every rank passes its shard of each view
        (all ranks the same number of rows); the loss is the one of one process on the global
        batch whose view ``v`` is view ``v`` of rank 0, of rank 1, ... (contiguous shards of the
        global views, in rank order), on every rank, and each rank's gradient is ``W`` times
        its part: backward ``total / W`` and sum the gradients over the ranks."""
        views = list(views)
        if len(views) < 2:
            raise ValueError(f"views must hold at least 2 augmented views, got {len(views)}")
        shape = views[0].shape
        for v in views[1:]:
            if v.shape != shape:
                raise ValueError(f"views must all have one shape, got {tuple(shape)} and {tuple(v.shape)}")
        z, c = self(torch.cat(views))
        m = len(views)
        li = instance_contrastive_loss(z, m, self.tau_instance, self.group, impl=self.impl)
        lc = cluster_contrastive_loss(c, m, self.tau_cluster, self.group, impl=self.impl)
        total = li + lc
        return LossOutput(total, {"instance": float(li.detach()), "cluster": float(lc.detach())})

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Hard cluster labels: argmax of the cluster head."""
        return self.cluster_projector(self.backbone(x)).argmax(1)


# ----------------------------------------------------------------------------- CLI
# default epochs per data set: USPS some 2 minutes on one CPU core, MNIST-test some 4
_DEFAULT_EPOCHS = {"digits": 40, "usps": 60, "mnist-test": 60}


def cli_fit(data, config: FitConfig = FitConfig()) -> dict:
    """Train TCL on an image set (rows of ``data.x`` are flattened images in [0, 1],
    ``data.image_shape`` is ``(C, H, W)``) and return ``{"pred": labels, "loss": final}``.

    Defaults: an MLP backbone (:class:`~deepclust.models._images.ImageMLP`, C*H*W -> 512 ->
    256 with BN-ReLU), the paper's heads (instance 256 -> 256 -> 128, cluster 256 -> 256 -> K,
    K = number of classes), two views as the paper's weak and strong augmentation adapted to
    digits (:func:`~deepclust.data.augment.weak_augment`: small affine;
    :func:`~deepclust.data.augment.strong_augment`: larger affine with shear, contrast and
    brightness, noise, random erasing; no flips or colour, which do not suit digits), batch
    256, the paper's temperatures 0.5 (instance) and 1.0 (cluster), Adam (lr 3e-3, weight
    decay 1e-5) with cosine decay over the run; epochs 40 for digits, 60 for usps and
    mnist-test, else ``max(5, 100000 // N)``. Labels: the argmax of the cluster head, as the
    paper predicts.

    Why: the paper trains ResNets for 1000 epochs with Adam at a small rate; a CPU affords 60
    epochs, in which a 3x larger rate decayed to 0 converged further (USPS seed 0 after 60
    epochs: 0.81 with lr 3e-3, 0.80 with 1e-3), and the MLP backbone beat the small CNN at a
    fifth of its time (see :mod:`deepclust.models._images`).

    With ``config.checkpoint`` a checkpoint (model, optimiser, generator, step) is written
    after every epoch (``N // batch`` steps); ``config.resume`` continues from it.

    Under ``torch.distributed`` (``deepclust fit --nproc N`` or torchrun) every rank draws the
    whole batch and both of its views from the shared generator and keeps its contiguous shard
    of each view; the contrastive losses run over the group (the global batch's loss), batch
    norm takes its statistics over the group (:class:`deepclust.distributed.GroupBatchNorm`)
    and the gradients are summed, so every step is the one of one process on the global batch
    within float tolerance. The batch must split evenly over the processes.
    """
    from .. import distributed
    from ..checkpoint import Checkpointer, cpu_state

    if data.image_shape is None:
        raise ValueError(f"TCL needs image data (data.image_shape), got {data!r}")
    ck = Checkpointer.from_config(config, "tcl", data.name)
    torch.manual_seed(config.seed)
    g = torch.Generator(device=config.device).manual_seed(config.seed)
    dev = torch.device(config.device)
    c, h, w = data.image_shape
    x = data.x.reshape(-1, c, h, w).float().to(dev)
    n = x.shape[0]
    k = data.n_clusters
    model = TCL(ImageMLP((c, h, w), 256), 256, k, impl=config.impl).to(dev)
    batch = min(256, n // 2 * 2)
    world = distributed.world_size()
    model, sl = distributed.data_parallel(model, batch, "TCL")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-5)
    epochs = config.epochs if config.epochs is not None else _DEFAULT_EPOCHS.get(
        data.name, max(5, 100000 // n))
    per_epoch = max(1, n // batch)
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    last, s0 = float("nan"), 0
    resumed = ck.resume_state()
    if resumed is not None:
        progress, st = resumed
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        g.set_state(st["gen"])
        s0, last = int(progress["epoch"]) * per_epoch, float(st["last"])
        ck.restore_rng()
    it = range(s0, steps)
    if config.progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="TCL", unit="step", initial=s0, total=steps)
    model.train()
    for step in it:
        idx = torch.randperm(n, generator=g, device=dev)[:batch]
        xb = x[idx]
        views = [weak_augment(xb, g), strong_augment(xb, g)]
        if world > 1:  # every rank drew the whole batch's views; each keeps its shard
            views = [v[sl] for v in views]
        out = model.loss(views)
        opt.zero_grad(set_to_none=True)
        (out.total if world == 1 else out.total / world).backward()
        if world > 1:
            distributed.all_reduce_gradients(model.parameters())
        opt.step()
        sched.step()
        last = out.components["instance"] + out.components["cluster"]
        if config.progress and step % 10 == 0:
            it.set_postfix(loss=f"{last:.3f}")
        if ck.enabled and (step + 1) % per_epoch == 0:
            ck.save({"epoch": (step + 1) // per_epoch},
                    {"model": cpu_state(model), "opt": opt.state_dict(), "sched": sched.state_dict(),
                     "gen": g.get_state(), "last": last})
    model.eval()
    preds = [model.predict(x[i:i + 1024]) for i in range(0, n, 1024)]
    pred = torch.cat(preds).cpu().numpy().astype(np.int64)
    return {"pred": pred, "loss": float(last)}
