"""Small shared types for the models."""
from __future__ import annotations

from typing import Dict, NamedTuple

import torch


class LossOutput(NamedTuple):
    """A model's loss: ``total`` (a scalar with gradient) and its named parts as floats."""

    total: torch.Tensor
    components: Dict[str, float]


class FitConfig(NamedTuple):
    """What ``deepclust fit METHOD`` passes to a model's ``cli_fit(data, config)``.

    ``epochs=None`` means the method's own default. ``impl`` selects the op path
    (``"auto"``, ``"triton"``, ``"torch"``). ``progress`` turns tqdm bars on.
    ``checkpoint`` is a file the training loop writes atomically at the end of every epoch
    (:mod:`deepclust.checkpoint`); with ``resume`` the loop first restores it and continues
    from there (bitwise the same results as an uninterrupted run on the CPU). Under an
    initialised ``torch.distributed`` group the methods that support it train data-parallel
    (:mod:`deepclust.distributed`).
    """

    seed: int = 0
    device: str = "cpu"
    epochs: "int | None" = None
    impl: str = "auto"
    progress: bool = True
    checkpoint: "str | None" = None
    resume: bool = False
