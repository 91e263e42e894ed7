"""The loaders of the shared benchmark data (deepclust/data/loaders.py): sizes, value ranges and
clean graphs (undirected, coalesced, no self-loops), and the error for a missing file."""
import gzip

import numpy as np
import pytest
import torch

from deepclust.data import load
from deepclust.data.loaders import _clean_edges, load_pendigits


def test_clean_edges_is_undirected_coalesced_without_self_loops():
    ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 1, 0, 3, 2]])
    out = _clean_edges(ei, 4)
    pairs = set(map(tuple, out.t().tolist()))
    assert pairs == {(0, 1), (1, 0), (0, 2), (2, 0), (2, 3), (3, 2)}
    assert out.shape[1] == len(pairs)  # no duplicates
    keys = out[0] * 4 + out[1]
    assert torch.equal(keys, keys.sort().values)  # coalesced: sorted by (row, col)


def test_missing_file_names_its_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="pendigits.tra"):
        load_pendigits(tmp_path)


# (name, nodes, features, classes, directed edges or None)
EXPECTED = [
    ("cora", 2708, 1433, 7, 10556),
    ("citeseer", 3327, 3703, 6, 9104),
    ("amap", 7650, 745, 8, 238162),
    ("acm", 3025, 1870, 3, 26256),
    ("dblp", 4057, 334, 4, 7056),
    ("wiki", 2405, 4973, 17, 23192),
    ("usps", 9298, 256, 10, None),
    ("mnist-test", 10000, 784, 10, None),
    ("pendigits", 10992, 16, 10, None),
]


@pytest.mark.data
@pytest.mark.parametrize("name,n,d,k,e", EXPECTED, ids=[r[0] for r in EXPECTED])
def test_shared_data_sets(data_root, name, n, d, k, e):
    ds = load(name, data_root)
    assert ds.x.shape == (n, d) and ds.x.dtype == torch.float32
    assert ds.y.shape == (n,) and int(ds.y.min()) == 0 and ds.n_clusters == k
    assert torch.isfinite(ds.x).all()
    if e is None:
        assert ds.edge_index is None
        assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    else:
        ei = ds.edge_index
        assert ei.shape == (2, e)
        assert (ei[0] != ei[1]).all() and int(ei.max()) < n

    if e is not None:  # undirected: every edge comes with its reverse
        keys = set((ei[0] * n + ei[1]).tolist())
        assert keys == set((ei[1] * n + ei[0]).tolist())


# ----------------------------------------------------------------------------- file formats
# Tiny files written in each source's format under tmp_path (no shared data needed).
def _undirected_simple(ei):
    pairs = set(map(tuple, ei.t().tolist()))
    return all(u != v and (v, u) in pairs for u, v in pairs) and len(pairs) == ei.shape[1]


def test_sdcn_text_format(tmp_path):
    base = tmp_path / "sdcn"
    base.mkdir()
    np.savetxt(base / "acm.txt", np.arange(12, dtype=np.float32).reshape(4, 3))
    np.savetxt(base / "acm_label.txt", np.array([0, 1, 1, 2]), fmt="%d")
    np.savetxt(base / "acm_graph.txt", np.array([[0, 1], [1, 2], [3, 3]]), fmt="%d")
    d = load("acm", tmp_path)
    assert d.x.shape == (4, 3) and d.x.dtype == torch.float32 and d.y.tolist() == [0, 1, 1, 2]
    assert d.is_graph and _undirected_simple(d.edge_index) and d.edge_index.shape[1] == 4


def test_pendigits_scaled_to_unit_range(tmp_path):
    base = tmp_path / "pendigits"
    base.mkdir()
    rows = np.array([[0] * 16 + [3], [100] * 16 + [7]])
    for split in ("tra", "tes"):
        np.savetxt(base / f"pendigits.{split}", rows, fmt="%d", delimiter=",")
    d = load("pendigits", tmp_path)
    assert d.x.shape == (4, 16) and float(d.x.max()) == 1.0 and float(d.x.min()) == 0.0
    assert d.y.tolist() == [3, 7, 3, 7]


def test_mnist_idx_files(tmp_path):
    base = tmp_path / "mnist"
    base.mkdir()
    img = np.arange(2 * 784, dtype=np.uint32) % 256
    with gzip.open(base / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes(16) + img.astype(np.uint8).tobytes())
    with gzip.open(base / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(8) + bytes([4, 9]))
    d = load("mnist-test", tmp_path)
    assert d.x.shape == (2, 784) and d.image_shape == (1, 28, 28) and d.y.tolist() == [4, 9]
    assert float(d.x[0, 255]) == 1.0 and float(d.x[0, 0]) == 0.0


def test_usps_h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    (tmp_path / "usps").mkdir()
    with h5py.File(tmp_path / "usps" / "usps.h5", "w") as f:
        for split, n in (("train", 3), ("test", 2)):
            f.create_group(split).create_dataset("data", data=np.full((n, 256), 0.5, np.float32))
            f[split].create_dataset("target", data=np.arange(n))
    d = load("usps", tmp_path)
    assert d.x.shape == (5, 256) and d.image_shape == (1, 16, 16) and d.y.tolist() == [0, 1, 2, 0, 1]


def test_wiki_mat(tmp_path):
    from scipy.io import savemat
    from scipy.sparse import coo_matrix

    (tmp_path / "wiki").mkdir()
    w = coo_matrix((np.ones(2), ([0, 1], [1, 2])), shape=(3, 3))
    savemat(tmp_path / "wiki" / "wiki.mat", {"fea": np.eye(3), "gnd": np.array([[1], [2], [17]]), "W": w})
    d = load("wiki", tmp_path)
    assert d.y.tolist() == [0, 1, 16] and d.x.shape == (3, 3)
    assert _undirected_simple(d.edge_index) and d.edge_index.shape[1] == 4
