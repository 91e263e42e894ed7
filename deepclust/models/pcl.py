"""PCL (Li et al., ICLR 2021): MoCo with a queue plus ProtoNCE over k-means prototypes.

The losses and the clustering step are in :mod:`deepclust.nn.pcl` (ProtoNCE through
:func:`deepclust.ops.prototype_cross_entropy`); this module holds the encoders, the queue and
the hyperparameters.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .._common import all_gather_no_grad, all_reduce_sum, get_group
from ..nn.pcl import info_nce_loss, pcl_clustering, proto_nce_loss
from ..data.augment import strong_augment
from ._images import ImageMLP, images_of
from .base import FitConfig, LossOutput

__all__ = ["PCL", "cli_fit"]


class PCL(nn.Module):
    """MoCo v1/v2 with ProtoNCE.

    Args:
        encoder_q: query encoder, maps a batch to (B x dim) features.
        encoder_k: key encoder; ``None`` makes a momentum copy of ``encoder_q``.
        dim: feature size (default 128).
        r: queue length (default 16384); also the number of negative prototypes unless
            ``r_proto`` is given (the release uses one ``r`` for both).
        m: momentum of the key encoder (default 0.999).
        T: InfoNCE temperature and mean concentration of the prototypes (default 0.2).
        r_proto: negative prototypes per clustering (default ``r``).
        impl: op path for ProtoNCE (``"auto"``, ``"triton"``, ``"torch"``).
        generator: optional ``torch.Generator`` for the negative-prototype sampling.
        group: process group for a data-parallel step (``None``: the default group when
            ``torch.distributed`` is initialised, else one process); see :meth:`forward`.
    """

    def __init__(self, encoder_q: nn.Module, encoder_k: Optional[nn.Module] = None, dim: int = 128,
                 r: int = 16384, m: float = 0.999, T: float = 0.2, r_proto: Optional[int] = None,
                 impl: str = "auto", generator: Optional[torch.Generator] = None, group=None):
        super().__init__()
        self.encoder_q = encoder_q
        self.encoder_k = copy.deepcopy(encoder_q) if encoder_k is None else encoder_k
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            pk.data.copy_(pq.data)
            pk.requires_grad = False
        self.r, self.m, self.T = int(r), float(m), float(T)
        self.r_proto = self.r if r_proto is None else int(r_proto)
        self.impl, self.generator, self.group = impl, generator, group
        self.register_buffer("queue", F.normalize(torch.randn(self.r, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            pk.data.mul_(self.m).add_(pq.data, alpha=1.0 - self.m)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.r
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.r)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised momentum-encoder features (what PCL clusters)."""
        return F.normalize(self.encoder_k(x), dim=1)

    def compute_clusters(self, features: torch.Tensor, num_clusters: Sequence[int] = (10,),
                         seed: int = 0, n_init: int = 10, max_iter: int = 300,
                         backend: str = "auto") -> Dict[str, List[torch.Tensor]]:
        """k-means for each number of clusters, concentrations with mean ``T``, normalised
        centroids: :func:`deepclust.nn.pcl.pcl_clustering`."""
        return pcl_clustering(features, list(num_clusters), temperature=self.T, seed=seed,
                              n_init=n_init, max_iter=max_iter, backend=backend)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, index: Optional[torch.Tensor] = None,
                cluster_result: Optional[Dict[str, List[torch.Tensor]]] = None) -> LossOutput:
        """InfoNCE over the queue, plus ProtoNCE (averaged over clusterings) when
        ``cluster_result`` (from :meth:`compute_clusters`) and the batch's data-set ``index``
        are given. Updates the key encoder and the queue.

        Distributed (a process group of ``W`` ranks): every rank passes its shard of the global
        batch (``im_q``, ``im_k`` and ``index``: contiguous shards in rank order, at least one
        row each) and the same ``cluster_result``; batch norm layers of the encoders should be
        :class:`deepclust.distributed.GroupBatchNorm`. The keys and indices of all ranks are
        gathered: the queue receives the global batch's keys (the same queue on every rank),
        the positive prototypes are those of the global batch (the columns of every row's
        ProtoNCE softmax) and the negatives are sampled from them with :attr:`generator`
        (which must be in the same state on every rank). The returned ``total`` has the
        *value* of the global batch's loss (as have ``components``) and the *gradient* of
        this rank's part of it (its rows' terms over the global row count): summing the
        gradients over the ranks gives the global batch's gradient."""
        if get_group(self.group) is not None:
            return self._forward_group(im_q, im_k, index, cluster_result, get_group(self.group))
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update()
            k = F.normalize(self.encoder_k(im_k), dim=1)
        loss = info_nce_loss(q, k, self.queue.clone(), tau=self.T)
        parts = {"info_nce": float(loss.detach())}
        self._enqueue(k)
        if cluster_result is not None:
            if index is None:
                raise ValueError("index is required with cluster_result")
            proto = self._proto_nce(q, index, cluster_result)
            parts["proto_nce"] = float(proto.detach())
            loss = loss + proto
        return LossOutput(loss, parts)

    def _proto_nce(self, q, index, cluster_result, offset: int = 0) -> torch.Tensor:
        """ProtoNCE of the rows of ``q`` (:func:`deepclust.nn.pcl.proto_nce_loss`)."""
        return proto_nce_loss(q, index, cluster_result["centroids"], cluster_result["density"],
                              cluster_result["im2cluster"], self.r_proto, self.generator,
                              offset=offset, impl=self.impl)

    def _forward_group(self, im_q, im_k, index, cluster_result, group) -> LossOutput:
        """:meth:`forward` over a process group (see there)."""
        if cluster_result is not None and index is None:
            raise ValueError("index is required with cluster_result")
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update()
            k = F.normalize(self.encoder_k(im_k), dim=1)
        b = q.shape[0]
        sizes = [int(s) for s in all_gather_no_grad(torch.tensor([b], device=q.device), group)]
        if min(sizes) < 1:
            raise ValueError(f"every rank needs at least one row, got shard sizes {sizes}")
        total_rows = sum(sizes)
        offset = sum(sizes[:torch.distributed.get_rank(group)])
        share = b / total_rows
        # each rank's rows: their own keys against the (common) queue
        info = info_nce_loss(q, k, self.queue.clone(), tau=self.T) * share
        self._enqueue(_gather_rows(k, sizes, group))
        terms = [info]
        if cluster_result is not None:
            index_all = _gather_rows(index.to(q.device), sizes, group)
            # the global batch's positives are every row's columns; this rank's rows from offset
            terms.append(self._proto_nce(q, index_all, cluster_result, offset) * share)
        part = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        values = all_reduce_sum(torch.stack([t.detach().double() for t in terms]), group)
        parts = {"info_nce": float(values[0])}
        if len(terms) > 1:
            parts["proto_nce"] = float(values[1])
        glob = values.sum().to(part.dtype)
        return LossOutput(part + (glob - part.detach()), parts)


