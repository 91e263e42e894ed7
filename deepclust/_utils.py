"""Shared plumbing for the ops and references: path selection, input checks, process groups.

Nothing here is a kernel. Every public op validates its inputs with these helpers so that a bad
argument gives a ``TypeError``/``ValueError`` that names it, and picks its implementation with
:func:`resolve_impl`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from typing import Optional, Sequence

import torch
import torch.distributed as dist

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
IMPLS = ("auto", "triton", "torch")

HAS_TRITON = importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(impl: str, *tensors: torch.Tensor) -> str:
    """Pick ``"triton"`` or ``"torch"`` for an op call.

    ``"auto"`` takes Triton for CUDA tensors when Triton is installed, and the torch path
    elsewhere. ``"triton"`` forces the kernels: the tensors must be on CUDA, or on the CPU with
    ``TRITON_INTERPRET=1`` set before Triton was imported. ``"torch"`` forces the eager path.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    on_cuda = all(t.is_cuda for t in tensors) if tensors else False
    if impl == "torch":
        return "torch"
    if impl == "auto":
        return "triton" if (HAS_TRITON and on_cuda) else "torch"
    if not HAS_TRITON:
        raise RuntimeError("impl='triton' needs the triton package, which is not installed")
    if not on_cuda and not triton_interpret() and not _PRETEND_CUDA:
        raise RuntimeError(
            "impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before importing triton "
            "to run the kernels on the CPU"
        )
    return "triton"


# The compile gate (bench/gpu_compile.py) runs the launchers on CPU tensors to record the
# configurations they pick for a GPU: while this is set, launchers choose as for CUDA.
_PRETEND_CUDA = False


@contextlib.contextmanager
def pretend_cuda():
    """Launchers pick their tiles as for a CUDA device (used by the compile gate)."""
    global _PRETEND_CUDA
    old, _PRETEND_CUDA = _PRETEND_CUDA, True
    try:
        yield
    finally:
        _PRETEND_CUDA = old


def kernel_target(device: torch.device) -> str:
    """``"cuda"`` for CUDA tensors (or under :func:`pretend_cuda`), else ``"interpreter"``.

    Tile-choice functions take this as their ``target``; they should give the same tiles for
    both wherever the sizes allow, so that the interpreter runs what the GPU will run.
    """
    return "cuda" if (device.type == "cuda" or _PRETEND_CUDA) else "interpreter"


def num_programs(num_blocks: int, device: torch.device, per_sm: int = 8) -> int:
    """Programs of a persistent grid: ``per_sm`` per SM on CUDA, a few in the interpreter."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(int(num_blocks), per_sm * sms))
    if _PRETEND_CUDA:  # the compile gate: an H100/H200's 132 SMs
        return max(1, min(int(num_blocks), per_sm * 132))
    return max(1, min(int(num_blocks), 3))


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
    if finite and t.is_floating_point() and not _is_tracing() and not bool(torch.isfinite(t).all()):
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


def _is_tracing() -> bool:
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


def all_reduce_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """Sum ``t`` over the group, without gradient (a new tensor; ``t`` is left alone)."""
    g = get_group(group)
    if g is None:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=g)
    return out


def all_reduce_max(t: torch.Tensor, group=None) -> torch.Tensor:
    """Maximum of ``t`` over the group, without gradient."""
    g = get_group(group)
    if g is None:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX, group=g)
    return out


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


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
