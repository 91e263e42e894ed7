"""Reference negative sampler and reconstruction loss: hand-worked values, the seed's formula,
gradcheck, sampler properties (shared with tests/ops/test_recon.py through the _helpers)."""
import math

import pytest
import torch
import torch.nn.functional as F

from deepclust.reference import negative_sampling, recon_loss

EPS = 1e-15


# ----------------------------------------------------------------------------- helpers
def _seed_recon_loss(z, pos, neg):
    """PyAGC's DAEGC.recon_loss with given negatives (the seed's formula)."""
    s_pos = torch.sigmoid((z[pos[0]] * z[pos[1]]).sum(-1))
    s_neg = torch.sigmoid((z[neg[0]] * z[neg[1]]).sum(-1))
    return -torch.log(s_pos + EPS).mean() - torch.log(1 - s_neg + EPS).mean()


def _truth(z, pos, neg):
    z = z.double()
    s_pos = (z[pos[0]] * z[pos[1]]).sum(-1)
    s_neg = (z[neg[0]] * z[neg[1]]).sum(-1)
    return F.softplus(-s_pos).mean() + F.softplus(s_neg).mean()


def _random_graph(n, e, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    return ei[:, ei[0] != ei[1]]


def _edge_set(ei):
    return set(map(tuple, ei.t().tolist()))


def _check_sampler_properties(sample):
    """``sample(edge_index, num_nodes, num_neg_samples, generator)`` behaves as a uniform
    negative sampler."""
    ei = _random_graph(50, 300)
    out = sample(ei, 50, 997, torch.Generator().manual_seed(3))
    assert out.shape == (2, 997) and out.dtype == torch.int64
    assert (out[0] != out[1]).all(), "self-loop sampled"
    assert not (_edge_set(out) & _edge_set(ei)), "an edge was sampled as a negative"
    assert out.min() >= 0 and out.max() < 50
    # reproducible with a generator, different for another seed
    again = sample(ei, 50, 997, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    other = sample(ei, 50, 997, torch.Generator().manual_seed(4))
    assert not torch.equal(out, other)
    # exact count 0
    assert sample(ei, 50, 0, None).shape == (2, 0)


def _check_sampler_uniform(sample):
    """Chi-square goodness of fit over all non-edges of a small graph (fixed seed)."""
    from scipy.stats import chisquare

    ei = torch.tensor([[0, 1, 1, 2, 3, 4, 4, 0], [1, 0, 2, 3, 2, 0, 5, 0]])  # one self-loop
    n = 6
    non_edges = [(u, v) for u in range(n) for v in range(n) if u != v and (u, v) not in _edge_set(ei)]
    per = 300
    out = sample(ei, n, per * len(non_edges), torch.Generator().manual_seed(11))
    keys = (out[0] * n + out[1]).tolist()
    counts = torch.bincount(torch.tensor(keys), minlength=n * n)
    observed = torch.tensor([counts[u * n + v].item() for u, v in non_edges], dtype=torch.float64)
    assert observed.sum().item() == out.shape[1], "sampled a pair outside the non-edges"
    p = chisquare(observed.numpy()).pvalue
    assert p > 1e-4, f"draws not uniform (chi-square p={p:.2e})"


def _check_sampler_dense(sample):
    """Almost complete graph: exactly one or two non-edges are left; complete graph errors."""
    n = 7
    full = torch.tensor([(u, v) for u in range(n) for v in range(n) if u != v]).t()
    keep = ~(((full[0] == 2) & (full[1] == 5)) | ((full[0] == 6) & (full[1] == 0)))
    out = sample(full[:, keep], n, 400, torch.Generator().manual_seed(0))
    pairs = _edge_set(out)
    assert pairs == {(2, 5), (6, 0)}
    with pytest.raises(ValueError, match="no negative pair"):
        sample(full, n, 5, None)
    with pytest.raises(ValueError, match="no negative pair"):
        sample(torch.zeros(2, 0, dtype=torch.long), 1, 3, None)


def _check_sampler_bad_input(sample_raw):
    """``sample_raw`` is the public function with its own defaults."""
    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="edge_index"):
        sample_raw(ei, 2)  # index 2 outside [0, 2)
    with pytest.raises(ValueError, match="edge_index"):
        sample_raw(torch.tensor([[0, -1], [1, 2]]), 3)
    with pytest.raises(ValueError, match="edge_index"):
        sample_raw(torch.zeros(3, 4, dtype=torch.long), 5)
    with pytest.raises(TypeError, match="edge_index"):
        sample_raw(ei.float(), 3)
    with pytest.raises(TypeError, match="edge_index"):
        sample_raw([[0, 1], [1, 2]], 3)
    with pytest.raises(ValueError, match="num_neg_samples"):
        sample_raw(ei, 3, -1)
    with pytest.raises(ValueError, match="num_nodes"):
        sample_raw(torch.zeros(2, 0, dtype=torch.long))
    # defaults: N = max + 1, S = E
    out = sample_raw(ei)
    assert out.shape == (2, 2) and out.max() < 3


def _check_loss_bad_input(loss):
    z = torch.randn(4, 3)
    pos = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="z"):
        loss(torch.randn(4), pos, pos)
    with pytest.raises(TypeError, match="z"):
        loss(torch.ones(4, 3, dtype=torch.long), pos, pos)
    with pytest.raises(ValueError, match="pos_edge_index"):
        loss(z, torch.tensor([[0, 4], [1, 2]]), pos)
    with pytest.raises(ValueError, match="neg_edge_index"):
        loss(z, pos, torch.tensor([[0, 1], [1, 7]]))
    with pytest.raises(ValueError, match="pos_edge_index"):
        loss(z, pos.t().contiguous().view(1, 4), pos)
    with pytest.raises(TypeError, match="pos_edge_index"):
        loss(z, pos.float(), pos)
    with pytest.raises(ValueError, match="pos_edge_index"):
        loss(z, torch.zeros(2, 0, dtype=torch.long), pos)


