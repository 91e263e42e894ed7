"""``deepclust check``: every public op against its eager reference on this device.

Each op of :mod:`deepclust.ops` runs at a few small odd sizes, in every dtype the device
supports, forward and backward, on each requested path (``"triton"``: the fused kernels, which
for ``negative_sampling``/``recon_loss`` are the C++/CUDA extension, shown as ``"cpp"``;
``"torch"``: the ops' eager path). Its error is measured against a float64 ground truth (the
reference in float64), and the bound is earned the way the test suite earns it
(``tests/helpers.py``): the fused result's error may be at most ``FACTOR`` x the reference's own
error in the same dtype, plus a small margin per dtype. ``hard_assign`` counts labels that differ
from the float64 argmin, and ``negative_sampling`` counts violations of its contract (shape,
dtype, indices in range, no self-loop, no edge drawn, reproducible draws, uniform draws).

:func:`run_checks` returns one :class:`CheckRow` per (op, path, dtype): the worst output and size
(largest error / bound). The command line prints them as one table and exits 0 only when every
row passes.
"""
from __future__ import annotations

import importlib
import math
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["CheckRow", "OPS", "run_checks", "default_dtypes", "default_impls", "format_table",
           "parse_dtypes", "MARGIN", "FACTOR"]

# Slack on top of the reference's own error, per dtype: (atol, rtol of the max |truth|). The same
# numbers as tests/helpers.py.
MARGIN = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}
FACTOR = 2.0

DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
               "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16,
               "bfloat16": torch.bfloat16, "fp64": torch.float64, "float64": torch.float64,
               "double": torch.float64}
SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
         torch.float64: "fp64", torch.int64: "int64", torch.int32: "int32"}

# negative_sampling and recon_loss: the fused path is the C++/CUDA extension
_EXTENSION_OPS = ("negative_sampling", "recon_loss")


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


# --------------------------------------------------------------------------- measurements
class _Cmp:
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


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if not a.numel():
        return 0.0
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def _close(name, out, ref, truth, factor=FACTOR, margin_dtype=None) -> _Cmp:
    """Error of ``out`` vs the float64 ``truth`` against factor x the reference's error + margin."""
    truth = truth.detach().double().cpu()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(truth.shape):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return _Cmp(name, float("inf"), 0.0, f"{name}: shape {shape} != {tuple(truth.shape)}")
    dt = margin_dtype or out.dtype
    atol, rtol = MARGIN.get(dt, MARGIN[torch.float32])
    scale = truth.abs().max().item() if truth.numel() else 0.0
    if not bool(torch.isfinite(out).all()):
        return _Cmp(name, float("inf"), atol + rtol * scale, f"{name}: non-finite values")
    e_out = _max_err(out, truth)
    e_ref = _max_err(ref, truth) if bool(torch.isfinite(ref).all()) else 0.0
    return _Cmp(name, e_out, factor * e_ref + atol + rtol * scale)


