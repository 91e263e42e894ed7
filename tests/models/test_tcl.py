"""TCL: heads, loss, augmentations, training and the CLI hook."""
import pytest
import torch
import torch.nn as nn

from deepclust.data import augment as A
from deepclust.data.datasets import Dataset, load_digits, make_blobs
from deepclust.metrics import cluster_acc
from deepclust.models import TCL
from deepclust.models import tcl as T
from deepclust.models._images import SmallCNN
from deepclust.models.base import FitConfig, LossOutput



def _model(impl="torch", k=10):
    torch.manual_seed(0)
    return TCL(SmallCNN(1, 8, 8, feat_dim=32), 32, k, instance_dim=16, impl=impl)


def _digits(n=64):
    d = load_digits()
    return d.x[:n].reshape(-1, 1, 8, 8)


def test_heads_and_predict():
    model = _model()
    x = _digits(20)
    z, c = model(x)
    assert z.shape == (20, 16) and c.shape == (20, 10)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(20))
    torch.testing.assert_close(c.sum(1), torch.ones(20))
    model.eval()
    pred = model.predict(x)
    assert pred.shape == (20,) and pred.dtype == torch.long
    assert torch.equal(pred, model(x)[1].argmax(1))


@pytest.mark.parametrize("m", [2, 3])
def test_loss_is_sum_of_the_two_ops(m):
    from deepclust.reference import cluster_contrastive_loss, instance_contrastive_loss

    model = _model()
    g = torch.Generator().manual_seed(1)
    x = _digits(16)
    views = [A.weak_augment(x, g)] + [A.strong_augment(x, g) for _ in range(m - 1)]
    out = model.loss(views)
    assert isinstance(out, LossOutput) and set(out.components) == {"instance", "cluster"}
    z, c = model(torch.cat(views))
    want_i = instance_contrastive_loss(z, m, 0.5).item()
    want_c = cluster_contrastive_loss(c, m, 1.0).item()
    assert out.components["instance"] == pytest.approx(want_i, rel=1e-5)
    assert out.components["cluster"] == pytest.approx(want_c, rel=1e-5)
    assert out.total.item() == pytest.approx(want_i + want_c, rel=1e-5)


def test_triton_path_same_loss_and_grads(device):
    torch.manual_seed(0)
    x = _digits(13)
    g = torch.Generator().manual_seed(2)
    views = [A.weak_augment(x, g).to(device), A.strong_augment(x, g).to(device)]
    grads = []
    for impl in ("torch", "triton"):
        model = _model(impl).to(device).eval()  # eval: batch-norm statistics are not updated
        out = model.loss(views)
        out.total.backward()
        grads.append((out.total.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_loss_falls_over_20_steps():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = _digits(32)
    views = [A.weak_augment(x, g), A.strong_augment(x, g)]
    losses = []
    for _ in range(20):
        out = model.loss(views)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(out.total.item())
    assert losses[-1] < losses[0] - 0.3, losses


def test_bad_input():
    model = _model()
    x = _digits(8)
    with pytest.raises(ValueError, match="views"):
        model.loss([x])
    with pytest.raises(ValueError, match="views"):
        model.loss([x, x[:4]])
    with pytest.raises(ValueError, match="n_clusters"):
        TCL(nn.Identity(), 8, 1)
    with pytest.raises(ValueError, match="tau_instance"):
        TCL(nn.Identity(), 8, 3, tau_instance=0)


def test_augmentations():
    x = _digits(32)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for fn in (A.weak_augment, A.strong_augment):
        a = fn(x, g1)
        assert a.shape == x.shape
        assert a.min() >= 0 and a.max() <= 1
        assert (a - x).abs().mean() > 0.01  # it changes the images
        torch.testing.assert_close(a, fn(x, g2))  # and is reproducible
    # weak views stay closer to the image than strong ones
    g = torch.Generator().manual_seed(0)
    assert (A.weak_augment(x, g) - x).abs().mean() < (A.strong_augment(x, g) - x).abs().mean()
    # the identity transform of the affine helper is the identity
    same = A.random_affine(x, 0.0, (1.0, 1.0), 0.0, 0.0, g)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    # erasing with p = 1 zeroes a box in every image
    erased = A.random_erase(torch.ones(4, 1, 8, 8), 1.0, (0.2, 0.2), g)
    assert ((erased == 0).flatten(1).sum(1) > 0).all()


def test_cli_fit_rejects_non_images():
    with pytest.raises(ValueError, match="image"):
        T.cli_fit(make_blobs(100), FitConfig(progress=False))


def test_cli_fit_digits_beats_chance():
    d = load_digits()
    sub = Dataset(d.x[:512], d.y[:512], "digits", image_shape=(1, 8, 8))
    out = T.cli_fit(sub, FitConfig(seed=0, epochs=15, impl="torch", progress=False))  # 30 steps
    pred = out["pred"]
    assert pred.shape == (512,) and pred.dtype.kind == "i"
    assert cluster_acc(sub.y, pred) > 0.35  # chance is ~0.1
