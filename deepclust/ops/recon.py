"""Negative sampling and the fused reconstruction loss of graph autoencoders.

The fused path is the C++/CUDA extension ``deepclust._C`` (``torch.ops.deepclust``): kernels in
``csrc/recon.cpp`` (schemas and CPU) and ``kernels/recon_cuda.cu`` (CUDA). This file registers
their fake-tensor, autograd and autocast rules, so the ops pass ``torch.library.opcheck`` and run
under ``torch.compile``; then the eager torch path of its own (``impl="torch"``, and the fallback
when the extension is not built); then the public functions.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

from .._common import check_edge_index, check_same_device, check_tensor, is_tracing, sampler_args
from ._plumbing import autocast_fp32, compute_dtype, register_fp32_autocast, row_chunks

__all__ = ["negative_sampling", "recon_loss", "HAS_EXTENSION"]

try:  # importing the module registers the operators with the dispatcher
    importlib.import_module("deepclust._C")
    HAS_EXTENSION = True
    _EXTENSION_ERROR: Optional[BaseException] = None
except ImportError as exc:  # pure-Python install, or a build against another torch
    HAS_EXTENSION = False
    _EXTENSION_ERROR = exc

IMPLS = ("auto", "cpp", "torch")
_warned = False


# ----------------------------------------------------------------------------- registrations
if HAS_EXTENSION:

    @torch.library.register_fake("deepclust::negative_sampling")
    def _negative_sampling_fake(edge_index, num_nodes, num_neg_samples, seed):
        return edge_index.new_empty((2, num_neg_samples))

    @torch.library.register_fake("deepclust::recon_loss")
    def _recon_loss_fake(z, pos, neg):
        return z.new_empty(())

    @torch.library.register_fake("deepclust::recon_loss_backward")
    def _recon_loss_backward_fake(grad, z, pos, neg):
        return z.new_empty(z.shape)

    def _recon_setup_context(ctx, inputs, output):
        z, pos, neg = inputs
        ctx.save_for_backward(z, pos, neg)

    def _recon_backward(ctx, grad):
        z, pos, neg = ctx.saved_tensors
        dz = None
        if ctx.needs_input_grad[0]:
            dz = torch.ops.deepclust.recon_loss_backward(grad, z, pos, neg)
        return dz, None, None

    torch.library.register_autograd(
        "deepclust::recon_loss", _recon_backward, setup_context=_recon_setup_context
    )
    register_fp32_autocast("recon_loss")  # fp16/bf16 z is up-cast, float64 stays


# Which (op, device type) pairs have a compiled kernel, looked up once (a plain dict lookup
# stays traceable under torch.compile). The op names are the public functions' names.
_KERNELS = {
    (op, dev): HAS_EXTENSION
    and torch._C._dispatch_has_kernel_for_dispatch_key(f"deepclust::{op}", key)
    for op in ("negative_sampling", "recon_loss")
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}
def _has_kernel(op: str, device: torch.device) -> bool:
    return _KERNELS.get((op, device.type), False)


# ----------------------------------------------------------------------------- eager torch path
def _non_edge_gaps(edge_index: torch.Tensor, n: int):
    """(gaps, non-edge count): ``gaps[e] = keys[e] - e`` over the sorted unique keys
    ``u (N - 1) + v'`` of the edges that are not self-loops, i.e. the number of non-edges ranked
    before edge ``e``."""
    src, dst = edge_index
    loop = src == dst
    keys = src[~loop] * max(n - 1, 1) + dst[~loop]
    keys = torch.unique(keys - (dst[~loop] > src[~loop]).long(), sorted=True)
    gaps = keys - torch.arange(keys.numel(), dtype=keys.dtype, device=keys.device)
    return gaps, (n * (n - 1) - keys.numel() if n >= 2 else 0)


def _negative_sampling_torch(edge_index, n: int, s: int, generator) -> torch.Tensor:
    """The exact, rejection-free draw of the kernels (rank k of a uniform non-edge, mapped to its
    key by one ``searchsorted`` over the gaps), with k from torch's RNG: other draws than the
    extension's counter-based generator, the same distribution."""
    if s == 0:
        return edge_index.new_empty((2, 0))
    gaps, non_edges = _non_edge_gaps(edge_index, n)
    if non_edges <= 0:
        raise ValueError(_no_negative(n))
    rng_device = edge_index.device if generator is None else generator.device
    rank = torch.randint(0, non_edges, (s,), generator=generator, device=rng_device)
    rank = rank.to(edge_index.device)
    key = rank + torch.searchsorted(gaps, rank, right=True)
    u = torch.div(key, n - 1, rounding_mode="floor")
    v = key - u * (n - 1)
    v = v + (v >= u).long()
    return torch.stack((u, v))


