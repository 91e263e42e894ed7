"""DEC: Deep Embedded Clustering (Xie, Girshick, Farhadi, ICML 2016).

An MLP autoencoder is pretrained on reconstruction, the cluster centres are initialised by
k-means on its embeddings, then the encoder and the centres are trained on ``KL(P || Q)`` with
the target ``P`` refreshed over the whole data set every ``update_interval`` iterations. The
loss, assignments and target run through :class:`deepclust.nn.DECClusterHead`.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .. import distributed
from .._common import all_reduce_sum, check_int, check_positive, check_tensor
from ..nn.autoencoder import check_noise, corrupt, mlp
from ..nn.dec_head import DECClusterHead
from ._images import affine_rows

__all__ = ["DEC", "cli_fit"]

Augment = Callable[[Tensor, torch.Generator], Tensor]  # (rows, generator) -> augmented rows


def _bar(total, desc, progress):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


class DEC(nn.Module):
    """Deep Embedded Clustering.

    Encoder ``d -> hidden[0] -> ... -> hidden[-1] -> latent`` and the mirrored decoder, ReLU
    between layers and linear embedding and reconstruction layers (the paper's
    ``d-500-500-2000-10``), and a :class:`~deepclust.nn.DECClusterHead` on the embedding.

    Typical use::

        model = DEC(x.shape[1], n_clusters=10)
        model.pretrain(x, epochs=200)     # autoencoder, MSE, Adam
        model.init_centers(x)             # k-means with 20 restarts on the embeddings
        model.fit(x)                      # KL(P || Q), target refreshed over all data
        labels = model.predict(x)

    Args:
        n_features, n_clusters: input dimension ``d``, number of clusters ``K``.
        hidden: hidden layer sizes of the encoder (default ``(500, 500, 2000)``).
        latent: embedding dimension (default 10).
        alpha: Student's t degrees of freedom (default 1).
        impl: op path of the clustering head, ``"auto"``, ``"triton"`` or ``"torch"``.
    """

    def __init__(self, n_features: int, n_clusters: int, hidden: Sequence[int] = (500, 500, 2000),
                 latent: int = 10, alpha: float = 1.0, *, impl: str = "auto"):
        super().__init__()
        n_features = check_int(n_features, "n_features", minimum=1)
        self.n_clusters = check_int(n_clusters, "n_clusters", minimum=1)
        latent = check_int(latent, "latent", minimum=1)
        hidden = tuple(check_int(h, "hidden", minimum=1) for h in hidden)
        sizes = (n_features,) + hidden + (latent,)
        self.encoder = mlp(sizes)
        self.decoder = mlp(sizes[::-1])
        self.head = DECClusterHead(self.n_clusters, latent, alpha, impl=impl)
        self.n_features, self.latent, self.hidden = n_features, latent, hidden

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.head.cluster_centers.device

    def _prep(self, x: Tensor) -> Tensor:
        check_tensor(x, "x", ndim=2, finite=True)
        if x.shape[1] != self.n_features:
            raise ValueError(f"x must have {self.n_features} features, got shape {tuple(x.shape)}")
        return x.to(self.device, self.head.cluster_centers.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings ``(N, latent)`` of ``x``, with gradient."""
        return self.encoder(x)

    @torch.no_grad()
    def embed(self, x: Tensor, batch_size: int = 4096) -> Tensor:
        """Embeddings of every row of ``x`` (no gradient, evaluated in batches)."""
        x = self._prep(x)
        was = self.training
        self.eval()
        z = torch.cat([self.encoder(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        self.train(was)
        return z

    @torch.no_grad()
    def predict(self, x: Tensor, soft: bool = False) -> Tensor:
        """Hard labels ``(N,)`` (or ``Q`` ``(N, K)`` with ``soft=True``) of ``x``."""
        return self.head.cluster(self.embed(x), soft=soft)

    # ------------------------------------------------------------------ training
    def pretrain(self, x: Tensor, epochs: int = 200, batch_size: int = 256, lr: float = 1e-3,
                 noise: float = 0.2, weight_decay: float = 0.0, seed: int = 0,
                 progress: bool = False, noise_type: str = "dropout", *,
                 augment: Optional[Augment] = None, start: Optional[dict] = None,
                 on_epoch: Optional[Callable[[int, dict], None]] = None) -> List[float]:
        """Train the autoencoder on the mean squared reconstruction error with Adam.

        The input is corrupted (a denoising autoencoder); the target is the clean input. With
        ``noise_type="dropout"`` every input is zeroed with probability ``noise`` and the rest
        scaled by ``1 / (1 - noise)`` (the paper's stacked-autoencoder pretraining used 20%
        dropout); with ``noise_type="gaussian"`` ``noise * N(0, 1)`` is added to every input.

        Args:
            x, epochs, batch_size, lr: data ``(N, d)``, passes over it (default 200), mini-batch
                size (default 256), Adam learning rate (default 1e-3).
            noise: input dropout probability, ``0 <= noise < 1`` (default 0.2), or the standard
                deviation of the Gaussian noise, ``noise >= 0``.
            weight_decay, seed, progress: Adam weight decay (default 0), seed of the batch
                shuffling, a tqdm bar.
            noise_type: ``"dropout"`` (default) or ``"gaussian"``.
            augment: ``augment(rows, generator) -> rows``, applied to every batch before the
                noise; the augmented batch is then also the target (DEC-DA's pretraining).
            start: a loop state given to ``on_epoch`` by an earlier call (resume from it).
            on_epoch: called as ``on_epoch(epochs_done, loop_state)`` at the end of every
                epoch; ``loop_state`` (optimiser, generators, history) is what ``start`` takes.

        Under an initialised ``torch.distributed`` group every rank draws the whole batch and
        its noise, trains on its shard (:func:`deepclust.distributed.shard`) and the gradients
        are summed with weights ``rows / batch rows``: the step of the global batch mean.

        Returns:
            The mean loss of every epoch (on the corrupted inputs).
        """
        x = self._prep(x)
        epochs = check_int(epochs, "epochs", minimum=0)
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        opt = torch.optim.Adam(params, lr=check_positive(lr, "lr"), weight_decay=weight_decay)
        noise = check_noise(noise, noise_type)
        gen = torch.Generator().manual_seed(int(seed))
        ngen = torch.Generator(device=x.device).manual_seed(int(seed))
        n = x.shape[0]
        history: List[float] = []
        e0 = 0
        if start is not None:
            opt.load_state_dict(start["opt"])
            gen.set_state(start["gen"])
            ngen.set_state(start["ngen"])
            history, e0 = list(start["history"]), int(start["epoch"])
        world = distributed.world_size()
        self.train()
        with _bar(epochs, "DEC pretrain", progress) as bar:
            bar.update(min(e0, epochs))
            for ep in range(e0, epochs):
                perm = torch.randperm(n, generator=gen).to(x.device)
                total = torch.zeros((), device=x.device)
                for i in range(0, n, batch_size):
                    xb = x[perm[i:i + batch_size]]
                    if augment is not None:
                        xb = augment(xb, ngen)
                    xin = corrupt(xb, noise, noise_type, ngen)
                    if world == 1:
                        loss = (self.decoder(self.encoder(xin)) - xb).pow(2).mean()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        total += loss.detach() * xb.shape[0]
                        continue
                    nb, sl = xb.shape[0], distributed.shard(xb.shape[0])
                    xb, xin = xb[sl], xin[sl]
                    opt.zero_grad(set_to_none=True)
                    if xb.shape[0]:
                        loss = (self.decoder(self.encoder(xin)) - xb).pow(2).mean()
                        (loss * (xb.shape[0] / nb)).backward()
                        total += loss.detach() * xb.shape[0]
                    else:
                        distributed.zero_grads(params)
                    distributed.all_reduce_gradients(params)
                    opt.step()
                if world > 1:
                    total = all_reduce_sum(total)
                history.append(float(total) / n)
                bar.set_postfix(mse=f"{history[-1]:.4f}")
                bar.update()
                if on_epoch is not None:
                    on_epoch(ep + 1, {"epoch": ep + 1, "opt": opt.state_dict(), "gen": gen.get_state(),
                                      "ngen": ngen.get_state(), "history": list(history)})
        return history

    @torch.no_grad()
    def init_centers(self, x: Tensor, n_init: int = 20, seed: int = 0) -> Tensor:
        """Set the cluster centres by k-means (``n_init`` restarts) on the embeddings of ``x``.

        Returns:
            The k-means labels ``(N,)``.
        """
        from ..cluster import kmeans

        z = self.embed(x)
        res = kmeans(z, self.n_clusters, n_init=n_init, seed=seed, impl=self.head.impl)
        self.head.reset_cluster_centers(res.centers)
        self.head.clear_target()
        return res.labels

    def fit(self, x: Tensor, epochs: Optional[int] = None, max_iter: Optional[int] = None,
            batch_size: int = 256, update_interval: int = 140, tol: float = 1e-3,
            lr: float = 0.01, momentum: float = 0.9, optimizer: str = "sgd", seed: int = 0,
            progress: bool = False, *, augment: Optional[Augment] = None,
            start: Optional[dict] = None,
            on_epoch: Optional[Callable[[int, dict], None]] = None) -> Dict[str, object]:
        """Train the encoder and the centres on DEC's ``KL(P || Q)``.

        Mini-batches are drawn from shuffled epochs and carry their sample ids. Every
        ``update_interval`` iterations the embeddings of the whole data set are computed, the
        target ``P`` is refreshed from them (:meth:`DECClusterHead.update_target`, frequencies
        over all samples) and the hard labels are compared with those of the previous refresh:
        training stops when fewer than a fraction ``tol`` of them changed. Call
        :meth:`init_centers` first.

        Args:
            x: data, ``(N, d)``.
            epochs: training length in passes over the data; ignored when ``max_iter`` is given.
                With neither, ``max_iter = 20000`` (the paper's Keras code).
            max_iter: training length in iterations (mini-batches).
            batch_size: mini-batch size (default 256, as in the paper).
            update_interval: iterations between target refreshes (default 140).
            tol: stopping threshold on the fraction of changed labels (default 0.001 = 0.1%).
            lr, momentum: learning rate (default 0.01) and momentum (0.9) of the paper's SGD.
            optimizer: ``"sgd"`` or ``"adam"``.
            seed, progress: seed of the batch shuffling; a tqdm bar.
            augment: ``augment(rows, generator) -> rows``: the encoder sees every training
                batch augmented while the target ``P`` comes from the clean data (DEC-DA).
            start: a loop state given to ``on_epoch`` by an earlier call (resume from it).
            on_epoch: called as ``on_epoch(iteration, loop_state)`` after every target refresh
                that does not end training; ``loop_state`` (optimiser, generator, permutation,
                counters, the cached targets) is what ``start`` takes.

        Under an initialised ``torch.distributed`` group every rank refreshes the target from
        the whole data set (the same ``P`` everywhere, so sharding does not change ``P``'s
        cluster frequencies), draws the same permutation, trains on its shard of every batch,
        and the gradients are summed with weights ``rows / batch rows``: ``KL(P || Q)`` is a
        mean of per-row terms, so this is the step of the global batch mean.

        Returns:
            ``{"iterations": int, "refreshes": int, "delta_label": float (last change
            fraction), "losses": list of the mean loss between refreshes, "converged": bool}``.
        """
        x = self._prep(x)
        n = x.shape[0]
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        update_interval = check_int(update_interval, "update_interval", minimum=1)
        if max_iter is None:
            max_iter = 20000 if epochs is None else check_int(epochs, "epochs", minimum=0) * math.ceil(n / batch_size)
        max_iter = check_int(max_iter, "max_iter", minimum=0)
        lr = check_positive(lr, "lr")
        if optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters_for_fit(), lr=lr, momentum=momentum)
        elif optimizer == "adam":
            opt = torch.optim.Adam(self.parameters_for_fit(), lr=lr)
        else:
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        gen = torch.Generator().manual_seed(int(seed))
        agen = torch.Generator(device=x.device).manual_seed(int(seed))
        ids = torch.arange(n, device=x.device)
        perm, pos = torch.randperm(n, generator=gen).to(x.device), 0
        prev = None
        delta, refreshes, converged, it = float("nan"), 0, False, 0
        losses: List[float] = []
        run_loss, run_n = torch.zeros((), device=x.device), 0
        it0 = 0
        if start is not None:
            opt.load_state_dict(start["opt"])
            gen.set_state(start["gen"])
            agen.set_state(start["agen"])
            it0, pos, refreshes = int(start["it"]), int(start["pos"]), int(start["refreshes"])
            perm, delta, losses = start["perm"].to(x.device), float(start["delta"]), list(start["losses"])
            prev = None if start["prev"] is None else start["prev"].to(x.device)
            head = self.head
            head._target_bank = start["target_bank"].to(x.device)
            head._target_valid = start["target_valid"].to(x.device)
            cached = start["cached_target"]
            head._cached_target = None if cached is None else cached.to(x.device)
        world = distributed.world_size()
        params = self.parameters_for_fit()
        self.train()
        with _bar(max_iter, "DEC fit", progress) as bar:
            bar.update(min(it0, max_iter))
            for it in range(it0, max_iter + 1):
                if (it % update_interval == 0 or it == max_iter) and not (start is not None and it == it0):
                    z_all = self.embed(x)
                    self.head.update_target(z_all, index=ids)
                    labels = self.head.cluster(z_all)
                    refreshes += 1
                    if run_n:
                        if world > 1:
                            run_loss = all_reduce_sum(run_loss)
                        losses.append(float(run_loss) / run_n)
                        run_loss, run_n = torch.zeros((), device=x.device), 0
                    if prev is not None:
                        delta = float((labels != prev).float().mean())
                        bar.set_postfix(delta=f"{delta:.4f}")
                        if delta < tol:
                            converged = True
                            break
                    prev = labels
                    if on_epoch is not None:
                        on_epoch(it, {"it": it, "pos": pos, "refreshes": refreshes, "perm": perm,
                                      "delta": delta, "losses": list(losses), "prev": prev,
                                      "opt": opt.state_dict(), "gen": gen.get_state(),
                                      "agen": agen.get_state(),
                                      "target_bank": self.head._target_bank,
                                      "target_valid": self.head._target_valid,
                                      "cached_target": self.head._cached_target})
                if it == max_iter:
                    break
                if pos >= n:  # a new epoch: a new permutation (the last batch may be short)
                    perm, pos = torch.randperm(n, generator=gen).to(x.device), 0
                idx = perm[pos:pos + batch_size]
                pos += batch_size
                xb = x[idx] if augment is None else augment(x[idx], agen)
                if world == 1:
                    loss = self.head(self.encoder(xb), update_target=False, index=idx)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                else:
                    nb, sl = idx.shape[0], distributed.shard(idx.shape[0])
                    idx, xb = idx[sl], xb[sl]
                    opt.zero_grad(set_to_none=True)
                    if idx.shape[0]:
                        loss = self.head(self.encoder(xb), update_target=False, index=idx)
                        loss = loss * (idx.shape[0] / nb)
                        loss.backward()
                    else:
                        loss = torch.zeros((), device=x.device)
                        distributed.zero_grads(params)
                    distributed.all_reduce_gradients(params)
                    opt.step()
                run_loss += loss.detach()
                run_n += 1
                bar.update()
        return {"iterations": it, "refreshes": refreshes, "delta_label": delta,
                "losses": losses, "converged": converged}

    def parameters_for_fit(self):
        """The parameters trained by :meth:`fit`: the encoder and the cluster centres."""
        return list(self.encoder.parameters()) + list(self.head.parameters())


# ---------------------------------------------------------------------------- CLI hook
def _scale(x: Tensor, is_image: bool) -> Tensor:
    """Scale the inputs as the DEC paper does: images and data in [0, 1] by one global factor
    so that ``||x_i||^2 / d`` is 1 on average; other features standardised per feature (which
    gives the same average)."""
    if is_image or (float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
        return x * (x.shape[1] / x.pow(2).sum(1).mean().clamp_min(1e-12)).sqrt()
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-8)


def _defaults(n: int, d: int, image_shape=None) -> dict:
    """Architecture and schedule by input size; the paper's network for large inputs, and
    DEC-DA's augmented training for images of at least 16 x 16 pixels."""
    hidden = (128, 128, 512) if d <= 100 else (500, 500, 2000)  # small d: seconds on a CPU
    if image_shape is not None and min(image_shape[1:]) >= 16:
        return dict(hidden=hidden, latent=10, pretrain_epochs=40, fit_epochs=30, noise=0.0,
                    augment=affine_rows(image_shape))
    return dict(hidden=hidden, latent=10, pretrain_epochs=200, fit_epochs=60, noise=0.5, augment=None)


def cli_fit(data, config) -> dict:
    """``deepclust fit dec``: pretrain, k-means initialisation, DEC training, prediction.

    Defaults (``config.epochs=None``; it sets both phases' epochs): inputs scaled by
    :func:`_scale` (the paper's ``||x||^2 / d ~ 1``); a ``d-128-128-512-10`` autoencoder for
    ``d <= 100`` (digits, pendigits, blobs), else the paper's ``d-500-500-2000-10``; denoising
    pretraining, additive Gaussian input noise of standard deviation 0.5 (a feature's RMS is
    about 1), 200 epochs of Adam (lr 1e-3, batch 256); centres from k-means with 20 restarts on
    the embeddings; DEC training with Adam (lr 1e-3, batch 256) for at most 60 epochs, target
    refreshed every ``ceil(N / 256)`` iterations (one epoch), stopping below 0.1% changed
    labels. Images of 16 x 16 pixels or more (USPS, MNIST) train as DEC-DA (Guo et al., ACML
    2018): every batch of both phases randomly shifted (+-8%), rotated (+-10 deg) and zoomed
    (0.9-1.1) instead of noised, ``P`` from the clean images, 40 pretraining and at most 30 DEC
    epochs (some 4 minutes on one CPU core for USPS); the paper's plain recipe needs its 200
    pretraining epochs (some 10 minutes there) and gave less (USPS seed 0: 0.74 after 40).

    Why: on the embedded digits Gaussian input noise gave steadier embeddings than dropout or
    none, and Adam beat the paper's SGD for the DEC phase; single seeds vary by a few points.

    ``config.checkpoint``: a checkpoint after every pretraining epoch and target refresh
    (model, optimiser, generators, cached targets, loop counters, the k-means labels on the raw
    features); ``config.resume`` continues from it. Under ``torch.distributed`` the batches are
    sharded (:meth:`DEC.pretrain`, :meth:`DEC.fit`); every rank refreshes the target from all data.

    Returns:
        ``{"pred": labels, "kmeans_pred": k-means labels on the raw features,
        "pretrain_seconds": float}``.
    """
    from ..checkpoint import Checkpointer, cpu_state
    from ..cluster import kmeans

    dev = torch.device(config.device)
    ck = Checkpointer.from_config(config, "dec", data.name)
    resumed = ck.resume_state()
    phase, saved = (resumed[0]["phase"], resumed[1]) if resumed else (None, None)
    x_raw = data.x.to(dev, torch.float32)
    n, d = x_raw.shape
    k = data.n_clusters
    if saved is None:
        kmeans_pred = kmeans(x_raw, k, n_init=10, seed=config.seed, impl=config.impl).labels
    else:  # computed before the main loop: restored, not redone
        kmeans_pred = saved["kmeans_pred"].to(dev)
    x = _scale(x_raw, data.is_image)
    cfg = _defaults(n, d, data.image_shape if data.is_image else None)
    pre_epochs = cfg["pretrain_epochs"] if config.epochs is None else config.epochs
    fit_epochs = cfg["fit_epochs"] if config.epochs is None else config.epochs
    torch.manual_seed(config.seed)
    model = DEC(d, k, hidden=cfg["hidden"], latent=cfg["latent"], impl=config.impl).to(dev)
    pre_before = 0.0 if saved is None else float(saved["pretrain_seconds"])
    if saved is not None:
        model.load_state_dict(saved["model"])
        ck.restore_rng()
    t0 = time.perf_counter()

    def save(progress, loop, pre_seconds):
        ck.save(progress, {"model": cpu_state(model), "loop": loop, "kmeans_pred": kmeans_pred.cpu(),
                           "pretrain_seconds": pre_seconds})

    if phase in (None, "pretrain"):
        def on_pretrain(epoch, loop):
            save({"phase": "pretrain", "epoch": epoch}, loop, pre_before + time.perf_counter() - t0)

        model.pretrain(x, epochs=pre_epochs, noise=cfg["noise"], noise_type="gaussian",
                       seed=config.seed, augment=cfg["augment"], progress=config.progress,
                       start=saved["loop"] if phase == "pretrain" else None,
                       on_epoch=on_pretrain if ck.enabled else None)
        pretrain_seconds = pre_before + time.perf_counter() - t0
        model.init_centers(x, n_init=20, seed=config.seed)
        distributed.broadcast_module(model)
    else:
        pretrain_seconds = pre_before

    def on_fit(it, loop):
        save({"phase": "fit", "iteration": it}, loop, pretrain_seconds)

    model.fit(x, epochs=fit_epochs, update_interval=math.ceil(n / 256), lr=1e-3,
              optimizer="adam", seed=config.seed, progress=config.progress, augment=cfg["augment"],
              start=saved["loop"] if phase == "fit" else None, on_epoch=on_fit if ck.enabled else None)
    pred = model.predict(x)
    return {"pred": pred.cpu().numpy(), "kmeans_pred": kmeans_pred.cpu().numpy(),
            "pretrain_seconds": round(pretrain_seconds, 3)}
