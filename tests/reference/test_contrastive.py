"""The eager references of TCL's losses against the published formula, hand values, gradcheck,
bad input and two processes."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepclust.reference import cluster_contrastive_loss, instance_contrastive_loss
from tests.helpers import run_distributed

LARGE_NUMBER = 1e4



# ----------------------------------------------------------------------------- the published formula
def seed_instance_loss(z, tau=0.5, multiplier=2):
    """TCL's InstanceLoss.forward (single process), written as published."""
    n = z.shape[0]
    assert n % multiplier == 0
    z = z / np.sqrt(tau)
    logits = z @ z.t()
    logits[np.arange(n), np.arange(n)] = -LARGE_NUMBER
    logprob = F.log_softmax(logits, dim=1)
    m = multiplier
    labels = (np.repeat(np.arange(n), m) + np.tile(np.arange(m) * n // m, n)) % n
    labels = labels.reshape(n, m)[:, 1:].reshape(-1)
    return -logprob[np.repeat(np.arange(n), m - 1), labels].sum() / n / (m - 1)


def seed_cluster_loss(c, tau=1.0):
    """TCL's ClusterLoss.forward for two views, written as published (its entropy term is on
    the distributed branch; with one process that branch is the identity re-ordering)."""
    n = c.shape[0]
    c_aug0, c_aug1 = c[: n // 2], c[n // 2:]
    p_i = c_aug0.sum(0).view(-1)
    p_i = p_i / p_i.sum()
    en_i = np.log(p_i.size(0)) + (p_i * torch.log(p_i)).sum()
    p_j = c_aug1.sum(0).view(-1)
    p_j = p_j / p_j.sum()
    en_j = np.log(p_j.size(0)) + (p_j * torch.log(p_j)).sum()
    en_loss = en_i + en_j
    c = torch.cat((c_aug0.t(), c_aug1.t()), dim=0)
    n = c.shape[0]
    c = F.normalize(c, p=2, dim=1) / np.sqrt(tau)
    logits = c @ c.t()
    logits[np.arange(n), np.arange(n)] = -LARGE_NUMBER
    logprob = F.log_softmax(logits, dim=1)
    m = 2
    labels = (np.repeat(np.arange(n), m) + np.tile(np.arange(m) * n // m, n)) % n
    labels = labels.reshape(n, m)[:, 1:].reshape(-1)
    return -logprob[np.repeat(np.arange(n), m - 1), labels].sum() / n / (m - 1) + en_loss


def random_assignments(n, k, dtype=torch.float64, sharp=2.0):
    return torch.softmax(sharp * torch.randn(n, k, dtype=torch.float64), dim=1).to(dtype)


# ----------------------------------------------------------------------------- equality with the seed
@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("b,d", [(13, 19), (37, 130)], ids=["B13-d19", "B37-d130"])
def test_instance_matches_seed(m, tau, b, d):
    z = F.normalize(torch.randn(m * b, d, dtype=torch.float64), dim=1)
    got = instance_contrastive_loss(z, n_views=m, tau=tau)
    want = seed_instance_loss(z.clone(), tau=tau, multiplier=m)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_instance_unnormalised_matches_seed():
    # z is not normalised inside the loss: moderate norms, the -1e4 diagonal still negligible
    z = 1.7 * torch.randn(2 * 13, 19, dtype=torch.float64)
    got = instance_contrastive_loss(z, n_views=2, tau=0.5)
    torch.testing.assert_close(got, seed_instance_loss(z.clone(), 0.5, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("b,k", [(13, 5), (37, 19)], ids=["B13-K5", "B37-K19"])
def test_cluster_matches_seed(tau, b, k):
    c = random_assignments(2 * b, k)
    got = cluster_contrastive_loss(c, n_views=2, tau=tau)
    torch.testing.assert_close(got, seed_cluster_loss(c.clone(), tau=tau), rtol=1e-12, atol=1e-12)


def test_cluster_more_views_is_natural_extension():
    # m = 3: the contrastive part equals the instance loss of the stacked transposed blocks,
    # and one entropy term per view
    m, b, k = 3, 11, 4
    c = random_assignments(m * b, k)
    blocks = [c[v * b:(v + 1) * b] for v in range(m)]
    y = F.normalize(torch.cat([blk.t() for blk in blocks]), dim=1)
    want = seed_instance_loss(y, tau=0.7, multiplier=m)
    for blk in blocks:
        p = blk.sum(0) / blk.sum()
        want = want + math.log(k) + (p * p.log()).sum()
    torch.testing.assert_close(cluster_contrastive_loss(c, m, 0.7), want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- hand values
def test_instance_hand_value():
    # m=2, B=2, d=1: rows 0 and 2 are 1, rows 1 and 3 are 0; tau = 1.
    # rows 0, 2: positive logit 1 against {0, 1, 0}: 1 - log(2 + e); rows 1, 3: log(1/3)
    z = torch.tensor([[1.0], [0.0], [1.0], [0.0]], dtype=torch.float64)
    want = (math.log(2 + math.e) - 1 + math.log(3)) / 2
    assert instance_contrastive_loss(z, 2, 1.0).item() == pytest.approx(want, abs=1e-12)


def test_cluster_hand_value():
    # two identical one-hot views of two samples: uniform marginals (entropy term 0), the
    # cluster rows are e0, e1, e0, e1 -> every row: 1 - log(2 + e)
    view = torch.eye(2, dtype=torch.float64)
    c = torch.cat([view, view])
    want = math.log(2 + math.e) - 1
    assert cluster_contrastive_loss(c, 2, 1.0).item() == pytest.approx(want, abs=1e-12)


def test_cluster_collapse_pays_entropy():
    # everything in one cluster: each view's term is log K + 1 log 1 = log K (0 log 0 = 0)
    k = 5
    c = torch.zeros(8, k, dtype=torch.float64)
    c[:, 0] = 1
    c[:, 1:] = 1e-300  # keep rows normalisable
    loss = cluster_contrastive_loss(c, 2, 1.0)
    assert torch.isfinite(loss)
    assert loss.item() >= 2 * math.log(k) - 1e-9


def test_dtype_is_kept_and_computed_in_fp32():
    z = F.normalize(torch.randn(26, 19), dim=1)
    for dt in (torch.float16, torch.bfloat16):
        out = instance_contrastive_loss(z.to(dt), 2, 0.5)
        assert out.dtype == dt
        want = instance_contrastive_loss(z.to(dt).double(), 2, 0.5)
        assert abs(out.double() - want).item() < 1e-2 * want.abs().item()


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("m", [2, 3])
def test_gradcheck(m):
    z = torch.randn(m * 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: instance_contrastive_loss(t, m, 0.5), (z,))
    c = random_assignments(m * 4, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: cluster_contrastive_loss(t, m, 0.5), (c,))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [instance_contrastive_loss, cluster_contrastive_loss])
def test_bad_input(fn):
    name = "z" if fn is instance_contrastive_loss else "c"
    x = torch.rand(6, 4)
    with pytest.raises(ValueError, match="n_views"):
        fn(torch.rand(7, 4), n_views=2)
    with pytest.raises(ValueError, match="tau"):
        fn(x, 2, 0.0)
    with pytest.raises(ValueError, match="tau"):
        fn(x, 2, -1.0)
    with pytest.raises(ValueError, match=name):
        fn(torch.rand(6), 2)
    with pytest.raises(ValueError, match=name):
        fn(torch.rand(6, 4, 1), 2)
    with pytest.raises(ValueError, match="n_views"):
        fn(x, n_views=1)
    with pytest.raises(TypeError, match="n_views"):
        fn(x, n_views=2.0)
    with pytest.raises(TypeError, match=name):
        fn(torch.ones(6, 4, dtype=torch.long), 2)
    with pytest.raises(TypeError, match=name):
        fn(x.numpy(), 2)


# ----------------------------------------------------------------------------- two processes
def local_part(x, m, rank, world):
    """Rank ``rank``'s stacked views of a global stacked batch."""
    b = x.shape[0] // m // world
    xs = x.reshape(m, world, b, -1)[:, rank]
    return xs.reshape(m * b, -1)


CASES = [("instance", 2), ("instance", 3), ("cluster", 2)]


def _dist_worker(rank, world, xs, tau):
    out = []
    for (which, m), x in zip(CASES, xs):
        fn = instance_contrastive_loss if which == "instance" else cluster_contrastive_loss
        xl = local_part(x, m, rank, world).clone().requires_grad_(True)
        loss = fn(xl, m, tau)
        loss.backward()
        out.append((loss.detach(), xl.grad))
    return out


@pytest.mark.distributed
def test_two_processes_equal_one():
    world, b, tau = 2, 5, 0.5
    xs = [
        torch.randn(m * world * b, 7, dtype=torch.float64) if which == "instance"
        else random_assignments(m * world * b, 4)
        for which, m in CASES
    ]
    results = run_distributed(_dist_worker, xs, tau, world_size=world)
    for i, ((which, m), x) in enumerate(zip(CASES, xs)):
        fn = instance_contrastive_loss if which == "instance" else cluster_contrastive_loss
        xg = x.clone().requires_grad_(True)
        loss = fn(xg, m, tau)
        loss.backward()
        for r in range(world):
            lr, gr = results[r][i]
            torch.testing.assert_close(lr, loss.detach(), rtol=1e-12, atol=1e-12)
            # convention: each rank's gradient is world_size x the global one (DDP averages)
            torch.testing.assert_close(gr / world, local_part(xg.grad, m, r, world),
                                       rtol=1e-10, atol=1e-12)
