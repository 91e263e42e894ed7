"""TSD references: support selection, prototype loss, top-k neighbour loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from deepclust.reference import select_supports, topk_cluster_loss, tsd_prototype_loss
from deepclust.reference.tsd import softmax_entropy, tsd_prototypes


# ---------------------------------------------------------------- the seed's code, literally
def _seed_select(supports, labels, ent, scores, filter_K, num_classes):
    y_hat = labels.argmax(dim=1).long()
    indices = []
    indices1 = torch.LongTensor(list(range(len(ent))))
    for i in range(num_classes):
        _, indices2 = torch.sort(ent[y_hat == i])
        indices.append(indices1[y_hat == i][indices2][:filter_K])
    indices = torch.cat(indices)
    return supports[indices], labels[indices], ent[indices], scores[indices]


def _seed_softmax_kl_loss(input_logits, target_logits):
    input_log_softmax = F.log_softmax(input_logits, dim=1)
    target_softmax = F.softmax(target_logits, dim=1)
    return F.kl_div(input_log_softmax, target_softmax, reduction="none")


def _seed_prototype_loss(z, p, labels, use_hard=False, tau=1, alternative=False):
    z = F.normalize(z, dim=1)
    p = F.normalize(p, dim=1)
    dist = z @ p.T / tau
    if use_hard:
        return F.cross_entropy(dist, labels.argmax(1))
    if alternative:
        return _seed_softmax_kl_loss(dist, labels.detach()).sum(1).mean(0)
    return _seed_softmax_kl_loss(labels.detach(), dist).sum(1).mean(0)


def _seed_topk_cluster(feature, supports, scores, p, k=3):
    feature = F.normalize(feature, dim=1)
    supports = F.normalize(supports, dim=1)
    sim_matrix = feature @ supports.T
    topk_sim_matrix, idx_near = torch.topk(sim_matrix, k, dim=1)
    scores_near = scores[idx_near].detach().clone()
    diff_scores = torch.sum((p.unsqueeze(1) - scores_near) ** 2, -1)
    loss = -1.0 * topk_sim_matrix * diff_scores
    return loss.mean()


def _memory(M=40, d=6, C=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    supports = torch.randn(M, d, generator=g, dtype=dtype)
    logits = torch.randn(M, C, generator=g, dtype=dtype) * 2
    labels = F.one_hot(logits.argmax(1), C).to(dtype)
    return supports, labels, softmax_entropy(logits), logits.softmax(1)


# ---------------------------------------------------------------- select_supports
@pytest.mark.parametrize("filter_K", [1, 3, 100])
def test_select_matches_seed(filter_K):
    mem = _memory()
    got = select_supports(*mem, filter_K=filter_K)
    want = _seed_select(*mem, filter_K, 4)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_select_keep_all_and_hand_value():
    ent = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.2])
    labels = F.one_hot(torch.tensor([1, 0, 1, 1, 0]), 2).float()
    sup = torch.arange(5.0).unsqueeze(1)
    s, l, e, _ = select_supports(sup, labels, ent, labels, filter_K=2)
    # class 0: rows 1 (0.1), 4 (0.2); class 1: rows 3 (0.3), 0 (0.5)
    assert s.flatten().tolist() == [1, 4, 3, 0]
    assert e.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.5])
    s, *_ = select_supports(sup, labels, ent, labels, filter_K=-1)
    assert s.flatten().tolist() == [1, 4, 3, 0, 2]  # all kept (the seed would drop 4 and 2)


# ---------------------------------------------------------------- prototype loss
@pytest.mark.parametrize("mode", ["reverse", "forward", "hard"])
@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_prototype_loss_matches_seed(mode, tau):
    supports, labels, _, _ = _memory()
    z = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    scores = torch.randn(11, 4, dtype=torch.float64).softmax(1)
    weights = F.normalize(supports, dim=1).T @ labels
    want = _seed_prototype_loss(z, weights.T, scores, use_hard=mode == "hard", tau=tau,
                                alternative=mode == "forward")
    got = tsd_prototype_loss(z, supports, labels, scores, tau=tau, soft=mode != "hard",
                             reverse_kl=mode == "reverse")
    torch.testing.assert_close(got, want)
    g1, = torch.autograd.grad(got, z)
    g2, = torch.autograd.grad(want, z)
    torch.testing.assert_close(g1, g2)


def test_prototype_loss_hand_value():
    # prototypes e1 (class 0), e2 (class 1); z = e1; tau = 1: logits [1, 0]
    supports = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    labels = torch.eye(2)
    z = torch.tensor([[1.0, 0.0]])
    scores = torch.tensor([[0.9, 0.1]])
    hard = tsd_prototype_loss(z, supports, labels, scores, soft=False)
    assert hard.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    p = torch.tensor([math.e, 1.0]) / (math.e + 1)  # softmax of the logits
    t = torch.tensor([0.9, 0.1]).softmax(0)         # softmax of the scores (the release's 2nd softmax)
    rev = tsd_prototype_loss(z, supports, labels, scores)
    assert rev.item() == pytest.approx(float((p * (p.log() - t.log())).sum()), abs=1e-6)


def test_prototypes_formula():
    supports = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(tsd_prototypes(supports, labels), torch.tensor([[1.6, 0.8], [0.0, 1.0]]))


def test_prototype_loss_gradcheck():
    supports, labels, _, _ = _memory(M=12, d=5, C=3)
    scores = torch.randn(4, 3, dtype=torch.float64).softmax(1)
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    s = supports.clone().requires_grad_(True)
    for kw in (dict(), dict(reverse_kl=False), dict(soft=False)):
        assert torch.autograd.gradcheck(lambda a, b: tsd_prototype_loss(a, b, labels, scores, tau=0.5, **kw), (z, s))


# ---------------------------------------------------------------- top-k neighbour loss
def test_topk_matches_seed_and_gradcheck():
    supports, _, _, scores = _memory()
    feats = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    preds = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    want = _seed_topk_cluster(feats, supports, scores, preds, k=3)
    got = topk_cluster_loss(feats, preds, supports, scores, k=3)
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda f, p: topk_cluster_loss(f, p, supports, scores, k=3), (feats, preds))


def test_topk_hand_value():
    feats = torch.tensor([[1.0, 0.0]])
    supports = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    preds = torch.tensor([[0.0, 0.0]])
    # top-2 similarities: 1 (support 0, |p - y|^2 = 1) and 0 (support 1, 1): loss = -(1*1 + 0*1)/2
    assert topk_cluster_loss(feats, preds, supports, scores, k=2).item() == pytest.approx(-0.5)


def test_bad_inputs():
    mem = _memory(dtype=torch.float32)
    with pytest.raises(ValueError, match="filter_K"):
        select_supports(*mem, filter_K=0)
    with pytest.raises(ValueError, match="rows"):
        select_supports(mem[0][:3], *mem[1:])
    z = torch.randn(3, 6)
    with pytest.raises(ValueError, match="scores"):
        tsd_prototype_loss(z, mem[0], mem[1], torch.rand(3, 5))
    with pytest.raises(ValueError, match="tau"):
        tsd_prototype_loss(z, mem[0], mem[1], torch.rand(3, 4), tau=0)
    with pytest.raises(ValueError, match="supports"):
        topk_cluster_loss(z, torch.randn(3, 4), torch.randn(5, 2), torch.rand(5, 4))
