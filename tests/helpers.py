"""Helpers shared by the tests: tolerances earned against float64, and multi-process runs."""
from __future__ import annotations

import os
import tempfile
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Where tests run Triton paths: CUDA when present (compiled kernels), else the CPU (the
# interpreter, which conftest turns on). The `device` fixture returns the same device.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
# Slack on top of the reference's own error, per dtype: (atol, rtol of the max |truth|).
MARGIN = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_to_truth(out, ref, truth, dtype, name="output", factor=2.0):
    """The fused result's error vs the float64 truth is at most ``factor`` x the reference's
    error in the same dtype, plus a small margin (STYLE.md, habit 6)."""
    assert out.shape == truth.shape, f"{name}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (unwritten or overflow)"
    atol, rtol = MARGIN[dtype]
    scale = truth.double().abs().max().item() if truth.numel() else 0.0
    e_out = max_err(out, truth)
    e_ref = max_err(ref, truth) if torch.isfinite(ref).all() else float("inf")
    bound = factor * (e_ref if e_ref != float("inf") else 0.0) + atol + rtol * scale
    assert e_out <= bound, (
        f"{name}: error {e_out:.3e} vs float64 exceeds bound {bound:.3e} "
        f"(reference error {e_ref:.3e}, dtype {dtype})"
    )


def _worker(rank, world_size, init_file, out_dir, fn, args):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
        # every rank finishes its collectives before any tears the group down: a rank that
        # destroys gloo's group while its peer is still in one can abort that peer
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_distributed(fn, *args, world_size: int = 2, interpret: bool = False):
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes on gloo and return the
    list of their results (each saved with ``torch.save``). ``fn`` must be a module-level
    function of an importable module (a test module is).

    ``interpret=True`` is for tests of the Triton path over several processes: on a machine
    without CUDA it sets ``TRITON_INTERPRET=1`` for the spawned processes (they import triton
    afresh); with CUDA the workers compile the kernels and share the GPU, and gloo moves CUDA
    tensors through host memory. Either way ``DEVICE`` in a worker is the device to put its
    inputs on. (Running the interpreter on a CUDA machine is not an option: Triton 3.6's
    interpreter fails with NumPy 2.4 on loops over scalar arguments.)"""
    old = os.environ.get("TRITON_INTERPRET")
    if interpret and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        return _run_distributed(fn, args, world_size)
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def _run_distributed(fn, args, world_size):
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, f"{r}.pt") for r in range(world_size)]
        try:
            mp.start_processes(
                _worker,
                args=(world_size, os.path.join(d, "init"), d, fn, args),
                nprocs=world_size,
                join=True,
                start_method="spawn",
            )
        except mp.ProcessExitedException as exc:
            # Under load gloo can abort a rank while the group is torn down, after every rank
            # saved its result and passed the barrier (seen as SIGABRT, "terminate called
            # without an active exception"). Results that all exist are complete; anything
            # else is a real failure.
            if exc.signal_name != "SIGABRT" or not all(os.path.exists(p) for p in paths):
                raise
            warnings.warn(f"a rank aborted in gloo teardown after saving its result: {exc}")
        return [torch.load(p, weights_only=False) for p in paths]
