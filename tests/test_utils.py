"""Shared plumbing: path selection, argument checks, process-group helpers."""
import pytest
import torch

from deepclust import _utils as U
from tests.helpers import run_distributed


def test_resolve_impl():
    x = torch.zeros(2)
    assert U.resolve_impl("torch", x) == "torch"
    assert U.resolve_impl("auto", x) == ("triton" if x.is_cuda else "torch")
    # the test session runs the kernels in the interpreter on the CPU
    assert U.resolve_impl("triton", x) == "triton"
    with pytest.raises(ValueError, match="impl must be one of"):
        U.resolve_impl("cuda", x)


def test_resolve_impl_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        U.resolve_impl("triton", torch.zeros(2))


def test_checks_name_the_argument():
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        U.check_tensor([1.0], "z")
    with pytest.raises(ValueError, match=r"z must be 2-D, got shape \(3,\)"):
        U.check_tensor(torch.zeros(3), "z", ndim=2)
    with pytest.raises(TypeError, match="centers must have dtype"):
        U.check_tensor(torch.zeros(2, 2, dtype=torch.long), "centers")
    with pytest.raises(ValueError, match="z must not be empty"):
        U.check_tensor(torch.zeros(0, 3), "z", ndim=2)
    with pytest.raises(ValueError, match="z contains NaN"):
        U.check_tensor(torch.tensor([[float("nan")]]), "z", finite=True)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        U.check_positive(0.0, "alpha")
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        U.check_positive(float("inf"), "tau")
    with pytest.raises(TypeError, match="n_iters must be an int"):
        U.check_int(2.5, "n_iters")
    with pytest.raises(ValueError, match="n_iters must be >= 1"):
        U.check_int(0, "n_iters", minimum=1)
    assert U.check_int(3, "n") == 3 and U.check_positive(2, "a") == 2.0


def test_single_process_helpers_are_identity():
    t = torch.arange(3.0)
    assert U.get_group() is None and U.world_size() == 1 and U.rank() == 0
    assert U.all_reduce_sum(t) is t and U.all_gather_with_grad(t) is t
    with pytest.raises(ValueError, match="group was given"):
        U.get_group(object())


def _collectives(rank, world):
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    g = U.all_gather_with_grad(x)
    (g * torch.arange(g.shape[0]).float()[:, None]).sum().backward()
    return {
        "ws": U.world_size(), "rank": U.rank(), "gathered": g.detach(), "grad": x.grad,
        "sum": U.all_reduce_sum(torch.tensor([float(rank + 1)])),
        "max": U.all_reduce_max(torch.tensor([float(rank)])),
        "nograd": U.all_gather_no_grad(torch.tensor([rank])),
    }


@pytest.mark.distributed
def test_collectives_on_two_processes():
    r0, r1 = run_distributed(_collectives)
    assert (r0["ws"], r0["rank"], r1["rank"]) == (2, 0, 1)
    expect = torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)])
    assert torch.equal(r0["gathered"], expect) and torch.equal(r1["gathered"], expect)
    # the gradient of row i of the gathered tensor is i on every rank, and all_gather's backward
    # sums the ranks' gradients: rank 0 owns rows 0..1 -> 2 * [0, 1], rank 1 rows 2..3 -> 2 * [2, 3]
    assert torch.equal(r0["grad"], 2 * torch.tensor([[0.0] * 3, [1.0] * 3]))
    assert torch.equal(r1["grad"], 2 * torch.tensor([[2.0] * 3, [3.0] * 3]))
    assert r0["sum"].item() == 3.0 and r1["max"].item() == 1.0
    assert r0["nograd"].tolist() == [0, 1]
