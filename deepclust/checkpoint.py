"""Checkpoints of ``deepclust fit``: save, load, validate, and the RNG states of a run.

A checkpoint is one ``torch.save`` file holding a header (format, version, method, data set,
seed, epochs, impl, world size), the RNG states of torch (CPU and CUDA), numpy and Python's
``random``, where the run stands (``progress``: a phase and an epoch) and the method's own
``state`` (model, optimiser, scheduler, generators, queues, cached targets, the k-means or
pretraining results computed before its main loop, loop counters). Every value is a tensor or
a plain Python value, so it is read back with ``torch.load(weights_only=True)``.

Writes are atomic: the file is written to a temporary file in the same folder, flushed and
fsynced, then renamed over ``path`` with :func:`os.replace`; a run killed at any moment (SIGKILL
included) leaves either the previous checkpoint or the new one, never a torn file.

The methods' loops (``cli_fit`` in :mod:`deepclust.models`) save at the end of every epoch,
after the last random draw of that epoch, and on ``resume`` restore everything and continue
with the next epoch: the resumed run does the same work in the same order as an uninterrupted
one, so its results are bitwise equal on the CPU.
"""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["FORMAT", "VERSION", "CheckpointError", "Checkpointer", "atomic_save", "read",
           "validate", "capture_rng", "restore_rng", "generator_state", "set_generator_state"]

FORMAT = "deepclust-fit-checkpoint"
VERSION = 2  # 2: TCL/PCL keep their LR scheduler, DEC its augmentation generator
# header fields that must match for a resume (a different seed, schedule or op path would not
# reproduce the uninterrupted run)
_MATCH = ("method", "data", "seed", "epochs", "impl")


class CheckpointError(ValueError):
    """An unreadable, foreign or incompatible checkpoint (the message is one line)."""


# ----------------------------------------------------------------------------- RNG states
def capture_rng() -> Dict[str, Any]:
    """The global RNG states: torch (CPU and every initialised CUDA device), numpy, random."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: Dict[str, Any]) -> None:
    """Set the global RNG states saved by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def generator_state(gen: Optional[torch.Generator]):
    return None if gen is None else gen.get_state()


def set_generator_state(gen: Optional[torch.Generator], state) -> None:
    if gen is not None and state is not None:
        gen.set_state(state)


# ----------------------------------------------------------------------------- files
def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj)`` to a temporary file beside ``path``, fsync, then ``os.replace``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass


def read(path: str) -> Dict[str, Any]:
    """Load a checkpoint (on the CPU); :class:`CheckpointError` if it is missing, unreadable or
    not a ``deepclust fit`` checkpoint of this format version."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, EOF, permission: all mean "not readable"
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path!r}: {msg[:200]}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a deepclust fit checkpoint")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {obj.get('version')!r}; "
                              f"this deepclust reads version {VERSION}")
    return obj


def validate(obj: Dict[str, Any], path: str, **expected) -> None:
    """Refuse a checkpoint whose header differs from ``expected`` (method, data, seed, ...)."""
    for key in _MATCH:
        if key in expected and obj.get(key) != expected[key]:
            flag = "method" if key == "method" else f"--{key}"
            raise CheckpointError(
                f"checkpoint {path!r} was written with {flag} {obj.get(key)!r}, this run has "
                f"{expected[key]!r}; use a new --checkpoint path or the same settings")


# ----------------------------------------------------------------------------- the hook
class Checkpointer:
    """What a method's training loop talks to.

    ``ck.resume_state()`` gives the saved ``(progress, state)`` when resuming (else ``None``);
    ``ck.save(progress, state)`` writes a checkpoint (rank 0 only; a no-op without a path);
    ``ck.restore_rng()`` sets the global RNGs saved with the state being resumed.
    """

    def __init__(self, path: Optional[str], *, method: str, data: str, seed: int, epochs,
                 impl: str, resume: bool = False, write: bool = True, world_size: int = 1):
        self.path = None if path is None else os.fspath(path)
        self.header = {"format": FORMAT, "version": VERSION, "method": method, "data": data,
                       "seed": int(seed), "epochs": None if epochs is None else int(epochs),
                       "impl": impl, "world_size": int(world_size)}
        self.write = write and self.path is not None
        self._loaded = None
        if resume:
            if self.path is None:
                raise CheckpointError("resume needs a checkpoint path")
            obj = read(self.path)
            validate(obj, self.path, **{k: self.header[k] for k in _MATCH})
            self._loaded = obj

    @classmethod
    def from_config(cls, config, method: str, data: str) -> "Checkpointer":
        from . import distributed

        return cls(getattr(config, "checkpoint", None), method=method, data=data,
                   seed=config.seed, epochs=config.epochs, impl=config.impl,
                   resume=bool(getattr(config, "resume", False)),
                   write=distributed.rank() == 0, world_size=distributed.world_size())

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def resume_state(self):
        if self._loaded is None:
            return None
        return self._loaded["progress"], self._loaded["state"]

    def restore_rng(self) -> None:
        if self._loaded is not None:
            restore_rng(self._loaded["rng"])

    def save(self, progress: Dict[str, Any], state: Dict[str, Any]) -> None:
        if not self.write:
            return
        atomic_save({**self.header, "progress": dict(progress), "rng": capture_rng(),
                     "state": state}, self.path)


def cpu_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A module's ``state_dict`` with every tensor cloned to the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
