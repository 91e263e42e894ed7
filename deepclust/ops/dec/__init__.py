"""Fused DEC ops: Student's t soft assignment, target distribution, KL loss, hard assignment.

The Triton path (:mod:`._kernels`, launched from :mod:`._launch`) never materialises the
``N x K`` matrices on the loss path: each row block sweeps the centre tiles with an online
logsumexp, and the loss kernels form the gradients of ``z`` and ``centers`` in the forward pass
(``P`` is a constant), so the backward only scales them. Every reduction across programs is
deterministic (no atomics). The torch path (:mod:`._eager`) is the CPU and float64 fallback.

``log q`` is computed as ``s - logsumexp(s)`` with ``s = -(alpha+1)/2 * log1p(d/alpha)``, so far
away points give finite losses and gradients where the reference's ``q.log()`` underflows.

Each public function is one ``deepclust::<name>`` custom op (``impl`` already resolved), with
its fake, its autograd formula where it has one, and an fp32 autocast policy.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..._common import check_dec_loss_args, check_positive, check_tensor, check_z_centers
from .._plumbing import resolve_impl
from ._eager import (
    _dec_loss_torch, _hard_assign_torch, _soft_assign_backward, _soft_assign_torch,
    _target_distribution_torch,
)
from . import _launch
from ._launch import (
    _dec_loss_triton, _hard_assign_triton, _soft_assign_triton, _target_distribution_triton,
)

__all__ = ["soft_assign", "target_distribution", "dec_loss", "hard_assign"]

# The one configuration function of the kernels, also as deepclust.ops.dec._config.
_config = _launch._config
# The arguments named when impl="triton" meets float64 inputs.
_ZC = "z and centers"


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("deepclust::soft_assign", mutates_args=())
def _soft_assign_op(z: Tensor, centers: Tensor, alpha: float, impl: str) -> Tensor:
    """Q (N x K) in the dtype of z."""
    if impl == "triton":
        return _soft_assign_triton(z, centers, alpha)
    return _soft_assign_torch(z, centers, alpha)


@_soft_assign_op.register_fake
def _(z, centers, alpha, impl):
    return z.new_empty(z.shape[0], centers.shape[0])


# The backward takes no impl: one closed-form torch formula serves both paths.
@torch.library.custom_op("deepclust::soft_assign_backward", mutates_args=())
def _soft_assign_backward_op(
    grad_q: Tensor, z: Tensor, centers: Tensor, q: Tensor, alpha: float, need_dz: bool,
    need_dmu: bool,
) -> Tuple[Tensor, Tensor]:
    """dL/dz and dL/dcenters from dL/dq (empty ``(0, d)`` where not needed)."""
    return _soft_assign_backward(grad_q, z, centers, q, alpha, need_dz, need_dmu)


@_soft_assign_backward_op.register_fake
def _(grad_q, z, centers, q, alpha, need_dz, need_dmu):
    d = z.shape[1]
    return z.new_empty(z.shape[0] if need_dz else 0, d), \
        centers.new_empty(centers.shape[0] if need_dmu else 0, d)


def _soft_assign_setup(ctx, inputs, output):
    z, centers, alpha, _ = inputs
    ctx.save_for_backward(z, centers, output)
    ctx.alpha = alpha


def _soft_assign_grad(ctx, grad_q):
    z, centers, q = ctx.saved_tensors
    need_dz, need_dmu = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gz, gmu = _soft_assign_backward_op(grad_q, z, centers, q, ctx.alpha, need_dz, need_dmu)
    return (gz if need_dz else None), (gmu if need_dmu else None), None, None


_soft_assign_op.register_autograd(_soft_assign_grad, setup_context=_soft_assign_setup)


# No autograd: the target distribution is a constant (the public function detaches q).
@torch.library.custom_op("deepclust::target_distribution", mutates_args=())
def _target_distribution_op(q: Tensor, impl: str) -> Tensor:
    """P (N x K) in the dtype of q."""
    if impl == "triton":
        return _target_distribution_triton(q)
    return _target_distribution_torch(q)


@_target_distribution_op.register_fake
def _(q, impl):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("deepclust::dec_loss", mutates_args=())
def _dec_loss_op(
    z: Tensor,
    centers: Tensor,
    target: Optional[Tensor],
    alpha: float,
    impl: str,
    need_dz: bool,
    need_dmu: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """KL(P||Q) and its gradients w.r.t. z and centers (P constant), formed in one go."""
    fn = _dec_loss_triton if impl == "triton" else _dec_loss_torch
    return fn(z, centers, target, alpha, need_dz, need_dmu)


@_dec_loss_op.register_fake
def _(z, centers, target, alpha, impl, need_dz, need_dmu):
    n, d = z.shape
    k = centers.shape[0]
    return (
        z.new_empty(()),
        z.new_empty(n if need_dz else 0, d),
        centers.new_empty(k if need_dmu else 0, d),
    )


def _dec_loss_setup(ctx, inputs, output):
    _, dz, dmu = output
    ctx.need_dz, ctx.need_dmu = inputs[5], inputs[6]
    ctx.mark_non_differentiable(dz, dmu)
    ctx.save_for_backward(dz, dmu)


# The backward needs no op of its own: the gradients were formed in the forward pass, and the
# backward only scales them by the incoming gradient.
def _dec_loss_grad(ctx, grad_loss, _grad_dz, _grad_dmu):
    dz, dmu = ctx.saved_tensors
    gz = dz * grad_loss.to(dz.dtype) if ctx.need_dz else None
    gmu = dmu * grad_loss.to(dmu.dtype) if ctx.need_dmu else None
    return gz, gmu, None, None, None, None, None


_dec_loss_op.register_autograd(_dec_loss_grad, setup_context=_dec_loss_setup)


# Labels are int64 and piecewise constant in z and centers: no autograd formula.
@torch.library.custom_op("deepclust::hard_assign", mutates_args=())
def _hard_assign_op(z: Tensor, centers: Tensor, impl: str) -> Tensor:
    """int64 labels (N,)."""
    if impl == "triton":
        return _hard_assign_triton(z, centers)
    return _hard_assign_torch(z, centers)


@_hard_assign_op.register_fake
def _(z, centers, impl):
    return z.new_empty(z.shape[0], dtype=torch.int64)


# Autocast runs the forward ops in fp32 (torch's policy for losses and softmax): bf16/fp16
# activations mixed with fp32 centres meet one dtype, and the results come back in fp32.
for _name in ("soft_assign", "target_distribution", "dec_loss", "hard_assign"):
    for _device in ("cuda", "cpu"):
        torch.library.register_autocast(f"deepclust::{_name}", _device, torch.float32)
del _name, _device


# ----------------------------------------------------------------------------- public API
def soft_assign(
    z: Tensor, centers: Tensor, alpha: float = 1.0, *, impl: str = "auto"
) -> Tensor:
    r"""Student's t soft assignment of DEC, computed stably as a softmax.

    .. math::
        q_{ij} = \operatorname{softmax}_j\Big(-\tfrac{\alpha+1}{2}
                 \log\big(1 + \|z_i - \mu_j\|^2 / \alpha\big)\Big)

    which equals the normalised kernel
    :math:`(1 + \|z_i-\mu_j\|^2/\alpha)^{-(\alpha+1)/2} / \sum_{j'}(\cdot)` without
    underflowing for far-away points.

    Args:
        z: embeddings ``(N, d)``, float32/float16/bfloat16 (float64 on the torch path).
        centers: cluster centres ``(K, d)`` on the device of ``z``.
        alpha: Student's t degrees of freedom, ``> 0`` (default 1).
        impl: ``"auto"`` (Triton on CUDA, else torch), ``"triton"`` or ``"torch"``.

    Returns:
        ``q`` of shape ``(N, K)`` in the dtype of ``z`` (float32 under autocast),
        differentiable in ``z`` and ``centers``.

    Reference: Xie, Girshick, Farhadi, "Unsupervised Deep Embedding for Clustering Analysis",
    ICML 2016, eq. (1).
    """
    check_z_centers(z, centers)
    alpha = check_positive(alpha, "alpha")
    return _soft_assign_op(z, centers, alpha, resolve_impl(impl, z, centers, name=_ZC))


def target_distribution(q: Tensor, *, impl: str = "auto") -> Tensor:
    r"""DEC's target distribution, detached.

    .. math::
        f_j = \sum_i q_{ij}, \qquad
        p_{ij} = \frac{q_{ij}^2 / f_j}{\sum_{j'} q_{ij'}^2 / f_{j'}}

    A column with ``f_j = 0`` (all its ``q`` underflowed) contributes ``p_{ij} = 0``, the limit.

    Args:
        q: soft assignment ``(N, K)``.
        impl: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        ``p`` of shape ``(N, K)`` in the dtype of ``q`` (float32 under autocast), without
        gradient.

    Reference: Xie et al., ICML 2016, eq. (3).
    """
    check_tensor(q, "q", ndim=2)
    path = resolve_impl(impl, q, name="q")
    with torch.no_grad():
        return _target_distribution_op(q.detach(), path)


def dec_loss(
    z: Tensor,
    centers: Tensor,
    alpha: float = 1.0,
    target: Optional[Tensor] = None,
    *,
    impl: str = "auto",
) -> Tensor:
    r"""DEC clustering loss ``KL(P || Q)`` with batch mean, fused.

    .. math::
        L = \frac{1}{N}\sum_{i,j} p_{ij}\,(\log p_{ij} - \log q_{ij}),\qquad
        \log q_{ij} = s_{ij} - \operatorname{logsumexp}_{j'} s_{ij'},\quad
        s_{ij} = -\tfrac{\alpha+1}{2}\log\big(1 + \|z_i-\mu_j\|^2/\alpha\big)

    ``P`` is a constant. Its gradient, formed in the forward pass, is
    :math:`\partial L/\partial d_{ij} = \frac{\alpha+1}{2\alpha N}\,
    \frac{p_{ij} - r_i q_{ij}}{1 + d_{ij}/\alpha}` with :math:`r_i = \sum_j p_{ij}` and
    :math:`d_{ij} = \|z_i-\mu_j\|^2`. With ``target=None`` the Triton path first finds the
    row logsumexp and the column sums ``f``; then one pass over the rows gives the loss and the
    gradient of ``z``, and one over the centres the gradient of ``centers``. Neither writes
    ``Q`` or ``P`` to memory, and the result is bitwise reproducible (no atomics).

    Args:
        z: embeddings ``(N, d)``, float32/float16/bfloat16 (float64 on the torch path).
        centers: cluster centres ``(K, d)`` on the device of ``z``.
        alpha: Student's t degrees of freedom, ``> 0`` (default 1).
        target: optional cached target ``P`` of shape ``(N, K)`` (a constant); ``None``
            (default) computes ``P`` from this batch's ``Q``.
        impl: ``"auto"`` (Triton on CUDA, else torch), ``"triton"`` or ``"torch"``.

    Returns:
        A scalar in the dtype of ``z`` (float32 under autocast), differentiable in ``z`` and
        ``centers``.

    Reference: Xie et al., ICML 2016, eqs. (1)-(3); PyAGC's ``DECClusterHead``.
    """
    alpha = check_dec_loss_args(z, centers, alpha, target)
    if target is not None:
        target = target.detach()
    path = resolve_impl(impl, z, centers, name=_ZC)
    grad = torch.is_grad_enabled()
    need_dz = grad and z.requires_grad
    need_dmu = grad and centers.requires_grad
    loss, _, _ = _dec_loss_op(z, centers, target, alpha, path, need_dz, need_dmu)
    return loss


def hard_assign(z: Tensor, centers: Tensor, *, impl: str = "auto") -> Tensor:
    r"""Hard labels ``argmin_j ||z_i - mu_j||^2`` without an ``N x K`` matrix on the Triton path.

    Args:
        z: embeddings ``(N, d)``.
        centers: cluster centres ``(K, d)``.
        impl: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        ``int64`` labels of shape ``(N,)``; ties go to the lowest index.

    Reference: Xie et al., ICML 2016.
    """
    check_z_centers(z, centers)
    path = resolve_impl(impl, z, centers, name=_ZC)
    with torch.no_grad():
        return _hard_assign_op(z.detach(), centers.detach(), path)
