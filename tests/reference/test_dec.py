"""The DEC reference: hand-worked values, float64 gradcheck, agreement with the seed formula."""
import math

import pytest
import torch
import torch.nn.functional as F

from deepclust.reference.dec import dec_loss, hard_assign, soft_assign, target_distribution


def _seed_formula(z, centers, alpha=1.0, target=None):
    """PyAGC's DECClusterHead written out: q via pow, p via q**2 / f, kl_div of q.log()."""
    dist = (z[:, None, :] - centers[None, :, :]).pow(2).sum(-1)
    num = (1.0 + dist / alpha).pow(-(alpha + 1) / 2)
    q = num / num.sum(dim=-1, keepdim=True)
    weight = q**2 / q.sum(dim=0, keepdim=True)
    p = (weight / weight.sum(dim=-1, keepdim=True)).detach() if target is None else target
    return q, p, F.kl_div(q.log(), p, reduction="batchmean")


def test_hand_worked_alpha1():
    # z0 = (0,0), z1 = (2,0); mu0 = (0,0), mu1 = (1,0); squared distances [[0,1],[4,1]].
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    mu = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    # 1/(1+d): row0 [1, 1/2] -> q0 = [2/3, 1/3]; row1 [1/5, 1/2] -> q1 = [2/7, 5/7]
    q_hand = torch.tensor([[2 / 3, 1 / 3], [2 / 7, 5 / 7]], dtype=torch.float64)
    # f = [20/21, 22/21]; q^2/f row0 = [7/15, 7/66] -> p0 = [22/27, 5/27];
    # row1 = [3/35, 75/154] -> p1 = [22/147, 125/147]
    p_hand = torch.tensor([[22 / 27, 5 / 27], [22 / 147, 125 / 147]], dtype=torch.float64)
    loss_hand = 0.5 * sum(
        p_hand[i, j].item() * math.log(p_hand[i, j].item() / q_hand[i, j].item())
        for i in range(2)
        for j in range(2)
    )
    q = soft_assign(z, mu)
    torch.testing.assert_close(q, q_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(target_distribution(q), p_hand, rtol=1e-12, atol=1e-12)
    assert dec_loss(z, mu).item() == pytest.approx(loss_hand, rel=1e-12)
    assert hard_assign(z, mu).tolist() == [0, 1]


def test_hand_worked_alpha3():
    # alpha = 3: kernel (1 + d/3)^-2; d = [[0, 3]] -> [1, 1/4] -> q = [4/5, 1/5]
    z = torch.tensor([[0.0]], dtype=torch.float64)
    mu = torch.tensor([[0.0], [math.sqrt(3.0)]], dtype=torch.float64)
    torch.testing.assert_close(
        soft_assign(z, mu, alpha=3.0), torch.tensor([[0.8, 0.2]], dtype=torch.float64)
    )
    # one row: f = q, so p ∝ q -> p = q and KL = 0
    assert abs(dec_loss(z, mu, alpha=3.0).item()) < 1e-14


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_matches_seed_formula(alpha):
    z = torch.randn(23, 7, dtype=torch.float64)
    mu = torch.randn(5, 7, dtype=torch.float64)
    q, p, loss = _seed_formula(z, mu, alpha)
    torch.testing.assert_close(soft_assign(z, mu, alpha), q)
    torch.testing.assert_close(target_distribution(q), p)
    torch.testing.assert_close(dec_loss(z, mu, alpha), loss)
    tgt = torch.softmax(torch.randn(23, 5, dtype=torch.float64), 1)
    torch.testing.assert_close(
        dec_loss(z, mu, alpha, target=tgt), _seed_formula(z, mu, alpha, tgt)[2]
    )
    # gradients agree too (P constant)
    z1, mu1 = z.clone().requires_grad_(), mu.clone().requires_grad_()
    z2, mu2 = z.clone().requires_grad_(), mu.clone().requires_grad_()
    dec_loss(z1, mu1, alpha).backward()
    _seed_formula(z2, mu2, alpha)[2].backward()
    torch.testing.assert_close(z1.grad, z2.grad)
    torch.testing.assert_close(mu1.grad, mu2.grad)
    assert torch.equal(hard_assign(z, mu), torch.cdist(z, mu).argmin(1))


def test_dtype_and_detach():
    z = torch.randn(9, 4, dtype=torch.float16, requires_grad=True)
    mu = torch.randn(3, 4, dtype=torch.float16)
    q = soft_assign(z, mu)
    assert q.dtype == torch.float16 and q.requires_grad
    p = target_distribution(q)
    assert p.dtype == torch.float16 and not p.requires_grad
    loss = dec_loss(z, mu)
    assert loss.dtype == torch.float16 and loss.dim() == 0
    loss.backward()
    assert z.grad.dtype == torch.float16 and torch.isfinite(z.grad).all()
    assert hard_assign(z, mu).dtype == torch.int64


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_gradcheck(alpha):
    z = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    tgt = torch.softmax(torch.randn(6, 4, dtype=torch.float64), 1)
    assert torch.autograd.gradcheck(lambda a, b: soft_assign(a, b, alpha), (z, mu))
    # with target=None, P depends on z but is held constant: numerical differences would see
    # that dependence, so the loss is checked with a fixed P (equal to this batch's target)
    p = target_distribution(soft_assign(z, mu, alpha))
    assert torch.autograd.gradcheck(lambda a, b: dec_loss(a, b, alpha, target=p), (z, mu))
    assert torch.autograd.gradcheck(lambda a, b: dec_loss(a, b, alpha, target=tgt), (z, mu))


def test_gradient_formula():
    """dL/dd_ij = (alpha+1)/(2 alpha N) * p_ij... written out: the closed form the fused op uses."""
    alpha, n = 0.7, 11
    z = torch.randn(n, 5, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    tgt = torch.rand(n, 3, dtype=torch.float64)  # rows need not sum to 1
    dec_loss(z, mu, alpha, target=tgt).backward()
    with torch.no_grad():
        diff = z[:, None] - mu[None]
        d = diff.pow(2).sum(-1)
        q = soft_assign(z, mu, alpha)
        w = 1.0 / (1.0 + d / alpha)
        g = (alpha + 1) / (2 * alpha * n) * w * (tgt - tgt.sum(1, keepdim=True) * q)
        gz = 2 * (g[:, :, None] * diff).sum(1)
        gmu = -2 * (g[:, :, None] * diff).sum(0)
    torch.testing.assert_close(z.grad, gz)
    torch.testing.assert_close(mu.grad, gmu)


def test_faithful_underflow_gives_nan():
    # the reference keeps the original's q.log(): an underflowed q gives a non-finite loss
    z = torch.tensor([[0.0], [1e5]])
    mu = torch.tensor([[0.0], [1.0]])
    assert not torch.isfinite(dec_loss(z, mu, alpha=9.0))


def test_bad_inputs():
    z, mu = torch.randn(5, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="z"):
        soft_assign(torch.randn(5), mu)
    with pytest.raises(ValueError, match="centers"):
        dec_loss(z, torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match="feature dimension"):
        dec_loss(z, torch.randn(2, 4))
    with pytest.raises(TypeError, match="z"):
        dec_loss(z.long(), mu)
    with pytest.raises(TypeError, match="centers"):
        hard_assign(z, mu.int())
    with pytest.raises(ValueError, match="alpha"):
        dec_loss(z, mu, alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        soft_assign(z, mu, alpha=-1.0)
    with pytest.raises(ValueError, match="target"):
        dec_loss(z, mu, target=torch.rand(5, 3))
    with pytest.raises(ValueError, match="z"):
        dec_loss(torch.randn(0, 3), mu)
    with pytest.raises(ValueError, match="q"):
        target_distribution(torch.rand(4))
    with pytest.raises(ValueError, match="centers is on meta"):
        dec_loss(z, mu.to("meta"))
