"""What a network costs: parameters (dense and non-zero) and multiply-accumulates per forward pass.

One home for ``count_params``: the students (``train.students``) and the compression study
count alike, so their parameter figures compare.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from train.compress.device import device_of
from train.compress.nets import SAMPLE_RATE, SEGMENT_SAMPLES, Attention, DistillMosNet


def count_params(model: nn.Module) -> int:
    """Parameters of ``model``, zeros included: the size a checkpoint or a dense graph has."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameters of ``model``: what magnitude pruning leaves."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def count_macs(model: nn.Module, audio: Tensor) -> int:
    """Multiply-accumulates of one forward pass, from the shapes each layer sees.

    Counts every conv and linear (out elements x fan-in), the two attention matmuls
    (2 x heads x L^2 x head_dim) of :class:`Attention` and of transformers' Wav2Vec2 attention,
    and the attention-pooling sum (L x width);
    norms, activations and the STFT are left out, as ``torch.utils.flop_counter`` leaves them
    out (the tests check both agree). Dense kernels execute zeros, so sparsity does not count.
    """
    total = 0

    def conv_linear(mod: nn.Module, inputs: tuple, out: Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features
        else:
            fan_in = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
            total += out.numel() * fan_in

    def attention(mod: nn.Module, inputs: tuple, out) -> None:
        nonlocal total
        x = inputs[0] if inputs else None
        if x is None:
            return
        b, n = x.shape[0], x.shape[1]
        width = mod.heads * mod.head_dim if isinstance(mod, Attention) else mod.num_heads * mod.head_dim
        total += 2 * b * n * n * width

    def pooling(width: int):
        def hook(mod: nn.Module, inputs: tuple, out: Tensor) -> None:
            nonlocal total
            total += out.shape[0] * out.shape[1] * width  # attention-weighted sum over frames
        return hook

    handles = []
    if isinstance(model, DistillMosNet):
        handles.append(model.pool2.register_forward_hook(pooling(model.pool3.in_features)))
    for mod in model.modules():
        if type(mod).__name__ == "PoolAttFF":
            handles.append(mod.linear2.register_forward_hook(pooling(mod.linear3.in_features)))
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            handles.append(mod.register_forward_hook(conv_linear))
        elif isinstance(mod, Attention) or type(mod).__name__ == "Wav2Vec2Attention":
            handles.append(mod.register_forward_hook(attention, with_kwargs=False))
    try:
        with torch.no_grad():
            model(audio.to(device_of(model)))
    finally:
        for h in handles:
            h.remove()
    return total


def macs_per_second_of(model: nn.Module, samples: int = SEGMENT_SAMPLES) -> int:
    """MACs per second of audio for one forward pass over ``samples`` (batch of one)."""
    return int(count_macs(model, torch.zeros(1, samples)) * SAMPLE_RATE / samples)
