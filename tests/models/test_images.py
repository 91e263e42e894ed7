"""The image recipes' shared pieces: backbone shapes, the image view of a data set, and the
row augmentation (same rows out, seeded, really moved)."""
import pytest
import torch

from deepclust.data.datasets import load_digits, make_blobs
from deepclust.models._images import ImageMLP, SmallCNN, affine_rows, images_of


def test_backbones_take_any_crop_size():
    mlp = ImageMLP((1, 16, 16), 32).eval()
    assert mlp(torch.rand(3, 1, 16, 16)).shape == (3, 32)
    assert mlp(torch.rand(3, 1, 12, 12)).shape == (3, 32)  # a smaller crop is resized up
    cnn = SmallCNN(1, 28, 28, feat_dim=24).eval()
    assert cnn(torch.rand(3, 1, 28, 28)).shape == (3, 24)


def test_images_of():
    d = load_digits()
    x = images_of(d, "cpu")
    assert x.shape == (d.x.shape[0], 1, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x.reshape(d.x.shape[0], -1), d.x.float())
    with pytest.raises(ValueError, match="image"):
        images_of(make_blobs(20), "cpu")


def test_affine_rows_is_seeded_and_moves_pixels():
    rows = load_digits().x[:16].float()
    aug = affine_rows((1, 8, 8))
    a = aug(rows, torch.Generator().manual_seed(1))
    b = aug(rows, torch.Generator().manual_seed(1))
    c = aug(rows, torch.Generator().manual_seed(2))
    assert a.shape == rows.shape
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, rows)
    # small transforms: most of the ink stays (mass within 35 %)
    ratio = a.sum(1) / rows.sum(1)
    assert bool(((ratio > 0.65) & (ratio < 1.35)).all()), ratio
    still = affine_rows((1, 8, 8), max_rot=0.0, scale=(1.0, 1.0), max_shift=0.0)(rows, torch.Generator())
    torch.testing.assert_close(still, rows, atol=1e-5, rtol=0)