def _loss_and_grads(fn, inputs: Sequence[torch.Tensor], *args, grad_out=None, **kw):
    """Run ``fn(*inputs, *args, **kw)``, backpropagate, and return ``[out, grad...]``."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves, *args, **kw)
    g = torch.ones_like(out) if grad_out is None else grad_out.to(out.dtype)
    grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(leaves, grads)]
    return [out.detach()] + [gr.detach() for gr in grads]


def _compare_fwd_bwd(names, fused, ref, inputs64, dtype, device, *args, grad_out=None, **kw):
    """fused(dtype) vs ref(dtype) vs ref(float64) of the same (rounded) inputs, forward and
    backward: the errors are those of the computation, not of rounding the inputs."""
    low = [x.to(device=device, dtype=dtype) for x in inputs64]
    g = None if grad_out is None else grad_out.to(device)
    truth = _loss_and_grads(ref, [x.double() for x in low], *args,
                            grad_out=None if g is None else g.double(), **kw)
    r = _loss_and_grads(ref, low, *args, grad_out=g, **kw)
    o = _loss_and_grads(fused, low, *args, grad_out=g, **kw, impl=_IMPL)
    return [_close(n, a, b, c) for n, a, b, c in zip(names, o, r, truth)]


# The path of the op call being checked (set by _run_one; keeps the op helpers short).
_IMPL = "torch"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(n, d, g):
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


# --------------------------------------------------------------------------- the ops
def _dec_loss(fused, ref, dtype, device, size, seed):
    n, k, d = size
    g = _gen(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    mu = torch.randn(k, d, generator=g, dtype=torch.float64) * 0.5
    out = _compare_fwd_bwd(("loss", "grad z", "grad centers"), fused, ref, [z, mu], dtype, device,
                           1.0)
    # a cached target: one pass of the fused kernel
    t = torch.rand(n, k, generator=g, dtype=torch.float64)
    t[t < 0.2] = 0.0
    tt = t.to(dtype).double()  # the target in the dtype under test, exactly representable
    low = [x.to(device=device, dtype=dtype) for x in (z, mu)]
    truth = _loss_and_grads(ref, [x.double() for x in low], 0.5, tt.to(device))
    r = _loss_and_grads(ref, low, 0.5, tt.to(device, dtype))
    o = _loss_and_grads(fused, low, 0.5, tt.to(device, dtype), impl=_IMPL)
    names = ("loss (cached target)", "grad z (cached target)", "grad centers (cached target)")
    return out + [_close(nm, a, b, c) for nm, a, b, c in zip(names, o, r, truth)]


def _soft_assign(fused, ref, dtype, device, size, seed):
    n, k, d = size
    g = _gen(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    mu = torch.randn(k, d, generator=g, dtype=torch.float64) * 0.5
    gq = torch.randn(n, k, generator=g, dtype=torch.float64).to(dtype)
    return _compare_fwd_bwd(("q", "grad z", "grad centers"), fused, ref, [z, mu], dtype, device,
                            0.5, grad_out=gq)


def _target_distribution(fused, ref, dtype, device, size, seed):
    n, k, d = size
    g = _gen(seed)
    z = torch.randn(n, d, generator=g) * 0.5
    mu = torch.randn(k, d, generator=g) * 0.5
    q = importlib.import_module("deepclust.reference").soft_assign(z, mu).to(device, dtype)
    with torch.no_grad():
        out = fused(q, impl=_IMPL)
    return [_close("p", out, ref(q), ref(q.double()))]


def _hard_assign(fused, ref, dtype, device, size, seed):
    n, k, d = size
    g = _gen(seed)
    mu = (torch.randn(k, d, generator=g) * 3).to(dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    z = (mu.float()[labels] + 0.1 * torch.randn(n, d, generator=g)).to(dtype)
    want = torch.cdist(z.double(), mu.double()).argmin(1)
    out = fused(z.to(device), mu.to(device), impl=_IMPL)
    if out.shape != want.shape or out.dtype != torch.int64:
        return [_Cmp("labels", float("inf"), 0.0,
                     f"labels: shape {tuple(out.shape)} {out.dtype}, want {tuple(want.shape)} int64")]
    wrong = int((out.cpu() != want).sum())
    ref_wrong = int((ref(z, mu).cpu() != want).sum())
    return [_Cmp("labels differing from the float64 argmin", wrong, FACTOR * ref_wrong)]


def _sinkhorn(fused, ref, dtype, device, size, seed):
    b, k, eps = size
    g = _gen(seed)
    scores = (_unit(b, 16, g) @ _unit(k, 16, g).t()).to(device=device, dtype=dtype)
    out = fused(scores, eps=eps, impl=_IMPL)
    # the codes are float32 for every input dtype (float64 for float64)
    return [_close("codes", out, ref(scores, eps=eps), ref(scores.double(), eps=eps),
                   margin_dtype=out.dtype if out.dtype == torch.float64 else torch.float32)]


def _sinkhorn_from_embeddings(fused, ref, dtype, device, size, seed):
    b, k, d = size
    g = _gen(seed)
    z = _unit(b, d, g).to(device=device, dtype=dtype)
    p = _unit(k, d, g).to(device=device, dtype=dtype)
    out = fused(z, p, impl=_IMPL)
    return [_close("codes", out, ref(z, p), ref(z.double(), p.double()),
                   margin_dtype=out.dtype if out.dtype == torch.float64 else torch.float32)]


def _swav_loss(fused, ref, dtype, device, size, seed):
    b, k, v = size
    g = _gen(seed)
    base = torch.stack([_unit(b, 12, g) @ _unit(k, 12, g).t() for _ in range(v)])

    def stacked(fn):
        def run(x, **kw):
            return fn(list(x.unbind(0)), (0, 1), **kw)
        return run

    return _compare_fwd_bwd(("loss", "grad crops"), stacked(fused), stacked(ref), [base], dtype,
                            device)


def _instance_contrastive_loss(fused, ref, dtype, device, size, seed):
    m, b, d, tau = size
    z = F.normalize(torch.randn(m * b, d, generator=_gen(seed), dtype=torch.float64), dim=1)
    return _compare_fwd_bwd(("loss", "grad z"), fused, ref, [z], dtype, device, m, tau)


def _cluster_contrastive_loss(fused, ref, dtype, device, size, seed):
    m, b, k, tau = size
    c = torch.softmax(2.0 * torch.randn(m * b, k, generator=_gen(seed), dtype=torch.float64), dim=1)
    return _compare_fwd_bwd(("loss", "grad c"), fused, ref, [c], dtype, device, m, tau)


def _prototype_cross_entropy(fused, ref, dtype, device, size, seed):
    n, k, d, soft = size
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    c = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    if soft:
        t = torch.rand(n, k, generator=g, dtype=torch.float64).pow(3)
        t = (t / t.sum(1, keepdim=True)).to(dtype)  # exactly representable in the dtype
        temp = (0.05 + 0.3 * torch.rand(k, generator=g, dtype=torch.float64)).to(dtype)
        t64, temp64 = t.double().to(device), temp.double().to(device)
        t_lo, temp_lo = t.to(device), temp.to(device)
    else:
        t64 = t_lo = torch.randint(0, k, (n,), generator=g).to(device)
        temp64 = temp_lo = 0.1
    low = [x.to(device=device, dtype=dtype), c.to(device=device, dtype=dtype)]
    truth = _loss_and_grads(ref, [v.double() for v in low], t64, temp64)
    r = _loss_and_grads(ref, low, t_lo, temp_lo)
    o = _loss_and_grads(fused, low, t_lo, temp_lo, impl=_IMPL)
    kind = "soft" if soft else "hard"
    names = (f"loss ({kind})", f"grad x ({kind})", f"grad prototypes ({kind})")
    return [_close(nm, a, b_, c_) for nm, a, b_, c_ in zip(names, o, r, truth)]


def _recon_loss(fused, ref, dtype, device, size, seed):
    n, d, e_pos, e_neg = size
    g = _gen(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    pos = torch.randint(0, n, (2, e_pos), generator=g).to(device)
    neg = torch.randint(0, n, (2, e_neg), generator=g).to(device)
    return _compare_fwd_bwd(("loss", "grad z"), fused, ref, [z], dtype, device, pos, neg)


def _negative_sampling(fused, ref, dtype, device, size, seed):
    """The sampler's contract: exact count, int64, indices in range, no self-loop, never an
    edge, reproducible with a generator, uniform over the non-edges (chi-square z-score)."""
    n, e, s = size
    g = _gen(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = ei[:, ei[0] != ei[1]].to(device=device, dtype=dtype)
    out = fused(ei, n, s, generator=_gen(seed + 1), impl=_IMPL)
    res = []
    ok_shape = tuple(out.shape) == (2, s) and out.dtype == torch.int64
    res.append(_Cmp("shape (2, S) int64", 0 if ok_shape else 1, 0,
                    "" if ok_shape else f"got {tuple(out.shape)} {out.dtype}"))
    if not ok_shape or out.dim() != 2 or out.shape[0] != 2:
        return res
    o = out.cpu().long()
    res.append(_Cmp("indices outside [0, N)", int(((o < 0) | (o >= n)).sum()), 0))
    res.append(_Cmp("self-loops drawn", int((o[0] == o[1]).sum()), 0))
    edges = set((ei[0].cpu().long() * n + ei[1].cpu().long()).tolist())
    keys = (o[0] * n + o[1]).tolist()
    res.append(_Cmp("edges drawn as negatives", sum(k in edges for k in keys), 0))
    again = fused(ei, n, s, generator=_gen(seed + 1), impl=_IMPL)
    res.append(_Cmp("draws not reproducible with a seeded generator",
                    0 if torch.equal(again.cpu(), out.cpu()) else 1, 0))
    # uniformity over the non-edges: z-score of Pearson's chi-square statistic
    non_edges = n * (n - 1) - len({k for k in edges})
    if 0 < non_edges and s >= 5 * non_edges:
        counts = torch.bincount(torch.tensor(keys), minlength=n * n).double()
        mask = torch.ones(n * n, dtype=torch.bool)
        mask[torch.arange(n) * (n + 1)] = False
        mask[torch.tensor(sorted(edges), dtype=torch.long)] = False
        expected = s / non_edges
        chi2 = ((counts[mask] - expected) ** 2 / expected).sum().item()
        dof = non_edges - 1
        zscore = max(0.0, (chi2 - dof) / math.sqrt(2 * dof)) if dof > 0 else 0.0
        res.append(_Cmp("non-uniform draws (chi-square z-score)", zscore, 6.0))
    return res


# op -> (checker, sizes: first is the quick set, input dtypes or None for the float dtypes)
OPS: Dict[str, Tuple[Callable, list, Optional[tuple]]] = {
    "dec_loss": (_dec_loss, [(37, 5, 19), (67, 33, 130)], None),
    "soft_assign": (_soft_assign, [(37, 5, 19), (67, 33, 130)], None),
    "target_distribution": (_target_distribution, [(37, 5, 19), (129, 70, 13)], None),
    "hard_assign": (_hard_assign, [(37, 5, 19), (67, 33, 130)], None),
    "sinkhorn": (_sinkhorn, [(37, 5, 0.05), (67, 70, 0.02)], None),
    "sinkhorn_from_embeddings": (_sinkhorn_from_embeddings, [(37, 5, 19), (67, 70, 130)], None),
    "swav_loss": (_swav_loss, [(17, 5, 3), (33, 70, 2)], None),
    "instance_contrastive_loss": (_instance_contrastive_loss,
                                  [(2, 13, 19, 0.1), (3, 21, 130, 0.5)], None),
    "cluster_contrastive_loss": (_cluster_contrastive_loss, [(2, 13, 7, 1.0), (3, 21, 33, 0.5)],
                                 None),
    "prototype_cross_entropy": (_prototype_cross_entropy,
                                [(37, 5, 19, False), (37, 70, 33, True)], None),
    "negative_sampling": (_negative_sampling, [(7, 12, 3000), (50, 300, 997)],
                          (torch.int64, torch.int32)),
    "recon_loss": (_recon_loss, [(37, 19, 101, 57), (53, 130, 211, 97)], None),
}


# --------------------------------------------------------------------------- selection
def parse_dtypes(spec) -> List[torch.dtype]:
    """``"fp32,bf16"`` (or a list of names) -> dtypes; raises ValueError naming a bad one."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for name in names:
        for part in str(name).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in DTYPE_NAMES:
                raise ValueError(f"unknown dtype {part!r}; choose from fp32, fp16, bf16, fp64")
            if DTYPE_NAMES[part] not in out:
                out.append(DTYPE_NAMES[part])
    if not out:
        raise ValueError("no dtype given")
    return out


