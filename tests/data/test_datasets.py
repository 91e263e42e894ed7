import pytest
import torch

from deepclust.data import DATASETS, load, load_digits, make_blobs, make_sbm


def test_digits_embedded():
    d = load_digits()
    assert d.x.shape == (1797, 64) and d.x.dtype == torch.float32
    assert 0.0 <= d.x.min() and d.x.max() <= 1.0
    assert d.n_clusters == 10 and d.image_shape == (1, 8, 8) and not d.is_graph


def test_blobs_and_sbm():
    b = make_blobs(300, 5, 3, seed=1)
    assert b.x.shape == (300, 5) and b.n_clusters == 3
    g = make_sbm(200, 4, 16, seed=2)
    ei = g.edge_index
    assert g.x.shape == (200, 16) and ei.shape[0] == 2 and ei.dtype == torch.long
    assert (ei[0] != ei[1]).all(), "self-loops"
    # undirected: every edge appears in both directions
    fwd = set(map(tuple, ei.t().tolist()))
    assert all((v, u) in fwd for u, v in fwd)
    # assortative: most edges stay within a block
    assert (g.y[ei[0]] == g.y[ei[1]]).float().mean() > 0.6
    g2 = make_sbm(200, 4, 16, seed=2)
    assert torch.equal(g.edge_index, g2.edge_index) and torch.equal(g.x, g2.x)


def test_unknown_name_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        load("nope")
    with pytest.raises(ValueError, match="pass root"):
        load("cora")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "planetoid" / "Cora" / "raw")):
        load("cora", tmp_path)
    with pytest.raises(FileNotFoundError, match="usps.h5"):
        load("usps", tmp_path)


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


def test_registry_lists_everything():
    assert {"digits", "blobs", "sbm", "cora", "mnist-test"} <= set(DATASETS)
