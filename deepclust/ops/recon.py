"""Negative sampling and the fused reconstruction loss of graph autoencoders, backed by the
C++/CUDA extension ``deepclust._C`` (``torch.ops.deepclust``).

The kernels live in ``csrc/recon.cpp`` (schemas and CPU) and ``kernels/recon_cuda.cu`` (CUDA).
This file registers their fake-tensor and autograd rules, so the ops pass
``torch.library.opcheck`` and run under ``torch.compile``, and defines the public functions.
Without a built extension (or without its kernels for the tensors' device) the public functions
fall back to :mod:`deepclust.reference.recon`, with one warning.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from .._common import (
    check_edge_index,
    check_same_device,
    check_tensor,
    is_tracing,
    sampler_args,
)
from ..reference import recon as _ref

__all__ = ["negative_sampling", "recon_loss", "HAS_EXTENSION"]

try:  # importing the module registers the operators with the dispatcher
    from .. import _C  # noqa: F401

    HAS_EXTENSION = True
    _EXTENSION_ERROR: Optional[BaseException] = None
except ImportError as exc:  # pure-Python install, or a build against another torch
    HAS_EXTENSION = False
    _EXTENSION_ERROR = exc

IMPLS = ("auto", "cpp", "triton", "torch")
_warned = False


# ----------------------------------------------------------------------------- registrations
if HAS_EXTENSION:

    @torch.library.register_fake("deepclust::negative_sampling")
    def _negative_sampling_fake(edge_index, num_nodes, num_neg_samples, seed):
        return edge_index.new_empty((2, num_neg_samples))

    @torch.library.register_fake("deepclust::recon_loss_fwd")
    def _recon_loss_fwd_fake(z, pos, neg):
        return z.new_empty(())

    @torch.library.register_fake("deepclust::recon_loss_bwd")
    def _recon_loss_bwd_fake(grad, z, pos, neg):
        return z.new_empty(z.shape)

    def _recon_setup_context(ctx, inputs, output):
        z, pos, neg = inputs
        ctx.save_for_backward(z, pos, neg)

    def _recon_backward(ctx, grad):
        z, pos, neg = ctx.saved_tensors
        dz = None
        if ctx.needs_input_grad[0]:
            dz = torch.ops.deepclust.recon_loss_bwd(grad, z, pos, neg)
        return dz, None, None

    torch.library.register_autograd(
        "deepclust::recon_loss_fwd", _recon_backward, setup_context=_recon_setup_context
    )


# Which (op, device type) pairs have a compiled kernel, looked up once (a plain dict lookup
# stays traceable under torch.compile).
_KERNELS = {
    (op, dev): HAS_EXTENSION
    and torch._C._dispatch_has_kernel_for_dispatch_key(f"deepclust::{op}", key)
    for op in ("negative_sampling", "recon_loss_fwd")
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def _has_kernel(op: str, device: torch.device) -> bool:
    return _KERNELS.get((op, device.type), False)


def _use_extension(impl: str, op: str, device: torch.device) -> bool:
    """True for the compiled op; False for the reference (warning once when it is a fallback).

    ``"cpp"`` (and ``"triton"``, accepted so that one ``impl`` can be passed to every op of a
    model: this op's fused path is the C++/CUDA one) require the extension.
    """
    global _warned
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    if HAS_EXTENSION and _has_kernel(op, device):
        return True
    why = (
        f"the extension deepclust._C is not built ({_EXTENSION_ERROR})"
        if not HAS_EXTENSION
        else f"deepclust._C has no {device.type} kernel for {op}"
    )
    if impl in ("cpp", "triton"):
        raise RuntimeError(f"impl={impl!r} needs the compiled op: {why}")
    if not _warned:
        _warned = True
        warnings.warn(f"{why}; using the eager PyTorch reference instead", RuntimeWarning, stacklevel=3)
    return False


def _draw_seed(generator: Optional[torch.Generator]) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


def _check_range(edge_index: torch.Tensor, name: str, num_nodes: int) -> None:
    # The kernels check too, but an error raised here is a Python ValueError on every build
    # (an extension built on the GPU machine crashed while unwinding its own C++ throw) and on
    # CUDA it saves a device-side assert.
    if edge_index.numel() and not is_tracing():
        check_edge_index(edge_index, name, num_nodes)


def _check_has_non_edge(edge_index: torch.Tensor, num_nodes: int) -> None:
    """ValueError when every ordered pair u != v is an edge: checked here, before the kernel,
    for the reason given in ``_check_range``. Costs a sort only when E >= N(N-1)."""
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
    raise ValueError(f"no negative pair exists: every ordered pair (u, v), u != v, of the {n} nodes "
                     "is an edge (complete graph)")


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
        generator: ``torch.Generator`` the seed is drawn from.
        impl: ``"auto"`` (extension when built, else the reference with a warning), ``"cpp"``
            (extension, required; ``"triton"`` is accepted as a synonym) or ``"torch"``
            (the eager reference, whose draws differ from the extension's).

    Returns:
        ``(2, num_neg_samples)`` int64 tensor on the device of ``edge_index``.

    Raises:
        TypeError/ValueError: malformed input, indices outside ``[0, N)``; ValueError when no
            non-edge exists (complete graph, ``N < 2``) and samples are requested.
    """
    check_tensor(edge_index, "edge_index", ndim=2, dtypes=(torch.int64, torch.int32), nonempty=False)
    if not _use_extension(impl, "negative_sampling", edge_index.device):
        return _ref.negative_sampling(edge_index, num_nodes, num_neg_samples, generator=generator)
    edge_index, n, s = sampler_args(edge_index, num_nodes, num_neg_samples)
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
    the scores in the backward pass, so only ``z`` and the edge lists are saved.
    Kipf & Welling, "Variational Graph Auto-Encoders" (2016); Wang et al., "Attributed Graph
    Clustering: A Deep Attentional Embedding Approach" (IJCAI 2019).

    Args:
        z: ``(N, d)`` embeddings, float32/float16/bfloat16/float64.
        pos_edge_index: ``(2, E+)`` edges (at least one).
        neg_edge_index: ``(2, E-)`` non-edges; default ``E+`` pairs from
            :func:`negative_sampling` with ``num_nodes = N``.
        generator: ``torch.Generator`` for the negative draws.
        impl: ``"auto"``, ``"cpp"`` (or ``"triton"``) or ``"torch"``, as in
            :func:`negative_sampling`.

    Returns:
        0-d tensor in the dtype of ``z``.
    """
    check_tensor(z, "z", ndim=2)
    if not _use_extension(impl, "recon_loss_fwd", z.device):
        return _ref.recon_loss(z, pos_edge_index, neg_edge_index, generator=generator)
    n = z.shape[0]
    pos = check_edge_index(pos_edge_index, "pos_edge_index", nonempty=True)
    _check_range(pos, "pos_edge_index", n)
    if neg_edge_index is None:
        neg = negative_sampling(pos, n, pos.shape[1], generator=generator, impl="cpp")
    else:
        neg = check_edge_index(neg_edge_index, "neg_edge_index", nonempty=True)
        _check_range(neg, "neg_edge_index", n)
    check_same_device(z=z, pos_edge_index=pos, neg_edge_index=neg)
    return torch.ops.deepclust.recon_loss_fwd(z, pos, neg)
