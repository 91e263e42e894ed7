"""What ``deepclust check`` runs: dtype names, the defaults per device, whether the Triton
paths can run here, and the (op, path, dtype) tasks."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
               "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16,
               "bfloat16": torch.bfloat16, "fp64": torch.float64, "float64": torch.float64,
               "double": torch.float64}
SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
         torch.float64: "fp64", torch.int64: "int64", torch.int32: "int32"}

# negative_sampling and recon_loss: the fused path is the C++/CUDA extension
EXTENSION_OPS = ("negative_sampling", "recon_loss")


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
    from ..ops._plumbing import HAS_TRITON, triton_interpret

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


def fused_path(op: str, impl: str, device) -> Tuple[Optional[str], str]:
    """The path label and the ``impl`` to pass, or (None, why) when it cannot run here."""
    if op in EXTENSION_OPS:
        if impl == "torch":
            return "torch", ""
        from ..ops import recon

        if not recon._has_kernel(op, torch.device(device)):
            why = ("the C++ extension deepclust._C is not built" if not recon.HAS_EXTENSION
                   else f"deepclust._C has no {torch.device(device).type} kernel")
            return None, why
        return "cpp", ""
    return impl, ""

