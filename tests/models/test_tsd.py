"""TSD model: memory initialisation, the loss of a step against the references, and test-time
adaptation on shifted blobs."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from deepclust.models.tsd import TSD
from deepclust.reference import tsd as R


def _source_model(seed=0):
    """2-D blobs, 3 classes; a linear featurizer + linear classifier trained on the source."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 4.0], [3.5, -2.0], [-3.5, -2.0]])
    y = torch.randint(0, 3, (600,), generator=g)
    xs = centers[y] + 0.8 * torch.randn(600, 2, generator=g)
    model = nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(xs), y).backward()
        opt.step()
    yt = torch.randint(0, 3, (640,), generator=g)
    # target domain: the classes are scaled out and shifted
    xt = 1.6 * centers[yt] + torch.tensor([1.5, 1.5]) + 0.8 * torch.randn(640, 2, generator=g)
    return model, xt, yt


def test_memory_initialised_from_classifier():
    model, _, _ = _source_model()
    tsd = TSD(model)
    w = model[-1].weight.detach()
    torch.testing.assert_close(tsd.supports, w)
    assert tsd.labels.shape == (3, 3)
    torch.testing.assert_close(tsd.scores, model[-1](w).softmax(1))


VARIANTS = [dict(), dict(soft=False), dict(reverse_kl=False), dict(lam=0.1)]
VARIANT_IDS = ["release", "hard", "forward-kl", "topk"]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_step_loss_is_the_references(variant):
    """One step's loss, rebuilt from the memory with the eager references."""
    model, xt, _ = _source_model()
    tsd = TSD(copy.deepcopy(model), filter_K=4, tau=0.1, impl="torch", **variant)
    x = xt[:32]
    with torch.no_grad():
        w = model[-1].weight
        z = model[:-1](x)
        logits = torch.cat([model[-1](w), model[-1](z)])
    mem = R.select_supports(torch.cat([w, z]), F.one_hot(logits.argmax(1), 3).float(),
                            R.softmax_entropy(logits), logits.softmax(1), filter_K=4)
    kw = {k: v for k, v in variant.items() if k != "lam"}
    want = R.tsd_prototype_loss(z, mem[0], mem[1], logits[3:].softmax(1), tau=0.1, **kw)
    if "lam" in variant:
        want = want + variant["lam"] * R.topk_cluster_loss(z, logits[3:], mem[0], mem[3], k=3)
    tsd(x)
    assert tsd.last_loss == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    for got, ref in zip((tsd.supports, tsd.labels, tsd.ent, tsd.scores), mem):
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_adaptation_keeps_accuracy(variant):
    """A scaled-and-shifted target that the source model still separates: adaptation must not
    break it (an improving case was not found on small synthetic shifts)."""
    torch.manual_seed(0)
    model, xt, yt = _source_model()
    with torch.no_grad():
        before = (model(xt).argmax(1) == yt).float().mean().item()
    tsd = TSD(model, lr=1e-2, filter_K=20, tau=0.1, impl="torch", **variant)
    for _ in range(3):
        preds = []
        for i in range(0, 640, 64):
            p = tsd(xt[i:i + 64])
            assert p.shape == (64, 3) and torch.isfinite(p).all()
            assert torch.isfinite(torch.tensor(tsd.last_loss))
            preds.append(p.argmax(1))
        # the predictions made while adapting (each before its batch's step), pass by pass
        online = (torch.cat(preds) == yt).float().mean().item()
        assert online > 0.5 and online >= before, (before, online)  # chance is ~1/3
    assert tsd.supports.shape[0] <= 3 * 20 and tsd.labels.argmax(1).bincount(minlength=3).max() <= 20
    with torch.no_grad():
        after = (model(xt).argmax(1) == yt).float().mean().item()
    assert after >= before, (before, after)


def test_bad_model():
    with pytest.raises(TypeError, match="model"):
        TSD(nn.Linear(2, 3))
    with pytest.raises(TypeError, match="classifier"):
        TSD(nn.Sequential(nn.Linear(2, 3), nn.ReLU()))


# ----------------------------------------------------------------------------- digit shift recipe
def _tiny_images(name, n, size, seed, shift=0.0):
    """Two classes of blurred strokes (vertical vs horizontal bar) as an image Dataset."""
    from deepclust.data.datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.zeros(n, 1, size, size)
    c = size // 2 + int(shift * size)
    for i in range(n):
        w = 1 + int(torch.randint(0, 2, (1,), generator=g))
        if y[i] == 0:
            x[i, 0, :, c - w:c + w] = 1.0
        else:
            x[i, 0, c - w:c + w, :] = 1.0
    x = (x + 0.1 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    return Dataset(x.reshape(n, -1), y, name, image_shape=(1, size, size))


def test_cli_adapt_source_and_target_accuracies():
    from deepclust.models.base import FitConfig
    from deepclust.models.tsd import DigitNet, cli_adapt

    src = _tiny_images("src", 256, 12, 0)
    tgt = _tiny_images("tgt", 192, 8, 1, shift=0.1)  # smaller: resized up to 12 x 12
    res = cli_adapt(src, tgt, FitConfig(seed=0, progress=False, epochs=3), batch_size=32)
    assert res["acc_source"] > 0.95
    for key in ("acc_source_only", "acc", "acc_after"):
        assert 0.0 <= res[key] <= 1.0
    assert res["acc"] > 0.8  # two easy classes stay recognisable after the resize
    net = DigitNet(10)
    assert net(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert net(torch.rand(4, 1, 16, 16)).shape == (4, 10)


def test_cli_adapt_needs_images():
    from deepclust.data.datasets import make_blobs
    from deepclust.models.base import FitConfig
    from deepclust.models.tsd import cli_adapt

    with pytest.raises(ValueError, match="image"):
        cli_adapt(make_blobs(100), _tiny_images("t", 64, 8, 0), FitConfig(progress=False))


def test_configure_affine_trains_only_batch_norm():
    from deepclust.models.tsd import DigitNet, configure_affine

    net = DigitNet(3)
    params = configure_affine(net)
    bn = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bn) == 3 and len(params) == 6
    assert {id(p) for p in params} == {id(p) for p in net.parameters() if p.requires_grad}
    assert all(m.running_mean is None and not m.track_running_stats for m in bn)
    x = torch.rand(8, 1, 12, 12)
    with torch.no_grad():
        train_out = net(x)
        net.eval()  # still the batch's own statistics
        torch.testing.assert_close(net(x), train_out)
        assert not torch.allclose(net(x[:4]), train_out[:4])  # another batch, other statistics


def test_cli_adapt_update_all_and_bad_update():
    from deepclust.models.base import FitConfig
    from deepclust.models.tsd import cli_adapt

    src, tgt = _tiny_images("src", 128, 12, 0), _tiny_images("tgt", 64, 12, 1)
    res = cli_adapt(src, tgt, FitConfig(seed=0, progress=False, epochs=2), batch_size=32,
                    update="all", lr=1e-5)
    assert res["acc_bn_stats"] is None and 0.0 <= res["acc"] <= 1.0
    with pytest.raises(ValueError, match="update"):
        cli_adapt(src, tgt, FitConfig(seed=0, progress=False, epochs=1), update="bn")
