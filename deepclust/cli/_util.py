"""What every command of the command line shares: the one-line error, the device check, the
progress switch, name lists, device names and JSON output."""
from __future__ import annotations

import json
import os
import sys


class CLIError(Exception):
    """A user error reported as one line."""


def check_device(device: str):
    """``--device`` as a ``torch.device`` (cpu or an existing CUDA device), else a CLIError."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CLIError(f"--device {device!r} is not a device; use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                       "device(s)")
    return dev


def add_run_args(p, epochs_help: str) -> None:
    """The arguments every training command shares: --root, --seed, --device, --epochs."""
    p.add_argument("--root", default=os.environ.get("DEEPCLUST_DATA"),
                   help="folder laid out like shared/data (default: $DEEPCLUST_DATA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--epochs", type=int, default=None, help=epochs_help)


def load_data(name: str, root):
    """The data set ``name`` from ``root`` (see :func:`deepclust.data.load`), else a CLIError."""
    from ..data import load
    from ..data.datasets import DATASETS

    if name.lower() not in DATASETS:
        raise CLIError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if root is not None and not os.path.isdir(root):
        raise CLIError(f"--root {root!r} is not a folder")
    try:
        return load(name, root)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise CLIError(str(exc)) from None


def progress_on(no_progress: bool = False) -> bool:
    """Progress bars: on unless --no-progress, and only when stderr is a terminal."""
    return not no_progress and sys.stderr.isatty()


def names(values, what: str, known) -> list:
    """``--ops a,b --ops c`` -> ``[a, b, c]``, each one of ``known`` (else one-line error)."""
    out = []
    for v in values or []:
        for name in str(v).split(","):
            name = name.strip()
            if not name:
                continue
            if name not in known:
                raise CLIError(f"unknown {what} {name!r}; choose from {', '.join(known)}")
            if name not in out:
                out.append(name)
    return out


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(dev) -> str:
    import platform

    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def json_target(path):
    """A one-line error when the folder of ``--json PATH`` does not exist."""
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise CLIError(f"--json {path!r}: folder {os.path.dirname(os.path.abspath(path))!r} does not exist")


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