def _gather_rows(t: torch.Tensor, sizes: List[int], group) -> torch.Tensor:
    """Every rank's rows of ``t`` (``sizes[r]`` rows on rank ``r``), concatenated in rank
    order, without gradient."""
    pad = max(sizes) - t.shape[0]
    if pad:
        t = torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))])
    full = all_gather_no_grad(t, group)
    m = max(sizes)
    return torch.cat([full[r * m:r * m + s] for r, s in enumerate(sizes)])


# ----------------------------------------------------------------------------- CLI
def _augment(x: torch.Tensor, g: torch.Generator, noise: float, drop: float) -> torch.Tensor:
    """Feature-space views: Gaussian noise (scaled by each feature's std) and random masking."""
    std = x.std(0, keepdim=True) + 1e-6
    out = x + noise * std * torch.randn(x.shape, generator=g, device=x.device)
    return out * (torch.rand(x.shape, generator=g, device=x.device) > drop)


def _broadcast(obj, device):
    """Rank 0's ``obj`` (tensors, or dicts/lists of them) on every rank, tensors on ``device``."""
    import torch.distributed as dist

    def move(o, dev):
        if isinstance(o, torch.Tensor):
            return o.to(dev)
        if isinstance(o, dict):
            return {key: move(v, dev) for key, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(move(v, dev) for v in o)
        return o

    box = [move(obj, "cpu")]
    dist.broadcast_object_list(box, src=0)
    return move(box[0], device)


def cli_fit(data, config: FitConfig = FitConfig()) -> dict:
    """Train PCL on ``data.x`` and cluster the momentum features with k-means.

    Images (``data.image_shape``; USPS, MNIST, digits): an MLP backbone
    (:class:`~deepclust.models._images.ImageMLP`, C*H*W -> 512 -> 256) and a linear head to 128
    dimensions, as the paper's encoder ends in a 128-d projection; both views drawn from one
    augmentation distribution, as MoCo v2 and PCL do, here
    :func:`~deepclust.data.augment.strong_augment` (affine with shear, contrast, noise,
    erasing: the digits' version of their crops and colour jitter); batch 256, Adam (lr 1e-3,
    weight decay 1e-5) with cosine decay, queue 4096, m = 0.99, T = 0.2, 60 epochs (some 3
    minutes on one CPU core for USPS) of which the first 6 warm up without ProtoNCE (the paper:
    20 of 200), clusterings with ``[k, 2k]`` clusters refreshed every 2 epochs. Why: the
    paper's 200 epochs and m = 0.999 are out of a CPU's reach; with m = 0.99 the key encoder
    follows in a few hundred steps; on USPS (seed 0) strong views on both sides gave ACC 0.81
    after 30 epochs where weak ones gave 0.67, and 60 epochs gave 0.83.

    Other data (feature rows; the previous default, well under a minute on CPU): MLP encoder
    d-256-64, batch 256, Adam lr 1e-3, 12 epochs of which 2 warm-up epochs without ProtoNCE,
    queue 1024, m = 0.99, T = 0.2, views by Gaussian noise (0.2 std) and 20 % feature masking.

    Both: clusterings with scikit-learn k-means (5 restarts and 20 iterations, the release's
    faiss setting; scikit-learn because it is the fastest on the CPU); ``pred`` is the
    k-cluster k-means of the final momentum features.

    With ``config.checkpoint`` a checkpoint (model with its queue, optimiser, both generators,
    the current clustering, epoch) is written after every epoch; ``config.resume`` continues
    from it.

    Under ``torch.distributed`` (``deepclust fit --nproc N`` or torchrun) every rank draws the
    whole batch and both of its views from the shared generator and keeps its contiguous shard;
    batch norm (of both encoders) takes its statistics over the group
    (:class:`deepclust.distributed.GroupBatchNorm`), the queue receives the keys of the whole
    batch and ProtoNCE's positives/negatives are the global batch's (:meth:`PCL.forward`), and
    the gradients are summed, so every step is the one of one process on the global batch
    within float tolerance. The clusterings (every refresh and the final labels) are computed
    by rank 0 from the features of the whole data set and broadcast, so every rank uses the
    same ones. The batch must split evenly over the processes.
    """
    from tqdm.auto import tqdm

    from .. import distributed
    from ..checkpoint import Checkpointer, cpu_state

    ck = Checkpointer.from_config(config, "pcl", data.name)

    torch.manual_seed(config.seed)
    dev = torch.device(config.device)
    g = torch.Generator(device=dev).manual_seed(config.seed)
    image = data.image_shape is not None
    n, k = data.x.shape[0], data.n_clusters
    if image:
        x = images_of(data, dev)
        epochs = 60 if config.epochs is None else int(config.epochs)
        enc, dim, r = nn.Sequential(ImageMLP(data.image_shape, 256), nn.Linear(256, 128)), 128, 4096
        views = lambda xb: (strong_augment(xb, g), strong_augment(xb, g))  # noqa: E731
    else:
        x = data.x.float().to(dev)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        epochs = 12 if config.epochs is None else int(config.epochs)
        d = x.shape[1]
        enc, dim, r = nn.Sequential(nn.Linear(d, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 64)), 64, 1024
        views = lambda xb: (_augment(xb, g, 0.2, 0.2), _augment(xb, g, 0.2, 0.2))  # noqa: E731
    warmup, every, bs = min(6 if image else 5, max(epochs // 5, 0)), 2, min(256, n)
    model = PCL(enc, dim=dim, r=r, m=0.99, T=0.2, impl=config.impl,
                generator=torch.Generator(device=dev).manual_seed(config.seed)).to(dev)
    world = distributed.world_size()
    model, sl = distributed.data_parallel(model, bs, "PCL")
    opt = torch.optim.Adam(model.encoder_q.parameters(), lr=1e-3, weight_decay=1e-5 if image else 0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * (n // bs))) if image else None
    num_clusters = [c for c in (k, 2 * k) if c <= n]
    clusters, last, e0 = None, {}, 0
    resumed = ck.resume_state()
    if resumed is not None:
        progress, st = resumed
        g.set_state(st["gen"])
        model.generator.set_state(st["gen_proto"])
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        if sched is not None:
            sched.load_state_dict(st["sched"])
        clusters = None if st["clusters"] is None else {
            key: [t.to(dev) for t in val] for key, val in st["clusters"].items()}
        e0, last = int(progress["epoch"]), dict(st["last"])
        ck.restore_rng()
    for ep in tqdm(range(e0, epochs), desc="pcl", disable=not config.progress, initial=e0, total=epochs):
        if ep >= warmup and (ep - warmup) % every == 0:
            model.eval()
            clusters = None
            if distributed.rank() == 0:
                clusters = model.compute_clusters(model.embed(x), num_clusters, seed=config.seed + ep,
                                                  n_init=5, max_iter=20, backend="sklearn")
            if world > 1:
                clusters = _broadcast(clusters, dev)
            model.train()
        perm = torch.randperm(n, generator=g, device=dev)
        for i in range(0, n - bs + 1, bs):
            idx = perm[i:i + bs]
            im_q, im_k = views(x[idx])
            if world > 1:  # every rank drew the whole batch's views; each keeps its shard
                idx, im_q, im_k = idx[sl], im_q[sl], im_k[sl]
            out = model(im_q, im_k, index=idx, cluster_result=clusters if ep >= warmup else None)
            opt.zero_grad()
            out.total.backward()
            if world > 1:
                distributed.all_reduce_gradients(model.encoder_q.parameters())
            opt.step()
            if sched is not None:
                sched.step()
            last = out.components
        if ck.enabled:
            ck.save({"epoch": ep + 1},
                    {"model": cpu_state(model), "opt": opt.state_dict(), "gen": g.get_state(),
                     "sched": None if sched is None else sched.state_dict(),
                     "gen_proto": model.generator.get_state(), "last": dict(last),
                     "clusters": None if clusters is None else {
                         key: [t.detach().cpu() for t in val] for key, val in clusters.items()}})
    model.eval()
    labels = None
    if distributed.rank() == 0:
        feats = model.embed(x)
        labels = pcl_clustering(feats, [k], temperature=model.T, seed=config.seed,
                                backend="sklearn")["im2cluster"][0]
    if world > 1:
        labels = _broadcast(labels, dev)
    return {"pred": labels.cpu().numpy().astype(np.int64), **{k_: float(v) for k_, v in last.items()}}
