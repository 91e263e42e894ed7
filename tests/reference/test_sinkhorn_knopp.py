"""The eager reference of SwAV's Sinkhorn-Knopp codes."""
import math

import pytest
import torch
import torch.nn.functional as F

from deepclust.reference.sinkhorn_knopp import sinkhorn, sinkhorn_from_embeddings
from tests.helpers import DTYPES, DTYPE_IDS, seed_sinkhorn


SHAPES = [(37, 5), (129, 70), (3, 300)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sinkhorn_equals_seed_formula(shape, eps, dtype):
    scores = F.normalize(torch.randn(shape[0], 16), dim=1) @ F.normalize(torch.randn(shape[1], 16), dim=1).t()
    scores = scores.to(dtype)
    truth = seed_sinkhorn(scores.double(), eps, 3)  # float64 never overflows here
    assert torch.isfinite(truth).all()
    out = sinkhorn(scores, eps=eps, n_iters=3)
    assert out.dtype == torch.float32 and out.shape == shape
    assert not out.requires_grad
    torch.testing.assert_close(out.double(), truth, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.sum(1), torch.ones(shape[0]), atol=1e-5, rtol=0)


def test_sinkhorn_float64_stays_float64_and_matches_exactly():
    scores = torch.randn(23, 11, dtype=torch.float64) * 0.3
    out = sinkhorn(scores, eps=0.07, n_iters=5)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, seed_sinkhorn(scores, 0.07, 5), atol=1e-13, rtol=1e-12)


def test_sinkhorn_hand_worked():
    # exp(out) = [[3, 1], [1, 1]]: one iteration gives codes [[3/5, 2/5], [1/3, 2/3]]
    eps = 0.05
    scores = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], dtype=torch.float64) * eps
    out = sinkhorn(scores, eps=eps, n_iters=1)
    expect = torch.tensor([[3 / 5, 2 / 5], [1 / 3, 2 / 3]], dtype=torch.float64)
    torch.testing.assert_close(out, expect, atol=1e-14, rtol=0)
    # constant scores: uniform codes
    torch.testing.assert_close(sinkhorn(torch.full((4, 7), 0.3)), torch.full((4, 7), 1 / 7))


def test_sinkhorn_balances_columns_and_is_shift_invariant():
    scores = torch.randn(64, 8, dtype=torch.float64) * 0.05
    q = sinkhorn(scores, eps=0.05, n_iters=50)
    # many iterations: every prototype gets B / K of the mass
    torch.testing.assert_close(q.sum(0), torch.full((8,), 64 / 8, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(sinkhorn(scores + 0.7, eps=0.05), sinkhorn(scores, eps=0.05))


def test_sinkhorn_fp16_does_not_overflow_where_seed_does():
    scores = (torch.rand(33, 9) * 0.4 + 0.6).half()  # scores in [0.6, 1.0]
    assert not torch.isfinite(seed_sinkhorn(scores, 0.05, 3)).all()  # exp(20) overflows fp16
    out = sinkhorn(scores, eps=0.05)
    torch.testing.assert_close(out.double(), seed_sinkhorn(scores.double(), 0.05, 3), atol=2e-5, rtol=1e-4)


def test_sinkhorn_from_embeddings():
    z = F.normalize(torch.randn(19, 12), dim=1)
    p = F.normalize(torch.randn(6, 12), dim=1)
    torch.testing.assert_close(sinkhorn_from_embeddings(z, p, eps=0.03), sinkhorn(z @ p.t(), eps=0.03))


def test_bad_inputs():
    s = torch.randn(5, 4)
    with pytest.raises(ValueError, match="scores"):
        sinkhorn(torch.randn(5))
    with pytest.raises(TypeError, match="scores"):
        sinkhorn(s.long())
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(s, eps=0.0)
    with pytest.raises(ValueError, match="n_iters"):
        sinkhorn(s, n_iters=0)
    with pytest.raises(ValueError, match="prototypes"):
        sinkhorn_from_embeddings(torch.randn(5, 3), torch.randn(4, 2))


# The multi-process check of the reference (2 processes on gloo against one process on the
# concatenated batch) shares one spawn with the fused paths in tests/ops/test_sinkhorn_knopp.py.
