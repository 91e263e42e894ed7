"""Fused prototype cross-entropy: ``CE(softmax(x @ prototypes^T / T), target)`` without the
N x K logits (PCL's ProtoNCE, TSD's prototype loss, SwAV-style prediction).

Triton kernels in ``_kernels``, their launchers and tile choice in ``_launch``, the torch path
in ``_eager``; here the custom ops, their autograd formula and the public function.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor

from ..._common import check_prototype_args
from .._plumbing import autocast_fp32, compute_dtype, register_fp32_autocast, resolve_impl
from . import _launch
from ._eager import _bwd_torch, _fwd_torch
from ._launch import _bwd_triton, _fwd_triton

__all__ = ["prototype_cross_entropy"]

_config = _launch._config  # the one tile choice, called here by the tests and the compile gate


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("deepclust::prototype_ce_rows", mutates_args=())
def _prototype_ce_rows(x: Tensor, prototypes: Tensor, target: Tensor, inv_temp: Tensor,
                       impl: str) -> Tuple[Tensor, Tensor]:
    """Per-row cross-entropy (N,) and logsumexp (N,), fp32 (fp64 for fp64 input)."""
    fn = _fwd_triton if impl == "triton" else _fwd_torch
    return fn(x, prototypes, target, inv_temp)


@_prototype_ce_rows.register_fake
def _(x, prototypes, target, inv_temp, impl):
    n = x.shape[0]
    cdt = compute_dtype(x)
    return x.new_empty((n,), dtype=cdt), x.new_empty((n,), dtype=cdt)


@torch.library.custom_op("deepclust::prototype_ce_rows_backward", mutates_args=())
def _prototype_ce_rows_backward(grad_rows: Tensor, x: Tensor, prototypes: Tensor, target: Tensor,
                                inv_temp: Tensor, lse: Tensor, impl: str, need_dx: bool,
                                need_dp: bool) -> Tuple[Tensor, Tensor]:
    """dx (N x d) and dprototypes (K x d) of ``sum_i grad_rows_i CE_i``; empty where not needed."""
    fn = _bwd_triton if impl == "triton" else _bwd_torch
    return fn(grad_rows, x, prototypes, target, inv_temp, lse, need_dx, need_dp)


@_prototype_ce_rows_backward.register_fake
def _(grad_rows, x, prototypes, target, inv_temp, lse, impl, need_dx, need_dp):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_dx else x.new_empty(0)
    dp = (torch.empty_like(prototypes, memory_format=torch.contiguous_format) if need_dp
          else prototypes.new_empty(0))
    return dx, dp


def _setup_context(ctx, inputs, output):
    x, prototypes, target, inv_temp, impl = inputs
    ctx.save_for_backward(x, prototypes, target, inv_temp, output[1])
    ctx.impl = impl


def _backward(ctx, grad_rows, grad_lse):
    x, prototypes, target, inv_temp, lse = ctx.saved_tensors
    need_dx, need_dp = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_rows is None or not (need_dx or need_dp):
        return None, None, None, None, None
    dx, dp = _prototype_ce_rows_backward(grad_rows, x, prototypes, target, inv_temp, lse,
                                         ctx.impl, need_dx, need_dp)
    return (dx if need_dx else None), (dp if need_dp else None), None, None, None


_prototype_ce_rows.register_autograd(_backward, setup_context=_setup_context)
register_fp32_autocast("prototype_ce_rows")


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
        The scalar mean loss in ``x.dtype``. Under ``torch.autocast`` (on ``x``'s device)
        16-bit ``x`` and ``prototypes`` are up-cast first: the result is the fp32 loss (bf16
        activations with fp32 prototypes are then accepted).

    Raises:
        TypeError/ValueError: naming the bad argument (shapes, dtypes, devices, a class index
        outside ``[0, K)``, a temperature <= 0).

    References: Li et al., "Prototypical Contrastive Learning of Unsupervised Representations",
    ICLR 2021 (ProtoNCE); Wang et al., "Feature Alignment and Uniformity for Test Time
    Adaptation", CVPR 2023; Caron et al., "Unsupervised Learning of Visual Features by
    Contrasting Cluster Assignments" (SwAV), NeurIPS 2020.
    """
    x, prototypes = autocast_fp32(x), autocast_fp32(prototypes)
    check_prototype_args(x, prototypes, target, temperature)
    path = resolve_impl(impl, x, prototypes, name="x")
    K = prototypes.shape[0]
    tdt = compute_dtype(x)
    if isinstance(temperature, Tensor) and temperature.dim() == 1:
        inv_temp = (1.0 / temperature.detach().to(tdt)).contiguous()
    else:
        inv_temp = torch.full((K,), 1.0 / float(temperature), device=x.device, dtype=tdt)
    if not target.is_floating_point():
        target = target.long()
    target = target.detach()
    rows, _ = _prototype_ce_rows(x, prototypes, target, inv_temp, path)
    return rows.mean().to(x.dtype)