def _edge_rows(zc: torch.Tensor, edges: torch.Tensor, a: int, b: int):
    """Node indices ``u``, ``v`` and rows ``z_u``, ``z_v`` of edges ``a:b``."""
    u, v = edges[0, a:b], edges[1, a:b]
    return u, v, zc[u], zc[v]


class _ReconLossTorch(torch.autograd.Function):
    """The loss edge chunk by edge chunk (``row_chunks``: no ``E x d`` temporary at once), in
    fp32 (float64 for float64). Saves only ``z`` and the edge lists; the backward recomputes
    the scores, with ``d softplus(sign s) / ds = sign sigmoid(sign s)``."""

    @staticmethod
    def forward(ctx, z, pos, neg):
        ctx.save_for_backward(z, pos, neg)
        zc = z.to(compute_dtype(z))
        total = zc.new_zeros(())
        for edges, sign in ((pos, -1.0), (neg, 1.0)):
            part = zc.new_zeros(())
            for a, b in row_chunks(edges.shape[1], 3 * z.shape[1]):
                _, _, zu, zv = _edge_rows(zc, edges, a, b)
                part = part + F.softplus(sign * (zu * zv).sum(-1)).sum()
            total = total + part / edges.shape[1]
        return total.to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, pos, neg = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        zc = z.to(compute_dtype(z))
        g = grad.to(zc.dtype)
        dz = torch.zeros_like(zc)
        for edges, sign in ((pos, -1.0), (neg, 1.0)):
            scale = g / edges.shape[1]
            for a, b in row_chunks(edges.shape[1], 4 * z.shape[1]):
                u, v, zu, zv = _edge_rows(zc, edges, a, b)
                c = (sign * torch.sigmoid(sign * (zu * zv).sum(-1)) * scale).unsqueeze(1)
                dz.index_add_(0, u, c * zv)
                dz.index_add_(0, v, c * zu)
        return dz.to(z.dtype), None, None


# ----------------------------------------------------------------------------- path and checks
def _use_extension(impl: str, op: str, device: torch.device) -> bool:
    """True for the compiled op, False for the eager torch path (warning once when that is a
    fallback). Not ``_plumbing.resolve_impl``: that one chooses between Triton and torch, and
    this family's fused path is the C++/CUDA extension (``"cpp"``)."""
    global _warned
    if impl == "triton":
        raise ValueError("impl='triton' is not a path of negative_sampling/recon_loss: their fused "
                         "path is the C++/CUDA extension; pass impl='cpp' or 'auto' (or 'torch')")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    if _has_kernel(op, device):
        return True
    why = (
        f"the extension deepclust._C is not built ({_EXTENSION_ERROR})"
        if not HAS_EXTENSION
        else f"deepclust._C has no {device.type} kernel for {op}"
    )
    if impl == "cpp":
        raise RuntimeError(f"impl='cpp' needs the compiled op: {why}")
    if not _warned:
        _warned = True
        warnings.warn(f"{why}; using the eager torch path instead", RuntimeWarning, stacklevel=3)
    return False


def _draw_seed(generator: Optional[torch.Generator]) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


def _no_negative(n: int) -> str:
    return (f"no negative pair exists: every ordered pair (u, v), u != v, of the {n} nodes is an "
            "edge (complete graph)")


def _check_has_non_edge(edge_index: torch.Tensor, num_nodes: int) -> None:
    """ValueError when every ordered pair u != v is an edge. Checked in Python before the
    kernel, which checks too: an error raised here is a Python ValueError on every build (an
    extension built on the GPU machine crashed while unwinding its own C++ throw). Costs a sort
    only when E >= N(N-1)."""
    if is_tracing():
        return
    n = num_nodes
    if n >= 2 and edge_index.shape[1] < n * (n - 1):
        return
    if n >= 2:
        u, v = edge_index[0], edge_index[1]
        keep = u != v
        if torch.unique(u[keep] * n + v[keep]).numel() < n * (n - 1):
            return
    raise ValueError(_no_negative(n))


