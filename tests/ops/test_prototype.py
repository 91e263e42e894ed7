"""Prototype cross-entropy: the fused op vs the reference and float64 on every path and dtype,
opcheck, torch.compile, autocast, bad input; the tile choice and determinism."""
import pytest
import torch
import torch.nn.functional as F

from deepclust.ops import prototype as P
from deepclust.ops import prototype_cross_entropy as op
from deepclust.ops.prototype import _kernels, _launch
from deepclust.reference import prototype_cross_entropy as ref
from tests.helpers import DTYPE_IDS, DTYPES, assert_close_to_truth

IMPLS = ["torch", "triton"]


# ---------------------------------------------------------------- fused vs reference
SHAPES = [(37, 5, 19), (37, 70, 33)]  # (37, 130, 130) below covers several K/d tiles
MODES = [("hard", "scalar"), ("hard", "vector"), ("soft", "vector")]


def _inputs(N, K, d, target_kind, temp_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=torch.float64) * 0.5
    c = F.normalize(torch.randn(K, d, generator=g, dtype=torch.float64), dim=1)
    if target_kind == "hard":
        t = torch.randint(0, K, (N,), generator=g)
    else:
        t = torch.rand(N, K, generator=g, dtype=torch.float64).pow(3)
        t = t / t.sum(1, keepdim=True)
    T = 0.1 if temp_kind == "scalar" else 0.05 + 0.3 * torch.rand(K, generator=g, dtype=torch.float64)
    return x, c, t, T


def _run(fn, x, c, t, T, dtype, **kw):
    x = x.detach().to(dtype).requires_grad_(True)
    c = c.detach().to(dtype).requires_grad_(True)
    t = t.to(dtype) if t.is_floating_point() else t
    T = T.to(dtype) if isinstance(T, torch.Tensor) else T
    loss = fn(x, c, t, T, **kw)
    loss.backward()
    return loss.detach(), x.grad, c.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mode", MODES, ids=["-".join(m) for m in MODES])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"N{n}K{k}d{d}" for n, k, d in SHAPES])
def test_op_matches_reference(impl, dtype, mode, shape, device):
    x, c, t, T = _inputs(*shape, *mode)
    truth = _run(ref, x, c, t, T, torch.float64)
    to = (lambda a: a.to(device) if isinstance(a, torch.Tensor) else a)
    want = _run(ref, x, c, t, T, dtype)
    got = _run(op, to(x), to(c), to(t), to(T), dtype, impl=impl)
    for name, o, r, tr in zip(["loss", "dx", "dprototypes"], got, want, truth):
        assert o.dtype == dtype
        assert_close_to_truth(o.cpu(), r, tr, dtype, name=name)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, mode", [(torch.float32, ("soft", "vector")),
                                         (torch.bfloat16, ("hard", "scalar"))], ids=["fp32", "bf16"])
def test_op_matches_reference_tiled(impl, dtype, mode, device):
    x, c, t, T = _inputs(37, 130, 130, *mode, seed=1)
    truth = _run(ref, x, c, t, T, torch.float64)
    to = (lambda a: a.to(device) if isinstance(a, torch.Tensor) else a)
    want = _run(ref, x, c, t, T, dtype)
    got = _run(op, to(x), to(c), to(t), to(T), dtype, impl=impl)
    for name, o, r, tr in zip(["loss", "dx", "dprototypes"], got, want, truth):
        assert_close_to_truth(o.cpu(), r, tr, dtype, name=name)


