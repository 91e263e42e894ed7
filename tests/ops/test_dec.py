"""Fused DEC ops vs the eager reference, with tolerances earned against float64."""
import inspect

import pytest
import torch

from deepclust.ops import _plumbing
from deepclust.ops import dec as ops_dec
from deepclust.ops.dec import _eager as dec_eager
from deepclust.ops.dec import _kernels as dec_kernels
from deepclust.ops.dec import _launch as dec_launch
from deepclust.ops.dec import dec_loss, hard_assign, soft_assign, target_distribution
from deepclust.reference import dec as ref
from tests.helpers import DTYPE_IDS, DTYPES, assert_close_to_truth

IMPLS = ["torch", "triton"]
SMALL = (37, 5, 19)  # one K tile, one feature tile
MEDIUM = (129, 70, 130)  # several K tiles, several row blocks per program
LARGE_D = (70, 130, 300)  # K and d both above one tile: feature tiles loop
SLICES = (300, 19, 5)  # several row blocks: the column-major kernels split the rows in slices


def _inputs(shape, dtype, device, scale=0.5):
    n, k, d = shape
    z = (torch.randn(n, d) * scale).to(dtype).to(device)
    mu = (torch.randn(k, d) * scale).to(dtype).to(device)
    return z, mu


def _cached_target(n, k, dtype, device):
    t = torch.rand(n, k)
    t[t < 0.2] = 0.0  # zeros exercise 0 log 0; rows need not sum to 1
    return t.to(dtype).to(device)


def _loss_and_grads(fn, z, mu, **kw):
    z = z.detach().clone().requires_grad_()
    mu = mu.detach().clone().requires_grad_()
    loss = fn(z, mu, **kw)
    loss.backward()
    return loss.detach(), z.grad, mu.grad


def _check_loss(shape, dtype, impl, alpha, cached, device):
    z, mu = _inputs(shape, dtype, device)
    tgt = _cached_target(shape[0], shape[1], dtype, device) if cached else None
    out = _loss_and_grads(dec_loss, z, mu, alpha=alpha, target=tgt, impl=impl)
    r = _loss_and_grads(ref.dec_loss, z, mu, alpha=alpha, target=tgt)
    t = _loss_and_grads(
        ref.dec_loss, z.double(), mu.double(), alpha=alpha,
        target=None if tgt is None else tgt.double(),
    )
    for name, o, rr, tt in zip(("loss", "grad z", "grad centers"), out, r, t):
        assert o.dtype == dtype
        assert_close_to_truth(o, rr, tt, dtype, name=name)


@pytest.mark.parametrize("cached", [False, True], ids=["batch_target", "cached_target"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dec_loss_small(dtype, impl, alpha, cached, device):
    _check_loss(SMALL, dtype, impl, alpha, cached, device)


# fp16 is covered on the small shape; the interpreter is slow, so the tiling shapes take two
# dtypes (fp32, and bf16, the loosest)
TWO_DTYPES = pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"]
)


@pytest.mark.parametrize("cached", [False, True], ids=["batch_target", "cached_target"])
@pytest.mark.parametrize("impl", IMPLS)
@TWO_DTYPES
def test_dec_loss_medium(dtype, impl, cached, device):
    _check_loss(MEDIUM, dtype, impl, 1.0, cached, device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "dtype,cached",
    [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)],
    ids=["fp32-batch_target", "fp32-cached_target", "bf16-batch_target"],
)
def test_dec_loss_large_d(dtype, cached, impl, device):
    _check_loss(LARGE_D, dtype, impl, 0.5, cached, device)


