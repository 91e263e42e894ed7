"""Image augmentations: shapes, dtype, determinism under a generator, range, and that each one
changes its input."""
import pytest
import torch

from deepclust.data import augment as A


def _images(n=6, h=12, w=10, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, h, w, dtype=dtype)
    x[:, :, 3:9, 2:8] = 0.2 + 0.8 * torch.rand(n, 1, 6, 6, generator=g, dtype=dtype)  # a blob
    return x


# name -> f(x, generator); every one maps (N, C, H, W) in [0, 1] to images in [0, 1]
AUGMENTS = {
    "random_resized_crop": lambda x, g: A.random_resized_crop(x, (8, 7), generator=g),
    "jitter": lambda x, g: A.jitter(x, generator=g),
    "random_affine": lambda x, g: A.random_affine(x, 20.0, (0.8, 1.2), 0.1, 0.1, g),
    "random_erase": lambda x, g: A.random_erase(x, 1.0, (0.1, 0.3), g),
    "weak_augment": A.weak_augment,
    "strong_augment": A.strong_augment,
}
SHAPES = {"random_resized_crop": (6, 1, 8, 7)}


@pytest.mark.parametrize("name", AUGMENTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_range(name, dtype):
    x = _images(dtype=dtype)
    out = AUGMENTS[name](x, torch.Generator().manual_seed(1))
    assert out.shape == SHAPES.get(name, x.shape) and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", AUGMENTS)
def test_deterministic_under_a_generator(name):
    x = _images()
    first = AUGMENTS[name](x.clone(), torch.Generator().manual_seed(3))
    assert torch.equal(first, AUGMENTS[name](x.clone(), torch.Generator().manual_seed(3)))
    assert not torch.equal(first, AUGMENTS[name](x.clone(), torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("name", [n for n in AUGMENTS if n not in SHAPES])
def test_changes_every_image_and_not_its_input(name):
    x = _images()
    before = x.clone()
    out = AUGMENTS[name](x, torch.Generator().manual_seed(5))
    assert torch.equal(x, before), "the input was modified in place"
    assert ((out - x).abs().flatten(1).amax(1) > 1e-3).all()


def test_random_resized_crop_at_full_scale_without_motion_is_the_identity():
    x = _images()
    out = A.random_resized_crop(x, (12, 10), scale=(1.0, 1.0), max_rot=0.0, max_shift=0.0,
                                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x)
    crops = A.random_resized_crop(x, (8, 7), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(crops, torch.nn.functional.interpolate(x, (8, 7), mode="bilinear"))


def test_random_erase_probability_and_zeros():
    x = torch.ones(8, 1, 10, 10)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(A.random_erase(x, 0.0, (0.1, 0.3), g), x)
    out = A.random_erase(x, 1.0, (0.1, 0.3), g)
    erased = (out == 0).flatten(1).float().mean(1)
    assert ((erased > 0) & (erased < 0.5)).all()  # one rectangle per image, within the area range
    assert torch.equal(out[out != 0], x[out != 0])


def test_multi_crop_sizes():
    x = _images(h=16, w=12)
    crops = A.multi_crop(x, n_global=2, n_local=3, generator=torch.Generator().manual_seed(0))
    assert [tuple(c.shape) for c in crops] == [(6, 1, 16, 12)] * 2 + [(6, 1, 12, 9)] * 3
    assert all(c.min() >= 0 and c.max() <= 1 for c in crops)
    assert not torch.equal(crops[0], crops[1])


def test_strong_is_stronger_than_weak():
    x = _images(n=32)
    g = torch.Generator().manual_seed(0)
    weak = (A.weak_augment(x, g) - x).abs().mean()
    assert weak < (A.strong_augment(x, g) - x).abs().mean()
