"""Fused prototype cross-entropy: ``CE(softmax(x @ prototypes^T / T), target)`` without the
N x K logits (PCL's ProtoNCE, TSD's prototype loss, SwAV-style prediction)."""
from __future__ import annotations

from typing import NamedTuple, Tuple, Union

import torch
from torch import Tensor

from ._plumbing import kernel_target, next_pow2, num_programs, resolve_impl
from .._common import check_prototype_args

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - no triton on this platform
    triton = None

__all__ = ["prototype_cross_entropy"]

# Tests set this to fill every kernel output with NaN before the kernel writes it.
_POISON_OUTPUTS = False
# Most fp32 memory the per-split partial prototype gradients may take (bytes); they are summed
# in a fixed order afterwards, so the gradient is the same bit for bit on every run.
_DP_PARTIALS_BYTES = 1 << 28

# ----------------------------------------------------------------------------- Triton kernels
if triton is not None:

    @triton.jit
    def _logits_tile(X, P, INVT, rn64, mask_n, rk64, mask_k, D, sxn, sxd, spk, spd,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                     PREC: tl.constexpr, UPCAST: tl.constexpr):
        """logits[rn, rk] = (x[rn] . p[rk]) / T[rk] in fp32, reduced over d in BLOCK_D steps."""
        s = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            rd = d0 + tl.arange(0, BLOCK_D)
            mask_d = rd < D
            rd64 = rd.to(tl.int64)
            xt = tl.load(X + rn64[:, None] * sxn + rd64[None, :] * sxd,
                         mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            pt = tl.load(P + rk64[None, :] * spk + rd64[:, None] * spd,
                         mask=mask_k[None, :] & mask_d[:, None], other=0.0)
            if UPCAST:  # the CPU interpreter mis-computes bf16 tl.dot (exact products in fp32)
                xt = xt.to(tl.float32)
                pt = pt.to(tl.float32)
            s = tl.dot(xt, pt, s, input_precision=PREC)
        invt = tl.load(INVT + rk64, mask=mask_k, other=0.0)
        return s * invt[None, :]

    @triton.jit
    def _grad_tile(s, T, TSUM, LSE, INVT, rn64, mask_n, rk64, mask_k, stn, stk,
                   SOFT: tl.constexpr):
        """dL/dlogits scaled to dL/d(x.p) per unit row gradient: (tsum * softmax - t) / T."""
        lse = tl.load(LSE + rn64, mask=mask_n, other=0.0)
        invt = tl.load(INVT + rk64, mask=mask_k, other=0.0)
        prob = tl.exp(s - lse[:, None])
        prob = tl.where(mask_n[:, None] & mask_k[None, :], prob, 0.0)
        if SOFT:
            t = tl.load(T + rn64[:, None] * stn + rk64[None, :] * stk,
                        mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
            tsum = tl.load(TSUM + rn64, mask=mask_n, other=0.0)
            g = tsum[:, None] * prob - t
        else:
            tgt = tl.load(T + rn64, mask=mask_n, other=-1)
            g = prob - tl.where(rk64[None, :] == tgt[:, None], 1.0, 0.0)
        return g * invt[None, :]

    @triton.jit
    def _dot_operand(g, OUT_DTYPE: tl.constexpr, UPCAST: tl.constexpr):
        """g rounded to the input dtype, as tl.dot takes it (fp32 under UPCAST, same rounding)."""
        g = g.to(OUT_DTYPE)
        if UPCAST:
            g = g.to(tl.float32)
        return g

    @triton.jit
    def _fwd_kernel(X, P, T, INVT, ROWS, LSE, N, K, D, sxn, sxd, spk, spd, stn, stk,
                    SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
        """Per row: CE = rowsum(t) * logsumexp(logits) - t . logits, and the logsumexp."""
        pid = tl.program_id(0)
        rn64 = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = rn64 < N
        m_i = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
        tdot = tl.zeros((BLOCK_N,), dtype=tl.float32)
        tsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        if not SOFT:
            tgt = tl.load(T + rn64, mask=mask_n, other=-1)
        for k0 in range(0, K, BLOCK_K):
            rk64 = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            mask_k = rk64 < K
            s = _logits_tile(X, P, INVT, rn64, mask_n, rk64, mask_k, D, sxn, sxd, spk, spd,
                             BLOCK_N, BLOCK_K, BLOCK_D, PREC, UPCAST)
            s_valid = tl.where(mask_k[None, :], s, 0.0)
            s = tl.where(mask_k[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
            m_i = m_new
            if SOFT:
                t = tl.load(T + rn64[:, None] * stn + rk64[None, :] * stk,
                            mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
                tsum += tl.sum(t, axis=1)
                tdot += tl.sum(t * s_valid, axis=1)
            else:
                tdot += tl.sum(tl.where(rk64[None, :] == tgt[:, None], s_valid, 0.0), axis=1)
        lse = m_i + tl.log(l_i)
        if SOFT:
            row = tsum * lse - tdot
        else:
            row = lse - tdot
        tl.store(ROWS + rn64, row, mask=mask_n)
        tl.store(LSE + rn64, lse, mask=mask_n)

    @triton.jit
    def _bwd_dx_kernel(X, P, T, INVT, LSE, TSUM, GROW, DX, N, K, D,
                       sxn, sxd, spk, spd, stn, stk, sdn, sdd,
                       SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, PREC: tl.constexpr,
                       UPCAST: tl.constexpr):
        """dx[rows, cols] = G[rows, :] @ P[:, cols], G recomputed tile by tile over K."""
        pid_n = tl.program_id(0)
        pid_d = tl.program_id(1)
        rn64 = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = rn64 < N
        ro64 = pid_d.to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
        mask_o = ro64 < D
        acc = tl.zeros((BLOCK_N, BLOCK_DO), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk64 = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            mask_k = rk64 < K
            s = _logits_tile(X, P, INVT, rn64, mask_n, rk64, mask_k, D, sxn, sxd, spk, spd,
                             BLOCK_N, BLOCK_K, BLOCK_D, PREC, UPCAST)
            g = _grad_tile(s, T, TSUM, LSE, INVT, rn64, mask_n, rk64, mask_k, stn, stk, SOFT)
            g = _dot_operand(g, P.dtype.element_ty, UPCAST)
            po = tl.load(P + rk64[:, None] * spk + ro64[None, :] * spd,
                         mask=mask_k[:, None] & mask_o[None, :], other=0.0)
            if UPCAST:
                po = po.to(tl.float32)
            acc = tl.dot(g, po, acc, input_precision=PREC)
        # the row gradient scales the result, not g: 1/N would push fp16 g tiles to subnormals
        grow = tl.load(GROW + rn64, mask=mask_n, other=0.0)
        acc = acc * grow[:, None]
        tl.store(DX + rn64[:, None] * sdn + ro64[None, :] * sdd, acc.to(DX.dtype.element_ty),
                 mask=mask_n[:, None] & mask_o[None, :])

    @triton.jit
    def _bwd_dp_kernel(X, P, T, INVT, LSE, TSUM, GROW, DP, N, K, D, ROWS_PER_SPLIT,
                       sxn, sxd, spk, spd, stn, stk,
                       SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, PREC: tl.constexpr,
                       UPCAST: tl.constexpr):
        """dP over one split of the rows, G[split]^T @ X[split], stored (no atomics) into the
        split's own fp32 slice DP[split] of a (splits, K, D) buffer that the host sums."""
        pid_k = tl.program_id(0)
        pid_d = tl.program_id(1)
        pid_s = tl.program_id(2)
        rk64 = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = rk64 < K
        ro64 = pid_d.to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
        mask_o = ro64 < D
        n_start = pid_s.to(tl.int64) * ROWS_PER_SPLIT
        acc = tl.zeros((BLOCK_K, BLOCK_DO), dtype=tl.float32)
        for n0 in range(0, ROWS_PER_SPLIT, BLOCK_N):
            rn64 = n_start + n0 + tl.arange(0, BLOCK_N)
            mask_n = rn64 < N
            s = _logits_tile(X, P, INVT, rn64, mask_n, rk64, mask_k, D, sxn, sxd, spk, spd,
                             BLOCK_N, BLOCK_K, BLOCK_D, PREC, UPCAST)
            g = _grad_tile(s, T, TSUM, LSE, INVT, rn64, mask_n, rk64, mask_k, stn, stk, SOFT)
            grow = tl.load(GROW + rn64, mask=mask_n, other=0.0)
            g = _dot_operand(g * grow[:, None], X.dtype.element_ty, UPCAST)
            xo = tl.load(X + rn64[:, None] * sxn + ro64[None, :] * sxd,
                         mask=mask_n[:, None] & mask_o[None, :], other=0.0)
            if UPCAST:
                xo = xo.to(tl.float32)
            acc = tl.dot(tl.trans(g), xo, acc, input_precision=PREC)
        split = DP + pid_s.to(tl.int64) * K * D
        tl.store(split + rk64[:, None] * D + ro64[None, :], acc,
                 mask=mask_k[:, None] & mask_o[None, :])


# ----------------------------------------------------------------------------- launchers
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
    stage (fp32) or 4 warps (16-bit) there, as for the smallest tiles, keep sm_80 unspilled.
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
    return _Config(block_n=64, block_k=block_k, block_d=min(32 if wide else 16, d_pad),
                   block_do=block_do, warps_fwd=8 if block_k == 32 else 4,
                   warps_bwd=8 if full and not (soft and wide) else 4,
                   stages_fwd=2 if wide else 1, stages_bwd=2 if full and wide else 1,
                   precision="ieee", upcast=(dtype == torch.bfloat16 and target == "interpreter"))


def _new_output(shape, dtype, device):
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _target_strides(target: Tensor) -> Tuple[int, int]:
    return (target.stride(0), target.stride(1)) if target.dim() == 2 else (1, 0)


def _fwd_triton(x: Tensor, p: Tensor, target: Tensor, inv_temp: Tensor) -> Tuple[Tensor, Tensor]:
    N, D = x.shape
    K = p.shape[0]
    cfg = _config(K, D, x.dtype, target.is_floating_point(), kernel_target(x.device))
    rows = _new_output((N,), torch.float32, x.device)
    lse = _new_output((N,), torch.float32, x.device)
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
        dx = _new_output((N, D), x.dtype, x.device)
        _bwd_dx_kernel[(triton.cdiv(N, cfg.block_n), triton.cdiv(D, cfg.block_do))](
            x, p, target, inv_temp, lse, tsum, grow, dx, N, K, D, x.stride(0), x.stride(1),
            p.stride(0), p.stride(1), stn, stk, dx.stride(0), dx.stride(1), **common)
    if need_dp:
        splits, rows_per_split = _dp_splits(N, K, D, cfg, x.device)
        parts = _new_output((splits, K, D), torch.float32, x.device)
        _bwd_dp_kernel[(triton.cdiv(K, cfg.block_k), triton.cdiv(D, cfg.block_do), splits)](
            x, p, target, inv_temp, lse, tsum, grow, parts, N, K, D, rows_per_split,
            x.stride(0), x.stride(1), p.stride(0), p.stride(1), stn, stk, **common)
        # a fixed-order reduction over the splits: the same bits on every run
        dp = (parts[0] if splits == 1 else parts.sum(0)).to(p.dtype)
    return dx, dp


# ---- memory-lean eager path: the same math in row chunks (no N x K tensor kept for backward)
def _chunks(N: int, K: int):
    step = max(1, (1 << 22) // max(K, 1))
    return range(0, N, step), step


def _chunk_logits(x, p, inv_temp, cdt):
    return (x.to(cdt) @ p.to(cdt).t()) * inv_temp.to(cdt)


def _fwd_torch(x, p, target, inv_temp):
    N, K = x.shape[0], p.shape[0]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = torch.empty(N, device=x.device, dtype=cdt)
    lse = torch.empty(N, device=x.device, dtype=cdt)
    starts, step = _chunks(N, K)
    for a in starts:
        s = _chunk_logits(x[a:a + step], p, inv_temp, cdt)
        m = torch.logsumexp(s, dim=1)
        if target.is_floating_point():
            t = target[a:a + step].to(cdt)
            r = t.sum(1) * m - (t * s).sum(1)
        else:
            r = m - s.gather(1, target[a:a + step, None]).squeeze(1)
        rows[a:a + step] = r
        lse[a:a + step] = m
    return rows, lse


def _bwd_torch(grad_rows, x, p, target, inv_temp, lse, need_dx, need_dp):
    N, K = x.shape[0], p.shape[0]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = torch.empty_like(x, dtype=cdt) if need_dx else x.new_empty(0)
    dp = torch.zeros(p.shape, device=p.device, dtype=cdt) if need_dp else p.new_empty(0)
    starts, step = _chunks(N, K)
    pc = p.to(cdt)
    for a in starts:
        xc = x[a:a + step].to(cdt)
        s = _chunk_logits(xc, pc, inv_temp, cdt)
        prob = torch.softmax(s, dim=1)
        if target.is_floating_point():
            t = target[a:a + step].to(cdt)
            g = t.sum(1, keepdim=True) * prob - t
        else:
            g = prob
            g.scatter_add_(1, target[a:a + step, None], -torch.ones_like(g[:, :1]))
        g = g * grad_rows[a:a + step, None].to(cdt) * inv_temp.to(cdt)
        if need_dx:
            dx[a:a + step] = g @ pc
        if need_dp:
            dp += g.t() @ xc
    return dx.to(x.dtype), dp.to(p.dtype)


# ----------------------------------------------------------------------------- torch.library op
@torch.library.custom_op("deepclust::prototype_ce_rows", mutates_args=())
def _ce_rows(x: Tensor, prototypes: Tensor, target: Tensor, inv_temp: Tensor,
             use_triton: bool) -> Tuple[Tensor, Tensor]:
    """Per-row cross-entropy (N,) and logsumexp (N,), fp32 (fp64 for fp64 input)."""
    if use_triton:
        return _fwd_triton(x, prototypes, target, inv_temp)
    rows, lse = _fwd_torch(x, prototypes, target, inv_temp)
    return rows, lse


@_ce_rows.register_fake
def _(x, prototypes, target, inv_temp, use_triton):
    n = x.shape[0]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty((n,), dtype=cdt), x.new_empty((n,), dtype=cdt)


@torch.library.custom_op("deepclust::prototype_ce_rows_bwd", mutates_args=())
def _ce_rows_bwd(grad_rows: Tensor, x: Tensor, prototypes: Tensor, target: Tensor,
                 inv_temp: Tensor, lse: Tensor, use_triton: bool, need_dx: bool,
                 need_dp: bool) -> Tuple[Tensor, Tensor]:
    fn = _bwd_triton if use_triton else _bwd_torch
    return fn(grad_rows, x, prototypes, target, inv_temp, lse, need_dx, need_dp)


@_ce_rows_bwd.register_fake
def _(grad_rows, x, prototypes, target, inv_temp, lse, use_triton, need_dx, need_dp):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_dx else x.new_empty(0)
    dp = torch.empty_like(prototypes, memory_format=torch.contiguous_format) if need_dp else prototypes.new_empty(0)
    return dx, dp


def _setup_context(ctx, inputs, output):
    x, prototypes, target, inv_temp, use_triton = inputs
    ctx.save_for_backward(x, prototypes, target, inv_temp, output[1])
    ctx.use_triton = use_triton


def _backward(ctx, grad_rows, grad_lse):
    x, prototypes, target, inv_temp, lse = ctx.saved_tensors
    need_dx, need_dp = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_rows is None or not (need_dx or need_dp):
        return None, None, None, None, None
    dx, dp = _ce_rows_bwd(grad_rows, x, prototypes, target, inv_temp, lse, ctx.use_triton,
                          need_dx, need_dp)
    return (dx if need_dx else None), (dp if need_dp else None), None, None, None


_ce_rows.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public op
def prototype_cross_entropy(
    x: Tensor,
    prototypes: Tensor,
    target: Tensor,
    temperature: Union[float, Tensor] = 0.1,
    *,
    impl: str = "auto",
) -> Tensor:
    r"""Mean cross-entropy of ``softmax(x @ prototypes^T / temperature)`` against ``target``,
    fused: the N x K logits are never stored.

    .. math::
        \ell_{ik} = \frac{x_i \cdot c_k}{T_k}, \qquad
        L = \frac1N \sum_i \Big( \big(\textstyle\sum_k t_{ik}\big)\,
            \operatorname{logsumexp}_k \ell_{ik} - \sum_k t_{ik}\,\ell_{ik} \Big)

    ``target`` holds class indices (hard CE, ``t`` one-hot: ``F.cross_entropy``) or a
    distribution (soft CE ``-(t * log_softmax).sum(1).mean()``; rows need not sum to one).

    The Triton path computes the logits tile by tile (``tl.dot`` over d, an online logsumexp
    over K tiles); the backward pass recomputes the tiles and forms
    ``G = (rowsum(t) softmax - t) / T / N``, ``dx = G @ prototypes`` and
    ``dprototypes = G^T @ x`` (fp32 accumulation; ``dprototypes`` is formed per row split and
    the splits are summed in a fixed order, so it is deterministic). The torch path does the
    same in row chunks.

    Args:
        x: features (N x d), fp32/fp16/bf16 (fp64 on the torch path).
        prototypes: prototypes (K x d), same dtype as ``x``.
        target: int64 class indices (N,) in ``[0, K)``, or a float distribution (N x K). No
            gradient flows into a distribution target.
        temperature: a number > 0 (default 0.1) or a tensor (K,) of per-prototype temperatures
            > 0, e.g. PCL's concentrations ``phi``; treated as a constant (no gradient).
        impl: ``"auto"`` (Triton on CUDA, else torch), ``"triton"`` or ``"torch"``.

    Returns:
        The scalar mean loss in ``x.dtype``.

    Raises:
        TypeError/ValueError: naming the bad argument (shapes, dtypes, devices, a class index
        outside ``[0, K)``, a temperature <= 0).

    References: Li et al., "Prototypical Contrastive Learning of Unsupervised Representations",
    ICLR 2021 (ProtoNCE); Wang et al., "Feature Alignment and Uniformity for Test Time
    Adaptation", CVPR 2023; Caron et al., "Unsupervised Learning of Visual Features by
    Contrasting Cluster Assignments" (SwAV), NeurIPS 2020.
    """
    check_prototype_args(x, prototypes, target, temperature)
    path = resolve_impl(impl, x, prototypes)
    if path == "triton" and x.dtype == torch.float64:
        if impl == "triton":
            raise TypeError("x: float64 is supported on impl='torch' only, not on the Triton path")
        path = "torch"
    K = prototypes.shape[0]
    tdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    if isinstance(temperature, Tensor) and temperature.dim() == 1:
        inv_temp = (1.0 / temperature.detach().to(tdt)).contiguous()
    else:
        inv_temp = torch.full((K,), 1.0 / float(temperature), device=x.device, dtype=tdt)
    if not target.is_floating_point():
        target = target.long()
    target = target.detach()
    rows, _ = _ce_rows(x, prototypes, target, inv_temp, path == "triton")
    return rows.mean().to(x.dtype)
