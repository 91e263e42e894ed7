"""The neutral helpers (deepclust/_common.py): checks name the argument, the sampler's argument
handling, the float64 rule of compute_dtype, and the single-process collectives."""
import pytest
import torch

from deepclust import _common as C


def test_compute_dtype():
    f32, f64, bf16 = (torch.zeros(1, dtype=d) for d in (torch.float32, torch.float64, torch.bfloat16))
    assert C.compute_dtype(bf16) == torch.float32
    assert C.compute_dtype(f32, bf16) == torch.float32
    assert C.compute_dtype(f32, f64) == torch.float64


def test_check_tensor_names_the_argument():
    with pytest.raises(TypeError, match="zz must be a torch.Tensor"):
        C.check_tensor([1.0], "zz")
    with pytest.raises(ValueError, match="zz must be 2-D"):
        C.check_tensor(torch.zeros(3), "zz", ndim=2)
    with pytest.raises(TypeError, match="zz must have dtype"):
        C.check_tensor(torch.zeros(3, dtype=torch.long), "zz")
    with pytest.raises(ValueError, match="zz must not be empty"):
        C.check_tensor(torch.zeros(0, 3), "zz", ndim=2)
    with pytest.raises(ValueError, match="zz contains NaN"):
        C.check_tensor(torch.tensor([1.0, float("nan")]), "zz", finite=True)
    t = torch.zeros(2, 3)
    assert C.check_tensor(t, "zz", ndim=2) is t
    assert C.check_tensor(torch.zeros(0, 3), "zz", ndim=2, nonempty=False).shape == (0, 3)


@pytest.mark.parametrize("bad,err", [("a", TypeError), (0, ValueError), (-1.0, ValueError),
                                     (float("inf"), ValueError), (float("nan"), ValueError)])
def test_check_positive(bad, err):
    with pytest.raises(err, match="tau"):
        C.check_positive(bad, "tau")
    assert C.check_positive(0.5, "tau") == 0.5


def test_check_int():
    assert C.check_int(3, "k") == 3 and C.check_int(torch.tensor(4), "k") == 4
    for bad in (True, 2.0, torch.tensor(1.5)):
        with pytest.raises(TypeError, match="k must be an int"):
            C.check_int(bad, "k")
    with pytest.raises(ValueError, match="k must be >= 1"):
        C.check_int(0, "k", minimum=1)


def test_check_same_device_and_z_centers():
    C.check_same_device(a=torch.zeros(1), b=None, c=torch.zeros(2))
    with pytest.raises(ValueError, match="feature dimension"):
        C.check_z_centers(torch.zeros(4, 3), torch.zeros(2, 5))
    if torch.device("meta") != torch.device("cpu"):
        with pytest.raises(ValueError, match="b is on meta"):
            C.check_same_device(a=torch.zeros(1), b=torch.zeros(1, device="meta"))


def test_sampler_args_defaults_and_errors():
    ei = torch.tensor([[0, 1], [1, 2]], dtype=torch.int32)
    e, n, s = C.sampler_args(ei, None, None)
    assert e.dtype == torch.int64 and n == 3 and s == 2
    with pytest.raises(ValueError, match="edge_index"):
        C.sampler_args(ei, 2, None)  # index 2 outside [0, 2)
    with pytest.raises(ValueError, match="num_nodes must be given"):
        C.sampler_args(torch.zeros(2, 0, dtype=torch.long), None, None)
    with pytest.raises(ValueError, match="num_nodes must be <="):
        C.sampler_args(ei, C.MAX_NODES + 1, None)
    with pytest.raises(ValueError, match="num_neg_samples"):
        C.sampler_args(ei, 3, -1)


def test_check_views_and_sinkhorn_args():
    assert C.check_views(torch.zeros(6, 4), "z", 3) == 3  # the validated number of views
    with pytest.raises(ValueError, match="z"):
        C.check_views(torch.zeros(7, 4), "z", 3)
    with pytest.raises(ValueError, match="eps"):
        C.check_sinkhorn_args(0.0, 3)
    with pytest.raises((TypeError, ValueError), match="n_iters"):
        C.check_sinkhorn_args(0.05, -1)


def test_single_process_collectives_are_identity():
    t = torch.arange(6.0).view(2, 3)
    assert C.get_group() is None and C.world_size() == 1 and C.rank() == 0
    for fn in (C.all_reduce_sum, C.all_reduce_max, C.all_reduce_sum_with_grad,
               C.all_gather_with_grad, C.all_gather_no_grad):
        assert torch.equal(fn(t), t)
    assert torch.equal(C.gather_views(t, 2, None), t)
    with pytest.raises(ValueError, match="group was given"):
        C.get_group(object())
