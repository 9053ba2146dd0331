"""Identity modules that mark activations worth reading (TransformerLens-style hook points)."""

from __future__ import annotations

import torch
from torch import nn


class HookPoint(nn.Identity):
    """An identity module whose only job is to carry forward hooks under a stable dotted name.

    Module hooks registered on a ``HookPoint`` see exactly the tensor that flows through that point of
    the computation; the module itself changes nothing and has no parameters.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - identity
        return x
