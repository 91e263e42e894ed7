"""Data set container, embedded and synthetic sets, and the dispatcher by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch


@dataclass
class Dataset:
    """A clustering data set.

    Attributes:
        x: features, float32 (N x d).
        y: ground-truth labels, int64 (N,), used only for evaluation.
        name: short name.
        edge_index: for graphs, int64 (2 x E), both directions of every undirected edge, no
            self-loops; ``None`` for feature data.
        image_shape: ``(C, H, W)`` when the rows of ``x`` are flattened images, else ``None``.
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str
    edge_index: Optional[torch.Tensor] = None
    image_shape: Optional[Tuple[int, int, int]] = None
    info: dict = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def n_clusters(self) -> int:
        return int(torch.unique(self.y).numel())

    @property
    def is_graph(self) -> bool:
        return self.edge_index is not None

    @property
    def is_image(self) -> bool:
        return self.image_shape is not None

    def __repr__(self) -> str:
        kind = "graph" if self.is_graph else ("images" if self.is_image else "features")
        e = f", edges={self.edge_index.shape[1]}" if self.is_graph else ""
        return f"Dataset({self.name}: {kind}, n={self.x.shape[0]}, d={self.x.shape[1]}, k={self.n_clusters}{e})"


def load_digits() -> Dataset:
    """scikit-learn's 8 x 8 handwritten digits (1797 samples, 10 classes), scaled to [0, 1].

    Ships inside scikit-learn: the embedded default, no download.
    """
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    return Dataset(x, y, "digits", image_shape=(1, 8, 8))


def make_blobs(n_samples: int = 2000, n_features: int = 10, n_clusters: int = 5, *,
               cluster_std: float = 1.0, seed: int = 0) -> Dataset:
    """Isotropic Gaussian blobs (scikit-learn's generator)."""
    from sklearn.datasets import make_blobs as _mb

    x, y = _mb(n_samples=n_samples, n_features=n_features, centers=n_clusters,
               cluster_std=cluster_std, random_state=seed)
    return Dataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long), "blobs")


def make_sbm(n_nodes: int = 1000, n_clusters: int = 4, n_features: int = 32, *,
             p_in: float = 0.05, p_out: float = 0.005, feature_noise: float = 1.0,
             seed: int = 0) -> Dataset:
    """A stochastic block model graph with Gaussian features centred per block.

    Blocks have (nearly) equal size; an edge joins two nodes of one block with probability
    ``p_in`` and of different blocks with ``p_out``. Features are the block's random mean plus
    ``feature_noise`` x standard normal noise.
    """
    from torch_geometric.utils import stochastic_blockmodel_graph, to_undirected, remove_self_loops

    g = torch.Generator().manual_seed(seed)
    sizes = [n_nodes // n_clusters + (1 if i < n_nodes % n_clusters else 0) for i in range(n_clusters)]
    probs = torch.full((n_clusters, n_clusters), p_out)
    probs.fill_diagonal_(p_in)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        ei = stochastic_blockmodel_graph(sizes, probs, directed=False)
    finally:
        torch.random.set_rng_state(state)
    ei, _ = remove_self_loops(to_undirected(ei, num_nodes=n_nodes))
    y = torch.repeat_interleave(torch.arange(n_clusters), torch.tensor(sizes))
    means = torch.randn(n_clusters, n_features, generator=g)
    x = means[y] + feature_noise * torch.randn(n_nodes, n_features, generator=g)
    return Dataset(x.float(), y, "sbm", edge_index=ei)


def _registry():
    from importlib import import_module

    def L(fn, *a):
        return lambda root: getattr(import_module(".loaders", __package__), fn)(root, *a)

    return {
        "digits": lambda root: load_digits(),
        "blobs": lambda root: make_blobs(),
        "sbm": lambda root: make_sbm(),
        "cora": L("load_planetoid", "Cora"),
        "citeseer": L("load_planetoid", "CiteSeer"),
        "amap": L("load_amazon_photo"),
        "acm": L("load_sdcn", "acm"),
        "dblp": L("load_sdcn", "dblp"),
        "wiki": L("load_wiki"),
        "usps": L("load_usps"),
        "mnist-test": L("load_mnist_test"),
        "pendigits": L("load_pendigits"),
    }


DATASETS = ("digits", "blobs", "sbm", "cora", "citeseer", "amap", "acm", "dblp", "wiki",
            "usps", "mnist-test", "pendigits")
GRAPH_DATASETS = ("sbm", "cora", "citeseer", "amap", "acm", "dblp", "wiki")
IMAGE_DATASETS = ("digits", "usps", "mnist-test")


def load(name: str, root=None) -> Dataset:
    """Load a data set by name: embedded/synthetic (``digits``, ``blobs``, ``sbm``) or from
    ``root`` laid out as :mod:`deepclust.data.loaders` describes (``cora``, ``citeseer``,
    ``amap``, ``acm``, ``dblp``, ``wiki``, ``usps``, ``mnist-test``, ``pendigits``).

    Raises:
        ValueError: unknown name, or a file data set without ``root``.
        FileNotFoundError: a file under ``root`` is missing (the message names its path).
    """
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if key not in ("digits", "blobs", "sbm") and root is None:
        raise ValueError(f"data set {name!r} is read from a local folder: pass root (--root DIR)")
    return _registry()[key](root)