# ----------------------------------------------------------------------------- public ops
def negative_sampling(
    edge_index: torch.Tensor,
    num_nodes: Optional[int] = None,
    num_neg_samples: Optional[int] = None,
    *,
    generator: Optional[torch.Generator] = None,
    impl: str = "auto",
) -> torch.Tensor:
    r"""Draw node pairs that are not edges, i.i.d. and uniformly (exact count).

    Each column is uniform over the ordered pairs :math:`(u, v)`, :math:`u \ne v`, that are not
    edges, drawn with replacement. The kernel ranks pairs by :math:`u(N-1) + v'`
    (:math:`v' = v - [v > u]`), sorts the edge keys once, and maps a uniform rank :math:`k` among
    the :math:`N(N-1) - |E|` non-edges to its pair with one binary search: no rejection loop, so
    it is exact and fast at any density (almost complete graphs included). Draws come from a
    counter-based generator keyed by a seed taken from ``generator`` (or the global RNG), so they
    are reproducible and independent of the thread count, and identical on CPU and CUDA.

    Args:
        edge_index: ``(2, E)`` int64/int32 edges; duplicates and self-loops allowed.
        num_nodes: ``N``; default ``edge_index.max() + 1``.
        num_neg_samples: number of pairs; default ``E``.
        generator: ``torch.Generator`` the seed (``"cpp"``) or the ranks (``"torch"``) are
            drawn from.
        impl: ``"auto"`` (extension when built, else the eager torch path with a warning),
            ``"cpp"`` (extension, required) or ``"torch"`` (the eager path: the same exact
            algorithm with torch's RNG, so its draws differ from the extension's).
            ``"triton"`` is rejected: this family has no Triton path.

    Returns:
        ``(2, num_neg_samples)`` int64 tensor on the device of ``edge_index``.

    Raises:
        TypeError/ValueError: malformed input, indices outside ``[0, N)``, an unknown ``impl``;
            ValueError when no non-edge exists (complete graph, ``N < 2``) and samples are
            requested.
    """
    check_tensor(edge_index, "edge_index", ndim=2, dtypes=(torch.int64, torch.int32), nonempty=False)
    cpp = _use_extension(impl, "negative_sampling", edge_index.device)
    edge_index, n, s = sampler_args(edge_index, num_nodes, num_neg_samples)
    if not cpp:
        return _negative_sampling_torch(edge_index, n, s, generator)
    if s > 0:
        _check_has_non_edge(edge_index, n)
    return torch.ops.deepclust.negative_sampling(edge_index, n, s, _draw_seed(generator))


def recon_loss(
    z: torch.Tensor,
    pos_edge_index: torch.Tensor,
    neg_edge_index: Optional[torch.Tensor] = None,
    *,
    generator: Optional[torch.Generator] = None,
    impl: str = "auto",
) -> torch.Tensor:
    r"""Inner-product reconstruction loss with negative sampling (GAE; DAEGC's :math:`L_r`).

    .. math::
        L = \operatorname{mean}_{(u,v) \in E^+} \operatorname{softplus}(-z_u \cdot z_v)
          + \operatorname{mean}_{(u,v) \in E^-} \operatorname{softplus}(z_u \cdot z_v),

    i.e. :math:`-\operatorname{mean}\log\sigma(s^+) - \operatorname{mean}\log(1-\sigma(s^-))`
    computed without saturation. The fused kernel computes the scores edge by edge (no
    :math:`E \times d` temporaries), accumulates in fp32 (fp64 for fp64 inputs) and recomputes
    the scores in the backward pass, so only ``z`` and the edge lists are saved; the eager path
    does the same in chunks of edges. Under autocast the loss runs in fp32.
    Kipf & Welling, "Variational Graph Auto-Encoders" (2016); Wang et al., "Attributed Graph
    Clustering: A Deep Attentional Embedding Approach" (IJCAI 2019).

    Args:
        z: ``(N, d)`` embeddings, float32/float16/bfloat16/float64.
        pos_edge_index: ``(2, E+)`` edges (at least one).
        neg_edge_index: ``(2, E-)`` non-edges; default ``E+`` pairs from
            :func:`negative_sampling` with ``num_nodes = N``.
        generator: ``torch.Generator`` for the negative draws.
        impl: ``"auto"``, ``"cpp"`` or ``"torch"``, as in :func:`negative_sampling`.

    Returns:
        0-d tensor in the dtype of ``z`` (float32 for float16/bfloat16 ``z`` under autocast).
    """
    check_tensor(z, "z", ndim=2)
    cpp = _use_extension(impl, "recon_loss", z.device)
    n = z.shape[0]
    # Index ranges are checked here, before the kernels (which check too), for the reason given
    # in _check_has_non_edge; on CUDA this also saves a device-side assert.
    pos = check_edge_index(pos_edge_index, "pos_edge_index", n, nonempty=True)
    if neg_edge_index is None:
        neg = negative_sampling(pos, n, pos.shape[1], generator=generator, impl="cpp" if cpp else "torch")
    else:
        neg = check_edge_index(neg_edge_index, "neg_edge_index", n, nonempty=True)
    check_same_device(z=z, pos_edge_index=pos, neg_edge_index=neg)
    if cpp:
        return torch.ops.deepclust.recon_loss(z, pos, neg)
    # The eager path is plain differentiable torch code, not a custom op (the op's name belongs
    # to the extension's schema, and it must run without the extension), so it takes autocast's
    # fp32 policy here, as register_autocast gives the compiled op.
    return _ReconLossTorch.apply(autocast_fp32(z), pos, neg)
