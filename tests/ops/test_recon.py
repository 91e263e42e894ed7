"""Negative sampler and reconstruction loss on both of the op's paths ("cpp", the extension
deepclust._C, skipped with a reason when it is not built; "torch", the op's eager path) against
the reference and float64; torch.library checks, torch.compile and autocast."""
import warnings

import pytest
import torch

from deepclust.ops import negative_sampling, recon_loss
from deepclust.ops import recon as recon_mod
from deepclust.reference import recon_loss as ref_recon_loss
from tests.helpers import (
    DTYPE_IDS,
    DTYPES,
    assert_close_to_truth,
    check_loss_bad_input,
    check_sampler_bad_input,
    check_sampler_dense,
    check_sampler_properties,
    check_sampler_uniform,
    edge_set,
    random_graph,
    recon_truth,
    seed_recon_loss,
)

NEEDS_EXT = pytest.mark.skipif(
    not recon_mod.HAS_EXTENSION, reason="the C++ extension deepclust._C is not built"
)
IMPLS = [pytest.param("cpp", marks=NEEDS_EXT), "torch"]


def _sampler(impl):
    def sample(ei, n, s, gen):
        return negative_sampling(ei, n, s, generator=gen, impl=impl)

    return sample


def _inputs(n, d, e_pos, e_neg, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    pos = torch.randint(0, n, (2, e_pos), generator=g)
    neg = torch.randint(0, n, (2, e_neg), generator=g)
    return z.to(device=device, dtype=dtype), pos.to(device), neg.to(device)


# ----------------------------------------------------------------------------- loss values
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(37, 19, 101, 57), (5, 130, 7, 3), (300, 64, 2000, 2000)],
                         ids=lambda s: "x".join(map(str, s)))
def test_float64_matches_seed_formula_and_grad(impl, shape):
    n, d, ep, en = shape
    z, pos, neg = _inputs(n, d, ep, en, dtype=torch.float64)
    z = (0.3 * z).requires_grad_()  # keep |s| < 30 so the seed's formula is exact
    out = recon_loss(z, pos, neg, impl=impl)
    (gz,) = torch.autograd.grad(out, z)
    zs = z.detach().clone().requires_grad_()
    seed = seed_recon_loss(zs, pos, neg)
    seed.backward()
    torch.testing.assert_close(out, seed, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gz, zs.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dtypes_close_to_truth(impl, dtype):
    z, pos, neg = _inputs(53, 23, 211, 97, seed=1, dtype=dtype)
    z.requires_grad_()
    out = recon_loss(z, pos, neg, impl=impl)
    assert out.dtype == dtype
    (g_out,) = torch.autograd.grad(out, z)
    zr = z.detach().clone().requires_grad_()
    ref = ref_recon_loss(zr, pos, neg)
    (g_ref,) = torch.autograd.grad(ref, zr)
    z64 = z.detach().double().requires_grad_()
    truth = recon_truth(z64, pos, neg)
    (g_truth,) = torch.autograd.grad(truth, z64)
    assert_close_to_truth(out, ref, truth, dtype, name="loss")
    assert g_out.dtype == dtype
    assert_close_to_truth(g_out, g_ref, g_truth, dtype, name="dz")


@pytest.mark.parametrize("impl", IMPLS)
def test_large_scores_finite_and_unsaturated(impl):
    z = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 1.0]], requires_grad=True)
    pos = torch.tensor([[0], [1]])
    neg = torch.tensor([[0, 2], [0, 2]])  # self pairs are allowed in the loss (s = 100, 1)
    out = recon_loss(z, pos, neg, impl=impl)
    out.backward()
    zr = z.detach().clone().requires_grad_()
    ref = ref_recon_loss(zr, pos, neg)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(z.grad, zr.grad)
    assert z.grad[0].abs().max() > 1.0


