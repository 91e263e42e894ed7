"""Fused Sinkhorn-Knopp codes against the reference and the float64 published formula."""
import inspect

import pytest
import torch

import deepclust.reference.sinkhorn_knopp as ref_sk
import deepclust.reference.swav as ref_swav
from deepclust.ops.sinkhorn_knopp import _eager, _kernels, _launch, sinkhorn, sinkhorn_from_embeddings
from deepclust.ops.swav import swav_loss
from tests.helpers import (
    DEVICE,
    DTYPES,
    DTYPE_IDS,
    assert_close_to_truth,
    run_distributed,
    seed_sinkhorn,
    unit,
)

IMPLS = ["torch", "triton"]


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


@pytest.mark.parametrize("eps", [0.02, 0.05])
def test_torch_path_scaling_vectors_when_nothing_underflows(monkeypatch, eps):
    """impl="torch" runs the eager path; on benign scores (several row chunks here) that is the
    scaling-vector form, as close to the float64 codes as the reference."""
    calls = []
    real_log = _eager._sinkhorn_log
    monkeypatch.setattr(_eager, "row_chunks", lambda n, w: [(0, 50), (50, 100), (100, n)])
    monkeypatch.setattr(_eager, "_sinkhorn_log", lambda *a, **k: calls.append("log") or real_log(*a, **k))
    scores = torch.randn(129, 70) * 0.3
    truth = seed_sinkhorn(scores.double(), eps)
    out = sinkhorn(scores, eps=eps, impl="torch")
    assert calls == []
    assert_close_to_truth(out, ref_sk.sinkhorn(scores, eps=eps), truth, torch.float32, name="codes")


@pytest.mark.parametrize("eps", [0.02, 0.05])
def test_log_domain_passes_match_truth(monkeypatch, eps):
    """The log-domain passes alone (the fallback), over several row chunks."""
    monkeypatch.setattr(_eager, "row_chunks", lambda n, w: [(0, 50), (50, 100), (100, n)])
    scores = torch.randn(129, 70) * 0.3
    truth = seed_sinkhorn(scores.double(), eps)
    out = _eager._sinkhorn_log(_eager.Source(scores=scores), eps, 3)
    assert_close_to_truth(out, ref_sk.sinkhorn(scores, eps=eps), truth, torch.float32, name="codes")


def test_torch_path_falls_back_where_a_row_underflows(monkeypatch):
    """A row that underflows exp((S - max S) / eps) in fp32 (eps 0.01) sends the eager path to
    the log-domain passes, which give the float64 codes; a benign case (eps 0.5) does not."""
    scores = torch.tensor([[1.0, 0.9, 0.95], [-1.0, -0.98, -0.99], [0.2, 0.1, 0.3]])
    src = _eager.Source(scores=scores)
    assert _eager._sinkhorn_linear(src, 0.01, 3) is None
    assert _eager._sinkhorn_linear(src, 0.5, 3) is not None
    for eps in (0.01, 0.5):
        out = _eager.sinkhorn_eager(src, eps, 3)
        torch.testing.assert_close(out.double(), seed_sinkhorn(scores.double(), eps),
                                   atol=1e-5, rtol=1e-4)


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
    with pytest.raises(TypeError, match="z"):
        sinkhorn_from_embeddings(torch.randn(5, 3, dtype=torch.float64, device=device),
                                 torch.randn(4, 3, device=device), impl="triton")