def default_dtypes(device) -> List[torch.dtype]:
    """Every floating dtype the device computes in: fp32, fp16, bf16 (where supported), fp64
    (the torch path only; the Triton kernels take 32- and 16-bit floats)."""
    dev = torch.device(device)
    dts = [torch.float32, torch.float16]
    if dev.type != "cuda" or torch.cuda.is_bf16_supported():
        dts.append(torch.bfloat16)
    dts.append(torch.float64)
    return dts


def triton_available(device) -> Tuple[bool, str]:
    """Whether the Triton paths can run on ``device``, and a line saying why not."""
    from .ops._plumbing import HAS_TRITON, triton_interpret

    dev = torch.device(device)
    if not HAS_TRITON:
        return False, "Triton paths not checked: the triton package is not installed"
    if dev.type == "cuda":
        return True, ""
    if triton_interpret():
        return True, "Triton paths run in Triton's CPU interpreter (TRITON_INTERPRET=1)"
    return False, ("Triton paths not checked on the CPU: set TRITON_INTERPRET=1 before starting "
                   "(or pass --interpret) to run the kernels in Triton's interpreter")


def default_impls(device) -> List[str]:
    """Both paths. Where Triton cannot run (the CPU without the interpreter) the fused path is
    checked for the ops of the C++ extension only."""
    return ["triton", "torch"]


