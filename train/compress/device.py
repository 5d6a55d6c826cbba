"""Where compression runs: the device a command line asks for, and where a model's weights are.

Every compression function moves its batches to :func:`device_of` the model it is given, so
choosing a device means placing the model there once (``python -m train.prune --device``).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn


def pick_device(name: str | None = None) -> torch.device:
    """``name`` as a torch device, by default CUDA when this host has it, else the CPU.

    Raises ValueError for a name torch does not know, or for CUDA on a host without it:
    torch would otherwise fail later, at the first tensor moved, after minutes of loading
    clips."""
    try:
        device = torch.device(name if name else ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device on this host")
    return device


def device_arg(text: str) -> torch.device:
    """:func:`pick_device` as an argparse ``type``: a refused device is a usage error."""
    try:
        return pick_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are: inputs are moved there (a GPU user prunes XLS-R there)."""
    return next(model.parameters()).device
