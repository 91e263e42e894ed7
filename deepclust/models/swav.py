"""SwAV (Caron et al., NeurIPS 2020): online clustering by swapped prediction of Sinkhorn codes.

The model holds a backbone, a projection head and the prototypes, and calls
:func:`deepclust.ops.swav.swav_loss` (fused Sinkhorn codes + soft cross-entropy). Training
step, as in the paper's code::

    model.set_epoch(epoch)                   # turns the queue on from epoch_queue_starts
    out = model.loss(crops)                  # or model(crops), e.g. through DDP
    optimizer.zero_grad(); out.total.backward()
    model.after_backward()                   # drops prototype grads while they are frozen
    optimizer.step()

``loss`` normalises the prototypes (unit rows, no gradient) before computing the scores, and
pushes the assignment crops' embeddings into the queue after computing the codes.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .._common import check_int, check_positive
from ..ops.swav import swav_loss
from ..data.augment import multi_crop
from ._images import ImageMLP
from .base import FitConfig, LossOutput

__all__ = ["SwAV", "cli_fit"]


class SwAV(nn.Module):
    """SwAV: backbone -> projection head -> L2-normalised embedding -> prototype scores.

    Args:
        backbone: module mapping a batch of inputs to (N x feat_dim) features. It must accept
            every crop resolution it is given (e.g. ends in global pooling).
        feat_dim: backbone output width.
        n_prototypes: number of prototypes K, default 3000.
        proj_hidden: hidden width of the projection head (Linear-BN-ReLU-Linear), default 2048;
            0 or ``None`` gives a single linear layer.
        proj_dim: embedding width, default 128.
        tau: softmax temperature, default 0.1.
        eps: Sinkhorn entropy weight, default 0.05.
        n_iters: Sinkhorn iterations, default 3.
        crops_for_assign: crops whose codes are targets, default ``(0, 1)``.
        queue_length: rows of stored embeddings per assignment crop, default 0 (no queue).
        epoch_queue_starts: first epoch (see :meth:`set_epoch`) that fills the queue, default
            15. The queue's scores are prepended before Sinkhorn once it is full, as in the
            paper's code.
        freeze_prototypes_niters: :meth:`after_backward` drops the prototypes' gradient for
            this many training iterations, default 313 (the paper's first epoch).
        impl: op path for :func:`deepclust.ops.swav.swav_loss`.
        group: process group for Sinkhorn's all-reduces (``None``: the default group when
            ``torch.distributed`` is initialised).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, n_prototypes: int = 3000,
                 proj_hidden: Optional[int] = 2048, proj_dim: int = 128, tau: float = 0.1,
                 eps: float = 0.05, n_iters: int = 3, crops_for_assign: Sequence[int] = (0, 1),
                 queue_length: int = 0, epoch_queue_starts: int = 15,
                 freeze_prototypes_niters: int = 313, impl: str = "auto", group=None):
        super().__init__()
        feat_dim = check_int(feat_dim, "feat_dim", minimum=1)
        n_prototypes = check_int(n_prototypes, "n_prototypes", minimum=1)
        proj_dim = check_int(proj_dim, "proj_dim", minimum=1)
        self.tau = check_positive(tau, "tau")
        self.eps = check_positive(eps, "eps")
        self.n_iters = check_int(n_iters, "n_iters", minimum=1)
        self.crops_for_assign = tuple(check_int(c, "crops_for_assign", minimum=0) for c in crops_for_assign)
        if not self.crops_for_assign:
            raise ValueError("crops_for_assign must not be empty")
        self.queue_length = check_int(queue_length, "queue_length", minimum=0)
        self.epoch_queue_starts = check_int(epoch_queue_starts, "epoch_queue_starts", minimum=0)
        self.freeze_prototypes_niters = check_int(freeze_prototypes_niters, "freeze_prototypes_niters")
        self.impl = impl
        self.group = group
        self.backbone = backbone
        if proj_hidden:
            self.projection = nn.Sequential(
                nn.Linear(feat_dim, proj_hidden), nn.BatchNorm1d(proj_hidden), nn.ReLU(inplace=True),
                nn.Linear(proj_hidden, proj_dim))
        else:
            self.projection = nn.Linear(feat_dim, proj_dim)
        self.prototypes = nn.Linear(proj_dim, n_prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(len(self.crops_for_assign), self.queue_length, proj_dim))
        self.queue_filled = 0  # rows of the queue written so far
        self.epoch = 0
        self.iteration = 0  # calls of after_backward
        self.normalize_prototypes()

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Give every prototype unit L2 norm (in place, outside autograd)."""
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1, p=2))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised projection (N x proj_dim)."""
        return F.normalize(self.projection(self.backbone(x)), dim=1, p=2)

    def set_epoch(self, epoch: int) -> None:
        """Tell the model the training epoch (the queue fills from ``epoch_queue_starts``)."""
        self.epoch = check_int(epoch, "epoch")

    @property
    def queue_active(self) -> bool:
        return self.queue_length > 0 and self.epoch >= self.epoch_queue_starts

    def reset_queue(self) -> None:
        self.queue.zero_()
        self.queue_filled = 0

    def _embed_crops(self, crops: List[torch.Tensor]) -> torch.Tensor:
        """Embeddings of all crops (V*B x proj_dim), one backbone call per run of equal shapes."""
        outs, i = [], 0
        while i < len(crops):
            j = i + 1
            while j < len(crops) and crops[j].shape[1:] == crops[i].shape[1:]:
                j += 1
            outs.append(self.embed(torch.cat(crops[i:j])))
            i = j
        return torch.cat(outs)

    @torch.no_grad()
    def _push(self, a: int, z: torch.Tensor) -> None:
        L = self.queue_length
        z = z[:L]
        n = z.shape[0]
        self.queue[a, n:] = self.queue[a, :L - n].clone()
        self.queue[a, :n] = z.to(self.queue.dtype)

    # ------------------------------------------------------------------ loss
    def loss(self, crops: Sequence[torch.Tensor]) -> LossOutput:
        """SwAV loss of a list of V crops of one batch (each B x ...; resolutions may differ).

        Normalises the prototypes, scores every crop, computes the codes of the assignment
        crops (with the queue's scores prepended when the queue is full), pushes those crops'
        embeddings into the queue (from ``epoch_queue_starts`` on), and returns
        ``LossOutput(total, {"swav": float})``.
        """
        if not isinstance(crops, (list, tuple)) or len(crops) < 2:
            raise ValueError("crops must be a list of at least 2 tensors (the views of one batch)")
        V, B = len(crops), crops[0].shape[0]
        if any(c.shape[0] != B for c in crops):
            raise ValueError("crops must all have the same batch size")
        if max(self.crops_for_assign) >= V:
            raise ValueError(f"crops_for_assign {self.crops_for_assign} is out of range for {V} crops")
        self.normalize_prototypes()
        z = self._embed_crops(list(crops))
        scores = self.prototypes(z).view(V, B, -1)
        queue_scores = None
        use_queue = self.queue_active and self.queue_filled >= self.queue_length
        if use_queue:
            with torch.no_grad():
                w = self.prototypes.weight
                queue_scores = [self.queue[a].to(w.dtype) @ w.t() for a in range(len(self.crops_for_assign))]
        total = swav_loss(scores, self.crops_for_assign, tau=self.tau, eps=self.eps,
                          n_iters=self.n_iters, group=self.group, queue_scores=queue_scores,
                          impl=self.impl)
        if self.queue_active and self.training:
            zd = z.detach().view(V, B, -1)
            for a, c in enumerate(self.crops_for_assign):
                self._push(a, zd[c])
            self.queue_filled = min(self.queue_length, self.queue_filled + B)
        return LossOutput(total, {"swav": float(total.detach())})

    def forward(self, x):
        """A list/tuple of crops gives :meth:`loss` (so DDP can wrap the model); a tensor gives
        the normalised embeddings."""
        if isinstance(x, (list, tuple)):
            return self.loss(x)
        return self.embed(x)

    def after_backward(self) -> None:
        """Call once per training step, after ``backward()`` and before ``optimizer.step()``:
        sets the prototypes' gradient to ``None`` during the first
        ``freeze_prototypes_niters`` iterations (the optimiser then leaves them alone)."""
        if self.iteration < self.freeze_prototypes_niters:
            self.prototypes.weight.grad = None
        self.iteration += 1

    @torch.no_grad()
    def scores(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Prototype scores (N x K) of the normalised embeddings, in eval mode."""
        was = self.training
        self.eval()
        try:
            self.normalize_prototypes()
            return torch.cat([self.prototypes(self.embed(x[i:i + batch_size]))
                              for i in range(0, x.shape[0], batch_size)])
        finally:
            self.train(was)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Cluster labels: the argmax prototype of each row of ``x`` (N,)."""
        return self.scores(x).argmax(dim=1)


# ============================================================================ image training
def cli_fit(data, config: FitConfig = FitConfig()) -> dict:
    """Train SwAV on an image set (``data.image_shape`` = (C, H, W), rows of ``data.x`` in
    [0, 1]) and cluster it.

    Defaults: an MLP backbone (:class:`~deepclust.models._images.ImageMLP`: crops resized to
    H x W, C*H*W -> 512 -> 256 with BN-ReLU), head 256 -> 256 -> 64, ``n_prototypes = 10 x
    n_clusters``, the paper's ``tau = 0.1``, ``eps = 0.05`` and 3 Sinkhorn iterations,
    multi-crop as the paper (2 full-resolution crops of 50-100% area and 2 crops of 25-55% area
    at 3/4 resolution) with the digits' version of its colour augmentation (small
    rotations/translations, contrast/brightness jitter, pixel noise; no flips), Adam (lr 2e-3,
    cosine decay; the paper's LARS at batch 4096 has no use at 256), batch 256, prototypes
    frozen for the first 20 iterations (the paper: its first epoch), 40 epochs
    (``config.epochs`` overrides; some 2 minutes on one CPU core for USPS, 4 for MNIST-test),
    no queue (a 256 batch is large next to K). Labels: k-means (scikit-learn, 10 restarts)
    with ``n_clusters`` on the normalised embeddings of the un-augmented images: with 10x more
    prototypes than clusters the argmax prototype (:meth:`SwAV.predict`) over-segments.

    With ``config.checkpoint`` a checkpoint (model with its queue and counters, optimiser,
    scheduler, generator, epoch) is written after every epoch; ``config.resume`` continues
    from it. Under ``torch.distributed`` (``deepclust fit --nproc N`` or torchrun) every rank
    draws the crops of the whole batch from the shared generator and keeps its shard of the
    batch; Sinkhorn runs over the group, batch norm takes its statistics over the group
    (:class:`deepclust.distributed.GroupBatchNorm`) and the gradients are averaged, so the run
    equals one process on the global batch within float tolerance. The batch must split
    evenly over the processes.

    Returns:
        ``{"pred": int64 array (N,), "loss": the last epoch's mean loss}``.
    """
    from sklearn.cluster import KMeans

    from .. import distributed
    from .._common import all_reduce_sum
    from ..checkpoint import Checkpointer, cpu_state

    if data.image_shape is None:
        raise ValueError(f"SwAV's cli_fit needs an image data set, {data.name} has no image_shape")
    ck = Checkpointer.from_config(config, "swav", data.name)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    device = torch.device(config.device)
    C, H, W = data.image_shape
    x = data.x.reshape(-1, C, H, W).float().to(device)
    N, k = x.shape[0], data.n_clusters
    epochs = 40 if config.epochs is None else int(config.epochs)
    batch = min(256, N)
    model = SwAV(ImageMLP((C, H, W), 256), 256, n_prototypes=10 * k, proj_hidden=256, proj_dim=64,
                 tau=0.1, eps=0.05, freeze_prototypes_niters=20, impl=config.impl).to(device)
    world = distributed.world_size()
    model, sl = distributed.data_parallel(model, batch, "SwAV")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-5)
    steps = epochs * (N // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    last, e0 = float("nan"), 0
    resumed = ck.resume_state()
    if resumed is not None:
        progress, st = resumed
        model.load_state_dict(st["model"])
        model.queue_filled, model.epoch, model.iteration = st["counters"]
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        e0, last = int(progress["epoch"]), float(st["last"])
        ck.restore_rng()
    bar = None
    if config.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=min(e0, epochs) * (N // batch), desc="swav", leave=False)
    for epoch in range(e0, epochs):
        model.train()
        model.set_epoch(epoch)
        perm = torch.randperm(N, generator=gen).to(device)
        tot, cnt = 0.0, 0
        for i in range(0, N - batch + 1, batch):
            crops = multi_crop(x[perm[i:i + batch]], generator=gen)
            if world > 1:  # every rank drew the whole batch's crops; each keeps its shard
                crops = [c[sl] for c in crops]
            out = model.loss(crops)
            opt.zero_grad(set_to_none=True)
            (out.total if world == 1 else out.total / world).backward()
            model.after_backward()
            if world > 1:
                distributed.all_reduce_gradients(model.parameters())
            opt.step()
            sched.step()
            tot, cnt = tot + out.components["swav"], cnt + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{out.components['swav']:.3f}")
        if world > 1:
            tot = float(all_reduce_sum(torch.tensor(tot, dtype=torch.float64, device=device))) / world
        last = tot / max(cnt, 1)
        if ck.enabled:
            ck.save({"epoch": epoch + 1},
                    {"model": cpu_state(model), "counters": (model.queue_filled, model.epoch, model.iteration),
                     "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
                     "last": last})
    if bar is not None:
        bar.close()
    model.eval()
    with torch.no_grad():
        emb = torch.cat([model.embed(x[i:i + 1024]) for i in range(0, N, 1024)]).cpu().numpy()
    pred = KMeans(n_clusters=k, n_init=10, random_state=config.seed).fit_predict(emb)
    return {"pred": np.asarray(pred, dtype=np.int64), "loss": float(last)}
