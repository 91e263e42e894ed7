"""TCL's contrastive losses without the N x N logit matrix.

The only quadratic quantity of the loss is the masked log-sum-exp of every row of
``z z^T * scale`` (diagonal excluded). The Triton kernels stream column tiles with an online
log-sum-exp and keep one fp32 LSE per row; the backward recomputes the tiles. The positive
logits (``m-1`` per row) and the rest of the loss are O(N d) torch ops with ordinary autograd.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._common import all_gather_no_grad, all_reduce_sum, check_positive, get_group

from ._plumbing import kernel_target, next_pow2, resolve_impl
from .._common import check_views, gather_views

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton absent
    triton = None

__all__ = ["instance_contrastive_loss", "cluster_contrastive_loss"]

# tests set this to fill kernel outputs with NaN first, so an unwritten element shows up
_POISON_OUTPUTS = False

# ============================================================================= Triton kernels
if triton is not None:

    @triton.jit
    def _load_tile(X, idx, ok, stride, d_offs, D, UPCAST: tl.constexpr):
        """Rows ``idx`` (int64) of X, features ``d_offs``; zeros outside."""
        x = tl.load(X + idx[:, None] * stride + d_offs[None, :],
                    mask=ok[:, None] & (d_offs[None, :] < D), other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _logits(Q, K, rows, cols, row_ok, col_ok, D, stride_q, stride_k, scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """scale * q_rows . k_cols (fp32), the features streamed in BLOCK_D chunks: registers
        hold one chunk of each tile whatever d is."""
        offs_d = tl.arange(0, BLOCK_D)
        s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            qc = _load_tile(Q, rows, row_ok, stride_q, d0 + offs_d, D, UPCAST)
            kc = _load_tile(K, cols, col_ok, stride_k, d0 + offs_d, D, UPCAST)
            s = tl.dot(qc, tl.trans(kc), s, input_precision=PRECISION)
        return s * scale

    @triton.jit
    def _contrastive_fwd_kernel(
        Q, K, LOSS, STATS, n_rows, n_cols, D, stride_q, stride_k,
        b_local, b_global, offset, scale, pos_weight,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """One row block of q against every column tile of k (s_ij = scale q_i . k_j):
        online max M_i and sum exp(s_ij - M_i) over j != diag(i) -> STATS[i] = (M_i, log sum),
        and LOSS[i] = M_i + log sum - pos_weight * sum_{j positive} s_ij."""
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        # global index of each row = its own column in k, excluded from its softmax
        diag = (rows // b_local) * b_global + offset + rows % b_local
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        pos_i = tl.zeros([BLOCK_M], tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
            col_ok = cols < n_cols
            s = _logits(Q, K, rows, cols, row_ok, col_ok, D, stride_q, stride_k, scale,
                        BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST)
            valid = col_ok[None, :] & (cols[None, :] != diag[:, None])
            # positives: the same sample in the other views (same index modulo B)
            is_pos = valid & ((cols % b_global)[None, :] == (diag % b_global)[:, None])
            pos_i += tl.sum(tl.where(is_pos, s, 0.0), 1)
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
            m_i = m_new
        log_l = tl.log(l_i)
        tl.store(STATS + 2 * rows, m_i, mask=row_ok)
        tl.store(STATS + 2 * rows + 1, log_l, mask=row_ok)
        tl.store(LOSS + rows, m_i + log_l - pos_weight * pos_i, mask=row_ok)

    @triton.jit
    def _contrastive_bwd_kernel(
        Q, K, STATS_Q, STATS_K, G_Q, G_K, DQ, n_rows, n_cols, D, stride_q, stride_k, stride_dq,
        b_local, b_global, offset, scale, pos_weight,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DO: tl.constexpr, PRECISION: tl.constexpr, PRECISION_GRAD: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """Gradient of sum_i g_i LOSS_i with respect to the rows q (rows of k):
        dq_i = scale * sum_j (g_i P_ij + g_j P_ji - (g_i + g_j) pos_ij pos_weight) k_j, with
        P_ij = exp(s_ij - M_i - log sum_i) and P_ji = exp(s_ij - M_j - log sum_j) (the logits
        are symmetric): row and column contribution of row i at once, no atomics.
        Grid: (row blocks, blocks of BLOCK_DO output features); each program recomputes the
        logits of its rows (BLOCK_D feature chunks) and owns its dq tile."""
        pid_m = tl.program_id(0)
        pid_d = tl.program_id(1)
        rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        diag = (rows // b_local) * b_global + offset + rows % b_local
        m_q = tl.load(STATS_Q + 2 * rows, mask=row_ok, other=0.0)
        logl_q = tl.load(STATS_Q + 2 * rows + 1, mask=row_ok, other=0.0)
        g_q = tl.load(G_Q + rows, mask=row_ok, other=0.0)
        out_d = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
        acc = tl.zeros([BLOCK_M, BLOCK_DO], tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
            col_ok = cols < n_cols
            s = _logits(Q, K, rows, cols, row_ok, col_ok, D, stride_q, stride_k, scale,
                        BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST)
            # (padding rows: valid nowhere, so their w is 0 whatever their statistics)
            valid = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != diag[:, None])
            is_pos = valid & ((cols % b_global)[None, :] == (diag % b_global)[:, None])
            s = tl.where(valid, s, float("-inf"))
            m_k = tl.load(STATS_K + 2 * cols, mask=col_ok, other=0.0)
            logl_k = tl.load(STATS_K + 2 * cols + 1, mask=col_ok, other=0.0)
            g_k = tl.load(G_K + cols, mask=col_ok, other=0.0)
            # s - M first: exact near the maximum, however large the logits
            w = g_q[:, None] * tl.exp((s - m_q[:, None]) - logl_q[:, None])
            w += g_k[None, :] * tl.exp((s - m_k[None, :]) - logl_k[None, :])
            w -= tl.where(is_pos, (g_q[:, None] + g_k[None, :]) * pos_weight, 0.0)
            v = _load_tile(K, cols, col_ok, stride_k, out_d, D, UPCAST)
            acc = tl.dot(w, v.to(tl.float32), acc, input_precision=PRECISION_GRAD)
        dq = acc * scale
        tl.store(DQ + rows[:, None] * stride_dq + out_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=row_ok[:, None] & (out_d[None, :] < D))


# ============================================================================= launchers
_FP32_PRECISION = "ieee"
_CHUNK_ELEMS = 1 << 23  # torch path: logits held per row chunk (32 MiB in fp32)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _new(shape, dtype, device):
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


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
    upcast = dtype == torch.bfloat16 and target == "interpreter"
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
    loss = _new((n,), torch.float32, q.device)
    stats = _new((n, 2), torch.float32, q.device)
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
    dq = _new((n, d), torch.float32 if cfg.upcast else q.dtype, q.device)
    _contrastive_bwd_kernel[(triton.cdiv(n, cfg.block_m), triton.cdiv(d, cfg.block_do))](
        q, k, st_q, st_k, g_q, g_k, dq, n, k.shape[0], d, q.stride(0), k.stride(0),
        dq.stride(0), b_local, b_global, offset, scale, pos_weight,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d, BLOCK_DO=cfg.block_do,
        PRECISION=cfg.precision, PRECISION_GRAD=cfg.precision_grad, UPCAST=cfg.upcast,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dq.to(q.dtype)


def _row_chunks(n_rows: int, n_cols: int):
    step = max(1, min(n_rows, _CHUNK_ELEMS // max(1, n_cols)))
    return range(0, n_rows, step), step


def _chunk(qf, kf, r0, r1, b_local, b_global, offset, scale):
    """Logits of rows r0:r1 against every column with the own column at -inf, and the columns
    of the rows' positives (chunk x (m-1))."""
    n_cols = kf.shape[0]
    rows = torch.arange(r0, r1, device=qf.device)
    diag = (rows // b_local) * b_global + offset + rows % b_local
    shifts = torch.arange(1, n_cols // b_global, device=qf.device) * b_global
    pos = (diag[:, None] + shifts[None, :]) % n_cols
    s = (qf[r0:r1] @ kf.t()).mul_(scale)
    s[rows - r0, diag] = float("-inf")
    return s, pos


def _rows_fwd_torch(q, k, b_local, b_global, offset, scale, pos_weight):
    cd = _compute_dtype(q)
    qf = q.to(cd)
    kf = qf if k is q else k.to(cd)
    n = q.shape[0]
    loss, stats = _new((n,), cd, q.device), _new((n, 2), cd, q.device)
    starts, step = _row_chunks(n, kf.shape[0])
    for r0 in starts:
        r1 = min(n, r0 + step)
        s, pos = _chunk(qf, kf, r0, r1, b_local, b_global, offset, scale)
        mx = s.max(1).values
        pos_sum = s.gather(1, pos).sum(1)
        log_l = s.sub_(mx[:, None]).exp_().sum(1).log_()
        stats[r0:r1, 0], stats[r0:r1, 1] = mx, log_l
        loss[r0:r1] = mx + log_l - pos_weight * pos_sum
    return loss, stats


def _rows_bwd_torch(q, k, st_q, st_k, g_q, g_k, b_local, b_global, offset, scale, pos_weight):
    cd = _compute_dtype(q)
    qf = q.to(cd)
    kf = qf if k is q else k.to(cd)
    st_q, st_k, g_q, g_k = (t.to(cd) for t in (st_q, st_k, g_q, g_k))
    n = q.shape[0]
    dq = _new(q.shape, cd, q.device)
    starts, step = _row_chunks(n, kf.shape[0])
    for r0 in starts:
        r1 = min(n, r0 + step)
        s, pos = _chunk(qf, kf, r0, r1, b_local, b_global, offset, scale)
        # (s - M) - log sum: exact near the row maximum however large the logits
        w = (s - st_q[r0:r1, 0:1]).sub_(st_q[r0:r1, 1:2]).exp_().mul_(g_q[r0:r1, None])
        w.add_(s.sub_(st_k[None, :, 0]).sub_(st_k[None, :, 1]).exp_().mul_(g_k[None, :]))
        del s
        w.scatter_add_(1, pos, -(g_q[r0:r1, None] + g_k[pos]) * pos_weight)
        dq[r0:r1] = (w @ kf).mul_(scale)
    return dq.to(q.dtype)


def _rows_fwd(q, k, b_local, b_global, offset, scale, pos_weight, impl):
    fn = _rows_fwd_triton if impl == "triton" else _rows_fwd_torch
    return fn(q, k, b_local, b_global, offset, scale, pos_weight)


def _rows_bwd(q, k, st_q, st_k, g_q, g_k, b_local, b_global, offset, scale, pos_weight, impl):
    fn = _rows_bwd_triton if impl == "triton" else _rows_bwd_torch
    return fn(q, k, st_q, st_k, g_q, g_k, b_local, b_global, offset, scale, pos_weight)


# ============================================================================= autograd
@torch.library.custom_op("deepclust::contrastive_rows", mutates_args=())
def _contrastive_rows(
    z: torch.Tensor, n_views: int, scale: float, impl: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss terms ``logsumexp_{j != i} s_ij - mean_k s_{i,(i+kB) mod N}`` of the stacked
    views ``z`` (s = scale z z^T), and the row statistics (N x 2: max, log of the shifted sum)
    that the backward needs; fp32 (fp64 for fp64 input). The statistics carry no gradient."""
    n = z.shape[0]
    b = n // n_views
    return _rows_fwd(z, z, b, b, 0, scale, 1.0 / (n_views - 1), impl)


@_contrastive_rows.register_fake
def _(z, n_views, scale, impl):
    n = z.shape[0]
    cd = _compute_dtype(z)
    return z.new_empty((n,), dtype=cd), z.new_empty((n, 2), dtype=cd)


@torch.library.custom_op("deepclust::contrastive_rows_backward", mutates_args=())
def _contrastive_rows_backward(
    z: torch.Tensor, stats: torch.Tensor, grad: torch.Tensor, n_views: int, scale: float, impl: str
) -> torch.Tensor:
    n = z.shape[0]
    b = n // n_views
    return _rows_bwd(z, z, stats, stats, grad, grad, b, b, 0, scale, 1.0 / (n_views - 1), impl)


@_contrastive_rows_backward.register_fake
def _(z, stats, grad, n_views, scale, impl):
    return torch.empty_like(z)


def _rows_setup_context(ctx, inputs, output):
    z, n_views, scale, impl = inputs
    ctx.save_for_backward(z, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.args = (n_views, scale, impl)


def _rows_backward(ctx, grad, _grad_stats):
    z, stats = ctx.saved_tensors
    dz = _contrastive_rows_backward(z, stats, grad.contiguous(), *ctx.args)
    return dz, None, None, None


_contrastive_rows.register_autograd(_rows_backward, setup_context=_rows_setup_context)


def _global_order(full: torch.Tensor, m: int, world: int) -> torch.Tensor:
    """[rank 0 views; rank 1 views; ...] -> [view 0 of all ranks; view 1 of all ranks; ...]."""
    n = full.shape[0] // world
    return full.reshape(world, m, n // m, *full.shape[1:]).transpose(0, 1).reshape(full.shape)


class _DistributedContrastiveRows(torch.autograd.Function):
    """Per-row loss terms of the global batch (rows of all ranks, global order).

    Each rank computes the terms of its own rows against the gathered rows of all ranks and
    all-gathers them with their statistics. Backward: the gradients of every rank's objective
    are summed (as the backward of an all-gather with gradient would), and each rank computes
    the whole gradient of that sum with respect to its own rows, row and column contributions
    alike, from the gathered rows and statistics.
    """

    @staticmethod
    def forward(ctx, z, m, scale, impl, group):
        world = torch.distributed.get_world_size(group)
        rank = torch.distributed.get_rank(group)
        b_local = z.shape[0] // m
        offset = rank * b_local
        z_all = _global_order(all_gather_no_grad(z.contiguous(), group), m, world)
        loss, stats = _rows_fwd(z, z_all, b_local, b_local * world, offset, scale,
                                1.0 / (m - 1), impl)
        both = _global_order(all_gather_no_grad(torch.cat([loss[:, None], stats], 1), group),
                             m, world)
        ctx.save_for_backward(z, z_all, stats, both[:, 1:].contiguous())
        ctx.args = (m, scale, impl, group, b_local, world, offset)
        return both[:, 0].contiguous()

    @staticmethod
    def backward(ctx, grad):
        z, z_all, stats, stats_all = ctx.saved_tensors
        m, scale, impl, group, b_local, world, offset = ctx.args
        g_all = all_reduce_sum(grad.contiguous().to(stats_all.dtype), group)
        rows = torch.arange(z.shape[0], device=z.device)
        g_own = g_all[(rows // b_local) * b_local * world + offset + rows % b_local]
        dz = _rows_bwd(z, z_all, stats, stats_all, g_own, g_all, b_local, b_local * world,
                       offset, scale, 1.0 / (m - 1), impl)
        return dz, None, None, None, None


# ============================================================================= public functions
def _resolve(impl: str, x: torch.Tensor, name: str) -> str:
    path = resolve_impl(impl, x)
    if path == "triton" and x.dtype == torch.float64:
        if impl == "auto":
            return "torch"
        raise TypeError(f"{name} must be float32, float16 or bfloat16 for impl='triton', got {x.dtype}")
    return path


def _contrastive_term(z: torch.Tensor, m: int, scale: float, path: str, group) -> torch.Tensor:
    """-(1/(N(m-1))) sum of the positive log-probs of the stacked views z (global batch)."""
    if group is None:
        rows, _ = _contrastive_rows(z, m, scale, path)
    else:
        rows = _DistributedContrastiveRows.apply(z, m, scale, path, group)
    return rows.sum() / rows.shape[0]


def instance_contrastive_loss(
    z: torch.Tensor, n_views: int = 2, tau: float = 0.5, group=None, *, impl: str = "auto"
) -> torch.Tensor:
    r"""TCL's instance-level contrastive loss over ``m`` stacked views, without the N x N matrix.

    .. math::
        s_{ij} = \frac{z_i \cdot z_j}{\tau}, \qquad
        L = \frac{1}{mB\,(m-1)} \sum_{i=0}^{mB-1} \Big( (m-1)\,
            \log\!\sum_{l \ne i} e^{s_{il}} - \sum_{k=1}^{m-1} s_{i,\,(i+kB) \bmod mB} \Big)

    i.e. ``-mean`` of the positive log-probabilities of the diagonal-masked row log-softmax
    (Li et al., 2022, "Twin Contrastive Learning for Online Clustering"; NT-Xent for ``m = 2``).
    ``z = [view 0; ...; view m-1]``, each view ``B`` rows; ``z`` is not normalised here.

    Memory is O(N d): the Triton kernels (CUDA) stream column tiles with an online
    log-sum-exp (one fp32 LSE per row) and recompute the tiles in the backward, where
    ``dL/dz_i = (1/(tau N)) sum_j (P_ij + P_ji - 2 pos_ij/(m-1)) z_j``; the torch path does the
    same over row chunks (O(chunk x N) extra memory). Inputs fp32/fp16/bf16 (fp64 on the torch
    path), fp32 accumulation; the result has ``z``'s dtype. Works under ``torch.compile`` (the
    row terms are the custom op ``deepclust::contrastive_rows``).

    Distributed (``torch.distributed`` initialised, or ``group`` given): every rank passes its
    own stacked views, all of one size. Each rank computes the log-sum-exp of its own rows
    against the gathered rows of all ranks; the result on every rank is the single-process loss
    on the concatenated batch (view ``v`` of it = view ``v`` of rank 0, of rank 1, ...), and the
    gradient each rank gets for its rows is ``world_size`` x the gradient of that loss, so DDP's
    averaging yields the single-process gradient (the convention of the reference, where every
    rank computes the whole loss and the all-gather's backward sums).

    Args:
        z: embeddings (m*B x d).
        n_views: number of views ``m >= 2``. Default 2.
        tau: temperature > 0. Default 0.5.
        group: process group; ``None`` is the default group when distributed, else one process.
        impl: ``"auto"`` (Triton on CUDA, else torch), ``"triton"`` or ``"torch"``.

    Returns:
        A scalar of ``z``'s dtype.

    Raises:
        TypeError/ValueError: ``z`` not a 2-D float tensor, its row count not divisible by
            ``n_views``, ``n_views < 2``, ``tau <= 0``, fp64 with ``impl="triton"``.
    """
    m = check_views(z, "z", n_views)
    tau = check_positive(tau, "tau")
    path = _resolve(impl, z, "z")
    return _contrastive_term(z, m, 1.0 / tau, path, get_group(group)).to(z.dtype)


def cluster_contrastive_loss(
    c: torch.Tensor, n_views: int = 2, tau: float = 1.0, group=None, *, impl: str = "auto"
) -> torch.Tensor:
    r"""TCL's cluster-level contrastive loss plus its entropy term, without the N x N matrix.

    Each view's block of ``c`` (B x K soft assignments) is transposed to K x B and the blocks
    are stacked to ``y`` (m*K x B); with ``y`` row-normalised the loss is

    .. math::
        L = L_{\text{inst}}\big(\hat y,\ m,\ \tau\big)
            + \sum_{v=0}^{m-1} \Big(\log K + \sum_k p^{(v)}_k \log p^{(v)}_k\Big),
        \qquad p^{(v)} = \frac{\mathbf 1^\top c_v}{\mathbf 1^\top c_v \mathbf 1}

    (logits ``cos / tau``, positives: the same cluster in the other views; ``0 log 0 = 0``).
    The published loss for ``m = 2``, the natural extension for ``m > 2``. The contrastive part
    runs through the same masked log-sum-exp as :func:`instance_contrastive_loss`; the
    normalisation and the entropy are torch ops. Distributed: the rows of all ranks are gathered
    with gradient (the loss depends on whole columns), every rank computes the global loss and
    gets ``world_size`` x its gradient, as in :func:`instance_contrastive_loss`.

    Args:
        c: soft assignments (m*B x K), rows on the simplex.
        n_views: number of views ``m >= 2``. Default 2.
        tau: temperature > 0. Default 1.0.
        group: process group; ``None`` is the default group when distributed, else one process.
        impl: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        A scalar of ``c``'s dtype.
    """
    m = check_views(c, "c", n_views)
    tau = check_positive(tau, "tau")
    path = _resolve(impl, c, "c")
    cf = gather_views(c.to(_compute_dtype(c)), m, get_group(group))
    k = cf.shape[1]
    views = cf.reshape(m, cf.shape[0] // m, k)
    p = views.sum(1)
    p = p / p.sum(1, keepdim=True)
    entropy = (math.log(k) + torch.xlogy(p, p).sum(1)).sum()
    y = F.normalize(views.transpose(1, 2).reshape(m * k, -1), p=2, dim=1)
    return (_contrastive_term(y, m, 1.0 / tau, path, None) + entropy).to(c.dtype)
