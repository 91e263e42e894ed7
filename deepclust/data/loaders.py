"""Loaders of the standard deep-clustering benchmarks from a local folder.

The folder holds one sub-folder a source: ``planetoid/{Cora,CiteSeer}/raw``,
``amazon/Photo/raw``, ``sdcn``, ``wiki``, ``usps``, ``mnist``, ``pendigits`` (the files each
loader reads are named in its docstring). Nothing is
downloaded and nothing is written under the root (it may be read-only): graph files are parsed
with PyG's own readers (``read_planetoid_data``, ``read_npz``), the rest with numpy/scipy/h5py.
A missing file raises ``FileNotFoundError`` naming its path.

Graphs come back with ``edge_index`` undirected (both directions), coalesced and without
self-loops.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .datasets import Dataset


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


def _clean_edges(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

    ei = edge_index.long()
    ei, _ = remove_self_loops(ei)
    ei = to_undirected(ei, num_nodes=num_nodes)
    return coalesce(ei, num_nodes=num_nodes)


def load_planetoid(root, name: str) -> Dataset:
    """Cora or CiteSeer from ``root/planetoid/<name>/raw/ind.<name>.*`` (PyG's reader).

    CiteSeer has 15 isolated test nodes without features or label in the raw files; PyG gives
    them zero features and label 0, and so do we (the standard convention).
    """
    from torch_geometric.io import read_planetoid_data

    raw = Path(root) / "planetoid" / name / "raw"
    for suffix in ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index"):
        _need(raw / f"ind.{name.lower()}.{suffix}")
    data = read_planetoid_data(str(raw), name.lower())
    x = data.x.float()
    return Dataset(x, data.y.long(), name.lower(), edge_index=_clean_edges(data.edge_index, x.shape[0]))


def load_amazon_photo(root) -> Dataset:
    """Amazon Photo (AMAP) from ``root/amazon/Photo/raw/amazon_electronics_photo.npz``."""
    from torch_geometric.io import read_npz

    path = _need(Path(root) / "amazon" / "Photo" / "raw" / "amazon_electronics_photo.npz")
    data = read_npz(str(path), to_undirected=True)
    x = data.x.float()
    return Dataset(x, data.y.long(), "amap", edge_index=_clean_edges(data.edge_index, x.shape[0]))


def load_sdcn(root, name: str) -> Dataset:
    """ACM or DBLP in SDCN's text format: ``root/sdcn/<name>.txt`` (features),
    ``<name>_label.txt`` and ``<name>_graph.txt`` (0-based edge list)."""
    base = Path(root) / "sdcn"
    x = np.loadtxt(_need(base / f"{name}.txt"), dtype=np.float32)
    y = np.loadtxt(_need(base / f"{name}_label.txt"), dtype=np.int64)
    edges = np.loadtxt(_need(base / f"{name}_graph.txt"), dtype=np.int64).reshape(-1, 2)
    n = x.shape[0]
    ei = _clean_edges(torch.from_numpy(edges.T.copy()), n)
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), name, edge_index=ei)


def load_wiki(root) -> Dataset:
    """Wiki (AGC's ``wiki.mat``): TF-IDF features ``fea``, labels ``gnd`` (1..17), graph ``W``."""
    from scipy.io import loadmat

    mat = loadmat(str(_need(Path(root) / "wiki" / "wiki.mat")))
    fea = mat["fea"]
    x = torch.tensor(fea.toarray() if hasattr(fea, "toarray") else fea, dtype=torch.float32)
    y = torch.tensor(np.asarray(mat["gnd"]).ravel().astype(np.int64) - 1)
    w = mat["W"].tocoo()
    ei = torch.tensor(np.vstack([w.row, w.col]).astype(np.int64))
    return Dataset(x, y, "wiki", edge_index=_clean_edges(ei, x.shape[0]))


def load_usps(root) -> Dataset:
    """USPS (``root/usps/usps.h5``): train and test together, 9298 images of 16 x 16 in [0, 1]."""
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is in the test/data extras
        raise ImportError("reading usps.h5 needs h5py (pip install h5py)") from exc
    path = _need(Path(root) / "usps" / "usps.h5")
    with h5py.File(path, "r") as f:
        xs = [np.asarray(f[g]["data"][:], dtype=np.float32) for g in ("train", "test")]
        ys = [np.asarray(f[g]["target"][:], dtype=np.int64) for g in ("train", "test")]
    x = torch.from_numpy(np.concatenate(xs))
    y = torch.from_numpy(np.concatenate(ys))
    return Dataset(x, y, "usps", image_shape=(1, 16, 16))


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        buf = f.read()
    return np.frombuffer(buf, dtype=np.uint8, offset=header)


def load_mnist_test(root) -> Dataset:
    """MNIST test set from the IDX files in ``root/mnist``: 10000 images of 28 x 28 in [0, 1]."""
    base = Path(root) / "mnist"
    img = _read_idx(_need(base / "t10k-images-idx3-ubyte.gz"), 16).reshape(-1, 784)
    lab = _read_idx(_need(base / "t10k-labels-idx1-ubyte.gz"), 8)
    x = torch.tensor(img, dtype=torch.float32) / 255.0
    return Dataset(x, torch.tensor(lab, dtype=torch.long), "mnist-test", image_shape=(1, 28, 28))


def load_pendigits(root) -> Dataset:
    """Pendigits (UCI): train and test together, 10992 x 16 features scaled to [0, 1]."""
    base = Path(root) / "pendigits"
    parts = [np.loadtxt(_need(base / f"pendigits.{s}"), delimiter=",", dtype=np.float32)
             for s in ("tra", "tes")]
    a = np.concatenate(parts)
    x = torch.from_numpy(a[:, :-1] / 100.0)
    y = torch.from_numpy(a[:, -1].astype(np.int64))
    return Dataset(x, y, "pendigits")
