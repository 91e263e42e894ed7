"""MLP autoencoder pieces: the layer stack and the denoising corruption."""
import pytest
import torch
from torch import nn

from deepclust.nn.autoencoder import check_noise, corrupt, mlp


def test_mlp_layers():
    net = mlp((7, 5, 3, 2))
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]  # linear last layer
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [5, 3, 2]
    assert net(torch.randn(4, 7)).shape == (4, 2)
    assert (net(torch.randn(50, 7)) < 0).any()  # no ReLU after the last layer


def test_dropout_corruption():
    x = torch.rand(200, 30) + 0.5
    out = corrupt(x, 0.25, "dropout", torch.Generator().manual_seed(0))
    zero = out == 0
    assert 0.15 < zero.float().mean() < 0.35
    torch.testing.assert_close(out[~zero], x[~zero] / 0.75)
    again = corrupt(x, 0.25, "dropout", torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the generator decides


def test_gaussian_corruption():
    x = torch.zeros(400, 50)
    out = corrupt(x, 0.5, "gaussian", torch.Generator().manual_seed(1))
    assert out.std().item() == pytest.approx(0.5, rel=0.05)
    assert torch.equal(out, corrupt(x, 0.5, "gaussian", torch.Generator().manual_seed(1)))


def test_no_noise_is_identity():
    x = torch.randn(3, 4)
    assert corrupt(x, 0.0, "dropout") is x and corrupt(x, 0.0, "gaussian") is x


@pytest.mark.parametrize("noise,noise_type,match", [
    (1.0, "dropout", r"\[0, 1\)"), (-0.1, "dropout", r"\[0, 1\)"),
    (-1.0, "gaussian", ">= 0"), (float("inf"), "gaussian", "finite"), (0.1, "salt", "noise_type"),
])
def test_check_noise(noise, noise_type, match):
    with pytest.raises(ValueError, match=match):
        check_noise(noise, noise_type)
    assert check_noise(0.2, "dropout") == 0.2 and check_noise(3, "gaussian") == 3.0
