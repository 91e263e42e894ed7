"""TSD's production pieces (deepclust.nn.tsd) against the eager references."""
import pytest
import torch
import torch.nn.functional as F

from deepclust.nn import tsd as P
from deepclust.reference import tsd as R


def _memory(M=40, d=6, C=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    supports = torch.randn(M, d, generator=g, dtype=dtype)
    logits = torch.randn(M, C, generator=g, dtype=dtype) * 2
    labels = F.one_hot(logits.argmax(1), C).to(dtype)
    ent = R.softmax_entropy(logits)
    ent[::5] = ent[0]  # ties: the memory order decides
    return supports, labels, ent, logits.softmax(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_softmax_entropy_matches_reference(dtype):
    logits = (torch.randn(17, 5, dtype=torch.float64) * 30).to(dtype)
    got = P.softmax_entropy(logits)
    assert got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(got, R.softmax_entropy(logits), rtol=tol, atol=tol)


def test_softmax_entropy_keeps_the_order_of_confident_rows():
    logits = torch.tensor([[0.0, 20.0, 1.0], [0.0, 24.0, 1.0], [0.0, 28.0, 1.0]])
    ent = P.softmax_entropy(logits)
    assert (ent > 0).all() and ent[0] > ent[1] > ent[2]  # ~1e-7 and below: no cancellation
    torch.testing.assert_close(ent, R.softmax_entropy(logits), rtol=1e-5, atol=0)


@pytest.mark.parametrize("filter_K", [1, 3, 100, -1])
def test_select_supports_matches_reference(filter_K):
    mem = _memory()
    for a, b in zip(P.select_supports(*mem, filter_K=filter_K), R.select_supports(*mem, filter_K=filter_K)):
        assert torch.equal(a, b)


def test_select_supports_bad_inputs():
    mem = _memory()
    with pytest.raises(ValueError, match="filter_K"):
        P.select_supports(*mem, filter_K=0)
    with pytest.raises(ValueError, match="rows"):
        P.select_supports(mem[0][:3], *mem[1:])


def test_prototypes_match_reference():
    supports, labels, _, _ = _memory()
    torch.testing.assert_close(P.tsd_prototypes(supports, labels), R.tsd_prototypes(supports, labels))


MODES = {"reverse": dict(), "forward": dict(reverse_kl=False), "hard": dict(soft=False)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_prototype_loss_matches_reference(mode, impl, device):
    supports, labels, _, _ = _memory(dtype=torch.float32)
    supports, labels = supports.to(device), labels.to(device)
    z = torch.randn(11, 6, device=device, requires_grad=True)
    scores = torch.randn(11, 4, device=device).softmax(1)
    got = P.tsd_prototype_loss(z, supports, labels, scores, tau=0.1, impl=impl, **MODES[mode])
    want = R.tsd_prototype_loss(z, supports, labels, scores, tau=0.1, **MODES[mode])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    gz, = torch.autograd.grad(got, z)
    wz, = torch.autograd.grad(want, z)
    torch.testing.assert_close(gz, wz, rtol=1e-4, atol=1e-6)


def test_prototype_loss_bad_inputs():
    supports, labels, _, _ = _memory(dtype=torch.float32)
    z = torch.randn(3, 6)
    with pytest.raises(ValueError, match="scores"):
        P.tsd_prototype_loss(z, supports, labels, torch.rand(3, 5))
    with pytest.raises(ValueError, match="tau"):
        P.tsd_prototype_loss(z, supports, labels, torch.rand(3, 4), tau=0)


@pytest.mark.parametrize("k", [1, 3, 50])
def test_topk_matches_reference(k):
    supports, _, _, scores = _memory()
    feats = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    preds = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    got = P.topk_cluster_loss(feats, preds, supports, scores, k=k)
    want = R.topk_cluster_loss(feats, preds, supports, scores, k=k)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, (feats, preds)), torch.autograd.grad(want, (feats, preds))):
        torch.testing.assert_close(a, b)
