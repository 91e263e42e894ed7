"""Neutral helpers that the fused ops and the references share: argument checks (generic and
per op family), the sampler's argument handling, and process-group collectives.

This module imports torch and nothing else of the package, so a reference that uses it still
shares no logic with the op it checks beyond the validation of its arguments. Every public op
and reference validates with these, so that a bad argument gives a ``TypeError``/``ValueError``
that names it.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.distributed as dist

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The accumulation dtype: float64 when any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# ----------------------------------------------------------------------------- input checks
def check_tensor(
    t,
    name: str,
    *,
    ndim: Optional[int] = None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    finite: bool = False,
    nonempty: bool = True,
) -> torch.Tensor:
    """Validate one tensor argument; raise ``TypeError``/``ValueError`` naming it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    if finite and t.is_floating_point() and not is_tracing() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def check_same_device(**tensors: torch.Tensor) -> None:
    """All named tensors live on one device."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    k0, v0 = items[0]
    for k, v in items[1:]:
        if v.device != v0.device:
            raise ValueError(f"{k} is on {v.device} but {k0} is on {v0.device}")


def check_positive(x, name: str) -> float:
    """A finite scalar > 0."""
    try:
        xf = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}") from None
    if not math.isfinite(xf) or xf <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {x}")
    return xf


def check_int(x, name: str, *, minimum: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, (int,)) and not (
        isinstance(x, torch.Tensor) and x.dim() == 0 and not x.is_floating_point()
    ):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    xi = int(x)
    if xi < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {xi}")
    return xi


def is_tracing() -> bool:
    """True under torch.compile / fake tensors, where data-dependent checks must be skipped."""
    try:
        if torch.compiler.is_compiling():
            return True
    except AttributeError:  # pragma: no cover - old torch
        pass
    return False


# ----------------------------------------------------------------------------- distributed
def get_group(group=None):
    """The process group to reduce over, or ``None`` for a single process.

    ``group=None`` means the default group when ``torch.distributed`` is initialised with more
    than one process, else a single process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("group was given but torch.distributed is not initialised")
        return None
    if group is None:
        group = dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def world_size(group=None) -> int:
    g = get_group(group)
    return 1 if g is None else dist.get_world_size(g)


def rank(group=None) -> int:
    g = get_group(group)
    return 0 if g is None else dist.get_rank(g)


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    g = get_group(group)
    if g is None:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=op, group=g)
    return out


def all_reduce_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """Sum ``t`` over the group, without gradient (a new tensor; ``t`` is left alone)."""
    return _all_reduce(t, dist.ReduceOp.SUM, group)


def all_reduce_max(t: torch.Tensor, group=None) -> torch.Tensor:
    """Maximum of ``t`` over the group, without gradient."""
    return _all_reduce(t, dist.ReduceOp.MAX, group)


def all_reduce_sum_with_grad(t: torch.Tensor, group=None) -> torch.Tensor:
    """Sum ``t`` over the group; the gradient flows back to every rank's ``t``."""
    g = get_group(group)
    if g is None:
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t, op=dist.ReduceOp.SUM, group=g)


