"""The fused contrastive losses against the eager reference, the published formula and float64;
both paths, every dtype, gradients, two processes, torch.compile, opcheck and autocast; the tile
choice (same on the GPU and in the interpreter) and bitwise determinism."""
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import deepclust.ops.contrastive as C
from deepclust import reference as R
from deepclust.ops import _plumbing
from deepclust.ops.contrastive import _eager, _kernels
from tests.helpers import DEVICE, DTYPE_IDS, DTYPES, assert_close_to_truth, run_distributed
from tests.reference.test_contrastive import (
    local_part,
    random_assignments,
    seed_cluster_loss,
    seed_instance_loss,
)

IMPLS = ["torch", "triton"]


def _loss_and_grad(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kw)
    loss.backward()
    return loss.detach(), x.grad


def _check(fused_fn, ref_fn, x64, dtype, device, *args, impl, **kw):
    """Fused vs reference vs float64 truth, forward and backward."""
    truth, g_truth = _loss_and_grad(ref_fn, x64.to(device), *args)
    ref, g_ref = _loss_and_grad(ref_fn, x64.to(device, dtype), *args)
    out, g_out = _loss_and_grad(fused_fn, x64.to(device, dtype), *args, impl=impl, **kw)
    assert out.dtype == dtype and g_out.dtype == dtype
    assert_close_to_truth(out.cpu(), ref.cpu(), truth.cpu(), dtype, "loss")
    assert_close_to_truth(g_out.cpu(), g_ref.cpu(), g_truth.cpu(), dtype, "grad")
    return truth