def _fused_path(op: str, impl: str, device) -> Tuple[Optional[str], str]:
    """The path label and the ``impl`` to pass, or (None, why) when it cannot run here."""
    if op in _EXTENSION_OPS:
        if impl == "torch":
            return "torch", ""
        from .ops import recon

        kernel = "negative_sampling" if op == "negative_sampling" else "recon_loss_fwd"
        if not recon._has_kernel(kernel, torch.device(device)):
            why = ("the C++ extension deepclust._C is not built" if not recon.HAS_EXTENSION
                   else f"deepclust._C has no {torch.device(device).type} kernel")
            return None, why
        return "cpp", ""
    return impl, ""


def _tasks(ops, impls, dtypes, triton_ok=True):
    for op in ops:
        in_dtypes = OPS[op][2]
        for impl in impls:
            if impl == "triton" and op not in _EXTENSION_OPS and not triton_ok:
                continue  # no Triton here; the extension ops' fused path is C++/CUDA
            for dt in (in_dtypes if in_dtypes is not None else dtypes):
                if impl == "triton" and dt == torch.float64 and op not in _EXTENSION_OPS:
                    continue  # the Triton kernels take fp32/fp16/bf16 (fp64: the torch path)
                yield op, impl, dt


def _progress(total, progress, desc):
    from tqdm.auto import tqdm

    disable = (not progress) or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=disable, leave=False, file=sys.stderr)


