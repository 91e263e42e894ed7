"""How ``deepclust check`` measures: an op's error against a float64 ground truth, and the bound
it must meet (``FACTOR`` x the reference's own error in the same dtype, plus a margin per dtype;
the numbers of ``tests/helpers.py``)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

# Slack on top of the reference's own error, per dtype: (atol, rtol of the max |truth|). The same
# numbers as tests/helpers.py.
MARGIN = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}
FACTOR = 2.0


@dataclass
class CheckRow:
    """The worst case of one (op, path, dtype) over its sizes and outputs."""

    op: str
    impl: str  # the path checked: "triton", "cpp" or "torch"
    dtype: str
    max_error: float
    bound: float
    status: str  # "pass", "fail" or "skip"
    worst: str = ""  # which output at which size gave the largest error / bound
    note: str = ""
    checks: int = 0  # number of (size, output) comparisons

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("max_error", "bound"):
            v = d[k]
            d[k] = None if v is None or (isinstance(v, float) and math.isnan(v)) else (
                "inf" if v == float("inf") else v)
        return d


class Cmp:
    """One comparison: an error and its bound."""

    __slots__ = ("name", "err", "bound", "note")

    def __init__(self, name, err, bound, note=""):
        self.name, self.err, self.bound, self.note = name, float(err), float(bound), note

    @property
    def ok(self) -> bool:
        return self.err <= self.bound

    @property
    def ratio(self) -> float:
        if self.err <= self.bound:
            return self.err / self.bound if self.bound > 0 else 0.0
        return float("inf") if self.bound <= 0 else self.err / self.bound


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if not a.numel():
        return 0.0
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def close(name, out, ref, truth, factor=FACTOR, margin_dtype=None) -> Cmp:
    """Error of ``out`` vs the float64 ``truth`` against factor x the reference's error + margin."""
    truth = truth.detach().double().cpu()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(truth.shape):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return Cmp(name, float("inf"), 0.0, f"{name}: shape {shape} != {tuple(truth.shape)}")
    dt = margin_dtype or out.dtype
    atol, rtol = MARGIN.get(dt, MARGIN[torch.float32])
    scale = truth.abs().max().item() if truth.numel() else 0.0
    if not bool(torch.isfinite(out).all()):
        return Cmp(name, float("inf"), atol + rtol * scale, f"{name}: non-finite values")
    e_out = max_err(out, truth)
    e_ref = max_err(ref, truth) if bool(torch.isfinite(ref).all()) else 0.0
    return Cmp(name, e_out, factor * e_ref + atol + rtol * scale)


def loss_and_grads(fn, inputs: Sequence[torch.Tensor], *args, grad_out=None, **kw):
    """Run ``fn(*inputs, *args, **kw)``, backpropagate, and return ``[out, grad...]``."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves, *args, **kw)
    g = torch.ones_like(out) if grad_out is None else grad_out.to(out.dtype)
    grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(leaves, grads)]
    return [out.detach()] + [gr.detach() for gr in grads]


def compare_fwd_bwd(names, fused, ref, inputs64, dtype, device, *args, grad_out=None, **kw):
    """fused(dtype) vs ref(dtype) vs ref(float64) of the same (rounded) inputs, forward and
    backward: the errors are those of the computation, not of rounding the inputs. ``fused``
    already carries the path under check (its ``impl``)."""
    low = [x.to(device=device, dtype=dtype) for x in inputs64]
    g = None if grad_out is None else grad_out.to(device)
    truth = loss_and_grads(ref, [x.double() for x in low], *args,
                           grad_out=None if g is None else g.double(), **kw)
    r = loss_and_grads(ref, low, *args, grad_out=g, **kw)
    o = loss_and_grads(fused, low, *args, grad_out=g, **kw)
    return [close(n, a, b, c) for n, a, b, c in zip(names, o, r, truth)]
