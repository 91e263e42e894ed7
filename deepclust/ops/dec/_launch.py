"""Launchers of the DEC kernels and their one configuration function, :func:`_config`.

Extra memory is ``O(N + K d)``: two fp32 row statistics (``2 N``), the partial column sums
(``S x K``) and the partial centre gradient (``S x K x d``, fp32), with the number of row slices
``S`` capped so that ``S x K x d <= max(K d, 2^24)`` elements (64 MB). The loss kernels form the
gradients of ``z`` and ``centers`` in the forward pass (``P`` is a constant).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

from .._plumbing import HAS_TRITON, kernel_target, new_output, next_pow2, num_programs

if HAS_TRITON:
    import triton

    from ._kernels import (
        _colsum_kernel, _dec_cols_kernel, _dec_loss_kernel, _dec_rows_kernel,
        _hard_assign_kernel, _target_kernel,
    )

# Precision of the fp32 tl.dot tiles: "tf32x3" is close to fp32 and much faster than "ieee" on
# tensor-core GPUs. All dots take fp32 tiles (16-bit inputs are upcast on load, which is exact).
_DOT_PRECISION = "tf32x3"
# Cap, in fp32 elements, of the per-slice partial buffers of the column-major kernels.
_PARTIAL_ELEMS = 1 << 24


@dataclass(frozen=True)
class _Config:
    """Tiles, warps and stages of the DEC kernels for one (K, d, dtype, target)."""

    block_n: int  # rows per tile of the distance-only kernels (rows, columns, hard assignment)
    block_k: int  # centres per tile of the same
    block_d: int  # feature chunk of their distance dots (the features are swept in chunks)
    num_warps: int
    grad_block_n: int  # rows per tile of the gradient kernels (loss + dL/dz, dL/dcenters)
    grad_block_k: int  # centres per tile of the same
    grad_block_d: int  # feature chunk of their distance dots
    block_g: int  # feature chunk of a gradient accumulator: a grid axis sweeps d by it
    block_g_cached: int  # the same with a cached target (whose tiles take registers)
    grad_warps: int
    num_stages: int
    q_block_n: int  # tiles of the kernels on a given q (target distribution)
    q_block_k: int
    prec: str  # input_precision of every fp32 tl.dot


def _config(K: int, d: int, dtype: torch.dtype, target: str) -> _Config:
    """The tiles of every DEC kernel; the same for the GPU and the interpreter.

    fp32 ``tf32x3`` dots split both operands into two tf32 halves in registers, so the tiles
    stay small: the distance dots sweep the features 16-32 wide, a gradient accumulator
    (``32 x block_g``) is at most 128 wide (64 with a cached target; wider features take more
    programs, each recomputing the distances), and the larger tiles get 8 warps. No software
    pipelining (``num_stages=1``): the feature loops are short and prefetch buffers cost
    registers. All inputs are upcast to fp32 on load (exact for fp16/bf16), so the dtype does
    not change the tiles. ``bench/gpu_compile.py`` finds no register spill in these on sm_80
    and sm_90 with Triton 3.6 and 3.9 (ptxas spills a few bytes in 4-warp gradient tiles and in
    32 x 128 ones with a cached target on sm_80, hence the choices below).
    """
    del dtype, target  # one configuration for every dtype, GPU and interpreter alike
    d_pad = max(16, next_pow2(d))
    k_pad = max(16, next_pow2(K))
    block_k = min(k_pad, 64)
    block_d = min(d_pad, 16 if block_k == 64 else 32)
    return _Config(
        block_n=64, block_k=block_k, block_d=block_d,
        num_warps=8 if (64 + block_k) * block_d >= 2048 else 4,
        grad_block_n=32, grad_block_k=32, grad_block_d=min(d_pad, 32),
        block_g=min(d_pad, 128), block_g_cached=min(d_pad, 64), grad_warps=8,
        num_stages=1, q_block_n=32, q_block_k=min(k_pad, 64), prec=_DOT_PRECISION,
    )


def _slices(num_rb: int, other_programs: int, slice_elems: int, device) -> Tuple[int, int]:
    """(row slices S, row blocks per slice) of a column-major kernel: enough programs to fill
    the GPU, at most ``max(1, _PARTIAL_ELEMS // slice_elems)`` partial buffers."""
    want = max(1, num_programs(num_rb * other_programs, device) // other_programs)
    s = max(1, min(num_rb, want, _PARTIAL_ELEMS // max(slice_elems, 1)))
    per = triton.cdiv(num_rb, s)
    return triton.cdiv(num_rb, per), per


def _launch_rows(z: Tensor, mu: Tensor, alpha: float, write_q: bool, out_dtype=None):
    n, d = z.shape
    k = mu.shape[0]
    cfg = _config(k, d, z.dtype, kernel_target(z.device))
    nprog = num_programs(triton.cdiv(n, cfg.block_n), z.device)
    lse = new_output((n,), torch.float32, z.device)
    q = new_output((n, k), out_dtype, z.device) if write_q else lse
    _dec_rows_kernel[(nprog,)](
        z, mu, lse, q, n, k, d, -(alpha + 1.0) / 2.0, 1.0 / alpha, nprog,
        WRITE_Q=write_q, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
        PREC=cfg.prec, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return lse, q


def _dec_loss_triton(z, mu, target, alpha, need_dz, need_dmu):
    z = z.contiguous()
    mu = mu.contiguous()
    n, d = z.shape
    k = mu.shape[0]
    dev = z.device
    cfg = _config(k, d, z.dtype, kernel_target(dev))
    coef, inv_alpha = -(alpha + 1.0) / 2.0, 1.0 / alpha
    grad_scale = (alpha + 1.0) / (2.0 * alpha * n)
    if target is None:
        lse = _launch_rows(z, mu, alpha, write_q=False)[0]
        num_rb = triton.cdiv(n, cfg.block_n)
        kt = triton.cdiv(k, cfg.block_k)
        s, per = _slices(num_rb, kt, k, dev)
        f_part = new_output((s, k), torch.float32, dev)
        _dec_cols_kernel[(kt, s, 1)](
            z, mu, lse, lse, lse, lse, f_part, n, k, d, coef, inv_alpha, 0.0,
            per * cfg.block_n, CENTRE_GRAD=False, HAS_TARGET=False,
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d, BLOCK_G=16,
            PREC=cfg.prec, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        f = f_part.sum(0)
        tgt = f  # unused pointer
    else:
        tgt = target.contiguous()
        lse = new_output((n,), torch.float32, dev)
        f = lse  # unused pointer
    rstat = new_output((n,), torch.float32, dev)
    block_g = cfg.block_g if target is None else cfg.block_g_cached
    grad_tiles = dict(BLOCK_N=cfg.grad_block_n, BLOCK_K=cfg.grad_block_k,
                      BLOCK_D=cfg.grad_block_d, BLOCK_G=block_g, PREC=cfg.prec,
                      num_warps=cfg.grad_warps, num_stages=cfg.num_stages)
    dg = triton.cdiv(d, block_g) if need_dz else 1
    dz = new_output((n, d), z.dtype, dev) if need_dz else z.new_empty(0, d)
    num_rb = triton.cdiv(n, cfg.grad_block_n)
    nprog = max(1, num_programs(num_rb * dg, dev) // dg)
    loss_part = new_output((dg, nprog), torch.float32, dev)
    _dec_loss_kernel[(nprog, dg)](
        z, mu, tgt, lse, f, rstat, dz, loss_part,
        n, k, d, coef, inv_alpha, grad_scale, nprog,
        HAS_TARGET=target is not None, NEED_DZ=need_dz, **grad_tiles,
    )
    loss = (loss_part[0].sum() / n).to(z.dtype)
    if need_dmu:
        kt = triton.cdiv(k, cfg.grad_block_k)
        dg = triton.cdiv(d, block_g)
        s, per = _slices(num_rb, kt * dg, k * d, dev)
        dmu_part = new_output((s, k, d), torch.float32, dev)
        _dec_cols_kernel[(kt, s, dg)](
            z, mu, tgt, lse, f, rstat, dmu_part, n, k, d, coef, inv_alpha, grad_scale,
            per * cfg.grad_block_n, CENTRE_GRAD=True, HAS_TARGET=target is not None,
            **grad_tiles,
        )
        dmu = dmu_part.sum(0).to(mu.dtype)
    else:
        dmu = mu.new_empty(0, d)
    return loss, dz, dmu


def _hard_assign_triton(z: Tensor, mu: Tensor) -> Tensor:
    z = z.contiguous()
    mu = mu.contiguous()
    n, d = z.shape
    k = mu.shape[0]
    cfg = _config(k, d, z.dtype, kernel_target(z.device))
    nprog = num_programs(triton.cdiv(n, cfg.block_n), z.device)
    out = torch.full((n,), -1, dtype=torch.int64, device=z.device)
    _hard_assign_kernel[(nprog,)](
        z, mu, out, n, k, d, nprog,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d, PREC=cfg.prec,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def _target_distribution_triton(q: Tensor) -> Tensor:
    q = q.contiguous()
    n, k = q.shape
    cfg = _config(k, 1, q.dtype, kernel_target(q.device))
    bn, bk = cfg.q_block_n, cfg.q_block_k
    num_rb, kt = triton.cdiv(n, bn), triton.cdiv(k, bk)
    s, per = _slices(num_rb, kt, k, q.device)
    f_part = new_output((s, k), torch.float32, q.device)
    _colsum_kernel[(kt, s)](q, f_part, n, k, per * bn, BLOCK_N=bn, BLOCK_K=bk,
                            num_warps=4, num_stages=1)
    f = f_part.sum(0)
    p = new_output((n, k), q.dtype, q.device)
    _target_kernel[(num_rb,)](q, f, p, n, k, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=1)
    return p


def _soft_assign_triton(z: Tensor, mu: Tensor, alpha: float) -> Tensor:
    return _launch_rows(z.contiguous(), mu.contiguous(), alpha, write_q=True,
                        out_dtype=z.dtype)[1]
