"""The SwAV model: loss at init, training, queue, frozen prototypes, DDP, cli_fit on digits."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

import deepclust.models.swav as swav_mod
from deepclust.models._images import ImageMLP
from deepclust.data import augment as A
from deepclust.models.base import FitConfig, LossOutput
from deepclust.models.swav import SwAV
from deepclust.ops.swav import swav_loss
from tests.helpers import run_distributed


def _acc(y, p):
    k = int(max(y.max(), p.max())) + 1
    m = np.zeros((k, k))
    np.add.at(m, (p, y), 1)
    r, c = linear_sum_assignment(-m)
    return m[r, c].sum() / len(y)


def _mlp(d_in=20, d_out=32):
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU())


def test_loss_starts_near_log_k_and_prototypes_are_normalised():
    K = 3000
    model = SwAV(_mlp(), 32, n_prototypes=K, proj_hidden=64, proj_dim=128)
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    x = torch.randn(64, 20)
    crops = [x + 0.1 * torch.randn_like(x) for _ in range(3)]
    out = model.loss(crops)
    assert isinstance(out, LossOutput) and out.total.requires_grad
    # random prototypes: logits of std ~0.9 give a loss within ~0.5 of ln K (a missing
    # 1/(V-1) or 1/len(crops_for_assign) factor would double it)
    assert abs(out.total.item() - math.log(K)) < 0.5, out.total.item()
    assert out.components["swav"] == pytest.approx(out.total.item())
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(K))


def test_loss_falls_in_20_steps_and_model_is_the_functional_loss():
    from deepclust.data.datasets import load_digits

    d = load_digits()
    x = d.x[:256].reshape(-1, 1, 8, 8)
    model = SwAV(ImageMLP((1, 8, 8), 64), 64, n_prototypes=30, proj_hidden=64,
                 proj_dim=32, freeze_prototypes_niters=0)
    # the model's loss is swav_loss of the prototype scores of its normalised embeddings
    crops = A.multi_crop(x[:40], generator=torch.Generator().manual_seed(1))
    model.eval()
    got = model.loss(crops).total
    z = torch.cat([model.embed(torch.cat(crops[:2])), model.embed(torch.cat(crops[2:]))])
    expect = swav_loss((z @ model.prototypes.weight.t()).view(4, 40, -1), (0, 1))
    torch.testing.assert_close(got, expect)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        out = model.loss(A.multi_crop(x, generator=gen))
        opt.zero_grad()
        out.total.backward()
        model.after_backward()
        opt.step()
        losses.append(out.total.item())
    assert np.mean(losses[-4:]) < losses[0] - 0.3, losses


def test_queue_fills_from_its_epoch_and_is_prepended_when_full():
    torch.manual_seed(0)
    B, L = 8, 16
    model = SwAV(_mlp(), 32, n_prototypes=7, proj_hidden=None, proj_dim=16, queue_length=L,
                 epoch_queue_starts=1, crops_for_assign=(0, 1))
    batches = [[torch.randn(B, 20) for _ in range(3)] for _ in range(4)]
    model.loss(batches[0])
    assert model.queue_filled == 0 and model.queue.abs().sum() == 0  # epoch 0: no queue
    model.set_epoch(1)
    for t in (1, 2):
        model.loss(batches[t])
        assert model.queue_filled == min(L, t * B)
    # newest first: rows 0..B-1 hold crop 0 of the latest batch
    with torch.no_grad():
        z_last = model.embed(batches[2][0])
    torch.testing.assert_close(model.queue[0, :B], z_last)
    queue_before = model.queue.clone()
    got = model.loss(batches[3]).total
    with torch.no_grad():
        w = model.prototypes.weight
        z = torch.cat([model.embed(c) for c in batches[3]])
        scores = (z @ w.t()).view(3, B, -1)
        expect = swav_loss(scores, (0, 1), queue_scores=[queue_before[0] @ w.t(), queue_before[1] @ w.t()])
        no_queue = swav_loss(scores, (0, 1))
    torch.testing.assert_close(got.detach(), expect)
    assert not torch.allclose(expect, no_queue)


def test_prototype_gradients_dropped_while_frozen():
    model = SwAV(_mlp(), 32, n_prototypes=5, proj_hidden=None, proj_dim=8, freeze_prototypes_niters=2)
    x = torch.randn(10, 20)
    for it in range(3):
        model.zero_grad(set_to_none=True)
        model.loss([x, x + 0.1, x - 0.1]).total.backward()
        assert model.prototypes.weight.grad is not None
        model.after_backward()
        frozen = it < 2
        assert (model.prototypes.weight.grad is None) == frozen
        assert model.projection.weight.grad is not None


def test_predict_and_bad_inputs():
    model = SwAV(_mlp(), 32, n_prototypes=4, proj_hidden=None, proj_dim=8)
    x = torch.randn(11, 20)
    p = model.predict(x)
    assert p.shape == (11,) and p.dtype == torch.long and int(p.max()) < 4
    torch.testing.assert_close(model(x), F.normalize(model.projection(model.backbone(x)), dim=1))
    with pytest.raises(ValueError, match="crops_for_assign"):
        SwAV(_mlp(), 32, crops_for_assign=(0, 3)).loss([x, x])
    with pytest.raises(ValueError, match="crops"):
        model.loss([x])
    with pytest.raises(ValueError, match="tau"):
        SwAV(_mlp(), 32, tau=0)
    with pytest.raises(ValueError, match="image"):
        from deepclust.data.datasets import make_blobs
        swav_mod.cli_fit(make_blobs(n_samples=50), FitConfig(epochs=1, progress=False))


def _ddp_worker(rank, world, x, state):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = SwAV(_mlp(), 32, n_prototypes=9, proj_hidden=None, proj_dim=16)
    model.load_state_dict(state)
    ddp = DDP(model)
    B = x[0].shape[0] // world
    out = ddp([c[rank * B:(rank + 1) * B] for c in x])
    out.total.backward()
    return out.total.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.distributed
def test_ddp_two_processes_equal_one_on_concatenated_batch():
    model = SwAV(_mlp(), 32, n_prototypes=9, proj_hidden=None, proj_dim=16)
    x = [torch.randn(22, 20) for _ in range(3)]
    res = run_distributed(_ddp_worker, x, model.state_dict())
    out = model.loss(x)
    out.total.backward()
    torch.testing.assert_close((res[0][0] + res[1][0]) / 2, out.total.detach(), atol=1e-6, rtol=1e-5)
    for n, p in model.named_parameters():  # DDP averages the gradients over the ranks
        torch.testing.assert_close(res[0][1][n], p.grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(res[1][1][n], p.grad, atol=1e-6, rtol=1e-4)


def test_cli_fit_digits_beats_chance():
    from deepclust.data.datasets import load_digits

    d = load_digits()
    out = swav_mod.cli_fit(d, FitConfig(seed=0, epochs=2, progress=False))
    pred = out["pred"]
    assert pred.shape == (1797,) and pred.dtype == np.int64
    assert np.isfinite(out["loss"])
    assert _acc(d.y.numpy(), pred) > 0.3  # chance is ~0.1