@pytest.mark.parametrize("impl", IMPLS)
def test_noncontiguous_inputs(impl):
    z, pos, neg = _inputs(41, 30, 77, 66, seed=2, dtype=torch.float64)
    zt = z.t().contiguous().t().requires_grad_()  # column-major
    pos_nc = torch.stack([pos, pos], 2)[:, :, 0]  # strided columns
    out = recon_loss(zt, pos_nc, neg, impl=impl)
    torch.testing.assert_close(out, recon_truth(z, pos, neg), rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(out, zt)
    (gt,) = torch.autograd.grad(recon_truth(z.requires_grad_(), pos, neg), z)
    torch.testing.assert_close(g, gt, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- eager path
def test_torch_path_chunks_edges(monkeypatch):
    """The eager path splits the edges into row chunks (budget monkeypatched small): the loss
    and the gradient stay those of float64."""
    chunks = []

    def small_chunks(n_rows, row_width, budget=1 << 22):
        out = _row_chunks(n_rows, row_width, budget=4 * row_width)
        chunks.append(len(out))
        return out

    _row_chunks = recon_mod.row_chunks
    monkeypatch.setattr(recon_mod, "row_chunks", small_chunks)
    z, pos, neg = _inputs(29, 7, 43, 21, seed=14, dtype=torch.float64)
    z.requires_grad_()
    out = recon_loss(z, pos, neg, impl="torch")
    (g,) = torch.autograd.grad(out, z)
    assert max(chunks) > 1
    z64 = z.detach().clone().requires_grad_()
    truth = recon_truth(z64, pos, neg)
    (gt,) = torch.autograd.grad(truth, z64)
    torch.testing.assert_close(out, truth, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, gt, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- torch.library
@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_float64(impl):
    z, pos, neg = _inputs(13, 6, 31, 19, seed=3, dtype=torch.float64)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: recon_loss(t, pos, neg, impl=impl), (z,))


@NEEDS_EXT
def test_gradcheck_op_float64():
    z, pos, neg = _inputs(13, 6, 31, 19, seed=3, dtype=torch.float64)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: torch.ops.deepclust.recon_loss(t, pos, neg), (z,))


@NEEDS_EXT
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"])
def test_opcheck_recon_loss(dtype):
    z, pos, neg = _inputs(17, 9, 23, 29, seed=4, dtype=dtype)
    torch.library.opcheck(torch.ops.deepclust.recon_loss, (z.requires_grad_(), pos, neg))


@NEEDS_EXT
def test_opcheck_recon_loss_backward():
    z, pos, neg = _inputs(17, 9, 23, 29, seed=4)
    torch.library.opcheck(torch.ops.deepclust.recon_loss_backward, (torch.tensor(1.5), z, pos, neg))
    torch.library.opcheck(
        torch.ops.deepclust.recon_loss_backward, (torch.tensor(-0.5, dtype=torch.float64), z.double(), pos, neg)
    )


@NEEDS_EXT
def test_opcheck_negative_sampling():
    _, pos, _ = _inputs(17, 9, 23, 29, seed=4)
    torch.library.opcheck(torch.ops.deepclust.negative_sampling, (pos, 17, 40, 123))
    torch.library.opcheck(torch.ops.deepclust.negative_sampling, (pos, 17, 0, 5))


@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile_fullgraph(impl, device):
    z, pos, neg = _inputs(31, 12, 50, 50, seed=5, device=device)

    def fn(z, pos, neg):
        return recon_loss(z.tanh(), pos, neg, impl=impl) * 2.0

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    z1 = z.clone().requires_grad_()
    z2 = z.clone().requires_grad_()
    out_c = compiled(z1, pos, neg)
    out_e = fn(z2, pos, neg)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(z1.grad, z2.grad)


@pytest.mark.parametrize("impl", IMPLS)
def test_cpu_bf16_autocast(impl):
    """Under CPU bf16 autocast, bf16 embeddings from a layer with fp32 weights run the fp32 loss
    on the up-cast embeddings (an fp32 result), and the gradients reach the weights, finite."""
    g = torch.Generator().manual_seed(15)
    x = torch.randn(37, 11, generator=g)
    w = (0.3 * torch.randn(11, 8, generator=g)).requires_grad_()
    _, pos, neg = _inputs(37, 8, 60, 45, seed=15)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = x @ w
        assert z.dtype == torch.bfloat16
        out = recon_loss(z, pos, neg, impl=impl)
    assert out.dtype == torch.float32
    (gw,) = torch.autograd.grad(out, w)
    assert gw.dtype == torch.float32 and torch.isfinite(gw).all()
    zf = z.detach().float().requires_grad_()
    want = recon_loss(zf, pos, neg, impl=impl)
    torch.testing.assert_close(out, want.detach(), rtol=1e-6, atol=1e-6)
    (gz,) = torch.autograd.grad(want, zf)
    torch.testing.assert_close(gw, x.bfloat16().float().t() @ gz.bfloat16().float(), rtol=2e-2, atol=2e-3)


# ----------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("impl", IMPLS)
def test_sampler_properties(impl):
    check_sampler_properties(_sampler(impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_sampler_uniform(impl):
    check_sampler_uniform(_sampler(impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_sampler_dense_and_complete(impl):
    check_sampler_dense(_sampler(impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_sampler_bad_input(impl):
    check_sampler_bad_input(lambda *a, **k: negative_sampling(*a, **k, impl=impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_loss_bad_input(impl):
    check_loss_bad_input(lambda *a, **k: recon_loss(*a, **k, impl=impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_sampler_int32_and_duplicates(impl):
    ei = torch.tensor([[0, 0, 1, 1], [1, 1, 2, 2]], dtype=torch.int32)
    out = negative_sampling(ei, 3, 200, generator=torch.Generator().manual_seed(0), impl=impl)
    assert out.dtype == torch.int64
    assert edge_set(out) == {(0, 2), (1, 0), (2, 0), (2, 1)}


@NEEDS_EXT
def test_sampler_seed_and_threads_deterministic():
    ei = random_graph(500, 4000, seed=6)
    a = torch.ops.deepclust.negative_sampling(ei, 500, 20000, 77)
    n_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = torch.ops.deepclust.negative_sampling(ei, 500, 20000, 77)
    finally:
        torch.set_num_threads(n_threads)
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.ops.deepclust.negative_sampling(ei, 500, 20000, 78))
    assert not (edge_set(a) & edge_set(ei))


@NEEDS_EXT
def test_sampler_bigger_graph_no_edges_hit():
    ei = random_graph(2000, 30000, seed=8)
    ei = torch.cat([ei, ei.flip(0)], 1)
    out = negative_sampling(ei, 2000, generator=torch.Generator().manual_seed(0), impl="cpp")
    assert out.shape == ei.shape
    keys = ei[0] * 2000 + ei[1]
    hit = torch.isin(out[0] * 2000 + out[1], keys)
    assert not hit.any() and (out[0] != out[1]).all()
    # roughly uniform source degree: every node drawn as source about S / N = 30 times
    counts = torch.bincount(out[0], minlength=2000).double()
    assert abs(counts.mean().item() - out.shape[1] / 2000) < 1e-9
    assert counts.std().item() < 3 * (out.shape[1] / 2000) ** 0.5


@NEEDS_EXT
def test_recon_loss_default_negatives_reproducible():
    z, pos, _ = _inputs(60, 8, 150, 1, seed=9)
    a = recon_loss(z, pos, generator=torch.Generator().manual_seed(5), impl="cpp")
    b = recon_loss(z, pos, generator=torch.Generator().manual_seed(5), impl="cpp")
    assert a.item() == b.item()
    neg = negative_sampling(pos, 60, 150, generator=torch.Generator().manual_seed(5), impl="cpp")
    assert a.item() == recon_loss(z, pos, neg, impl="cpp").item()


_M64 = (1 << 64) - 1


def _mix64(x):
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _exact_draws(ei, n, count, seed):
    """The sampler's documented map, in plain Python: sample i is the k-th non-edge (ranked by
    u (N - 1) + v') for k = floor(h_i * #non-edges / 2^64), h_i the splitmix64 counter stream."""
    import bisect

    ei = ei[:, ei[0] != ei[1]]
    keys = torch.unique(ei[0] * (n - 1) + ei[1] - (ei[1] > ei[0]).long()).tolist()
    gaps = [k - i for i, k in enumerate(keys)]
    non_edges = n * (n - 1) - len(keys)
    key0 = _mix64((seed ^ 0x6A09E667F3BCC909) & _M64)
    out = []
    for i in range(count):
        h = _mix64((key0 + (i + 1) * 0x9E3779B97F4A7C15) & _M64)
        k = (h * non_edges) >> 64
        key = k + bisect.bisect_right(gaps, k)
        u, vp = divmod(key, n - 1)
        out.append((u, vp + (vp >= u)))
    return torch.tensor(out).t()


def _dense_graph(n, missing, seed):
    """All ordered pairs of n nodes but about `missing` of them, plus self-loops and repeats."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    ei = torch.stack([u.flatten(), v.flatten()])
    keep = torch.ones(ei.shape[1], dtype=torch.bool)
    keep[torch.randint(0, ei.shape[1], (missing,), generator=g)] = False
    ei = ei[:, keep]
    return torch.cat([ei, ei[:, :5000]], 1)[:, torch.randperm(ei.shape[1] + 5000, generator=g)]


@NEEDS_EXT
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_sampler_exact_map_large_graph(kind):
    # > 2^16 edges (the kernel's parallel radix sort) with self-loops and repeated edges; the
    # dense graph has fewer non-edges than edges. Every draw must be the exact k-th non-edge.
    if kind == "sparse":
        n = 3001
        ei = random_graph(n, 90000, seed=11)
        ei = torch.cat([ei, ei[:, :7000], torch.arange(50).repeat(2, 1)], 1)
    else:
        n = 300
        ei = _dense_graph(n, 400, seed=12)
    assert ei.shape[1] > 2**16
    got = torch.ops.deepclust.negative_sampling(ei, n, 3000, 987654321)
    assert torch.equal(got, _exact_draws(ei, n, 3000, 987654321))
    assert not (edge_set(got) & edge_set(ei))


@NEEDS_EXT
@pytest.mark.parametrize("shape", [(1500, 33, 14000, 9000), (40000, 5, 6000, 3000)],
                         ids=lambda s: "x".join(map(str, s)))
def test_backward_many_edges_and_thread_count(shape):
    # enough edges for the backward's parallel counting sort to split the edges into ranges
    # (and, second shape, many more nodes than edges); self-loops and repeats included. The
    # gradient must be close to float64 and bitwise the same with one thread.
    n, d, ep, en = shape
    z, pos, neg = _inputs(n, d, ep, en, seed=13)
    pos = torch.cat([pos, pos[:, :100], torch.arange(7).repeat(2, 1)], 1)
    z = (0.5 * z).requires_grad_()
    (g,) = torch.autograd.grad(recon_loss(z, pos, neg, impl="cpp"), z)
    z64 = z.detach().double().requires_grad_()
    (gt,) = torch.autograd.grad(recon_truth(z64, pos, neg), z64)
    torch.testing.assert_close(g.double(), gt, rtol=1e-4, atol=1e-5 * gt.abs().max().item())
    n_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        (g1,) = torch.autograd.grad(recon_loss(z, pos, neg, impl="cpp"), z)
        loss1 = recon_loss(z, pos, neg, impl="cpp")
    finally:
        torch.set_num_threads(n_threads)
    assert torch.equal(g, g1)
    assert torch.equal(loss1, recon_loss(z, pos, neg, impl="cpp"))


@pytest.mark.gpu
@NEEDS_EXT
def test_cuda_matches_cpu():
    z, pos, neg = _inputs(301, 70, 1500, 900, seed=10, dtype=torch.float64)
    zc = z.cuda().requires_grad_()
    z = z.requires_grad_()
    out_c = recon_loss(zc, pos.cuda(), neg.cuda(), impl="cpp")
    out = recon_loss(z, pos, neg, impl="cpp")
    torch.testing.assert_close(out_c.cpu(), out, rtol=1e-10, atol=1e-12)
    out_c.backward()
    out.backward()
    torch.testing.assert_close(zc.grad.cpu(), z.grad, rtol=1e-10, atol=1e-12)
    for dtype in DTYPES:
        o = recon_loss(zc.detach().to(dtype), pos.cuda(), neg.cuda(), impl="cpp")
        assert o.dtype == dtype and torch.isfinite(o)
    # the counter-based sampler draws the same pairs on both devices
    ei = random_graph(400, 3000, seed=11)
    a = torch.ops.deepclust.negative_sampling(ei, 400, 5000, 99)
    b = torch.ops.deepclust.negative_sampling(ei.cuda(), 400, 5000, 99)
    assert torch.equal(a, b.cpu())
    # errors on bad input
    with pytest.raises(ValueError, match="pos_edge_index"):
        recon_loss(zc, torch.tensor([[0], [301]], device="cuda"), neg.cuda(), impl="cpp")


# ----------------------------------------------------------------------------- impl
def test_impl_validation_and_fallback(monkeypatch):
    z, pos, neg = _inputs(9, 4, 10, 10, seed=12)
    with pytest.raises(ValueError, match="impl"):
        recon_loss(z, pos, neg, impl="nope")
    monkeypatch.setattr(recon_mod, "HAS_EXTENSION", False)
    monkeypatch.setattr(recon_mod, "_KERNELS", {})
    monkeypatch.setattr(recon_mod, "_warned", False)
    with pytest.raises(RuntimeError, match="compiled op"):
        recon_loss(z, pos, neg, impl="cpp")
    with pytest.warns(RuntimeWarning, match="eager torch path"):
        out = recon_loss(z, pos, neg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        out2 = recon_loss(z, pos, neg)
        negative_sampling(pos, 9)
    torch.testing.assert_close(out, recon_loss(z, pos, neg, impl="torch"))
    torch.testing.assert_close(out2, out)


def test_impl_triton_rejected():
    # no-triton-launch: this family has no Triton path; "triton" is refused before any kernel
    z, pos, neg = _inputs(9, 4, 10, 10, seed=12)
    with pytest.raises(ValueError, match="impl='triton'.*C\\+\\+/CUDA"):
        recon_loss(z, pos, neg, impl="triton")
    with pytest.raises(ValueError, match="impl='triton'"):
        negative_sampling(pos, 9, impl="triton")

