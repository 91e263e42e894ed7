"""Launch configuration and launcher of the Sinkhorn kernels.

Tiles come from :func:`_sinkhorn_config`, a pure function of the shapes, dtype and target that
the compile gate (``bench/gpu_compile.py``) checks for register spills.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._plumbing import HAS_TRITON, kernel_target, new_output, next_pow2, upcast_bf16
from ._eager import Source, combine_partials

if HAS_TRITON:
    import triton

    from ._kernels import _sk_col_pass_kernel, _sk_row_pass_kernel


class _SinkhornConfig(NamedTuple):
    """Launch configuration of the two Sinkhorn passes (see :func:`_sinkhorn_config`)."""
    block_b: int  # rows per tile
    block_k: int  # prototypes per tile
    block_d: int  # feature chunk of a recomputed score tile (16 when reading scores)
    num_warps: int
    num_stages: int
    dot_precision: str  # "ieee" (fp32), "tf32" (16-bit: native dot) or "upcast" (work-around)
    rows_per_prog: int  # column pass: rows of one program's chunk (a multiple of block_b)
    n_chunks: int  # column pass: row chunks, i.e. (max, sum) partials per column


# Programs of one column pass: enough to fill a GPU; the same in the interpreter, whose runs
# then combine as many partials as the GPU's. Fixed (not per SM count) so that the order of the
# column reduction, hence every bit of the codes, depends on the shapes alone.
_COL_PASS_PROGRAMS = 1024


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _sinkhorn_config(B: int, K: int, D: int, dtype: torch.dtype, target: str) -> _SinkhornConfig:
    """Tiles of the Sinkhorn passes: a pure function of (B, K, d, dtype, target).

    ``D = 0`` reads a B x K score matrix: 32 x 64 tiles, 4 warps (16 elements a thread; the
    write pass holds a score tile, its pointers and the codes' pointers). ``D > 0`` recomputes
    every score tile with ``tl.dot``: 64 x 64 tiles on 8 warps. fp32 products are exact
    ("ieee": an FMA dot, whose operands sit in registers), over d in chunks of 16 with 3
    stages; fp16/bf16 use the native tensor-core dot with fp32 accumulation, d in chunks of
    32, 2 stages, 4 warps for tiles narrower than 64 prototypes (tiles read off the compile
    gate, ``bench/gpu_compile.py``). ``target`` is
    ``kernel_target(device)``; the one difference it makes is the interpreter work-around:
    bf16 dots are upcast to fp32 ("upcast") because Triton's interpreter computes bf16
    ``tl.dot`` wrongly. Every block is a power of two >= 16 (``tl.dot``'s minimum).
    """
    block_k = max(16, min(64, next_pow2(K)))
    if D and dtype == torch.float32:  # FMA dot: operands in registers, narrow d chunks
        block_b, block_d, warps, stages = 64, 16, 8, 3
    elif D:  # tensor-core dot
        block_b, block_d, stages = 64, max(16, min(32, next_pow2(D))), 2
        warps = 8 if block_k == 64 else 4
    else:
        block_b, block_d, warps, stages = 32, 16, 4, 2
    if dtype == torch.float32:
        prec = "ieee"
    elif D and upcast_bf16(dtype, target):
        prec = "upcast"
    else:
        prec = "tf32"  # 16-bit operands: input_precision is moot, the dot is native
    n_ktiles = _cdiv(K, block_k)
    n_rblocks = _cdiv(B, block_b)
    n_chunks = max(1, min(n_rblocks, _cdiv(_COL_PASS_PROGRAMS, n_ktiles)))
    rows_per_prog = _cdiv(n_rblocks, n_chunks) * block_b
    return _SinkhornConfig(block_b, block_k, block_d, warps, stages, prec, rows_per_prog,
                           _cdiv(B, rows_per_prog))


def _kernel_args(src: Source):
    """(S, Z, P) pointers, their six strides, and FROM_EMB for the kernels."""
    if src.scores is not None:
        s = src.scores
        return (s, s, s), (s.stride(0), s.stride(1), 0, 0, 0, 0), False
    z, p = src.z, src.p
    return (z, z, p), (0, 0, z.stride(0), z.stride(1), p.stride(0), p.stride(1)), True


def sinkhorn_triton(src: Source, eps: float, n_iters: int, group=None) -> torch.Tensor:
    """Codes (B x K, float32) by ``n_iters`` column + row passes of the kernels."""
    B, K, D, dev = src.B, src.K, src.D, src.device
    cfg = _sinkhorn_config(B, K, D, src.dtype, kernel_target(dev))
    ptrs, strides, from_emb = _kernel_args(src)
    n_ktiles = triton.cdiv(K, cfg.block_k)
    n_rblocks = triton.cdiv(B, cfg.block_b)
    tiles = dict(FROM_EMB=from_emb, BLOCK_B=cfg.block_b, BLOCK_K=cfg.block_k,
                 BLOCK_D=cfg.block_d, DOT_PREC=cfg.dot_precision, num_warps=cfg.num_warps,
                 num_stages=cfg.num_stages)
    pm = new_output((cfg.n_chunks, K), torch.float32, dev)
    ps = new_output((cfg.n_chunks, K), torch.float32, dev)
    la = torch.zeros(B, device=dev, dtype=torch.float32)
    out = new_output((B, K), torch.float32, dev)
    inv_eps = 1.0 / eps
    for it in range(n_iters):
        _sk_col_pass_kernel[(cfg.n_chunks, n_ktiles)](
            *ptrs, la, pm, ps, B, K, max(D, 1), cfg.rows_per_prog, *strides, inv_eps,
            USE_LA=it > 0, **tiles)
        lb = combine_partials(pm, ps, group)  # a fixed-order reduction: deterministic
        _sk_row_pass_kernel[(n_rblocks,)](
            *ptrs, lb, la, out, B, K, max(D, 1), *strides, inv_eps, WRITE=it == n_iters - 1,
            **tiles)
    return out
