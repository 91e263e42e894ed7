"""The eager SwAV references: Sinkhorn-Knopp codes and the swapped-prediction loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from deepclust.reference.swav import sinkhorn, sinkhorn_from_embeddings, swav_loss
from tests.helpers import DTYPE_IDS, DTYPES


def seed_sinkhorn(out, eps=0.05, n_iters=3, world=1):
    """The published algorithm, literally (no max subtraction), in the dtype of ``out``."""
    Q = torch.exp(out / eps).t()
    B = Q.shape[1] * world
    K = Q.shape[0]
    Q = Q / torch.sum(Q)
    for _ in range(n_iters):
        Q = Q / torch.sum(Q, dim=1, keepdim=True)
        Q = Q / K
        Q = Q / torch.sum(Q, dim=0, keepdim=True)
        Q = Q / B
    Q = Q * B
    return Q.t()


def seed_swav_loss(crops, assign, tau, eps, n_iters):
    loss = 0
    for c in assign:
        with torch.no_grad():
            q = seed_sinkhorn(crops[c].detach(), eps, n_iters)
        sub = 0
        for v in range(len(crops)):
            if v != c:
                sub = sub - torch.mean(torch.sum(q * F.log_softmax(crops[v] / tau, dim=1), dim=1))
        loss = loss + sub / (len(crops) - 1)
    return loss / len(assign)


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


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_swav_loss_equals_seed(dtype):
    crops = [(torch.randn(21, 13) * 0.4).to(dtype).requires_grad_() for _ in range(4)]
    loss = swav_loss(crops, crops_for_assign=(0, 1), tau=0.1, eps=0.05, n_iters=3)
    assert loss.dtype == dtype
    loss.backward()
    c64 = [c.detach().double().requires_grad_() for c in crops]
    truth = seed_swav_loss(c64, (0, 1), 0.1, 0.05, 3)
    truth.backward()
    tol = dict(float32=1e-5, float16=1e-2, bfloat16=5e-2)[str(dtype).split(".")[1]]
    torch.testing.assert_close(loss.double(), truth, atol=tol, rtol=tol)
    for c, t in zip(crops, c64):
        torch.testing.assert_close(c.grad.double(), t.grad, atol=tol / 10, rtol=tol)


def test_swav_loss_stacked_tensor_equals_list():
    x = torch.randn(3, 10, 7)
    torch.testing.assert_close(swav_loss(x, crops_for_assign=(1,)), swav_loss(list(x), crops_for_assign=(1,)))


def test_swav_loss_uniform_scores_is_log_k():
    K = 3000
    crops = [torch.zeros(8, K) for _ in range(3)]
    torch.testing.assert_close(swav_loss(crops), torch.tensor(math.log(K)))


def test_swav_loss_gradcheck_float64():
    # the codes are constants (no gradient through Sinkhorn): hold the assignment crop fixed
    fixed = torch.randn(5, 4, dtype=torch.float64) * 0.3
    crops = [(torch.randn(5, 4, dtype=torch.float64) * 0.3).requires_grad_() for _ in range(2)]
    assert torch.autograd.gradcheck(lambda *c: swav_loss([fixed, *c], crops_for_assign=(0,)), crops)


def test_swav_loss_queue_prepends_and_keeps_last_rows():
    crops = [torch.randn(6, 5, dtype=torch.float64) * 0.3 for _ in range(3)]
    queue = [torch.randn(10, 5, dtype=torch.float64) * 0.3, None]
    got = swav_loss(crops, (0, 1), queue_scores=queue)
    q0 = sinkhorn(torch.cat([queue[0], crops[0]]))[-6:]
    q1 = sinkhorn(crops[1])
    ls = [F.log_softmax(c / 0.1, dim=1) for c in crops]
    expect = (-(q0 * ls[1]).sum(1).mean() - (q0 * ls[2]).sum(1).mean()) / 2
    expect = expect + (-(q1 * ls[0]).sum(1).mean() - (q1 * ls[2]).sum(1).mean()) / 2
    torch.testing.assert_close(got, expect / 2)
    assert not torch.allclose(got, swav_loss(crops, (0, 1)))


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
    with pytest.raises(ValueError, match="crops_for_assign"):
        swav_loss([s, s], crops_for_assign=(0, 2))
    with pytest.raises(ValueError, match="crop_scores"):
        swav_loss([s, torch.randn(5, 3)])
    with pytest.raises(ValueError, match="crop_scores"):
        swav_loss([s])
    with pytest.raises(ValueError, match="tau"):
        swav_loss([s, s], tau=-1)
    with pytest.raises(ValueError, match="queue_scores"):
        swav_loss([s, s], queue_scores=[torch.randn(3, 7), None])


# The multi-process check of the reference (2 processes on gloo against one process on the
# concatenated batch) shares one spawn with the fused paths in tests/ops/test_sinkhorn.py.
