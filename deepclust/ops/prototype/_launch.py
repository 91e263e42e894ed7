"""Launchers of the prototype cross-entropy kernels and their one tile choice, :func:`_config`
(also called by the tests and by the compile gate, bench/gpu_compile.py)."""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
from torch import Tensor

from .._plumbing import kernel_target, new_output, next_pow2, num_programs, upcast_bf16
from ._kernels import triton

if triton is not None:
    from ._kernels import _bwd_dp_kernel, _bwd_dx_kernel, _fwd_kernel

# Most fp32 memory the per-split partial prototype gradients may take (bytes); they are summed
# in a fixed order afterwards, so the gradient is the same bit for bit on every run.
_DP_PARTIALS_BYTES = 1 << 28


class _Config(NamedTuple):
    """Tiles, warps and stages of the three kernels for one (K, d, dtype, soft, target)."""

    block_n: int  # rows per tile
    block_k: int  # prototypes per tile
    block_d: int  # reduction step over d of the logits dot
    block_do: int  # output columns of dx / dprototypes per program
    warps_fwd: int
    warps_bwd: int
    stages_fwd: int
    stages_bwd: int
    precision: str  # tl.dot input_precision of fp32 tiles (16-bit tiles use native dots)
    upcast: bool  # interpreter work-around: bf16 tiles go to tl.dot as fp32


def _config(K: int, d: int, dtype: torch.dtype, soft: bool, target: str) -> _Config:
    """The one tile choice, used by the launchers, the tests and the compile gate.

    fp32 dots run as "ieee" (fp32 FMA on the CUDA cores), as eager fp32 matmul does. The
    kernels launch with ``enable_fp_fusion=False``: with fusion the backward's ``s * invt - lse``
    became one FMA, so its ``s`` was not the forward's rounded logit, and on an H200 ``dx`` was
    1e-3 off at logits of ~3e4 (one ulp of ``s`` there is 1e-3 of a probability), 35x over the
    float64 bound that eager fp32 meets, with tf32x3 and with ieee dots alike. A 16-wide d step
    and single-stage loops keep the fp32 tiles in registers.
    fp16/bf16 tiles use native dots with fp32 accumulation and a 32-wide d step. The backward
    kernels hold a second accumulator (64 output columns, ``block_do``) and the gradient tile:
    32 prototypes per tile and 8 warps on full tiles (4 on 16-wide ones) keep them in
    registers. All three kernels share ``block_n``, ``block_k`` and ``block_d``, so the
    backward recomputes the forward's logits bit for bit and its softmax ``exp(s - lse)``
    agrees with the forward's logsumexp (with logits of 1e4 in fp32, one ulp of ``s`` is 1e-3
    of a probability). A distribution target (``soft``) adds its tile to the backward: one
    stage and 32 output columns (fp32: 64 spilled 160-184 B with ieee dots) or 4 warps
    (16-bit) there keep sm_80 and sm_90 unspilled.
    Each backward program recomputes the logits over all of d, so a wider d costs recompute,
    not registers.
    The only difference between ``target="cuda"`` and ``"interpreter"`` is ``upcast``: Triton's
    CPU interpreter computes bf16 ``tl.dot`` wrongly, so there bf16 tiles go to ``tl.dot`` as
    fp32 (bf16 products are exact in fp32 and the gradient tile is rounded to bf16 first, so
    the numbers are the GPU's).
    """
    wide = dtype in (torch.float16, torch.bfloat16)
    d_pad = max(16, next_pow2(d))
    k_pad = max(16, next_pow2(K))
    block_k, block_do = min(32, k_pad), min(64, d_pad)
    full = block_k * block_do >= 32 * 64
    if soft and not wide:
        block_do = min(32, d_pad)  # 8 warps (a full tile's) on 32 columns: unspilled
    return _Config(block_n=64, block_k=block_k, block_d=min(32 if wide else 16, d_pad),
                   block_do=block_do, warps_fwd=8 if block_k == 32 else 4,
                   warps_bwd=8 if full and not (soft and wide) else 4,
                   stages_fwd=2 if wide else 1, stages_bwd=2 if full and wide else 1,
                   precision="ieee", upcast=upcast_bf16(dtype, target))


