"""Fused Sinkhorn-Knopp and SwAV loss against the reference and the float64 published formula."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import deepclust.ops.swav as ops_sk
import deepclust.reference.swav as ref_sk
from deepclust.ops.swav import sinkhorn, sinkhorn_from_embeddings, swav_loss
from tests.helpers import DEVICE, DTYPE_IDS, DTYPES, assert_close_to_truth, run_distributed

IMPLS = ["torch", "triton"]


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    """Every kernel output starts as NaN: an element a kernel forgets to write fails the test."""
    def nan_empty(shape, **kw):
        return torch.full(shape, float("nan"), **kw)
    monkeypatch.setattr(ops_sk, "_empty", nan_empty)


def seed_sinkhorn(out, eps, n_iters=3, world=1):
    """The published algorithm, literally (no max subtraction), in the dtype of ``out``."""
    Q = torch.exp(out / eps).t()
    B, K = Q.shape[1] * world, Q.shape[0]
    Q = Q / torch.sum(Q)
    for _ in range(n_iters):
        Q = Q / torch.sum(Q, dim=1, keepdim=True) / K
        Q = Q / torch.sum(Q, dim=0, keepdim=True) / B
    return (Q * B).t()


def unit(n, d):
    return F.normalize(torch.randn(n, d), dim=1)


CASES = [  # (B, K, eps)
    (37, 5, 0.02), (37, 5, 0.05), (37, 5, 0.1), (129, 70, 0.05),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B,K,eps", CASES, ids=[f"{b}x{k}-eps{e}" for b, k, e in CASES])
def test_sinkhorn_matches_truth(B, K, eps, dtype, impl, device):
    scores = (unit(B, 16) @ unit(K, 16).t()).to(device=device, dtype=dtype)
    truth = seed_sinkhorn(scores.double().cpu(), eps)
    ref = ref_sk.sinkhorn(scores, eps=eps)
    out = sinkhorn(scores, eps=eps, impl=impl)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert_close_to_truth(out.cpu(), ref.cpu(), truth, torch.float32, "codes")
    torch.testing.assert_close(out.sum(1).cpu(), torch.ones(B), atol=2e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B,K,d", [(37, 5, 19), (129, 70, 130)], ids=["37x5xd19", "129x70xd130"])
def test_sinkhorn_from_embeddings_matches_truth(B, K, d, dtype, impl, device):
    z = unit(B, d).to(device=device, dtype=dtype)
    p = unit(K, d).to(device=device, dtype=dtype)
    truth = seed_sinkhorn(z.double().cpu() @ p.double().cpu().t(), 0.05)
    ref = ref_sk.sinkhorn_from_embeddings(z, p)
    out = sinkhorn_from_embeddings(z, p, impl=impl)
    assert_close_to_truth(out.cpu(), ref.cpu(), truth, torch.float32, "codes")


def test_non_contiguous_scores_and_float64_torch_path(device):
    s = (unit(40, 8) @ unit(9, 8).t()).double().to(device)
    out = sinkhorn(s.t().contiguous().t(), eps=0.03, impl="torch")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.cpu(), seed_sinkhorn(s.cpu(), 0.03), atol=1e-12, rtol=1e-10)
    st = s.float().t().contiguous().t()  # column-major
    torch.testing.assert_close(sinkhorn(st, eps=0.03, impl="triton").double(), out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_fp16_small_eps_stays_finite_where_seed_overflows(impl, device):
    scores = (torch.rand(45, 17) * 0.5 + 0.5).half().to(device)  # scores up to 1, eps 0.02
    assert not torch.isfinite(seed_sinkhorn(scores.cpu(), 0.02)).all()  # exp(50) in fp16 is inf
    assert not torch.isfinite(seed_sinkhorn(scores.float().cpu(), 0.005)).all()  # exp(200) in fp32
    for eps in (0.02, 0.005):
        truth = seed_sinkhorn(scores.double().cpu(), eps)
        out = sinkhorn(scores, eps=eps, impl=impl)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double().cpu(), truth, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_log_domain_survives_rows_that_underflow(impl, device):
    # row 0 scores 1, row 1 scores -1: at eps 0.01 row 1 is exp(-200) below the maximum, which
    # underflows fp32 (the max-shifted reference gives NaN); the log-domain op does not care
    scores = torch.tensor([[1.0, 0.9, 0.95], [-1.0, -0.98, -0.99], [0.2, 0.1, 0.3]], device=device)
    truth = seed_sinkhorn(scores.double().cpu(), 0.01)
    assert torch.isfinite(truth).all()
    assert not torch.isfinite(ref_sk.sinkhorn(scores, eps=0.01)).all()
    out = sinkhorn(scores, eps=0.01, impl=impl)
    torch.testing.assert_close(out.double().cpu(), truth, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("path", ["linear", "log"])
@pytest.mark.parametrize("eps", [0.02, 0.05])
def test_torch_path_linear_and_log_domain_agree(monkeypatch, path, eps):
    """The torch path's linear-domain form (taken when nothing underflows) and its log-domain
    fallback both give the float64 codes; the mass threshold picks which one runs."""
    calls = []
    real_log = ops_sk._sinkhorn_torch_log
    monkeypatch.setattr(ops_sk, "_sinkhorn_torch_log",
                        lambda *a, **k: calls.append("log") or real_log(*a, **k))
    monkeypatch.setattr(ops_sk, "_SAFE_MASS", 0.0 if path == "linear" else float("inf"))
    scores = torch.randn(129, 70) * 0.3
    truth = seed_sinkhorn(scores.double(), eps)
    out = sinkhorn(scores, eps=eps, impl="torch")
    assert calls == ([] if path == "linear" else ["log"])
    assert_close_to_truth(out, ref_sk.sinkhorn(scores, eps=eps), truth, torch.float32, name="codes")


def test_torch_path_falls_back_when_a_row_underflows():
    scores = torch.tensor([[1.0, 0.9, 0.95], [-1.0, -0.98, -0.99], [0.2, 0.1, 0.3]])
    assert ops_sk._sinkhorn_torch_linear(ops_sk._Source(scores=scores), 0.01, 3) is None
    assert ops_sk._sinkhorn_torch_linear(ops_sk._Source(scores=scores), 0.5, 3) is not None


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
    rloss = ref_sk.swav_loss(rcrops, assign)
    rgrads = torch.autograd.grad(rloss, rcrops, allow_unused=True, materialize_grads=True)
    tcrops = [c.detach().double().cpu().requires_grad_() for c in crops]
    tloss = ref_sk.swav_loss(tcrops, assign)
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
    rloss = ref_sk.swav_loss(list(xr), (0, 2), queue_scores=[queue[0].double(), None])
    (gr,) = torch.autograd.grad(rloss, xr)
    torch.testing.assert_close(loss.double(), rloss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.double(), gr, atol=1e-6, rtol=1e-4)


def test_opcheck_and_compile(device):
    s = torch.randn(37, 5, device=device) * 0.3
    z, p = unit(37, 19).to(device), unit(5, 19).to(device)
    torch.library.opcheck(ops_sk._sinkhorn_scores_op, (s, 0.05, 3))
    torch.library.opcheck(ops_sk._sinkhorn_embeddings_op, (z, p, 0.05, 3))
    x = (torch.randn(3, 37, 5, device=device) * 0.3).requires_grad_()
    q = torch.stack([sinkhorn(s), sinkhorn(s * 2)])
    w = torch.rand(3, 2, device=device) / 37
    torch.library.opcheck(ops_sk._swav_ce_op, (x, q, w, 10.0))

    def f(x):
        return swav_loss(x, (0, 1), impl="triton")
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    lc = compiled(x)
    (gc,) = torch.autograd.grad(lc, x)
    le = f(x)
    (ge,) = torch.autograd.grad(le, x)
    torch.testing.assert_close(lc, le)
    torch.testing.assert_close(gc, ge)


def test_bad_inputs(device):
    s = torch.randn(5, 4, device=device)
    with pytest.raises(ValueError, match="scores"):
        sinkhorn(s[0], impl="torch")
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(s, eps=-0.1)
    with pytest.raises(ValueError, match="n_iters"):
        sinkhorn(s, n_iters=0)
    with pytest.raises(TypeError, match="scores"):
        sinkhorn(s.double(), impl="triton")
    with pytest.raises(ValueError, match="impl"):
        sinkhorn(s, impl="cuda")
    with pytest.raises(ValueError, match="prototypes"):
        sinkhorn_from_embeddings(torch.randn(5, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="crops_for_assign"):
        swav_loss([s, s], crops_for_assign=(2,))
    with pytest.raises(ValueError, match="crop_scores"):
        swav_loss([s, torch.randn(5, 3, device=device)])
    with pytest.raises(ValueError, match="crop_scores"):
        swav_loss(torch.randn(2, 3, device=device))
    with pytest.raises(ValueError, match="n_iters"):
        swav_loss([s, s], n_iters=0)


# ----------------------------------------------------------------------------- configs, determinism
# (B, K, d) of the tests above and of the compile gate's test and benchmark shapes
CONFIG_SHAPES = [(37, 5, 0), (129, 70, 0), (45, 17, 0), (3, 3, 0), (40, 9, 0), (37, 5, 19),
                 (129, 70, 130), (37, 11, 10), (130, 300, 65), (64, 3000, 128), (4096, 3000, 128),
                 (65536, 1000, 0), (16384, 3000, 0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_interpreter_runs_the_gpu_configuration(dtype):
    """The interpreter runs the tiles, warps, stages and column-pass split that a GPU runs; the
    one documented difference is the bf16 dot, upcast to fp32 in the interpreter."""
    for B, K, d in CONFIG_SHAPES:
        gpu = ops_sk._sinkhorn_config(B, K, d, dtype, "cuda")
        cpu = ops_sk._sinkhorn_config(B, K, d, dtype, "interpreter")
        upcast = dtype == torch.bfloat16 and d > 0
        assert cpu.dot_precision == ("upcast" if upcast else gpu.dot_precision)
        assert gpu.dot_precision != "upcast"
        assert cpu._replace(dot_precision=gpu.dot_precision) == gpu
        for block in (gpu.block_b, gpu.block_k, gpu.block_d):
            assert block >= 16 and block & (block - 1) == 0
        assert gpu.rows_per_prog % gpu.block_b == 0
        assert (gpu.n_chunks - 1) * gpu.rows_per_prog < B <= gpu.n_chunks * gpu.rows_per_prog
        assert gpu.dot_precision == ("ieee" if dtype == torch.float32 else "tf32")
        assert ops_sk._swav_ce_config(K, dtype, "cuda") == ops_sk._swav_ce_config(K, dtype, "interpreter")


def test_kernels_use_no_atomics():
    """Every cross-program reduction goes through a partials buffer that torch reduces in a
    fixed order (column partials of Sinkhorn, per-row losses): no atomic in any kernel."""
    kernels = [ops_sk._sk_col_pass_kernel, ops_sk._sk_row_pass_kernel, ops_sk._score_tile,
               ops_sk._swav_ce_fwd_kernel, ops_sk._swav_ce_bwd_kernel, ops_sk._scores_and_targets]
    for k in kernels:
        assert "atomic" not in inspect.getsource(k.fn), k.fn.__name__
    assert "tl.atomic" not in inspect.getsource(ops_sk)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bitwise_deterministic(dtype, device):
    """Twice the same inputs: bitwise the same codes, loss and gradient (several column-pass
    chunks and K tiles, so the partials combine)."""
    z, p = unit(133, 40).to(device=device, dtype=dtype), unit(70, 40).to(device=device, dtype=dtype)
    assert ops_sk._sinkhorn_config(133, 70, 40, dtype, "cuda").n_chunks > 1
    s = z @ p.t()
    x = torch.stack([s, s.flip(0), s * 0.5]).detach()

    def run():
        xr = x.clone().requires_grad_()
        loss = swav_loss(xr, (0, 1), impl="triton")
        (g,) = torch.autograd.grad(loss, xr)
        return (sinkhorn(s, impl="triton"), sinkhorn_from_embeddings(z, p, impl="triton"),
                loss, g)

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- distributed
def _dist_worker(rank, world, scores, z, p, crops):
    B = scores.shape[0] // world
    sl = slice(rank * B, (rank + 1) * B)
    out = {"reference": ref_sk.sinkhorn(scores[sl], eps=0.03),
           "reference_loss": ref_sk.swav_loss([c[sl] for c in crops], (0, 1))}
    scores, z, p = scores.to(DEVICE), z.to(DEVICE), p.to(DEVICE)
    for impl in IMPLS:
        out[impl] = sinkhorn(scores[sl], eps=0.03, impl=impl).cpu()
        out[impl + "_emb"] = sinkhorn_from_embeddings(z[sl], p, eps=0.03, impl=impl).cpu()
        part = [c[sl].to(DEVICE).requires_grad_() for c in crops]
        loss = swav_loss(part, (0, 1), impl=impl)
        out[impl + "_loss"] = loss.detach().cpu()
        out[impl + "_grad"] = [g.cpu() for g in torch.autograd.grad(loss, part)]
    return out


@pytest.mark.distributed
def test_distributed_two_processes_equal_one_on_concatenated_batch(device):
    z, p = unit(38, 11), unit(13, 11)
    scores = z @ p.t()
    crops = [unit(38, 11) @ p.t() for _ in range(3)]
    # the workers run the kernels on CUDA when present, else in the interpreter
    res = run_distributed(_dist_worker, scores, z, p, crops, interpret=True)
    single = ref_sk.sinkhorn(scores, eps=0.03)
    single_emb = ref_sk.sinkhorn_from_embeddings(z, p, eps=0.03)
    single_loss = ref_sk.swav_loss(crops, (0, 1))
    assert not torch.allclose(res[0]["reference"], ref_sk.sinkhorn(scores[:19], eps=0.03), atol=1e-4)
    for key in ("reference", "torch", "triton"):
        torch.testing.assert_close(torch.cat([r[key] for r in res]), single, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close((res[0][key + "_loss"] + res[1][key + "_loss"]) / 2, single_loss,
                                   atol=2e-6, rtol=1e-5)
    for impl in IMPLS:
        torch.testing.assert_close(torch.cat([r[impl + "_emb"] for r in res]), single_emb, atol=2e-6, rtol=1e-5)
        # local mean per rank: (grad of rank r) / 2 are the rows of the whole-batch gradient
        cr = [c.clone().requires_grad_() for c in crops]
        gs = torch.autograd.grad(ref_sk.swav_loss(cr, (0, 1)), cr)
        for v in range(3):
            got = torch.cat([res[0][impl + "_grad"][v], res[1][impl + "_grad"][v]]) / 2
            torch.testing.assert_close(got, gs[v], atol=1e-6, rtol=1e-4)