def test_dec_loss_float64_torch_path():
    z, mu = _inputs(SMALL, torch.float64, "cpu")
    out = _loss_and_grads(dec_loss, z, mu, alpha=2.0, impl="torch")
    want = _loss_and_grads(ref.dec_loss, z, mu, alpha=2.0)
    for o, w in zip(out, want):
        torch.testing.assert_close(o, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cached", [False, True], ids=["batch_target", "cached_target"])
def test_dec_loss_torch_path_in_row_chunks(monkeypatch, cached):
    """Batches larger than one chunk take the two-pass chunked torch path."""
    monkeypatch.setattr(dec_eager, "_TORCH_CHUNK_ELEMS", 64)  # 64 // K = 12 rows per chunk
    z, mu = _inputs(SMALL, torch.float64, "cpu")
    tgt = _cached_target(SMALL[0], SMALL[1], torch.float64, "cpu") if cached else None
    assert len(_plumbing.row_chunks(SMALL[0], SMALL[1], dec_eager._TORCH_CHUNK_ELEMS)) > 1
    out = _loss_and_grads(dec_loss, z, mu, alpha=0.5, target=tgt, impl="torch")
    want = _loss_and_grads(ref.dec_loss, z, mu, alpha=0.5, target=tgt)
    for o, w in zip(out, want):
        torch.testing.assert_close(o, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_dec_loss_partial_grads_and_no_grad(impl, device):
    z, mu = _inputs(SMALL, torch.float32, device)
    want = _loss_and_grads(ref.dec_loss, z, mu)
    zg = z.clone().requires_grad_()
    dec_loss(zg, mu, impl=impl).backward()  # centers without grad
    torch.testing.assert_close(zg.grad, want[1], rtol=1e-4, atol=1e-6)
    mg = mu.clone().requires_grad_()
    dec_loss(z, mg, impl=impl).backward()  # z without grad
    torch.testing.assert_close(mg.grad, want[2], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        loss = dec_loss(z.requires_grad_(), mu, impl=impl)
    torch.testing.assert_close(loss, want[0], rtol=1e-5, atol=1e-7)
    # backward scales by the incoming gradient
    zg = z.detach().clone().requires_grad_()
    (3.0 * dec_loss(zg, mu, impl=impl)).backward()
    torch.testing.assert_close(zg.grad, 3.0 * want[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "alpha,scale", [(9.0, 1e4), (3.0, 1e12)], ids=["alpha9_1e4", "alpha3_1e12"]
)
def test_far_away_points_stay_finite(impl, alpha, scale, device):
    """q underflows in float32 for these points: the reference's q.log() gives NaN, the fused
    op stays finite and matches a float64 computation."""
    torch.manual_seed(1)
    n, k, d = SMALL
    z = torch.randn(n, d, dtype=torch.float64) * scale
    mu = torch.randn(k, d, dtype=torch.float64) * scale
    z32, mu32 = z.float().to(device), mu.float().to(device)
    r = _loss_and_grads(ref.dec_loss, z32, mu32, alpha=alpha)
    assert not all(torch.isfinite(x).all() for x in r), "the case must break the reference"
    t = _loss_and_grads(ref.dec_loss, z32.double(), mu32.double(), alpha=alpha)
    assert all(torch.isfinite(x).all() for x in t)
    out = _loss_and_grads(dec_loss, z32, mu32, alpha=alpha, impl=impl)
    for name, o, tt in zip(("loss", "grad z", "grad centers"), out, t):
        assert torch.isfinite(o).all(), name
        err = (o.double() - tt).abs().max().item()
        assert err <= 1e-3 * tt.abs().max().item() + 1e-6, (name, err)
    # soft assignment and labels stay finite / correct too
    q = soft_assign(z32, mu32, alpha, impl=impl)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(n, device=device))
    assert torch.equal(hard_assign(z32, mu32, impl=impl).cpu(), torch.cdist(z, mu).argmin(1))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "shape,alpha,dtype",
    [(SMALL, 0.5, dt) for dt in DTYPES]
    + [(SMALL, 3.0, torch.float32), (MEDIUM, 1.0, torch.float32), (MEDIUM, 1.0, torch.bfloat16)],
    ids=[f"small-a0.5-{i}" for i in DTYPE_IDS] + ["small-a3-fp32", "medium-fp32", "medium-bf16"],
)
def test_soft_assign(shape, alpha, dtype, impl, device):
    z, mu = _inputs(shape, dtype, device)
    gq = torch.randn(shape[0], shape[1]).to(dtype).to(device)

    def run(fn, z, mu, **kw):
        z = z.detach().clone().requires_grad_()
        mu = mu.detach().clone().requires_grad_()
        q = fn(z, mu, alpha, **kw)
        q.backward(gq.to(q.dtype))
        return q.detach(), z.grad, mu.grad

    out = run(soft_assign, z, mu, impl=impl)
    r = run(ref.soft_assign, z, mu)
    t = run(ref.soft_assign, z.double(), mu.double())
    for name, o, rr, tt in zip(("q", "grad z", "grad centers"), out, r, t):
        assert o.dtype == dtype
        assert_close_to_truth(o, rr, tt, dtype, name=name)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [SMALL, MEDIUM], ids=["small", "medium"])
def test_target_distribution(shape, dtype, impl, device):
    z, mu = _inputs(shape, torch.float32, device)
    q = ref.soft_assign(z, mu).to(dtype).requires_grad_()
    p = target_distribution(q, impl=impl)
    assert p.dtype == dtype and not p.requires_grad
    assert_close_to_truth(
        p, ref.target_distribution(q), ref.target_distribution(q.double()), dtype, name="p"
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_target_distribution_empty_column(impl, device):
    q = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], device=device)
    p = target_distribution(q, impl=impl)
    assert torch.isfinite(p).all()
    assert p[:, 2].eq(0).all()
    torch.testing.assert_close(p.sum(1), torch.ones(2, device=device))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "shape,dtype",
    [(SMALL, dt) for dt in DTYPES] + [(MEDIUM, torch.bfloat16), (LARGE_D, torch.float32)],
    ids=[f"small-{i}" for i in DTYPE_IDS] + ["medium-bf16", "large_d-fp32"],
)
def test_hard_assign(shape, dtype, impl, device):
    n, k, d = shape
    mu = (torch.randn(k, d) * 3).to(dtype)
    labels = torch.randint(0, k, (n,))
    z = (mu.float()[labels] + 0.1 * torch.randn(n, d)).to(dtype)
    out = hard_assign(z.to(device), mu.to(device), impl=impl)
    assert out.dtype == torch.int64 and out.shape == (n,)
    dist = torch.cdist(z.double(), mu.double())
    want = dist.argmin(1)
    assert torch.equal(out.cpu(), want)
    assert torch.equal(out.cpu(), ref.hard_assign(z, mu))