def _target_strides(target: Tensor) -> Tuple[int, int]:
    return (target.stride(0), target.stride(1)) if target.dim() == 2 else (1, 0)


def _fwd_triton(x: Tensor, p: Tensor, target: Tensor, inv_temp: Tensor) -> Tuple[Tensor, Tensor]:
    N, D = x.shape
    K = p.shape[0]
    cfg = _config(K, D, x.dtype, target.is_floating_point(), kernel_target(x.device))
    rows = new_output((N,), torch.float32, x.device)
    lse = new_output((N,), torch.float32, x.device)
    stn, stk = _target_strides(target)
    _fwd_kernel[(triton.cdiv(N, cfg.block_n),)](
        x, p, target, inv_temp, rows, lse, N, K, D, x.stride(0), x.stride(1), p.stride(0),
        p.stride(1), stn, stk, SOFT=target.is_floating_point(), BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d, PREC=cfg.precision, UPCAST=cfg.upcast,
        num_warps=cfg.warps_fwd, num_stages=cfg.stages_fwd, enable_fp_fusion=False)
    return rows, lse


def _dp_splits(N: int, K: int, D: int, cfg: _Config, device: torch.device) -> Tuple[int, int]:
    """(row splits, rows per split) of the prototype gradient: enough programs to fill the
    GPU (a few in the interpreter), at most _DP_PARTIALS_BYTES of fp32 partials."""
    kb, db = triton.cdiv(K, cfg.block_k), triton.cdiv(D, cfg.block_do)
    nb = triton.cdiv(N, cfg.block_n)
    want = max(1, num_programs(kb * db * nb, device, per_sm=2) // (kb * db))
    cap = max(1, _DP_PARTIALS_BYTES // (4 * K * D))
    splits = max(1, min(nb, want, cap))
    rows_per_split = triton.cdiv(nb, splits) * cfg.block_n
    return triton.cdiv(N, rows_per_split), rows_per_split


def _bwd_triton(grad_rows, x, p, target, inv_temp, lse, need_dx, need_dp):
    N, D = x.shape
    K = p.shape[0]
    soft = target.is_floating_point()
    cfg = _config(K, D, x.dtype, soft, kernel_target(x.device))
    tsum = target.float().sum(1) if soft else lse  # (unused when hard)
    grow = grad_rows.float().contiguous()
    stn, stk = _target_strides(target)
    common = dict(SOFT=soft, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
                  BLOCK_DO=cfg.block_do, PREC=cfg.precision, UPCAST=cfg.upcast,
                  num_warps=cfg.warps_bwd, num_stages=cfg.stages_bwd, enable_fp_fusion=False)
    dx = x.new_empty(0)
    dp = p.new_empty(0)
    if need_dx:
        dx = new_output((N, D), x.dtype, x.device)
        _bwd_dx_kernel[(triton.cdiv(N, cfg.block_n), triton.cdiv(D, cfg.block_do))](
            x, p, target, inv_temp, lse, tsum, grow, dx, N, K, D, x.stride(0), x.stride(1),
            p.stride(0), p.stride(1), stn, stk, dx.stride(0), dx.stride(1), **common)
    if need_dp:
        splits, rows_per_split = _dp_splits(N, K, D, cfg, x.device)
        parts = new_output((splits, K, D), torch.float32, x.device)
        _bwd_dp_kernel[(triton.cdiv(K, cfg.block_k), triton.cdiv(D, cfg.block_do), splits)](
            x, p, target, inv_temp, lse, tsum, grow, parts, N, K, D, rows_per_split,
            x.stride(0), x.stride(1), p.stride(0), p.stride(1), stn, stk, **common)
        # a fixed-order reduction over the splits: the same bits on every run
        dp = (parts[0] if splits == 1 else parts.sum(0)).to(p.dtype)
    return dx, dp