# m, B, d, tau: odd B and d; d = 300 streams the features in chunks in the Triton kernels
SHAPES = [(2, 13, 19, 0.1), (3, 37, 130, 0.5), (4, 13, 300, 1.0)]
SHAPE_IDS = ["m2-B13-d19-t0.1", "m3-B37-d130-t0.5", "m4-B13-d300-t1"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("m,b,d,tau", SHAPES, ids=SHAPE_IDS)
def test_instance_matches_reference(impl, dtype, m, b, d, tau, device):
    z = F.normalize(torch.randn(m * b, d, dtype=torch.float64), dim=1)
    truth = _check(C.instance_contrastive_loss, R.instance_contrastive_loss, z, dtype, device,
                   m, tau, impl=impl)
    # the truth is the published formula (with its -1e4 diagonal)
    torch.testing.assert_close(truth.cpu(), seed_instance_loss(z.clone(), tau, m),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_instance_equals_seed_formula(impl, tau, device):
    z = F.normalize(torch.randn(2 * 37, 19), dim=1).to(device)
    out = C.instance_contrastive_loss(z, 2, tau, impl=impl)
    want = seed_instance_loss(z.double().cpu(), tau, 2)
    torch.testing.assert_close(out.double().cpu(), want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_instance_many_tiles(impl, device):
    # several row programs and column tiles, N not a multiple of any block
    z = F.normalize(torch.randn(2 * 129, 64, dtype=torch.float64), dim=1)
    _check(C.instance_contrastive_loss, R.instance_contrastive_loss, z, torch.float32, device,
           2, 0.2, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_instance_large_logits(impl, dtype, device):
    # unnormalised z, tau = 0.1: logits in the thousands (fp16 z z^T itself would overflow).
    # The loss is as accurate as the reference's. In the gradient, the column term compares
    # s_ij (recomputed in row i's tile) with row j's statistics, and s_ij, s_ji may round
    # differently: a relative error of a few fp32 ulps of max|s| is allowed on top.
    z = 8.0 * torch.randn(2 * 13, 19, dtype=torch.float64)
    zd = z.to(dtype).double()
    truth, g_truth = _loss_and_grad(R.instance_contrastive_loss, zd.to(device), 2, 0.1)
    ref, g_ref = _loss_and_grad(R.instance_contrastive_loss, z.to(device, dtype), 2, 0.1)
    out, g_out = _loss_and_grad(C.instance_contrastive_loss, z.to(device, dtype), 2, 0.1, impl=impl)
    assert_close_to_truth(out.cpu(), ref.cpu(), truth.cpu(), dtype, "loss")
    assert torch.isfinite(g_out).all()
    s_max = (zd @ zd.t()).abs().max().item() / 0.1
    slack = 8 * torch.finfo(torch.float32).eps * s_max * g_truth.abs().max().item()
    err_ref = (g_ref.double() - g_truth).abs().max().item()
    err = (g_out.double() - g_truth).abs().max().item()
    atol, rtol = 1e-5, 1e-5
    if dtype != torch.float32:  # the result itself is rounded to the input dtype
        atol, rtol = 2e-3, 1e-2
    assert err <= 2 * err_ref + slack + atol + rtol * g_truth.abs().max().item(), (err, err_ref, slack)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("m,b,k,tau", [(2, 37, 5, 1.0), (3, 13, 19, 0.5)], ids=["m2-K5", "m3-K19"])
def test_cluster_matches_reference(impl, dtype, m, b, k, tau, device):
    c = random_assignments(m * b, k)
    truth = _check(C.cluster_contrastive_loss, R.cluster_contrastive_loss, c, dtype, device,
                   m, tau, impl=impl)
    if m == 2:
        torch.testing.assert_close(truth.cpu(), seed_cluster_loss(c.clone(), tau),
                                   rtol=1e-12, atol=1e-12)


def test_hand_values():
    z = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    want = (math.log(2 + math.e) - 1 + math.log(3)) / 2
    assert C.instance_contrastive_loss(z, 2, 1.0, impl="torch").item() == pytest.approx(want, abs=1e-6)
    c = torch.cat([torch.eye(2), torch.eye(2)])
    assert C.cluster_contrastive_loss(c, 2, 1.0, impl="torch").item() == pytest.approx(
        math.log(2 + math.e) - 1, abs=1e-6)


def test_torch_path_float64_gradcheck(monkeypatch):
    monkeypatch.setattr(_eager, "_CHUNK_ELEMS", 8)  # several row chunks
    z = torch.randn(3 * 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: C.instance_contrastive_loss(t, 3, 0.5, impl="torch"), (z,))
    c = random_assignments(2 * 5, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: C.cluster_contrastive_loss(t, 2, 0.7, impl="torch"), (c,))


def test_torch_path_row_chunks(monkeypatch):
    # one row per chunk and one chunk for all: both as close to float64 as the reference
    z = F.normalize(torch.randn(3 * 11, 7, dtype=torch.float64), dim=1)
    monkeypatch.setattr(_eager, "_CHUNK_ELEMS", 50)
    assert len(_plumbing.row_chunks(z.shape[0], z.shape[0], _eager._CHUNK_ELEMS)) == z.shape[0]
    _check(C.instance_contrastive_loss, R.instance_contrastive_loss, z, torch.float32, "cpu",
           3, 0.5, impl="torch")
    monkeypatch.setattr(_eager, "_CHUNK_ELEMS", 1 << 23)
    _check(C.instance_contrastive_loss, R.instance_contrastive_loss, z, torch.float32, "cpu",
           3, 0.5, impl="torch")


# ----------------------------------------------------------------------------- tiles, determinism
# feature sizes the tests and the compile gate's test workloads launch (cluster: d = B)
TILE_DS = [10, 13, 19, 33, 37, 50, 64, 130, 300]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_config_same_on_gpu_and_interpreter(dtype, backward):
    # the interpreter runs the tiles the GPU runs; the one documented difference is `upcast`
    for d in TILE_DS:
        gpu = C._config(d, dtype, "cuda", backward)
        interp = C._config(d, dtype, "interpreter", backward)
        assert not gpu.upcast
        assert interp.upcast == (dtype == torch.bfloat16)
        assert interp._replace(upcast=False) == gpu
        assert gpu.block_d >= 16 and gpu.block_n >= 16 and gpu.block_m >= 16
        for b in (gpu.block_m, gpu.block_n, gpu.block_d) + ((gpu.block_do,) if backward else ()):
            assert b & (b - 1) == 0
        if dtype == torch.float32:  # fp32 dots stay accurate
            assert gpu.precision == gpu.precision_grad == "ieee"


def test_kernels_free_of_atomics():
    # every output element is written by one program in a fixed order: nothing to race
    assert "tl.atomic" not in inspect.getsource(_kernels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_deterministic(dtype, device):
    z = F.normalize(torch.randn(2 * 37, 40), dim=1).to(device, dtype)
    first = _loss_and_grad(C.instance_contrastive_loss, z, 2, 0.5, impl="triton")
    second = _loss_and_grad(C.instance_contrastive_loss, z, 2, 0.5, impl="triton")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [C.instance_contrastive_loss, C.cluster_contrastive_loss])
def test_bad_input(fn, device):
    name = "z" if fn is C.instance_contrastive_loss else "c"
    x = torch.rand(6, 4)
    with pytest.raises(ValueError, match="n_views"):
        fn(torch.rand(7, 4), 2)
    with pytest.raises(ValueError, match="tau"):
        fn(x, 2, 0.0)
    with pytest.raises(ValueError, match="tau"):
        fn(x, 2, float("nan"))
    with pytest.raises(ValueError, match=name):
        fn(torch.rand(6), 2)
    with pytest.raises(ValueError, match=name):
        fn(torch.rand(6, 4, 2), 2)
    with pytest.raises(ValueError, match="n_views"):
        fn(x, 1)
    with pytest.raises(TypeError, match=name):
        fn(torch.ones(6, 4, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="impl"):
        fn(x, 2, impl="cuda")
    with pytest.raises(TypeError, match=name):
        fn(x.to(device, torch.float64), 2, impl="triton")


# ----------------------------------------------------------------------- torch.compile, opcheck
@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile_fullgraph(impl, device):
    z = F.normalize(torch.randn(3 * 7, 11), dim=1).to(device)
    c = random_assignments(2 * 9, 4, dtype=torch.float32).to(device)

    def both(z, c):
        return (C.instance_contrastive_loss(z, 3, 0.5, impl=impl)
                + C.cluster_contrastive_loss(c, 2, 1.0, impl=impl))

    torch._dynamo.reset()
    compiled = torch.compile(both, backend="aot_eager", fullgraph=True)
    (zc, cc), (ze, ce) = [[t.clone().requires_grad_(True) for t in (z, c)] for _ in range(2)]
    out_c, out_e = compiled(zc, cc), both(ze, ce)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(zc.grad, ze.grad)
    torch.testing.assert_close(cc.grad, ce.grad)
    # and the compiled loss is the reference's
    truth = (R.instance_contrastive_loss(z.double(), 3, 0.5)
             + R.cluster_contrastive_loss(c.double(), 2, 1.0))
    torch.testing.assert_close(out_c.double(), truth, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_opcheck(impl, device):
    z = torch.randn(2 * 9, 19, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.deepclust.contrastive_rows.default, (z, 2, 2.0, impl))
    _, stats = torch.ops.deepclust.contrastive_rows(z.detach(), 2, 2.0, impl)
    g = torch.randn(18, device=device)
    torch.library.opcheck(torch.ops.deepclust.contrastive_rows_backward.default,
                          (z.detach(), stats, g, 2, 2.0, impl))


# ----------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("impl", IMPLS)
def test_custom_op_runs_fp32_under_autocast(impl, device):
    # the registered autocast rule: a bf16 z reaches the row terms as fp32
    z = F.normalize(torch.randn(3 * 11, 19, device=device), dim=1)
    zb = z.bfloat16()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        rows, stats = torch.ops.deepclust.contrastive_rows(zb, 3, 2.0, impl)
    want_rows, want_stats = torch.ops.deepclust.contrastive_rows(zb.float(), 3, 2.0, impl)
    assert rows.dtype == stats.dtype == torch.float32
    torch.testing.assert_close(rows, want_rows, rtol=0, atol=0)
    torch.testing.assert_close(stats, want_stats, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", ["instance", "cluster"])
def test_autocast_bf16_is_the_fp32_loss(which, impl, device):
    # bf16 activations under autocast: the fp32 loss of the up-cast input, finite bf16 grads
    fn = C.instance_contrastive_loss if which == "instance" else C.cluster_contrastive_loss
    if which == "instance":
        x = F.normalize(torch.randn(2 * 13, 19), dim=1)
    else:
        x = random_assignments(2 * 13, 5, dtype=torch.float32)
    xb = x.to(device, torch.bfloat16).requires_grad_(True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = fn(xb, 2, 0.5, impl=impl)
    out.backward()
    want, g_want = _loss_and_grad(fn, xb.detach().float(), 2, 0.5, impl=impl)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.detach(), want, rtol=0, atol=0)
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad).all()
    torch.testing.assert_close(xb.grad, g_want.bfloat16(), rtol=0, atol=0)
    # and it is the reference's fp32 loss
    truth = (R.instance_contrastive_loss if which == "instance" else R.cluster_contrastive_loss)(
        xb.detach().double(), 2, 0.5)
    torch.testing.assert_close(out.double(), truth, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- two processes
CASES = [("instance", 2, "torch"), ("instance", 3, "triton"), ("cluster", 2, "torch"),
         ("cluster", 3, "triton"), ("instance", 2, "triton")]


def _dist_worker(rank, world, xs, tau):
    out = []
    for (which, m, impl), x in zip(CASES, xs):
        fn = C.instance_contrastive_loss if which == "instance" else C.cluster_contrastive_loss
        xl = local_part(x, m, rank, world).to(DEVICE).requires_grad_(True)
        loss = fn(xl, m, tau, impl=impl)
        loss.backward()
        out.append((loss.detach().cpu(), xl.grad.cpu()))
    return out


@pytest.mark.distributed
def test_two_processes_equal_one(device):
    world, b, tau = 2, 7, 0.5
    xs = []
    for which, m, _ in CASES:
        if which == "instance":
            xs.append(F.normalize(torch.randn(m * world * b, 19), dim=1))
        else:
            xs.append(random_assignments(m * world * b, 5, dtype=torch.float32))
    # the workers run the Triton cases on CUDA when present, else in the interpreter
    results = run_distributed(_dist_worker, xs, tau, world_size=world, interpret=True)
    for i, ((which, m, impl), x) in enumerate(zip(CASES, xs)):
        fn = C.instance_contrastive_loss if which == "instance" else C.cluster_contrastive_loss
        loss, grad = (t.cpu() for t in _loss_and_grad(fn, x.to(device), m, tau, impl=impl))
        for r in range(world):
            lr, gr = results[r][i]
            torch.testing.assert_close(lr, loss, rtol=1e-5, atol=1e-6)
            # convention: each rank's gradient is world_size x the global one (DDP averages)
            torch.testing.assert_close(gr / world, local_part(grad, m, r, world),
                                       rtol=1e-4, atol=1e-7)
