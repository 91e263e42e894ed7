"""Fused SwAV swapped-prediction loss against the reference and the float64 reference."""
import inspect

import pytest
import torch

import deepclust.ops.swav as ops_swav
import deepclust.reference.swav as ref_swav
from deepclust.ops import _plumbing
from deepclust.ops.sinkhorn_knopp import sinkhorn
from deepclust.ops.swav import swav_loss
from tests.helpers import DTYPES, DTYPE_IDS, assert_close_to_truth, unit

IMPLS = ["torch", "triton"]


CROP_CASES = [(37, 5, 3, (0, 1)), (33, 70, 4, (1,)), (17, 130, 2, (0, 1))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B,K,V,assign", CROP_CASES, ids=[f"{b}x{k}-V{v}" for b, k, v, _ in CROP_CASES])
def test_swav_loss_values_and_grads(B, K, V, assign, dtype, impl, device):
    base = [(unit(B, 12) @ unit(K, 12).t()) for _ in range(V)]
    crops = [b.to(device=device, dtype=dtype).requires_grad_() for b in base]
    loss = swav_loss(crops, assign, impl=impl)
    assert loss.dtype == dtype
    grads = torch.autograd.grad(loss, crops, allow_unused=True, materialize_grads=True)
    rcrops = [c.detach().clone().requires_grad_() for c in crops]
    rloss = ref_swav.swav_loss(rcrops, assign)
    rgrads = torch.autograd.grad(rloss, rcrops, allow_unused=True, materialize_grads=True)
    tcrops = [c.detach().double().cpu().requires_grad_() for c in crops]
    tloss = ref_swav.swav_loss(tcrops, assign)
    tgrads = torch.autograd.grad(tloss, tcrops, allow_unused=True, materialize_grads=True)
    assert_close_to_truth(loss.float().cpu().reshape(1), rloss.float().cpu().reshape(1),
                          tloss.reshape(1), dtype, "loss")
    for i, (g, r, t) in enumerate(zip(grads, rgrads, tgrads)):
        assert_close_to_truth(g.cpu(), r.cpu(), t, dtype, f"grad[{i}]")


@pytest.mark.parametrize("impl", IMPLS)
def test_swav_loss_stacked_input_and_queue(impl, device):
    x = (torch.randn(3, 21, 9, device=device) * 0.3).requires_grad_()
    queue = [torch.randn(14, 9, device=device) * 0.3, None]
    loss = swav_loss(x, (0, 2), queue_scores=queue, impl=impl)
    (g,) = torch.autograd.grad(loss, x)
    xr = x.detach().double().requires_grad_()
    rloss = ref_swav.swav_loss(list(xr), (0, 2), queue_scores=[queue[0].double(), None])
    (gr,) = torch.autograd.grad(rloss, xr)
    torch.testing.assert_close(loss.double(), rloss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.double(), gr, atol=1e-6, rtol=1e-4)


def test_float64_torch_path(device):
    """float64 crops stay float64 on the torch path (codes, loss and gradient)."""
    x = (torch.randn(3, 21, 9, dtype=torch.float64, device=device) * 0.3).requires_grad_()
    loss = swav_loss(x, (0, 1), impl="torch")
    assert loss.dtype == torch.float64
    (g,) = torch.autograd.grad(loss, x)
    xr = x.detach().clone().requires_grad_()
    rloss = ref_swav.swav_loss(xr, (0, 1))
    (gr,) = torch.autograd.grad(rloss, xr)
    torch.testing.assert_close(loss, rloss, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(g, gr, atol=1e-12, rtol=1e-10)


def test_eager_path_over_row_chunks(monkeypatch):
    """The eager loss and gradient are the same over several row chunks as over one."""
    x = (torch.randn(3, 21, 9) * 0.3).requires_grad_()

    def run():
        loss = swav_loss(x, impl="torch")
        return loss, torch.autograd.grad(loss, x)[0]

    want = run()
    monkeypatch.setattr(ops_swav, "row_chunks", lambda n, w: [(0, 5), (5, 13), (13, n)])
    for g, w in zip(run(), want):
        torch.testing.assert_close(g, w)


def test_bad_inputs(device):
    s = torch.randn(5, 4, device=device)
    with pytest.raises(ValueError, match="crops_for_assign"):
        swav_loss([s, s], crops_for_assign=(2,))
    with pytest.raises(ValueError, match="crop_scores"):
        swav_loss([s, torch.randn(5, 3, device=device)])
    with pytest.raises(ValueError, match="crop_scores"):
        swav_loss(torch.randn(2, 3, device=device))
    with pytest.raises(ValueError, match="n_iters"):
        swav_loss([s, s], n_iters=0)
    with pytest.raises(TypeError, match="crop_scores"):
        swav_loss([s.double(), s.double()], impl="triton")


# ----------------------------------------------------------------------------- torch.library
def _ce_args(device, dtype=torch.float32):
    s = torch.randn(37, 5, device=device) * 0.3
    x = (torch.randn(3, 37, 5, device=device) * 0.3).to(dtype).requires_grad_()
    ct = _plumbing.compute_dtype(x)
    q = torch.stack([sinkhorn(s), sinkhorn(s * 2)]).to(ct)
    w = (torch.rand(3, 2, device=device) / 37).to(ct)
    return x, q, w


@pytest.mark.parametrize("impl", IMPLS)
def test_opcheck(impl, device):
    x, q, w = _ce_args(device)
    torch.library.opcheck(torch.ops.deepclust.swav_ce.default, (x, q, w, 10.0, impl))
    loss, lse, tsum = torch.ops.deepclust.swav_ce(x, q, w, 10.0, impl)
    g = torch.ones((), device=device)
    torch.library.opcheck(torch.ops.deepclust.swav_ce_backward.default,
                          (g, x.detach(), q, w, lse, tsum, 10.0, impl))
    if impl == "torch":  # float64 stays float64
        x, q, w = _ce_args(device, torch.float64)
        torch.library.opcheck(torch.ops.deepclust.swav_ce.default, (x, q, w, 10.0, impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile_fullgraph(impl, device):
    x = (torch.randn(3, 37, 5, device=device) * 0.3).requires_grad_()

    def f(x):
        return swav_loss(x, (0, 1), impl=impl)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    lc = compiled(x)
    (gc,) = torch.autograd.grad(lc, x)
    le = f(x)
    (ge,) = torch.autograd.grad(le, x)
    torch.testing.assert_close(lc, le)
    torch.testing.assert_close(gc, ge)


def test_cpu_bf16_autocast():
    """Under CPU bf16 autocast, bf16 crop scores run the fp32 op (codes and loss) on the
    up-cast scores: an fp32 loss, and bf16 gradients that are finite and close to the fp32
    op's."""
    crops = [(torch.randn(21, 9) * 0.3).bfloat16() for _ in range(3)]
    cb = [c.clone().requires_grad_() for c in crops]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = swav_loss(cb, (0, 1))
    assert loss.dtype == torch.float32
    cf = [c.float().requires_grad_() for c in crops]
    want = swav_loss(cf, (0, 1))
    torch.testing.assert_close(loss, want, atol=0, rtol=0)
    gb = torch.autograd.grad(loss, cb)
    gf = torch.autograd.grad(want, cf)
    for g, w in zip(gb, gf):
        assert g.dtype == torch.bfloat16 and torch.isfinite(g).all()
        torch.testing.assert_close(g.float(), w.bfloat16().float(), atol=0, rtol=0)


# ----------------------------------------------------------------------------- configs, determinism
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_interpreter_runs_the_gpu_configuration(dtype):
    """The interpreter runs the loss kernels' tiles, warps and stages that a GPU runs."""
    for K in (3, 5, 9, 11, 17, 70, 300, 1000, 3000):  # the K of the tests and the compile gate
        cfg = ops_swav._swav_ce_config(K, dtype, "cuda")
        assert cfg == ops_swav._swav_ce_config(K, dtype, "interpreter")
        assert cfg.block_b >= 16 and cfg.block_k >= 16 and cfg.block_k & (cfg.block_k - 1) == 0


def test_kernels_use_no_atomics():
    """The per-row losses are summed by torch in a fixed order: no atomic in any kernel."""
    for k in (ops_swav._swav_ce_fwd_kernel, ops_swav._swav_ce_bwd_kernel,
              ops_swav._scores_and_targets):
        assert "atomic" not in inspect.getsource(k.fn), k.fn.__name__
    assert "tl.atomic" not in inspect.getsource(ops_swav)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bitwise_deterministic(dtype, device):
    """Twice the same inputs: bitwise the same loss and gradient."""
    z, p = unit(133, 40).to(device=device, dtype=dtype), unit(70, 40).to(device=device, dtype=dtype)
    s = z @ p.t()
    x = torch.stack([s, s.flip(0), s * 0.5]).detach()

    def run():
        xr = x.clone().requires_grad_()
        loss = swav_loss(xr, (0, 1), impl="triton")
        (g,) = torch.autograd.grad(loss, xr)
        return loss, g

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)
