"""The loaders of the shared benchmark data (deepclust/data/loaders.py): sizes, value ranges and
clean graphs (undirected, coalesced, no self-loops), and the error for a missing file."""
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
