"""Helpers shared by the tests: tolerances earned against float64, multi-process runs, and the
graph inputs and contract checks of the negative sampler and the reconstruction loss (the
reference's tests and the op's tests run the same checks on their own functions)."""
from __future__ import annotations

import os
import tempfile
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

# Where tests run Triton paths: CUDA when present (compiled kernels), else the CPU (the
# interpreter, which conftest turns on). The `device` fixture returns the same device.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
# Slack on top of the reference's own error, per dtype: (atol, rtol of the max |truth|).
MARGIN = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_to_truth(out, ref, truth, dtype, name="output", factor=2.0):
    """The fused result's error vs the float64 truth is at most ``factor`` x the reference's
    error in the same dtype, plus a small margin (STYLE.md, habit 6)."""
    assert out.shape == truth.shape, f"{name}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (unwritten or overflow)"
    atol, rtol = MARGIN[dtype]
    scale = truth.double().abs().max().item() if truth.numel() else 0.0
    e_out = max_err(out, truth)
    e_ref = max_err(ref, truth) if torch.isfinite(ref).all() else float("inf")
    bound = factor * (e_ref if e_ref != float("inf") else 0.0) + atol + rtol * scale
    assert e_out <= bound, (
        f"{name}: error {e_out:.3e} vs float64 exceeds bound {bound:.3e} "
        f"(reference error {e_ref:.3e}, dtype {dtype})"
    )


def _worker(rank, world_size, init_file, out_dir, fn, args):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
        # every rank finishes its collectives before any tears the group down: a rank that
        # destroys gloo's group while its peer is still in one can abort that peer
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_distributed(fn, *args, world_size: int = 2, interpret: bool = False):
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes on gloo and return the
    list of their results (each saved with ``torch.save``). ``fn`` must be a module-level
    function of an importable module (a test module is).

    ``interpret=True`` is for tests of the Triton path over several processes: on a machine
    without CUDA it sets ``TRITON_INTERPRET=1`` for the spawned processes (they import triton
    afresh); with CUDA the workers compile the kernels and share the GPU, and gloo moves CUDA
    tensors through host memory. Either way ``DEVICE`` in a worker is the device to put its
    inputs on. (Running the interpreter on a CUDA machine is not an option: Triton 3.6's
    interpreter fails with NumPy 2.4 on loops over scalar arguments.)"""
    old = os.environ.get("TRITON_INTERPRET")
    if interpret and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        return _run_distributed(fn, args, world_size)
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def _run_distributed(fn, args, world_size):
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, f"{r}.pt") for r in range(world_size)]
        try:
            mp.start_processes(
                _worker,
                args=(world_size, os.path.join(d, "init"), d, fn, args),
                nprocs=world_size,
                join=True,
                start_method="spawn",
            )
        except mp.ProcessExitedException as exc:
            # Under load gloo can abort a rank while the group is torn down, after every rank
            # saved its result and passed the barrier (seen as SIGABRT, "terminate called
            # without an active exception"). Results that all exist are complete; anything
            # else is a real failure.
            if exc.signal_name != "SIGABRT" or not all(os.path.exists(p) for p in paths):
                raise
            warnings.warn(f"a rank aborted in gloo teardown after saving its result: {exc}")
        return [torch.load(p, weights_only=False) for p in paths]


# ----------------------------------------------------------------------------- graphs, recon
def seed_recon_loss(z, pos, neg, eps=1e-15):
    """PyAGC's DAEGC.recon_loss with given negatives (the seed's formula)."""
    s_pos = torch.sigmoid((z[pos[0]] * z[pos[1]]).sum(-1))
    s_neg = torch.sigmoid((z[neg[0]] * z[neg[1]]).sum(-1))
    return -torch.log(s_pos + eps).mean() - torch.log(1 - s_neg + eps).mean()


def recon_truth(z, pos, neg):
    """The reconstruction loss in float64 (softplus form), differentiable in ``z``."""
    z = z.double()
    s_pos = (z[pos[0]] * z[pos[1]]).sum(-1)
    s_neg = (z[neg[0]] * z[neg[1]]).sum(-1)
    return F.softplus(-s_pos).mean() + F.softplus(s_neg).mean()


def random_graph(n, e, seed=0):
    """About ``e`` random directed edges of ``n`` nodes, self-loops dropped (repeats kept)."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    return ei[:, ei[0] != ei[1]]


def edge_set(ei):
    return set(map(tuple, ei.t().tolist()))


