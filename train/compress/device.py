"""Where compression runs: where a model's weights are.

Every compression function moves its batches to :func:`device_of` the model it is given, so
choosing a device (train.device, ``python -m train.prune --device``) means placing the model
there once.
"""

from __future__ import annotations

import torch
from torch import nn


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are: inputs are moved there (a GPU user prunes XLS-R there)."""
    return next(model.parameters()).device
