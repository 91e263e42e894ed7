"""Plumbing that every fused op family uses, written once: which path runs (``impl``), where
the kernels are compiled for (``kernel_target``), grid sizes, output allocation (with the tests'
NaN poisoning), row chunking of the eager paths, and the interpreter's work-arounds.

Nothing here is a kernel or a formula. An op file imports what it needs from here and its
argument checks from :mod:`deepclust._common`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Optional

import torch

from .._common import compute_dtype  # noqa: F401 - re-exported: the op files' one spelling

IMPLS = ("auto", "triton", "torch")

HAS_TRITON = importlib.util.find_spec("triton") is not None

# Tests set this (``poison_outputs``) so that every kernel output starts as NaN: an element a
# kernel forgets to write then fails the comparison instead of passing as leftover memory.
POISON_OUTPUTS = False

# The compile gate (bench/gpu_compile.py) runs the launchers on CPU tensors to record the
# configurations they pick for a GPU: while this is set, launchers choose as for CUDA.
_PRETEND_CUDA = False


def triton_interpret() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(impl: str, *tensors: torch.Tensor, name: Optional[str] = None) -> str:
    """Pick ``"triton"`` or ``"torch"`` for an op call.

    ``"auto"`` takes Triton for CUDA tensors when Triton is installed, and the torch path
    elsewhere. ``"triton"`` forces the kernels: the tensors must be on CUDA, or on the CPU with
    ``TRITON_INTERPRET=1`` set before Triton was imported. ``"torch"`` forces the eager path.

    With ``name`` (the argument to blame), float64 inputs keep to the torch path: ``"auto"``
    picks it, and ``"triton"`` raises a ``TypeError`` naming the argument (the kernels
    compute in fp32).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    on_cuda = all(t.is_cuda for t in tensors) if tensors else False
    fp64 = name is not None and any(t.dtype == torch.float64 for t in tensors)
    if impl == "auto":
        return "triton" if (HAS_TRITON and on_cuda and not fp64) else "torch"
    if not HAS_TRITON:
        raise RuntimeError("impl='triton' needs the triton package, which is not installed")
    if not on_cuda and not triton_interpret() and not _PRETEND_CUDA:
        raise RuntimeError(
            "impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before importing triton "
            "to run the kernels on the CPU"
        )
    if fp64:
        raise TypeError(f"{name} must be float32, float16 or bfloat16 for impl='triton', got "
                        "float64 (use impl='torch' for float64)")
    return "triton"


@contextlib.contextmanager
def pretend_cuda():
    """Launchers pick their tiles as for a CUDA device (used by the compile gate)."""
    global _PRETEND_CUDA
    old, _PRETEND_CUDA = _PRETEND_CUDA, True
    try:
        yield
    finally:
        _PRETEND_CUDA = old


@contextlib.contextmanager
def poison_outputs():
    """Kernel outputs from :func:`new_output` start as NaN while this is active (tests)."""
    global POISON_OUTPUTS
    old, POISON_OUTPUTS = POISON_OUTPUTS, True
    try:
        yield
    finally:
        POISON_OUTPUTS = old


def kernel_target(device: torch.device) -> str:
    """``"cuda"`` for CUDA tensors (or under :func:`pretend_cuda`), else ``"interpreter"``.

    Tile-choice functions take this as their ``target``; they should give the same tiles for
    both wherever the sizes allow, so that the interpreter runs what the GPU will run.
    """
    return "cuda" if (device.type == "cuda" or _PRETEND_CUDA) else "interpreter"


def upcast_bf16(dtype: torch.dtype, target: str) -> bool:
    """Whether bf16 tiles go to ``tl.dot`` as fp32: Triton's CPU interpreter computes bf16
    ``tl.dot`` wrongly, and bf16 products are exact in fp32, so the numbers stay the GPU's."""
    return dtype == torch.bfloat16 and target == "interpreter"


def num_programs(num_blocks: int, device: torch.device, per_sm: int = 8) -> int:
    """Programs of a persistent grid: ``per_sm`` per SM on CUDA, a few in the interpreter."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(int(num_blocks), per_sm * sms))
    if _PRETEND_CUDA:  # the compile gate: an H100/H200's 132 SMs
        return max(1, min(int(num_blocks), per_sm * 132))
    return max(1, min(int(num_blocks), 3))


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised kernel output (NaN-filled under :func:`poison_outputs`)."""
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def row_chunks(n_rows: int, row_width: int, budget: int = 1 << 22):
    """``(start, stop)`` row ranges whose ``rows x row_width`` temporaries hold at most
    ``budget`` elements: the eager paths' memory bound (no ``N x K`` tensor at once)."""
    step = max(1, budget // max(int(row_width), 1))
    return [(a, min(a + step, n_rows)) for a in range(0, n_rows, step)]


# ----------------------------------------------------------------------------- autocast
# Losses and softmax run in fp32 under torch.autocast (torch's own policy): a forward custom op
# gets fp32 up-casts of its floating inputs, which also admits bf16 activations with fp32
# parameters. Accumulation inside the kernels is fp32 in any case.
def register_fp32_autocast(*op_names: str) -> None:
    """Register the fp32 autocast rule for ``deepclust::<name>`` on CUDA and the CPU."""
    for name in op_names:
        for device in ("cuda", "cpu"):
            torch.library.register_autocast(f"deepclust::{name}", device, torch.float32)


def autocast_fp32(t):
    """``t`` up-cast to fp32 where it is an fp16/bf16 tensor and autocast is on for its device:
    what the registered rule does to a custom op's inputs, for the checks and the paths that
    run before (or instead of) the op."""
    if (isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16)
            and torch.is_autocast_enabled(t.device.type)):
        return t.float()
    return t