def _run_one(op, impl, dtype, device, sizes) -> CheckRow:
    global _IMPL
    checker, _, _ = OPS[op]
    fused = getattr(importlib.import_module("deepclust.ops"), op)
    ref = getattr(importlib.import_module("deepclust.reference"), op)
    dname = SHORT.get(dtype, str(dtype).replace("torch.", ""))
    path, why = _fused_path(op, impl, device)
    if path is None:
        return CheckRow(op, "cpp", dname, float("nan"), float("nan"), "skip", note=why)
    _IMPL = "triton" if path == "cpp" else path
    cmps: List[Tuple[str, _Cmp]] = []
    note = ""
    for i, size in enumerate(sizes):
        label = "x".join(str(s) for s in size)
        try:
            cmps += [(label, c) for c in checker(fused, ref, dtype, device, size, 1000 + i)]
        except Exception as exc:  # noqa: BLE001 - a broken op is a failed row, not a crash
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            cmps.append((label, _Cmp("call", float("inf"), 0.0, f"{type(exc).__name__}: {msg}"[:200])))
        finally:
            _IMPL = "torch"
    worst_label, worst = max(cmps, key=lambda lc: lc[1].ratio)
    bad = [c for _, c in cmps if not c.ok]
    status = "fail" if bad else "pass"
    if bad:
        note = next((c.note for c in bad if c.note), "")
    return CheckRow(op, path, dname, worst.err, worst.bound, status,
                    worst=f"{worst.name} @ {worst_label}", note=note, checks=len(cmps))


def run_checks(device="cpu", dtypes: Optional[Iterable] = None, impls: Optional[Iterable[str]] = None,
               ops: Optional[Iterable[str]] = None, quick: bool = False,
               progress: bool = False) -> List[CheckRow]:
    """Check every public op against its reference on ``device``.

    Args:
        device: ``"cpu"`` or ``"cuda[:N]"``.
        dtypes: floating dtypes (``torch.dtype`` or names such as ``"bf16"``); default
            :func:`default_dtypes`. ``negative_sampling`` always takes int64 and int32 edges.
        impls: paths among ``"triton"`` (the fused path) and ``"torch"``; default both. The
            Triton kernels are checked on CUDA, or on the CPU when Triton's interpreter is on;
            elsewhere ``"triton"`` checks only the C++ extension's ops (shown as ``"cpp"``).
        ops: op names (default all of :data:`OPS`).
        quick: the first size of each op only.
        progress: a tqdm bar on stderr (only when it is a terminal).

    Returns:
        One :class:`CheckRow` per (op, path, dtype), in order.
    """
    dev = torch.device(device)
    dts = default_dtypes(dev) if dtypes is None else (
        parse_dtypes(dtypes) if isinstance(dtypes, str) else
        [d if isinstance(d, torch.dtype) else parse_dtypes(d)[0] for d in dtypes])
    ims = default_impls(dev) if impls is None else list(impls)
    for im in ims:
        if im not in ("triton", "torch"):
            raise ValueError(f"unknown impl {im!r}; choose from triton, torch")
    names = list(OPS) if ops is None else list(ops)
    for name in names:
        if name not in OPS:
            raise ValueError(f"unknown op {name!r}; choose from {', '.join(OPS)}")
    tasks = list(_tasks(names, ims, dts, triton_available(dev)[0]))
    rows = []
    with _progress(len(tasks), progress, "check") as bar:
        for op, impl, dt in tasks:
            bar.set_postfix_str(f"{op} {impl} {SHORT.get(dt, dt)}", refresh=False)
            sizes = OPS[op][1][:1] if quick else OPS[op][1]
            rows.append(_run_one(op, impl, dt, dev, sizes))
            bar.update()
    return rows


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == float("inf"):
        return "inf"
    if float(v).is_integer() and abs(v) < 1e6:
        return f"{int(v)}"
    return f"{v:.2e}"


def format_table(rows: Sequence[CheckRow]) -> str:
    """The rows as one fixed-width table: op, path, dtype, max error, bound, result."""
    head = ("op", "path", "dtype", "max error", "bound", "result")
    body = [(r.op, r.impl, r.dtype, _fmt(r.max_error), _fmt(r.bound),
             r.status.upper() + (f"  {r.note}" if r.note else "")) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    widths[-1] = len(head[-1])

    def line(cells):
        return "  ".join(c.ljust(w) if i < 3 else (c.rjust(w) if i < 5 else c)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])
