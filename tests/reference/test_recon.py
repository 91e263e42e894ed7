"""Reference negative sampler and reconstruction loss: hand-worked values, the seed's formula,
gradcheck, sampler properties (the contract checks are shared with tests/ops/test_recon.py
through tests/helpers.py)."""
import math

import pytest
import torch

from deepclust.reference import negative_sampling, recon_loss
from tests import helpers as H  # the recon checks shared with tests/ops/test_recon.py


# ----------------------------------------------------------------------------- loss
def test_hand_worked_value():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    pos = torch.tensor([[0], [2]])  # s = 1
    neg = torch.tensor([[1], [2]])  # s = 2
    expected = math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))
    assert recon_loss(z, pos, neg).item() == pytest.approx(expected, rel=1e-12)


def test_matches_seed_formula_float64():
    z = torch.randn(40, 9, dtype=torch.float64)
    pos = H.random_graph(40, 120, seed=1)
    neg = H.random_graph(40, 80, seed=2)
    torch.testing.assert_close(recon_loss(z, pos, neg), H.seed_recon_loss(z, pos, neg), rtol=1e-10, atol=1e-12)


def test_no_saturation_at_large_scores():
    # The seed's -log(sigmoid + 1e-15) saturates at 34.54 with zero gradient; softplus does not.
    z = torch.tensor([[10.0, 0.0], [-10.0, 0.0]], dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0], [1]])  # s = -100
    neg = torch.tensor([[0], [0]])  # s = +100 (a self pair: allowed in the loss)
    loss = recon_loss(z, pos, neg)
    assert loss.item() == pytest.approx(200.0, rel=1e-12)
    assert H.seed_recon_loss(z.detach(), pos, neg).item() < 70
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().max() > 1.0


def test_gradcheck_float64():
    z = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    pos = H.random_graph(11, 30, seed=5)
    neg = H.random_graph(11, 17, seed=6)
    assert torch.autograd.gradcheck(lambda t: recon_loss(t, pos, neg), (z,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_low_precision_dtypes(dtype):
    z = torch.randn(30, 16)
    pos = H.random_graph(30, 90, seed=7)
    neg = H.random_graph(30, 90, seed=8)
    out = recon_loss(z.to(dtype), pos, neg)
    assert out.dtype == dtype
    truth = H.recon_truth(z.to(dtype), pos, neg)
    torch.testing.assert_close(out.double(), truth, rtol=1e-2, atol=1e-2)


def test_default_negatives_reproducible():
    z = torch.randn(25, 4, dtype=torch.float64)
    pos = H.random_graph(25, 60, seed=9)
    a = recon_loss(z, pos, generator=torch.Generator().manual_seed(1))
    b = recon_loss(z, pos, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item()
    neg = negative_sampling(pos, 25, pos.shape[1], generator=torch.Generator().manual_seed(1))
    assert a.item() == recon_loss(z, pos, neg).item()


def test_loss_bad_input():
    H.check_loss_bad_input(recon_loss)


# ----------------------------------------------------------------------------- sampler
def _ref_sample(ei, n, s, gen):
    return negative_sampling(ei, n, s, generator=gen)


def test_sampler_properties():
    H.check_sampler_properties(_ref_sample)


def test_sampler_uniform():
    H.check_sampler_uniform(_ref_sample)


def test_sampler_dense_and_complete():
    H.check_sampler_dense(_ref_sample)


def test_sampler_bad_input():
    H.check_sampler_bad_input(negative_sampling)


def test_sampler_int32_and_duplicates():
    ei = torch.tensor([[0, 0, 1, 1], [1, 1, 2, 2]], dtype=torch.int32)
    out = negative_sampling(ei, 3, 200, generator=torch.Generator().manual_seed(0))
    assert H.edge_set(out) == {(0, 2), (1, 0), (2, 0), (2, 1)}