def test_op_fp64_torch_path_exact():
    x, c, t, T = _inputs(23, 9, 7, "soft", "vector")
    got = _run(op, x, c, t, T, torch.float64, impl="torch")
    want = _run(ref, x, c, t, T, torch.float64)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_op_large_logits_stay_finite(impl, device):
    # logits of order 1e4: exp would overflow without the max shift
    x, c, t, _ = _inputs(37, 40, 24, "hard", "scalar", seed=3)
    x = x * 200.0
    truth = _run(ref, x, c, t, 1e-2, torch.float64)
    got = _run(op, x.to(device), c.to(device), t.to(device), 1e-2, torch.float32, impl=impl)
    want = _run(ref, x, c, t, 1e-2, torch.float32)
    for name, o, r, tr in zip(["loss", "dx", "dprototypes"], got, want, truth):
        assert_close_to_truth(o.cpu(), r, tr, torch.float32, name=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_op_only_x_needs_grad_and_noncontiguous(impl, device):
    x, c, t, T = _inputs(37, 21, 40, "soft", "vector", seed=4)
    cf = torch.randn(40, 21, dtype=torch.float32).t()  # non-contiguous prototypes (21 x 40)
    xf = x.float().to(device).requires_grad_(True)
    loss = op(xf, cf.to(device), t.float().to(device)[:, :21] * 1.0, T[:21].float().to(device), impl=impl)
    loss.backward()
    xr = x.float().requires_grad_(True)
    lr = ref(xr, cf, t.float()[:, :21], T[:21].float())
    lr.backward()
    torch.testing.assert_close(loss.cpu(), lr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xf.grad.cpu(), xr.grad, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- torch.library / compile
@pytest.mark.parametrize("impl", IMPLS)
def test_opcheck(impl, device):
    x = torch.randn(19, 17, device=device, requires_grad=True)
    c = torch.randn(21, 17, device=device, requires_grad=True)
    inv_t = torch.full((21,), 5.0, device=device)
    for t in (torch.randint(0, 21, (19,), device=device), torch.rand(19, 21, device=device)):
        torch.library.opcheck(torch.ops.deepclust.prototype_ce_rows.default,
                              (x, c, t, inv_t, impl))
        _, lse = torch.ops.deepclust.prototype_ce_rows(x.detach(), c.detach(), t, inv_t, impl)
        g = torch.randn(19, device=device)
        for need_dx, need_dp in ((True, True), (True, False), (False, True)):
            torch.library.opcheck(torch.ops.deepclust.prototype_ce_rows_backward.default,
                                  (g, x.detach(), c.detach(), t, inv_t, lse, impl, need_dx,
                                   need_dp))


@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile_no_graph_break(impl, device):
    x = torch.randn(37, 19, device=device, requires_grad=True)
    c = torch.randn(11, 19, device=device, requires_grad=True)
    t = torch.randint(0, 11, (37,), device=device)
    T = 0.1 + torch.rand(11, device=device)

    def f(x, c):
        return op(x, c, t, T, impl=impl) * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, c)
    out.backward()
    gx, gc = x.grad.clone(), c.grad.clone()
    x.grad = c.grad = None
    want = f(x, c)
    want.backward()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gc, c.grad)
    # and the compiled loss is the reference's
    truth = 2.0 * ref(x.detach().double(), c.detach().double(), t, T.double())
    torch.testing.assert_close(out.detach().double(), truth, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- autocast
@pytest.mark.parametrize("impl", IMPLS)
def test_custom_op_runs_fp32_under_autocast(impl, device):
    # the registered autocast rule: bf16 x, prototypes and target reach the op as fp32
    x, c, t, T = _inputs(37, 21, 19, "soft", "vector", seed=6)
    xb, cb, tb = (a.to(device, torch.bfloat16) for a in (x, c, t))
    inv_t = (1.0 / T).float().to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        rows, lse = torch.ops.deepclust.prototype_ce_rows(xb, cb, tb, inv_t, impl)
    want = torch.ops.deepclust.prototype_ce_rows(xb.float(), cb.float(), tb.float(), inv_t, impl)
    assert rows.dtype == lse.dtype == torch.float32
    for a, b in zip((rows, lse), want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", [("hard", "vector"), ("soft", "scalar")], ids=["hard", "soft"])
def test_autocast_bf16_activations_fp32_prototypes(mode, impl, device):
    # bf16 x with fp32 prototypes under autocast: the fp32 loss of the up-cast x, finite grads
    # (outside autocast the mixed dtypes are an error)
    x, c, t, T = _inputs(37, 21, 19, *mode, seed=7)
    xb = x.to(device, torch.bfloat16).requires_grad_(True)
    cf = c.to(device, torch.float32).requires_grad_(True)
    tt = t.to(device, torch.float32) if t.is_floating_point() else t.to(device)
    TT = T.to(device, torch.float32) if isinstance(T, torch.Tensor) else T
    with pytest.raises(TypeError, match="prototypes"):
        op(xb, cf, tt, TT, impl=impl)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = op(xb, cf, tt, TT, impl=impl)
    out.backward()
    xw = xb.detach().float().requires_grad_(True)
    cw = c.to(device, torch.float32).requires_grad_(True)
    want = op(xw, cw, tt, TT, impl=impl)
    want.backward()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.detach(), want.detach(), rtol=0, atol=0)
    assert xb.grad.dtype == torch.bfloat16 and cf.grad.dtype == torch.float32
    assert torch.isfinite(xb.grad).all() and torch.isfinite(cf.grad).all()
    torch.testing.assert_close(xb.grad, xw.grad.bfloat16(), rtol=0, atol=0)
    torch.testing.assert_close(cf.grad, cw.grad, rtol=0, atol=0)
    # and it is the reference's fp32 loss
    truth = ref(xb.detach().double().cpu(), c, t, T)  # (x, c, t, T: float64 from _inputs)
    torch.testing.assert_close(out.detach().double().cpu(), truth, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs():
    x, c = torch.randn(5, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match="target"):
        op(x, c, torch.tensor([0, 1, 2, 4, 0]), impl="torch")
    with pytest.raises(ValueError, match="target"):
        op(x, c, torch.tensor([0, -1, 2, 3, 0]), impl="torch")
    with pytest.raises(ValueError, match="target"):
        op(x, c, y[:4], impl="torch")
    with pytest.raises(ValueError, match="target"):
        op(x, c, torch.rand(5, 3), impl="torch")
    with pytest.raises(TypeError, match="target"):
        op(x, c, y.bool(), impl="torch")
    with pytest.raises(ValueError, match="prototypes"):
        op(x, torch.randn(4, 2), y, impl="torch")
    with pytest.raises(ValueError, match="x"):
        op(x[0], c, y, impl="torch")
    with pytest.raises(TypeError, match="prototypes"):
        op(x, c.double(), y, impl="torch")
    with pytest.raises(ValueError, match="temperature"):
        op(x, c, y, 0.0, impl="torch")
    with pytest.raises(ValueError, match="temperature"):
        op(x, c, y, torch.tensor([0.1, 0.2, -0.1, 0.3]), impl="torch")
    with pytest.raises(ValueError, match="temperature"):
        op(x, c, y, torch.ones(3), impl="torch")
    with pytest.raises(ValueError, match="impl"):
        op(x, c, y, impl="cuda")


def test_bad_inputs_triton_fp64(device):
    x, c = torch.randn(5, 3, device=device), torch.randn(4, 3, device=device)
    y = torch.tensor([0, 1, 2, 3, 0], device=device)
    with pytest.raises(TypeError, match="x"):
        op(x.double(), c.double(), y, impl="triton")


# ---------------------------------------------------------------- tiles, determinism
# (N, K, d) of the tests above and of the compile gate's test workloads
CONFIG_SHAPES = [(37, 5, 19), (37, 70, 33), (37, 130, 130), (37, 40, 24), (37, 21, 40),
                 (19, 21, 17), (200, 20, 24), (37, 3, 10), (130, 300, 70), (64, 33, 300),
                 (65536, 3000, 128), (65536, 16384, 128)]


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_interpreter_runs_the_gpu_config(dtype, soft):
    """The interpreter runs the tiles a GPU runs; only the documented bf16 work-around differs."""
    for _, K, d in CONFIG_SHAPES:
        gpu = P._config(K, d, dtype, soft, "cuda")
        cpu = P._config(K, d, dtype, soft, "interpreter")
        assert cpu._replace(upcast=gpu.upcast) == gpu
        assert gpu.upcast is False and cpu.upcast is (dtype == torch.bfloat16)
        for b in (gpu.block_n, gpu.block_k, gpu.block_d, gpu.block_do):
            assert b >= 16 and b & (b - 1) == 0
        # fp32 dots stay fp32: tf32x3 missed the large-logit bound 35x on an H200
        assert gpu.precision == "ieee"


def test_kernels_are_atomic_free():
    import inspect

    for kern in (_kernels._fwd_kernel, _kernels._bwd_dx_kernel, _kernels._bwd_dp_kernel):
        assert "atomic" not in inspect.getsource(kern.fn).replace("no atomics", "")


@pytest.mark.parametrize("mode", [("hard", "vector"), ("soft", "scalar")], ids=["hard", "soft"])
def test_triton_deterministic_over_row_splits(mode, device, monkeypatch):
    """Several row splits of dprototypes: right, and the same bits twice and with one split."""
    x, c, t, T = _inputs(200, 20, 24, *mode, seed=5)
    to = (lambda a: a.to(device) if isinstance(a, torch.Tensor) else a)
    cfg = P._config(20, 24, torch.float32, mode[0] == "soft", "interpreter")
    splits, _ = _launch._dp_splits(200, 20, 24, cfg, torch.device(device))
    assert splits > 1
    first = _run(op, to(x), to(c), to(t), to(T), torch.float32, impl="triton")
    second = _run(op, to(x), to(c), to(t), to(T), torch.float32, impl="triton")
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    truth = _run(ref, x, c, t, T, torch.float64)
    want = _run(ref, x, c, t, T, torch.float32)
    for name, o, r, tr in zip(["loss", "dx", "dprototypes"], first, want, truth):
        assert_close_to_truth(o.cpu(), r, tr, torch.float32, name=name)
    # the memory cap on the partial buffers: one split, the same gradient up to rounding
    monkeypatch.setattr(_launch, "_DP_PARTIALS_BYTES", 1)
    assert _launch._dp_splits(200, 20, 24, cfg, torch.device(device))[0] == 1
    one = _run(op, to(x), to(c), to(t), to(T), torch.float32, impl="triton")
    torch.testing.assert_close(one[2], first[2], rtol=1e-5, atol=1e-6)
