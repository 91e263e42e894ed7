"""The eager reference of SwAV's swapped-prediction loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from deepclust.reference.sinkhorn_knopp import sinkhorn
from deepclust.reference.swav import swav_loss
from tests.helpers import DTYPES, DTYPE_IDS, seed_sinkhorn


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
    with pytest.raises(ValueError, match="crops_for_assign"):
        swav_loss([s, s], crops_for_assign=(0, 2))
    with pytest.raises(ValueError, match="crop_scores"):
        swav_loss([s, torch.randn(5, 3)])
    with pytest.raises(ValueError, match="crop_scores"):
        swav_loss([s])
    with pytest.raises(ValueError, match="tau"):
        swav_loss([s, s], tau=-1)
    with pytest.raises(ValueError, match="n_iters"):
        swav_loss([s, s], n_iters=0)
    with pytest.raises(ValueError, match="queue_scores"):
        swav_loss([s, s], queue_scores=[torch.randn(3, 7), None])


# The multi-process check of the reference (2 processes on gloo against one process on the
# concatenated batch) shares one spawn with the fused paths in tests/ops/test_sinkhorn_knopp.py.