@pytest.mark.parametrize("impl", IMPLS)
def test_hard_assign_ties_go_to_lowest_index(impl, device):
    z = torch.zeros(3, 16, device=device)
    mu = torch.zeros(20, 16, device=device)
    mu[:2] = 1.0  # centers 2..19 coincide with z; argmin must pick 2
    assert hard_assign(z, mu, impl=impl).tolist() == [2, 2, 2]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cached", [False, True], ids=["batch_target", "cached_target"])
def test_opcheck_dec_loss(impl, cached, device):
    z, mu = _inputs((21, 4, 17), torch.float32, device)
    tgt = _cached_target(21, 4, torch.float32, device) if cached else None
    args = (z.requires_grad_(), mu.requires_grad_(), tgt, 1.5, impl, True, True)
    torch.library.opcheck(torch.ops.deepclust.dec_loss.default, args)


@pytest.mark.parametrize("impl", IMPLS)
def test_opcheck_soft_assign(impl, device):
    z, mu = _inputs((21, 4, 17), torch.float32, device)
    args = (z.requires_grad_(), mu.requires_grad_(), 1.5, impl)
    torch.library.opcheck(torch.ops.deepclust.soft_assign.default, args)
    q = soft_assign(z.detach(), mu.detach(), 1.5, impl=impl)
    gq = torch.randn_like(q)
    for need in ((True, True), (True, False), (False, True)):
        args = (gq, z.detach(), mu.detach(), q, 1.5) + need
        torch.library.opcheck(torch.ops.deepclust.soft_assign_backward.default, args)