def all_gather_with_grad(t: torch.Tensor, group=None, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's ``t`` along ``dim`` (rank order), with gradient.

    Every rank must pass a tensor of the same shape.
    """
    g = get_group(group)
    if g is None:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous(), group=g), dim=dim)


def all_gather_no_grad(t: torch.Tensor, group=None, dim: int = 0) -> torch.Tensor:
    g = get_group(group)
    if g is None:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(g))]
    dist.all_gather(parts, t.contiguous(), group=g)
    return torch.cat(parts, dim=dim)


# ----------------------------------------------------------------------------- DEC
def check_z_centers(z, centers):
    check_tensor(z, "z", ndim=2)
    check_tensor(centers, "centers", ndim=2)
    if z.shape[1] != centers.shape[1]:
        raise ValueError(
            f"z and centers must have the same feature dimension, got z {tuple(z.shape)} "
            f"and centers {tuple(centers.shape)}"
        )
    check_same_device(z=z, centers=centers)


def check_dec_loss_args(z, centers, alpha, target) -> float:
    """Checks shared by this reference and the fused op; returns ``alpha`` as a float."""
    check_z_centers(z, centers)
    alpha = check_positive(alpha, "alpha")
    if target is not None:
        n, k = z.shape[0], centers.shape[0]
        check_tensor(target, "target", ndim=2)
        if tuple(target.shape) != (n, k):
            raise ValueError(
                f"target must have shape (N, K) = ({n}, {k}), got {tuple(target.shape)}"
            )
        check_same_device(z=z, target=target)
    return alpha


# ----------------------------------------------------------------------------- Sinkhorn / SwAV
def check_sinkhorn_args(eps, n_iters):
    eps = check_positive(eps, "eps")
    n_iters = check_int(n_iters, "n_iters", minimum=1)
    return eps, n_iters


def as_crop_list(crop_scores, name="crop_scores"):
    """A list of V (B x K) tensors from a list/tuple of 2-D tensors or one (V x B x K) tensor."""
    if isinstance(crop_scores, torch.Tensor):
        check_tensor(crop_scores, name, ndim=3)
        crops = list(crop_scores.unbind(0))
    elif isinstance(crop_scores, (list, tuple)):
        crops = list(crop_scores)
        for i, c in enumerate(crops):
            check_tensor(c, f"{name}[{i}]", ndim=2)
    else:
        raise TypeError(f"{name} must be a list/tuple of 2-D tensors or a 3-D tensor, "
                        f"got {type(crop_scores).__name__}")
    if len(crops) < 2:
        raise ValueError(f"{name} must hold at least 2 crops, got {len(crops)}")
    shape, dtype, dev = crops[0].shape, crops[0].dtype, crops[0].device
    for i, c in enumerate(crops[1:], 1):
        if c.shape != shape:
            raise ValueError(f"{name}[{i}] has shape {tuple(c.shape)} but {name}[0] has {tuple(shape)} "
                             "(every crop needs the same batch size and number of prototypes)")
        if c.dtype != dtype:
            raise TypeError(f"{name}[{i}] has dtype {c.dtype} but {name}[0] has {dtype}")
        if c.device != dev:
            raise ValueError(f"{name}[{i}] is on {c.device} but {name}[0] is on {dev}")
    return crops


def check_assign(crops_for_assign, n_crops):
    if isinstance(crops_for_assign, int) and not isinstance(crops_for_assign, bool):
        crops_for_assign = (crops_for_assign,)
    try:
        a = tuple(crops_for_assign)
    except TypeError:
        raise TypeError("crops_for_assign must be a sequence of ints") from None
    if len(a) == 0:
        raise ValueError("crops_for_assign must not be empty")
    out = []
    for c in a:
        c = check_int(c, "crops_for_assign", minimum=0)
        if c >= n_crops:
            raise ValueError(f"crops_for_assign entry {c} is out of range for {n_crops} crops")
        out.append(c)
    if len(set(out)) != len(out):
        raise ValueError(f"crops_for_assign has repeated entries: {a}")
    return tuple(out)


def check_queue(queue_scores, n_assign, K, dev, name="queue_scores"):
    if queue_scores is None:
        return [None] * n_assign
    if isinstance(queue_scores, torch.Tensor) or not isinstance(queue_scores, (list, tuple)):
        raise TypeError(f"{name} must be a list/tuple (one entry per assignment crop) or None")
    if len(queue_scores) != n_assign:
        raise ValueError(f"{name} needs {n_assign} entries (one per assignment crop), got {len(queue_scores)}")
    out = []
    for i, q in enumerate(queue_scores):
        if q is None:
            out.append(None)
            continue
        check_tensor(q, f"{name}[{i}]", ndim=2, nonempty=False)
        if q.shape[1] != K:
            raise ValueError(f"{name}[{i}] has {q.shape[1]} columns but the crops have K={K}")
        if q.device != dev:
            raise ValueError(f"{name}[{i}] is on {q.device} but the crops are on {dev}")
        out.append(q if q.shape[0] > 0 else None)
    return out


def check_swav_args(crop_scores, crops_for_assign, tau, eps, n_iters, queue_scores):
    """Checks shared by this reference and the fused op: crops as a list, the assignment crops,
    the queues, and ``tau``, ``eps``, ``n_iters`` as numbers."""
    crops = as_crop_list(crop_scores)
    K = crops[0].shape[1]
    assign = check_assign(crops_for_assign, len(crops))
    tau = check_positive(tau, "tau")
    eps, n_iters = check_sinkhorn_args(eps, n_iters)
    queues = check_queue(queue_scores, len(assign), K, crops[0].device)
    return crops, assign, queues, tau, eps, n_iters


# ----------------------------------------------------------------------------- contrastive
def check_views(x: torch.Tensor, name: str, n_views) -> int:
    """Validate a ``(m*B) x d`` tensor of stacked views; return ``m``."""
    check_tensor(x, name, ndim=2)
    m = check_int(n_views, "n_views", minimum=2)
    if x.shape[0] % m != 0:
        raise ValueError(
            f"{name} must have a row count divisible by n_views={m}, got {x.shape[0]} rows"
        )
    return m


def gather_views(x: torch.Tensor, m: int, group) -> torch.Tensor:
    """Gather every rank's stacked views with gradient, re-ordered to one global batch.

    Rank ``r`` holds ``[view 0; ...; view m-1]`` of its ``B`` samples; the result is
    ``[view 0 of rank 0; view 0 of rank 1; ...; view 1 of rank 0; ...]``, i.e. the stacked views
    of the concatenated batch. Without a process group ``x`` is returned as is.
    """
    g = get_group(group)
    if g is None:
        return x
    full = all_gather_with_grad(x, group=g)  # [rank 0 views; rank 1 views; ...]
    world = full.shape[0] // x.shape[0]
    b = x.shape[0] // m
    blocks = full.reshape(world, m, b, *x.shape[1:]).transpose(0, 1)
    return blocks.reshape(world * x.shape[0], *x.shape[1:])


# ----------------------------------------------------------------------------- prototype CE
def check_prototype_args(x, prototypes, target, temperature):
    check_tensor(x, "x", ndim=2)
    check_tensor(prototypes, "prototypes", ndim=2)
    if prototypes.dtype != x.dtype:
        raise TypeError(f"prototypes must have the dtype of x ({x.dtype}), got {prototypes.dtype}")
    if prototypes.shape[1] != x.shape[1]:
        raise ValueError(
            f"prototypes must have x's feature size {x.shape[1]}, got shape {tuple(prototypes.shape)}"
        )
    if x.device != prototypes.device:
        raise ValueError(f"prototypes is on {prototypes.device} but x is on {x.device}")
    n, k = x.shape[0], prototypes.shape[0]
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != x.device:
        raise ValueError(f"target is on {target.device} but x is on {x.device}")
    if target.dtype in (torch.int64, torch.int32):
        if target.shape != (n,):
            raise ValueError(f"target (class indices) must have shape ({n},), got {tuple(target.shape)}")
        if not is_tracing() and bool(((target < 0) | (target >= k)).any()):
            raise ValueError(f"target holds class indices outside [0, {k})")
    elif target.is_floating_point():
        if target.shape != (n, k):
            raise ValueError(f"target (distribution) must have shape ({n}, {k}), got {tuple(target.shape)}")
    else:
        raise TypeError(f"target must be int64 class indices or a float distribution, got {target.dtype}")
    if isinstance(temperature, torch.Tensor):
        check_tensor(temperature, "temperature", ndim=None)
        if temperature.dim() == 0:
            check_positive(float(temperature), "temperature")
        else:
            if temperature.shape != (k,):
                raise ValueError(
                    f"temperature must be a number or a tensor of shape ({k},), got {tuple(temperature.shape)}"
                )
            if temperature.device != x.device:
                raise ValueError(f"temperature is on {temperature.device} but x is on {x.device}")
            if not is_tracing() and not bool(((temperature > 0) & torch.isfinite(temperature)).all()):
                raise ValueError("temperature must be finite and > 0 everywhere")
    else:
        check_positive(temperature, "temperature")


# ----------------------------------------------------------------------------- reconstruction
# Largest N for which N * (N - 1) fits in int64 (the sampler ranks ordered pairs).
MAX_NODES = 3037000499


def check_edge_index(edge_index, name: str, num_nodes: Optional[int] = None, *, nonempty=False):
    check_tensor(edge_index, name, ndim=2, dtypes=(torch.int64, torch.int32), nonempty=nonempty)
    if edge_index.shape[0] != 2:
        raise ValueError(f"{name} must have shape (2, E), got {tuple(edge_index.shape)}")
    edge_index = edge_index.long()
    if num_nodes is not None and edge_index.numel() and not is_tracing():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= num_nodes:
            raise ValueError(
                f"{name} has node indices in [{lo}, {hi}], outside [0, {num_nodes})"
            )
    return edge_index


def sampler_args(edge_index, num_nodes, num_neg_samples):
    """Validate the sampler's arguments; return (edge_index int64, N, S)."""
    edge_index = check_edge_index(edge_index, "edge_index")
    if num_nodes is None:
        if edge_index.numel() == 0:
            raise ValueError("num_nodes must be given when edge_index is empty")
        num_nodes = int(edge_index.max()) + 1
    num_nodes = check_int(num_nodes, "num_nodes", minimum=0)
    if num_nodes > MAX_NODES:
        raise ValueError(f"num_nodes must be <= {MAX_NODES}, got {num_nodes}")
    check_edge_index(edge_index, "edge_index", num_nodes)
    if num_neg_samples is None:
        num_neg_samples = edge_index.shape[1]
    num_neg_samples = check_int(num_neg_samples, "num_neg_samples", minimum=0)
    return edge_index, num_nodes, num_neg_samples
