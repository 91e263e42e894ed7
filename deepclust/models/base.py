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
    """

    seed: int = 0
    device: str = "cpu"
    epochs: "int | None" = None
    impl: str = "auto"
    progress: bool = True
