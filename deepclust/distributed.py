"""Data-parallel ``deepclust fit``: process-group set-up, batch shards, gradient all-reduce,
a batch norm over the whole group, and the ``--nproc`` launcher.

How a data-parallel fit works (DEC, SwAV, TCL, PCL): every rank holds the same model (same seed,
same initialisation) and draws the same random numbers (the shuffle and the augmentations
of the *global* batch, from the same generators), then keeps its contiguous shard of each
batch (:func:`shard`). Each rank's loss is its local mean weighted by its share of the global
batch, and the gradients are summed over the group (:func:`all_reduce_gradients`), which
gives the gradient of the global batch mean; every rank then takes the same optimiser step.
Batch norm layers become :class:`GroupBatchNorm` (statistics over the global batch), so the
forward pass is the one of one process on the global batch. Losses that couple the rows of
a batch reduce over the group: SwAV's Sinkhorn, TCL's contrastive losses (the ops' ``group``),
PCL's queue and ProtoNCE prototypes (keys and indices gathered; see
:meth:`deepclust.models.pcl.PCL.forward`). The result equals a one-process run within float
tolerance (sums are taken in another order). DAEGC trains on the whole graph at once and has
no data-parallel path.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

from ._common import all_reduce_sum_with_grad, get_group

__all__ = ["rank", "world_size", "is_distributed", "shard", "all_reduce_gradients",
           "GroupBatchNorm", "convert_batchnorm", "broadcast_module", "ENV_VARS"]

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def is_distributed() -> bool:
    return get_group(None) is not None


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def shard(n: int, r: Optional[int] = None, w: Optional[int] = None) -> slice:
    """Rows ``[lo, hi)`` of rank ``r`` in a batch of ``n`` rows split into ``w`` contiguous
    shards whose sizes differ by at most one (the first ``n % w`` ranks get one more)."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    base, extra = divmod(n, w)
    lo = r * base + min(r, extra)
    return slice(lo, lo + base + (1 if r < extra else 0))


@torch.no_grad()
def all_reduce_gradients(params: Iterable[torch.Tensor], group=None) -> None:
    """Sum the ``.grad`` of ``params`` over the group (in place, one flat all-reduce).

    Parameters whose gradient is ``None`` are skipped; every rank must have the same set.
    """
    g = get_group(group)
    if g is None:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([t.reshape(-1) for t in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=g)
    off = 0
    for t in grads:
        n = t.numel()
        t.copy_(flat[off:off + n].view_as(t))
        off += n


def zero_grads(params: Iterable[torch.Tensor]) -> None:
    """Zero gradients for a rank with an empty shard (it still joins the all-reduce)."""
    for p in params:
        if p.requires_grad:
            p.grad = torch.zeros_like(p)


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0, group=None) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank."""
    g = get_group(group)
    if g is None:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src, group=g)


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are taken over the batches of every rank of
    ``group`` (the sums are all-reduced with gradient), for any input rank >= 2 and on any
    backend, gloo on the CPU included (``nn.SyncBatchNorm`` needs a GPU). In eval mode, or
    without a process group, it is plain batch norm."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.group = group

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = get_group(self.group)
        if g is None or not self.training:
            return super().forward(x)
        C = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        n = x.numel() // C
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_full((1,), float(n))])
        stats = all_reduce_sum_with_grad(stats, g)
        count = stats[-1]
        mean = stats[:C] / count
        var = (stats[C:2 * C] / count - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        shape = [1, C] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, group=None) -> nn.Module:
    """Replace every batch norm layer of ``module`` by a :class:`GroupBatchNorm` holding the
    same parameters and running statistics (like ``nn.SyncBatchNorm.convert_sync_batchnorm``)."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GroupBatchNorm):
        out = GroupBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, group)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_batchnorm(child, group))
    return out


def data_parallel(model: nn.Module, batch: int, method: str):
    """The data-parallel set-up the image models share: ``(model, shard)``.

    With one process: the model as it is and ``slice(None)``. With W processes the batch must
    split evenly; batch norm becomes :class:`GroupBatchNorm` and ``shard`` is this rank's
    contiguous slice of every global batch (every rank draws the whole batch)."""
    world = world_size()
    if world == 1:
        return model, slice(None)
    if batch % world:
        raise ValueError(f"{method}'s batch of {batch} rows does not split evenly over {world} "
                         "processes")
    return convert_batchnorm(model), shard(batch)


# ----------------------------------------------------------------------------- launching
def env_world_size() -> int:
    """WORLD_SIZE from the environment (torchrun sets it), 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: str) -> str:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL on CUDA, gloo on the CPU. Returns the device
    of this rank (``cuda:LOCAL_RANK`` for a bare ``cuda``)."""
    dev = torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return str(dev)


def _spawn_worker(r, w, init_file, result_path, error_dir, fit, error, kwargs):  # pragma: no cover - child
    import json

    os.environ.update(RANK=str(r), WORLD_SIZE=str(w), LOCAL_RANK=str(r))
    dev = torch.device(kwargs.get("device", "cpu"))
    if dev.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // w))
    else:
        kwargs = dict(kwargs, device=f"cuda:{r}")
        torch.cuda.set_device(r)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                            init_method=f"file://{init_file}", rank=r, world_size=w)
    try:
        res = fit(**kwargs)
        if r == 0:
            with open(result_path + ".tmp", "w") as f:
                json.dump(res, f)
            os.replace(result_path + ".tmp", result_path)
        dist.barrier()
    except BaseException as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not isinstance(exc, error):
            msg = f"{type(exc).__name__}: {msg}"
        with open(os.path.join(error_dir, f"{r}.txt"), "w") as f:
            f.write(msg)
        raise SystemExit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, fit, kwargs: dict, error=RuntimeError) -> dict:
    """Run ``fit(**kwargs)`` in ``nproc`` spawned processes on one machine (gloo on the CPU,
    NCCL with one GPU per process on CUDA) and return rank 0's result (a JSON-able dict).
    ``fit`` must be a module-level function (it is pickled by name); failures come back as
    ``error`` with one line (the command line passes its ``CLIError``)."""
    import json
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="deepclust-nproc-") as d:
        result = os.path.join(d, "result.json")
        errors = os.path.join(d, "errors")
        os.makedirs(errors)
        try:
            mp.start_processes(_spawn_worker,
                               args=(nproc, os.path.join(d, "init"), result, errors, fit, error, kwargs),
                               nprocs=nproc, join=True, start_method="spawn")
        except (mp.ProcessExitedException, mp.ProcessRaisedException) as exc:
            msgs = []
            for name in sorted(os.listdir(errors)):
                with open(os.path.join(errors, name)) as f:
                    msgs.append((name[:-4], f.read().strip()))
            if msgs:
                r, m = msgs[0]
                raise error(f"rank {r}: {m}") from None
            # gloo may abort a rank while the group is torn down, after rank 0 wrote the
            # result: a complete result is a success
            if not (isinstance(exc, mp.ProcessExitedException) and exc.signal_name == "SIGABRT"
                    and os.path.exists(result)):
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise error(f"a worker process failed: {line}") from None
        if not os.path.exists(result):
            raise error("the worker processes ended without a result")
        with open(result) as f:
            return json.load(f)
