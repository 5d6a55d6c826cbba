"""Where a training process runs: its torch device and, under ``torchrun``, its process group.

Shared by the training entry points so that each picks the DDP backend the same way: NCCL
only moves CUDA tensors and needs one GPU per rank, gloo is the CPU backend. A rank's CUDA
device is ``cuda:LOCAL_RANK`` (torchrun sets it), so ranks on one host never share a GPU.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``: the default of every ``--device`` flag."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_device(name: str | None = None) -> torch.device:
    """``name`` as a torch device, by default CUDA when this host has it, else the CPU.

    Raises ValueError for a name torch does not know, or for CUDA on a host without it:
    torch would otherwise fail later, at the first tensor moved, after minutes of loading
    clips."""
    try:
        device = torch.device(name if name else default_device())
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


def init_ranks(device: str | torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); joins the process group when launched by
    ``torchrun`` (``WORLD_SIZE`` set), else (0, 1, device).

    ``cuda`` without an index becomes ``cuda:LOCAL_RANK`` and is made the current device
    before NCCL starts, which is what NCCL expects of a rank; any other device uses gloo.
    """
    dev = torch.device(device)
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, dev
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def leave_ranks() -> None:
    """Leave the process group, all ranks together: a barrier, then its destruction (a no-op
    outside ``torchrun``). Without the barrier, the rank that finishes first (rank 1, while
    rank 0 still writes the checkpoint) tears down its gloo connections under its peer, and
    one of the two processes aborts at exit ("terminate called without an active
    exception"), which torchrun reports as a failed run after the work is done."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
