"""Graph preprocessing: DAEGC's t-order proximity against its dense formula, feature scaling."""
import pytest
import torch

from deepclust.data.graph import maybe_sparse, prepare_features, proximity_graph


def _graph(n, seed):
    """A random undirected graph without self-loops (duplicate edges allowed)."""
    ei = torch.randint(0, n, (2, 3 * n), generator=torch.Generator().manual_seed(seed))
    ei = ei[:, ei[0] != ei[1]]
    return torch.cat([ei, ei.flip(0)], 1)


def _dense_proximity(ei, n, t=2):
    """DAEGC's code, densely: B = rownorm(A + I), T = colnorm(B), M = (T + ... + T^t) / t."""
    a = torch.zeros(n, n, dtype=torch.float64)
    a[ei[0], ei[1]] = 1.0
    a = a + torch.eye(n, dtype=torch.float64)
    b = a / a.sum(1, keepdim=True)
    tr = b / b.sum(0, keepdim=True)
    return a, sum(torch.linalg.matrix_power(tr, p) for p in range(1, t + 1)) / t


@pytest.mark.parametrize("t,hops", [(1, 1), (2, 1), (3, 2)])
def test_proximity_graph_matches_dense(t, hops):
    ei = _graph(12, seed=3)
    a, m = _dense_proximity(ei, 12, t)
    att_ei, w = proximity_graph(ei, 12, t=t, hops=hops)
    assert att_ei.dtype == torch.long and w.dtype == torch.float32
    support = torch.linalg.matrix_power(a, hops) > 0
    assert att_ei.shape[1] == int(support.sum())
    dst, src = att_ei[1], att_ei[0]
    assert support[dst, src].all()  # edge j -> i on the support of (A + I)^hops
    torch.testing.assert_close(w.double(), m[dst, src], rtol=1e-6, atol=1e-7)


def test_proximity_graph_isolated_node_keeps_its_self_loop():
    ei = torch.tensor([[0, 1], [1, 0]])
    att_ei, w = proximity_graph(ei, 3, t=2)
    loops = att_ei[0] == att_ei[1]
    assert sorted(att_ei[0][loops].tolist()) == [0, 1, 2]
    assert w[loops & (att_ei[0] == 2)].item() == pytest.approx(1.0)  # alone: M = 1


def test_prepare_features():
    bow = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 4.0]])
    torch.testing.assert_close(prepare_features(bow), torch.tensor([[0.25, 0.75, 0], [0, 0, 0], [0.25, 0.25, 0.5]]))
    x = torch.randn(50, 4) * 3 + 1
    z = prepare_features(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(4))


def test_maybe_sparse():
    dense = torch.rand(20, 10) + 0.1
    assert maybe_sparse(dense) is dense
    sparse_x = torch.zeros(20, 50)
    sparse_x[torch.arange(20), torch.arange(20)] = 1.0
    out = maybe_sparse(sparse_x)
    assert out.layout == torch.sparse_csr
    torch.testing.assert_close(out.to_dense(), sparse_x)
