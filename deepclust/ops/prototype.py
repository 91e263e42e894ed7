"""Fused prototype cross-entropy: ``CE(softmax(x @ prototypes^T / T), target)`` without the
N x K logits (PCL's ProtoNCE, TSD's prototype loss, SwAV-style prediction)."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor

from .._utils import next_pow2, resolve_impl, triton_interpret
from ..reference.prototype import _check_args

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - no triton on this platform
    triton = None

__all__ = ["prototype_cross_entropy"]

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
            if UPCAST:  # the CPU interpreter mis-computes bf16 tl.dot
                xt = xt.to(tl.float32)
                pt = pt.to(tl.float32)
            s = tl.dot(xt, pt, s, input_precision=PREC)
        invt = tl.load(INVT + rk64, mask=mask_k, other=0.0)
        return s * invt[None, :]

    @triton.jit
    def _grad_tile(s, T, TSUM, LSE, GROW, INVT, rn64, mask_n, rk64, mask_k, stn, stk,
                   SOFT: tl.constexpr):
        """dL/dlogits scaled to dL/d(x.p): g * (tsum * softmax - t) / T (fp32 tile)."""
        lse = tl.load(LSE + rn64, mask=mask_n, other=0.0)
        grow = tl.load(GROW + rn64, mask=mask_n, other=0.0)
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
        return g * grow[:, None] * invt[None, :]

    @triton.jit
    def _fwd_kernel(X, P, T, INVT, ROWS, LSE, N, K, D, sxn, sxd, spk, spd, stn, stk,
                    SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
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
            g = _grad_tile(s, T, TSUM, LSE, GROW, INVT, rn64, mask_n, rk64, mask_k, stn, stk, SOFT)
            po = tl.load(P + rk64[:, None] * spk + ro64[None, :] * spd,
                         mask=mask_k[:, None] & mask_o[None, :], other=0.0)
            if UPCAST:
                po = po.to(tl.float32)
            acc = tl.dot(g.to(po.dtype), po, acc, input_precision=PREC)
        tl.store(DX + rn64[:, None] * sdn + ro64[None, :] * sdd, acc.to(DX.dtype.element_ty),
                 mask=mask_n[:, None] & mask_o[None, :])

    @triton.jit
    def _bwd_dp_kernel(X, P, T, INVT, LSE, TSUM, GROW, DP, N, K, D, ROWS_PER_SPLIT,
                       sxn, sxd, spk, spd, stn, stk,
                       SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, PREC: tl.constexpr,
                       UPCAST: tl.constexpr):
        """Partial dP over one split of the rows, added atomically into an fp32 buffer."""
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
            g = _grad_tile(s, T, TSUM, LSE, GROW, INVT, rn64, mask_n, rk64, mask_k, stn, stk, SOFT)
            xo = tl.load(X + rn64[:, None] * sxn + ro64[None, :] * sxd,
                         mask=mask_n[:, None] & mask_o[None, :], other=0.0)
            if UPCAST:
                xo = xo.to(tl.float32)
            acc = tl.dot(tl.trans(g.to(xo.dtype)), xo, acc, input_precision=PREC)
        tl.atomic_add(DP + rk64[:, None] * D + ro64[None, :], acc,
                      mask=mask_k[:, None] & mask_o[None, :])


# ----------------------------------------------------------------------------- launchers
_BLOCK_N, _BLOCK_K = 64, 64


def _blocks(d: int) -> Tuple[int, int]:
    """(BLOCK_D reduction step, BLOCK_DO output width) for feature size d."""
    return min(64, max(16, next_pow2(d))), min(128, max(16, next_pow2(d)))


def _prec(x: Tensor) -> str:
    return "ieee"  # fp32: exact products; fp16/bf16 inputs use tensor cores whatever is given


def _upcast(x: Tensor) -> bool:
    return x.dtype == torch.bfloat16 and triton_interpret()


def _target_strides(target: Tensor) -> Tuple[int, int]:
    return (target.stride(0), target.stride(1)) if target.dim() == 2 else (1, 0)


def _fwd_triton(x: Tensor, p: Tensor, target: Tensor, inv_temp: Tensor) -> Tuple[Tensor, Tensor]:
    N, D = x.shape
    K = p.shape[0]
    rows = torch.full((N,), float("nan"), device=x.device, dtype=torch.float32)
    lse = torch.full((N,), float("nan"), device=x.device, dtype=torch.float32)
    bd, _ = _blocks(D)
    stn, stk = _target_strides(target)
    _fwd_kernel[(triton.cdiv(N, _BLOCK_N),)](
        x, p, target, inv_temp, rows, lse, N, K, D, x.stride(0), x.stride(1), p.stride(0),
        p.stride(1), stn, stk, SOFT=target.is_floating_point(), BLOCK_N=_BLOCK_N,
        BLOCK_K=_BLOCK_K, BLOCK_D=bd, PREC=_prec(x), UPCAST=_upcast(x), num_warps=4)
    return rows, lse


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _bwd_triton(grad_rows, x, p, target, inv_temp, lse, need_dx, need_dp):
    N, D = x.shape
    K = p.shape[0]
    soft = target.is_floating_point()
    tsum = target.float().sum(1) if soft else lse  # (unused when hard)
    grow = grad_rows.float().contiguous()
    bd, bo = _blocks(D)
    stn, stk = _target_strides(target)
    common = dict(SOFT=soft, BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K, BLOCK_D=bd, BLOCK_DO=bo,
                  PREC=_prec(x), UPCAST=_upcast(x), num_warps=4)
    dx = x.new_empty(0)
    dp = p.new_empty(0)
    if need_dx:
        dx = torch.full_like(x, float("nan"), memory_format=torch.contiguous_format)
        _bwd_dx_kernel[(triton.cdiv(N, _BLOCK_N), triton.cdiv(D, bo))](
            x, p, target, inv_temp, lse, tsum, grow, dx, N, K, D, x.stride(0), x.stride(1),
            p.stride(0), p.stride(1), stn, stk, dx.stride(0), dx.stride(1), **common)
    if need_dp:
        dp32 = torch.zeros((K, D), device=x.device, dtype=torch.float32)
        kb, db, nb = triton.cdiv(K, _BLOCK_K), triton.cdiv(D, bo), triton.cdiv(N, _BLOCK_N)
        splits = max(1, min(nb, (2 * _num_sms(x.device)) // (kb * db)))
        rows_per_split = triton.cdiv(nb, splits) * _BLOCK_N
        splits = triton.cdiv(N, rows_per_split)
        _bwd_dp_kernel[(kb, db, splits)](
            x, p, target, inv_temp, lse, tsum, grow, dp32, N, K, D, rows_per_split,
            x.stride(0), x.stride(1), p.stride(0), p.stride(1), stn, stk, **common)
        dp = dp32.to(p.dtype)
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
    ``dprototypes = G^T @ x`` (fp32 accumulation; ``dprototypes`` summed over row splits with
    fp32 atomics). The torch path does the same in row chunks.

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
    _check_args(x, prototypes, target, temperature)
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
