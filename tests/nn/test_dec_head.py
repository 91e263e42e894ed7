"""DECClusterHead: loss equals the reference, per-sample target cache, assignments, centres,
state_dict, gradients."""
import pytest
import torch

from deepclust import reference as R
from deepclust.nn import DECClusterHead



IMPLS = ["torch", "triton"]


def _head(k=5, d=19, impl="torch", seed=0):
    torch.manual_seed(seed)
    return DECClusterHead(k, d, impl=impl)


def _ref_target(z, centers, alpha=1.0):
    return R.target_distribution(R.soft_assign(z.detach(), centers.detach(), alpha))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_forward_equals_reference(impl, alpha, device):
    torch.manual_seed(0)
    head = DECClusterHead(5, 19, alpha=alpha, impl=impl).to(device)
    z = torch.randn(37, 19).to(device)
    loss = head(z)
    ref = R.dec_loss(z, head.cluster_centers.detach(), alpha)
    torch.testing.assert_close(loss.detach(), ref, atol=1e-6, rtol=1e-5)
    # The cached target is this batch's P; reusing it gives the same loss.
    torch.testing.assert_close(head._cached_target, _ref_target(z, head.cluster_centers, alpha),
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head(z, update_target=False).detach(), ref, atol=1e-6, rtol=1e-5)


def test_without_index_behaves_like_pyagc():
    head = _head()
    z1, z2, z3 = torch.randn(20, 19), torch.randn(20, 19), torch.randn(13, 19)
    head(z1)
    # Same row count: the cached P of z1 is reused for z2 (PyAGC's behaviour).
    p1 = _ref_target(z1, head.cluster_centers)
    want = R.dec_loss(z2, head.cluster_centers.detach(), target=p1)
    torch.testing.assert_close(head(z2, update_target=False).detach(), want, atol=1e-6, rtol=1e-5)
    # Another row count: recomputed from the batch.
    want = R.dec_loss(z3, head.cluster_centers.detach())
    torch.testing.assert_close(head(z3, update_target=False).detach(), want, atol=1e-6, rtol=1e-5)
    assert head._cached_target.shape == (13, 5)


def test_index_cache_follows_samples_in_shuffled_batches():
    """PyAGC's cache is positional: a shuffled batch of the same size reuses the rows of other
    samples. Keyed by sample id, every row gets its own sample's target."""
    head = _head(k=4, d=6)
    n, b = 24, 8
    z_all = torch.randn(n, 6) * 2
    head.update_target(z_all, index=torch.arange(n))
    p_all = _ref_target(z_all, head.cluster_centers)  # frequencies over all samples
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    for i in range(0, n, b):
        idx = perm[i:i + b]
        loss = head(z_all[idx], update_target=False, index=idx)
        want = R.dec_loss(z_all[idx], head.cluster_centers.detach(), target=p_all[idx])
        torch.testing.assert_close(loss.detach(), want, atol=1e-6, rtol=1e-5)
        # The positional cache would use the previous batch's rows: a different number.
        if i:
            wrong = R.dec_loss(z_all[idx], head.cluster_centers.detach(), target=p_all[perm[i - b:i]])
            assert not torch.allclose(loss.detach(), wrong, atol=1e-4)


def test_index_update_stores_batch_target_and_gathers_it_later():
    head = _head(k=3, d=5)
    z = torch.randn(10, 5)
    ids = torch.tensor([7, 2, 11, 0, 5, 3, 9, 1, 4, 30])  # sparse ids: the cache grows
    head(z, update_target=True, index=ids)
    p = _ref_target(z, head.cluster_centers)
    assert head._target_bank.shape[0] >= 31
    torch.testing.assert_close(head._target_bank[ids], p, atol=1e-6, rtol=1e-5)
    assert head._target_valid.sum() == 10
    # Reversed order, with the same ids: the rows follow their ids.
    r = torch.arange(9, -1, -1)
    loss = head(z[r], update_target=False, index=ids[r])
    want = R.dec_loss(z[r], head.cluster_centers.detach(), target=p[r])
    torch.testing.assert_close(loss.detach(), want, atol=1e-6, rtol=1e-5)


def test_index_rows_never_cached_come_from_the_batch():
    head = _head(k=3, d=5)
    z_old = torch.randn(4, 5)
    head(z_old, update_target=True, index=torch.tensor([0, 1, 2, 3]))
    p_old = _ref_target(z_old, head.cluster_centers)
    z = torch.randn(6, 5)
    ids = torch.tensor([2, 50, 0, 51, 52, 3])  # 50..52 never cached
    loss = head(z, update_target=False, index=ids)
    p_batch = _ref_target(z, head.cluster_centers)
    want_p = p_batch.clone()
    want_p[0], want_p[2], want_p[5] = p_old[2], p_old[0], p_old[3]
    want = R.dec_loss(z, head.cluster_centers.detach(), target=want_p)
    torch.testing.assert_close(loss.detach(), want, atol=1e-6, rtol=1e-5)
    assert not head._target_valid[50:53].any()  # batch-computed rows are not cached


