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


def test_registry_lists_everything():
    assert {"digits", "blobs", "sbm", "cora", "mnist-test"} <= set(DATASETS)