# ----------------------------------------------------------------------------- loss
def test_hand_worked_value():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    pos = torch.tensor([[0], [2]])  # s = 1
    neg = torch.tensor([[1], [2]])  # s = 2
    expected = math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))
    assert recon_loss(z, pos, neg).item() == pytest.approx(expected, rel=1e-12)


def test_matches_seed_formula_float64():
    z = torch.randn(40, 9, dtype=torch.float64)
    pos = _random_graph(40, 120, seed=1)
    neg = _random_graph(40, 80, seed=2)
    torch.testing.assert_close(recon_loss(z, pos, neg), _seed_recon_loss(z, pos, neg), rtol=1e-10, atol=1e-12)


def test_no_saturation_at_large_scores():
    # The seed's -log(sigmoid + 1e-15) saturates at 34.54 with zero gradient; softplus does not.
    z = torch.tensor([[10.0, 0.0], [-10.0, 0.0]], dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0], [1]])  # s = -100
    neg = torch.tensor([[0], [0]])  # s = +100 (a self pair: allowed in the loss)
    loss = recon_loss(z, pos, neg)
    assert loss.item() == pytest.approx(200.0, rel=1e-12)
    assert _seed_recon_loss(z.detach(), pos, neg).item() < 70
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().max() > 1.0


def test_gradcheck_float64():
    z = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    pos = _random_graph(11, 30, seed=5)
    neg = _random_graph(11, 17, seed=6)
    assert torch.autograd.gradcheck(lambda t: recon_loss(t, pos, neg), (z,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_low_precision_dtypes(dtype):
    z = torch.randn(30, 16)
    pos = _random_graph(30, 90, seed=7)
    neg = _random_graph(30, 90, seed=8)
    out = recon_loss(z.to(dtype), pos, neg)
    assert out.dtype == dtype
    truth = _truth(z.to(dtype), pos, neg)
    torch.testing.assert_close(out.double(), truth, rtol=1e-2, atol=1e-2)


def test_default_negatives_reproducible():
    z = torch.randn(25, 4, dtype=torch.float64)
    pos = _random_graph(25, 60, seed=9)
    a = recon_loss(z, pos, generator=torch.Generator().manual_seed(1))
    b = recon_loss(z, pos, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item()
    neg = negative_sampling(pos, 25, pos.shape[1], generator=torch.Generator().manual_seed(1))
    assert a.item() == recon_loss(z, pos, neg).item()


def test_loss_bad_input():
    _check_loss_bad_input(recon_loss)


# ----------------------------------------------------------------------------- sampler
def _ref_sample(ei, n, s, gen):
    return negative_sampling(ei, n, s, generator=gen)


def test_sampler_properties():
    _check_sampler_properties(_ref_sample)


def test_sampler_uniform():
    _check_sampler_uniform(_ref_sample)


def test_sampler_dense_and_complete():
    _check_sampler_dense(_ref_sample)


def test_sampler_bad_input():
    _check_sampler_bad_input(negative_sampling)


def test_sampler_int32_and_duplicates():
    ei = torch.tensor([[0, 0, 1, 1], [1, 1, 2, 2]], dtype=torch.int32)
    out = negative_sampling(ei, 3, 200, generator=torch.Generator().manual_seed(0))
    assert _edge_set(out) == {(0, 2), (1, 0), (2, 0), (2, 1)}