def check_sampler_properties(sample):
    """``sample(edge_index, num_nodes, num_neg_samples, generator)`` behaves as a uniform
    negative sampler."""
    ei = random_graph(50, 300)
    out = sample(ei, 50, 997, torch.Generator().manual_seed(3))
    assert out.shape == (2, 997) and out.dtype == torch.int64
    assert (out[0] != out[1]).all(), "self-loop sampled"
    assert not (edge_set(out) & edge_set(ei)), "an edge was sampled as a negative"
    assert out.min() >= 0 and out.max() < 50
    # reproducible with a generator, different for another seed
    again = sample(ei, 50, 997, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    other = sample(ei, 50, 997, torch.Generator().manual_seed(4))
    assert not torch.equal(out, other)
    # exact count 0
    assert sample(ei, 50, 0, None).shape == (2, 0)


def check_sampler_uniform(sample):
    """Chi-square goodness of fit over all non-edges of a small graph (fixed seed)."""
    from scipy.stats import chisquare

    ei = torch.tensor([[0, 1, 1, 2, 3, 4, 4, 0], [1, 0, 2, 3, 2, 0, 5, 0]])  # one self-loop
    n = 6
    non_edges = [(u, v) for u in range(n) for v in range(n) if u != v and (u, v) not in edge_set(ei)]
    per = 300
    out = sample(ei, n, per * len(non_edges), torch.Generator().manual_seed(11))
    keys = (out[0] * n + out[1]).tolist()
    counts = torch.bincount(torch.tensor(keys), minlength=n * n)
    observed = torch.tensor([counts[u * n + v].item() for u, v in non_edges], dtype=torch.float64)
    assert observed.sum().item() == out.shape[1], "sampled a pair outside the non-edges"
    p = chisquare(observed.numpy()).pvalue
    assert p > 1e-4, f"draws not uniform (chi-square p={p:.2e})"


def check_sampler_dense(sample):
    """Almost complete graph: exactly one or two non-edges are left; complete graph errors."""
    n = 7
    full = torch.tensor([(u, v) for u in range(n) for v in range(n) if u != v]).t()
    keep = ~(((full[0] == 2) & (full[1] == 5)) | ((full[0] == 6) & (full[1] == 0)))
    out = sample(full[:, keep], n, 400, torch.Generator().manual_seed(0))
    pairs = edge_set(out)
    assert pairs == {(2, 5), (6, 0)}
    with pytest.raises(ValueError, match="no negative pair"):
        sample(full, n, 5, None)
    with pytest.raises(ValueError, match="no negative pair"):
        sample(torch.zeros(2, 0, dtype=torch.long), 1, 3, None)


def check_sampler_bad_input(sample_raw):
    """``sample_raw`` is the public function with its own defaults."""
    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="edge_index"):
        sample_raw(ei, 2)  # index 2 outside [0, 2)
    with pytest.raises(ValueError, match="edge_index"):
        sample_raw(torch.tensor([[0, -1], [1, 2]]), 3)
    with pytest.raises(ValueError, match="edge_index"):
        sample_raw(torch.zeros(3, 4, dtype=torch.long), 5)
    with pytest.raises(TypeError, match="edge_index"):
        sample_raw(ei.float(), 3)
    with pytest.raises(TypeError, match="edge_index"):
        sample_raw([[0, 1], [1, 2]], 3)
    with pytest.raises(ValueError, match="num_neg_samples"):
        sample_raw(ei, 3, -1)
    with pytest.raises(ValueError, match="num_nodes"):
        sample_raw(torch.zeros(2, 0, dtype=torch.long))
    # defaults: N = max + 1, S = E
    out = sample_raw(ei)
    assert out.shape == (2, 2) and out.max() < 3


def check_loss_bad_input(loss):
    """``loss(z, pos_edge_index, neg_edge_index)`` names the bad argument."""
    z = torch.randn(4, 3)
    pos = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="z"):
        loss(torch.randn(4), pos, pos)
    with pytest.raises(TypeError, match="z"):
        loss(torch.ones(4, 3, dtype=torch.long), pos, pos)
    with pytest.raises(ValueError, match="pos_edge_index"):
        loss(z, torch.tensor([[0, 4], [1, 2]]), pos)
    with pytest.raises(ValueError, match="neg_edge_index"):
        loss(z, pos, torch.tensor([[0, 1], [1, 7]]))
    with pytest.raises(ValueError, match="pos_edge_index"):
        loss(z, pos.t().contiguous().view(1, 4), pos)
    with pytest.raises(TypeError, match="pos_edge_index"):
        loss(z, pos.float(), pos)
    with pytest.raises(ValueError, match="pos_edge_index"):
        loss(z, torch.zeros(2, 0, dtype=torch.long), pos)


# ----------------------------------------------------------------------------- Sinkhorn / SwAV
def seed_sinkhorn(out, eps=0.05, n_iters=3, world=1):
    """The published Sinkhorn-Knopp, literally (no max subtraction), in the dtype of ``out``."""
    Q = torch.exp(out / eps).t()
    B, K = Q.shape[1] * world, Q.shape[0]
    Q = Q / torch.sum(Q)
    for _ in range(n_iters):
        Q = Q / torch.sum(Q, dim=1, keepdim=True) / K
        Q = Q / torch.sum(Q, dim=0, keepdim=True) / B
    return (Q * B).t()


def unit(n, d):
    """``n`` random rows of unit norm in ``d`` dimensions (global RNG)."""
    return F.normalize(torch.randn(n, d), dim=1)