def test_update_target_without_index_covers_all_rows():
    head = _head(k=4, d=6)
    z_all = torch.randn(30, 6)
    p = head.update_target(z_all)
    torch.testing.assert_close(p, _ref_target(z_all, head.cluster_centers), atol=1e-6, rtol=1e-5)
    idx = torch.tensor([29, 3, 17])
    want = R.dec_loss(z_all[idx], head.cluster_centers.detach(), target=p[idx])
    torch.testing.assert_close(head(z_all[idx], update_target=False, index=idx).detach(), want,
                               atol=1e-6, rtol=1e-5)
    head.clear_target()
    assert head._cached_target is None and head._target_bank.shape[0] == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_cluster_and_predict(impl, device):
    head = _head(k=6, d=19, impl=impl).to(device)
    z = torch.randn(37, 19).to(device)
    c = head.cluster_centers.detach()
    hard = head.cluster(z)
    assert hard.dtype == torch.int64
    assert torch.equal(hard, torch.cdist(z.double(), c.double()).argmin(1))
    assert torch.equal(head.predict(z), hard)
    soft = head.cluster(z, soft=True)
    torch.testing.assert_close(soft, R.soft_assign(z, c), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head.predict(z, soft=True), soft)
    assert not soft.requires_grad


def test_cluster_hand_worked():
    head = DECClusterHead(2, 1, impl="torch")
    head.reset_cluster_centers(torch.tensor([[0.0], [2.0]]))
    z = torch.tensor([[0.0], [1.5], [-3.0]])
    assert head.cluster(z).tolist() == [0, 1, 0]
    # q_i0 proportional to 1/(1 + d^2): for z=0: (1, 1/5) -> (5/6, 1/6)
    torch.testing.assert_close(head.cluster(z, soft=True)[0], torch.tensor([5 / 6, 1 / 6]))


def test_reset_cluster_centers():
    head = _head(k=3, d=4)
    c = torch.arange(12.0).view(3, 4)
    head.reset_cluster_centers(c)
    assert torch.equal(head.cluster_centers.detach(), c)
    with pytest.raises(ValueError, match=r"cluster_centers must have shape \(3, 4\)"):
        head.reset_cluster_centers(torch.zeros(4, 3))
    head.reset_cluster_centers()
    bound = (6.0 / (3 + 4)) ** 0.5  # Xavier uniform
    assert head.cluster_centers.abs().max() <= bound and not torch.equal(head.cluster_centers.detach(), c)


def test_state_dict_round_trip():
    a = _head(k=4, d=7, seed=1)
    a.update_target(torch.randn(9, 7))
    sd = a.state_dict()
    assert list(sd) == ["cluster_centers"]  # caches are not persistent, as in PyAGC
    b = _head(k=4, d=7, seed=2)
    b.load_state_dict(sd)
    z = torch.randn(11, 7)
    assert torch.equal(a.cluster(z), b.cluster(z))
    torch.testing.assert_close(a(z), b(z))


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_flow_to_centers_and_z(impl, device):
    torch.manual_seed(0)
    head = DECClusterHead(5, 19, impl=impl).to(device)
    z = torch.randn(37, 19).to(device).requires_grad_(True)
    ids = torch.arange(37, device=device)
    head.update_target(z.detach(), index=ids)
    head(z, update_target=False, index=ids).backward()
    z2 = z.detach().clone().requires_grad_(True)
    c2 = head.cluster_centers.detach().clone().requires_grad_(True)
    R.dec_loss(z2, c2, target=_ref_target(z2, c2)).backward()
    torch.testing.assert_close(head.cluster_centers.grad, c2.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(z.grad, z2.grad, atol=1e-6, rtol=1e-4)
    assert head.cluster_centers.grad.abs().sum() > 0


def test_loss_decreases_with_training():
    torch.manual_seed(0)
    head = DECClusterHead(3, 2, impl="torch")
    z = torch.cat([torch.randn(20, 2) * 0.3 + torch.tensor(m) for m in ([0, 0], [4, 0], [0, 4])])
    head.reset_cluster_centers(torch.tensor([[0.5, 0.5], [3.0, 0.5], [0.5, 3.0]]))
    head.update_target(z)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    first = None
    for _ in range(20):
        loss = head(z, update_target=False)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_bad_arguments():
    head = _head(k=3, d=4)
    with pytest.raises(ValueError, match="index must have one id per row"):
        head(torch.randn(5, 4), index=torch.arange(4))
    with pytest.raises(TypeError, match="index must have dtype"):
        head(torch.randn(5, 4), index=torch.arange(5.0))
    with pytest.raises(ValueError, match="non-negative"):
        head(torch.randn(2, 4), index=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="z must be 2-D"):
        head(torch.randn(4))
    with pytest.raises(ValueError, match="alpha"):
        DECClusterHead(3, 4, alpha=0.0)
    with pytest.raises(ValueError, match="n_clusters"):
        DECClusterHead(0, 4)
