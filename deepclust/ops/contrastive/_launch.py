"""Launchers of the contrastive kernels and their one tile choice, :func:`_config` (also called
by the tests and by the compile gate, bench/gpu_compile.py)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._plumbing import kernel_target, new_output, next_pow2, upcast_bf16
from ._kernels import triton

if triton is not None:
    from ._kernels import _contrastive_bwd_kernel, _contrastive_fwd_kernel

_FP32_PRECISION = "ieee"


class _Config(NamedTuple):
    """Launch parameters of one kernel (forward or backward) for one (d, dtype, target)."""

    block_m: int  # rows per program
    block_n: int  # columns per tile of the column loop (the K of the backward's second dot)
    block_d: int  # feature chunk of the logit dots q k^T
    block_do: int  # backward: output features per program (grid axis 1); 0 in the forward
    num_warps: int
    num_stages: int
    precision: str  # input_precision of q k^T
    precision_grad: str  # input_precision of w k (backward)
    upcast: bool  # interpreter work-around: bf16 tiles multiplied (and dq stored) as fp32


def _config(d: int, dtype: torch.dtype, target: str, backward: bool = False) -> _Config:
    """Tiles for feature size ``d``, input ``dtype``, ``target`` "cuda" or "interpreter".

    The same tiles on both targets: only ``upcast`` differs (bf16 in the interpreter, whose bf16
    dots multiply raw bits and whose fp32 -> bf16 stores truncate; fp32 tiles are exact there,
    as bf16 products are exact in fp32). No tile spills registers on sm_80 or sm_90, whatever
    d and its alignment (bench/gpu_compile.py checks): the logits stream the features in
    32-feature chunks, the backward splits its output over d in ``block_do`` blocks, and the
    loops are single-stage (software pipelining holds a second copy of the operands). fp32
    dots are "ieee" (FMA: a thread holds its rows and columns of both operands over the whole
    chunk), hence the smaller fp32 row blocks; 16-bit inputs use the tensor cores (fp32
    accumulation). Unaligned d (scalar loads, a 64-bit address per element) costs the most.
    """
    half = dtype in (torch.float16, torch.bfloat16)
    upcast = upcast_bf16(dtype, target)
    # fp32 logits exactly (like the fp32 reference); with 16-bit inputs the first dot is exact
    # anyway, and the gradient dot runs on fp32 weights (fp32 range) rounded to tf32
    prec = "tf32" if half else _FP32_PRECISION
    block_d = 32  # (16 for small d: no gain, and an fp32 spill on sm_80 with Triton 3.6)
    if not backward:
        return _Config(64 if half else 32, 64, block_d, 0, 4, 1, prec, prec, upcast)
    # fp32 dq blocks of 128 spill 8 bytes on sm_90 with Triton 3.6 at aligned d: 64 there
    block_do = min(128 if half else 64, max(16, next_pow2(d)))
    # 8 warps share the big accumulators (and the FMA operands); with a narrow 16-bit dq tile,
    # ptxas caps 8 warps at 128 registers and spills, where 4 warps do not (and vice versa
    # for fp32: measured on sm_80, Triton 3.6 and 3.9)
    warps = 4 if half and block_do < 64 else 8
    return _Config(64 if half else 32, 32 if half else 16, block_d, block_do, warps, 1, prec,
                   prec, upcast)


def _rows_fwd_triton(q, k, b_local, b_global, offset, scale, pos_weight):
    q, k = q.contiguous(), k.contiguous()
    n, d = q.shape
    cfg = _config(d, q.dtype, kernel_target(q.device))
    loss = new_output((n,), torch.float32, q.device)
    stats = new_output((n, 2), torch.float32, q.device)
    _contrastive_fwd_kernel[(triton.cdiv(n, cfg.block_m),)](
        q, k, loss, stats, n, k.shape[0], d, q.stride(0), k.stride(0),
        b_local, b_global, offset, scale, pos_weight,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d,
        PRECISION=cfg.precision, UPCAST=cfg.upcast,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return loss, stats


def _rows_bwd_triton(q, k, st_q, st_k, g_q, g_k, b_local, b_global, offset, scale, pos_weight):
    q, k = q.contiguous(), k.contiguous()
    st_q, st_k = st_q.float().contiguous(), st_k.float().contiguous()
    g_q, g_k = g_q.float().contiguous(), g_k.float().contiguous()
    n, d = q.shape
    cfg = _config(d, q.dtype, kernel_target(q.device), backward=True)
    dq = new_output((n, d), torch.float32 if cfg.upcast else q.dtype, q.device)
    _contrastive_bwd_kernel[(triton.cdiv(n, cfg.block_m), triton.cdiv(d, cfg.block_do))](
        q, k, st_q, st_k, g_q, g_k, dq, n, k.shape[0], d, q.stride(0), k.stride(0),
        dq.stride(0), b_local, b_global, offset, scale, pos_weight,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d, BLOCK_DO=cfg.block_do,
        PRECISION=cfg.precision, PRECISION_GRAD=cfg.precision_grad, UPCAST=cfg.upcast,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dq.to(q.dtype)