@pytest.mark.parametrize("impl", IMPLS)
def test_opcheck_target_distribution_and_hard_assign(impl, device):
    z, mu = _inputs((21, 4, 17), torch.float32, device)
    q = soft_assign(z, mu, impl="torch")
    torch.library.opcheck(torch.ops.deepclust.target_distribution.default, (q, impl))
    torch.library.opcheck(torch.ops.deepclust.hard_assign.default, (z, mu, impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile_fullgraph(impl, device):
    z, mu = _inputs((21, 4, 17), torch.float32, device)
    tgt = _cached_target(21, 4, torch.float32, device)

    def fn(z, mu):
        return dec_loss(z, mu, 2.0, impl=impl) + 0.5 * dec_loss(z, mu, 2.0, tgt, impl=impl)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = _loss_and_grads(compiled, z, mu)
    want = _loss_and_grads(fn, z, mu)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile_fullgraph_assignments(impl, device):
    z, mu = _inputs((21, 4, 17), torch.float32, device)
    gq = torch.randn(21, 4, device=device)

    def fn(z, mu):
        q = soft_assign(z, mu, 1.5, impl=impl)
        return (q * gq).sum(), target_distribution(q, impl=impl), hard_assign(z, mu, impl=impl)

    def run(f):
        zg, mg = z.detach().clone().requires_grad_(), mu.detach().clone().requires_grad_()
        s, p, labels = f(zg, mg)
        s.backward()
        return s.detach(), p, labels, zg.grad, mg.grad

    got = run(torch.compile(fn, fullgraph=True, backend="aot_eager"))
    want = run(fn)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_cpu_bf16_autocast():
    """Under CPU bf16 autocast, bf16 z with fp32 centres runs the fp32 op on the up-cast inputs
    (fp32 results), and the gradients reach both in their own dtypes, finite."""
    z, mu = _inputs(SMALL, torch.float32, "cpu")
    zb = z.bfloat16()
    tgt = _cached_target(SMALL[0], SMALL[1], torch.float32, "cpu")
    for t in (None, tgt):
        zg, mg = zb.clone().requires_grad_(), mu.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = dec_loss(zg, mg, 1.5, t, impl="torch")
        assert loss.dtype == torch.float32
        want = _loss_and_grads(dec_loss, zb.float(), mu, alpha=1.5, target=t, impl="torch")
        torch.testing.assert_close(loss, want[0])
        loss.backward()
        assert zg.grad.dtype == torch.bfloat16 and mg.grad.dtype == torch.float32
        assert torch.isfinite(zg.grad).all() and torch.isfinite(mg.grad).all()
        torch.testing.assert_close(zg.grad, want[1].bfloat16())
        torch.testing.assert_close(mg.grad, want[2])
    zg, mg = zb.clone().requires_grad_(), mu.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = soft_assign(zg, mg, 1.5, impl="torch")
        p = target_distribution(q.bfloat16(), impl="torch")
        labels = hard_assign(zg, mg, impl="torch")
    assert q.dtype == torch.float32 and p.dtype == torch.float32
    torch.testing.assert_close(q, soft_assign(zb.float(), mu, 1.5, impl="torch"))
    torch.testing.assert_close(
        p, target_distribution(q.detach().bfloat16().float(), impl="torch"))
    assert torch.equal(labels, hard_assign(zb.float(), mu, impl="torch"))
    (q * torch.arange(SMALL[1])).sum().backward()
    assert torch.isfinite(zg.grad).all() and torch.isfinite(mg.grad).all()


def test_bad_inputs(device):
    z, mu = torch.randn(5, 3, device=device), torch.randn(2, 3, device=device)
    with pytest.raises(ValueError, match="z"):
        dec_loss(torch.randn(5, device=device), mu)
    with pytest.raises(ValueError, match="centers"):
        soft_assign(z, torch.randn(2, 3, 1, device=device))
    with pytest.raises(ValueError, match="feature dimension"):
        hard_assign(z, torch.randn(2, 4, device=device))
    with pytest.raises(TypeError, match="z"):
        dec_loss(z.long(), mu)
    with pytest.raises(TypeError, match="centers"):
        soft_assign(z, mu.int())
    with pytest.raises(TypeError, match="q"):
        target_distribution(torch.ones(3, 2, dtype=torch.int64, device=device))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            dec_loss(z, mu, alpha=bad)
    with pytest.raises(TypeError, match="alpha"):
        soft_assign(z, mu, alpha="one")
    with pytest.raises(ValueError, match="target"):
        dec_loss(z, mu, target=torch.rand(5, 3, device=device))
    with pytest.raises(ValueError, match="z"):
        dec_loss(torch.randn(0, 3, device=device), mu)
    with pytest.raises(ValueError, match="centers"):
        hard_assign(z, torch.randn(0, 3, device=device))
    with pytest.raises(ValueError, match="centers is on meta"):
        dec_loss(z, mu.to("meta"))
    with pytest.raises(ValueError, match="target is on meta"):
        dec_loss(z, mu, target=torch.rand(5, 2, device="meta"))
    with pytest.raises(ValueError, match="impl"):
        dec_loss(z, mu, impl="cuda")
    with pytest.raises(TypeError, match="float64"):
        dec_loss(z.double(), mu.double(), impl="triton")


# (N, K, d) of this file and of the compile gate's test workloads, and the benchmark's (K, d)
CONFIG_SHAPES = [SMALL, MEDIUM, LARGE_D, (21, 4, 17), (37, 3, 10), (129, 7, 33), (70, 20, 300),
                 (200, 130, 64)] + [(1 << 14, k, d) for d in (10, 64, 256) for k in (10, 64, 1000)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_config_same_for_interpreter_and_gpu(dtype):
    """The interpreter runs the tiles the GPU runs (no interpreter work-around is needed)."""
    for _, k, d in CONFIG_SHAPES:
        cfg = ops_dec._config(k, d, dtype, "interpreter")
        assert cfg == ops_dec._config(k, d, dtype, "cuda")
        for b in (cfg.block_n, cfg.block_k, cfg.block_d, cfg.grad_block_n, cfg.grad_block_k,
                  cfg.grad_block_d, cfg.block_g, cfg.block_g_cached, cfg.q_block_n,
                  cfg.q_block_k):
            assert b >= 16 and b & (b - 1) == 0, cfg  # power-of-two tiles, tl.dot-sized
        assert cfg.prec in ("tf32x3", "ieee")  # fp32 dots stay accurate


def test_partial_buffers_are_bounded(monkeypatch):
    """Centre gradients and column sums go through at most max(K d, _PARTIAL_ELEMS) elements
    of per-slice partials, at the benchmark's sizes on a 132-SM GPU."""
    monkeypatch.setattr(dec_launch, "num_programs",
                        lambda nb, dev, per_sm=8: max(1, min(nb, 1056)))
    for _, k, d in CONFIG_SHAPES:
        for n in (37, 1 << 14, 1 << 20):
            cfg = ops_dec._config(k, d, torch.float32, "cuda")
            num_rb = -(-n // cfg.grad_block_n)
            other = -(-k // cfg.grad_block_k) * -(-d // cfg.block_g_cached)
            s, per = dec_launch._slices(num_rb, other, k * d, torch.device("cpu"))
            assert 1 <= s <= num_rb and (s - 1) * per < num_rb <= s * per
            assert s * k * d <= max(k * d, dec_launch._PARTIAL_ELEMS)


def test_kernels_use_no_atomics():
    """Every cross-program reduction goes through partial buffers summed in a fixed order."""
    for mod in (ops_dec, dec_launch, dec_kernels, dec_eager):
        assert "atomic_" not in inspect.getsource(mod)  # tl.atomic_add, tl.atomic_cas, ...


@pytest.mark.parametrize("shape", [SLICES, LARGE_D], ids=["slices", "large_d"])
def test_same_inputs_give_bitwise_same_results(shape, device):
    z, mu = _inputs(shape, torch.float32, device)
    tgt = _cached_target(shape[0], shape[1], torch.float32, device)

    def run():
        out = []
        for t in (None, tgt):
            out += _loss_and_grads(dec_loss, z, mu, alpha=1.0, target=t, impl="triton")
        q = soft_assign(z, mu, impl="triton")
        return out + [q, target_distribution(q, impl="triton"), hard_assign(z, mu, impl="triton")]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_one_row_slice_matches_many(monkeypatch, device):
    """The partial sums over row slices agree with a single slice (the memory cap at its
    tightest)."""
    n, k, d = SLICES
    cfg = ops_dec._config(k, d, torch.float32, "cuda")
    assert dec_launch._slices(-(-n // cfg.grad_block_n), 1, k * d, torch.device(device))[0] > 1
    z, mu = _inputs(SLICES, torch.float32, device)
    many = _loss_and_grads(dec_loss, z, mu, impl="triton")
    monkeypatch.setattr(dec_launch, "_PARTIAL_ELEMS", 1)
    one = _loss_and_grads(dec_loss, z, mu, impl="triton")
    for a, b in zip(many, one):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