# ----------------------------------------------------------------------------- torch.library
@pytest.mark.parametrize("impl", IMPLS)
def test_opcheck(impl, device):
    s = torch.randn(37, 5, device=device) * 0.3
    z, p = unit(37, 19).to(device), unit(5, 19).to(device)
    torch.library.opcheck(torch.ops.deepclust.sinkhorn_scores.default, (s, 0.05, 3, impl))
    torch.library.opcheck(torch.ops.deepclust.sinkhorn_embeddings.default, (z, p, 0.05, 3, impl))
    if impl == "torch":  # float64 stays float64
        torch.library.opcheck(torch.ops.deepclust.sinkhorn_scores.default,
                              (s.double(), 0.05, 3, impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile_fullgraph(impl, device):
    s = torch.randn(37, 5, device=device) * 0.3
    z, p = unit(37, 19).to(device), unit(5, 19).to(device)

    def f(s, z, p):
        return sinkhorn(s, impl=impl), sinkhorn_from_embeddings(z, p, eps=0.03, impl=impl)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(s, z, p), f(s, z, p)):
        torch.testing.assert_close(got, want)


def test_cpu_bf16_autocast():
    """Under CPU bf16 autocast, bf16 scores (or bf16 z with fp32 prototypes) run the fp32 op on
    the up-cast inputs."""
    s = torch.randn(37, 5) * 0.3
    z, p = unit(37, 19), unit(5, 19)
    sb, zb = s.bfloat16(), z.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = sinkhorn(sb)
        codes_emb = sinkhorn_from_embeddings(zb, p)
    assert codes.dtype == torch.float32 and codes_emb.dtype == torch.float32
    torch.testing.assert_close(codes, sinkhorn(sb.float()), atol=0, rtol=0)
    torch.testing.assert_close(codes_emb, sinkhorn_from_embeddings(zb.float(), p), atol=0, rtol=0)
    # without autocast, fp32 prototypes are cast to bf16 z's dtype (the behaviour of before)
    torch.testing.assert_close(sinkhorn_from_embeddings(zb, p),
                               sinkhorn_from_embeddings(zb, p.bfloat16()), atol=0, rtol=0)


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
        gpu = _launch._sinkhorn_config(B, K, d, dtype, "cuda")
        cpu = _launch._sinkhorn_config(B, K, d, dtype, "interpreter")
        upcast = dtype == torch.bfloat16 and d > 0
        assert cpu.dot_precision == ("upcast" if upcast else gpu.dot_precision)
        assert gpu.dot_precision != "upcast"
        assert cpu._replace(dot_precision=gpu.dot_precision) == gpu
        for block in (gpu.block_b, gpu.block_k, gpu.block_d):
            assert block >= 16 and block & (block - 1) == 0
        assert gpu.rows_per_prog % gpu.block_b == 0
        assert (gpu.n_chunks - 1) * gpu.rows_per_prog < B <= gpu.n_chunks * gpu.rows_per_prog
        assert gpu.dot_precision == ("ieee" if dtype == torch.float32 else "tf32")


def test_kernels_use_no_atomics():
    """Every cross-program reduction goes through a partials buffer that torch reduces in a
    fixed order (the column partials): no atomic in any kernel."""
    for k in (_kernels._sk_col_pass_kernel, _kernels._sk_row_pass_kernel, _kernels._score_tile):
        assert "atomic" not in inspect.getsource(k.fn), k.fn.__name__
    assert "tl.atomic" not in inspect.getsource(_kernels)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bitwise_deterministic(dtype, device):
    """Twice the same inputs: bitwise the same codes (several column-pass chunks and K tiles,
    so the partials combine)."""
    z, p = unit(133, 40).to(device=device, dtype=dtype), unit(70, 40).to(device=device, dtype=dtype)
    assert _launch._sinkhorn_config(133, 70, 40, dtype, "cuda").n_chunks > 1
    s = z @ p.t()

    def run():
        return sinkhorn(s, impl="triton"), sinkhorn_from_embeddings(z, p, impl="triton")

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- distributed
# One spawn checks the references and both paths of sinkhorn, sinkhorn_from_embeddings and
# swav_loss over two processes (the loss's Sinkhorn is where its all-reduces are).
def _dist_worker(rank, world, scores, z, p, crops):
    B = scores.shape[0] // world
    sl = slice(rank * B, (rank + 1) * B)
    out = {"reference": ref_sk.sinkhorn(scores[sl], eps=0.03),
           "reference_loss": ref_swav.swav_loss([c[sl] for c in crops], (0, 1))}
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
    single_loss = ref_swav.swav_loss(crops, (0, 1))
    assert not torch.allclose(res[0]["reference"], ref_sk.sinkhorn(scores[:19], eps=0.03), atol=1e-4)
    for key in ("reference", "torch", "triton"):
        torch.testing.assert_close(torch.cat([r[key] for r in res]), single, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close((res[0][key + "_loss"] + res[1][key + "_loss"]) / 2, single_loss,
                                   atol=2e-6, rtol=1e-5)
    for impl in IMPLS:
        torch.testing.assert_close(torch.cat([r[impl + "_emb"] for r in res]), single_emb, atol=2e-6, rtol=1e-5)
        # local mean per rank: (grad of rank r) / 2 are the rows of the whole-batch gradient
        cr = [c.clone().requires_grad_() for c in crops]
        gs = torch.autograd.grad(ref_swav.swav_loss(cr, (0, 1)), cr)
        for v in range(3):
            got = torch.cat([res[0][impl + "_grad"][v], res[1][impl + "_grad"][v]]) / 2
            torch.testing.assert_close(got, gs[v], atol=1e-6, rtol=1e-4)
