"""Toy networks and audio for the compression tests (train.compress, benchmarks.compression).

The networks have the real layouts (so every pruning path runs on them) at a width that
trains in milliseconds; the audio is synthetic, so no test needs generated speech.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from train.compress.nets import SAMPLE_RATE, DistillMosNet, EncoderLayer, XlsrSqaNet


def tiny_distillmos_net(seed: int = 0) -> DistillMosNet:
    """A random :class:`DistillMosNet` of the real layout at toy width."""
    torch.manual_seed(seed)
    chans, convs, fdim, prev = (4, 4, 8, 8, 8, 8), [], 161, 2
    for i, c in enumerate(chans):
        f_stride, t_stride = (2 if i >= 1 else 1), (2 if i == len(chans) - 1 else 1)
        convs.append(nn.Conv2d(prev, c, (3, 3), stride=(f_stride, t_stride), padding=(0, 1)))
        fdim, prev = (fdim - 3) // f_stride + 1, c
    dim = 16
    layers = [EncoderLayer(dim, 2, 8, 32) for _ in range(2)]
    return DistillMosNet(convs, fdim, prev, 0.1 * torch.randn(1, 384, dim), layers, dim, 32).eval()


def synthetic_clips(n: int, samples: int, seed: int = 0) -> np.ndarray:
    """Speech-like test signals (harmonic bursts) at a spread of noise levels: [n, samples]:
    tests cannot count on generated speech being there."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SAMPLE_RATE
    out = np.empty((n, samples), np.float32)
    for i in range(n):
        f0 = rng.uniform(90, 220)
        voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
        envelope = (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > 0).astype(np.float64)
        noise = rng.standard_normal(samples) * 10 ** (-rng.uniform(0, 40) / 20)
        out[i] = 0.3 * voiced * envelope + 0.3 * noise
    return out


def tiny_xlsr_net(seed: int = 0) -> XlsrSqaNet:
    """A random XLS-R-SQA of the real architecture at toy width."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from train.teachers.xlsr_sqa import build_head

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         conv_dim=(16, 16, 16, 16, 16, 16, 16), feat_extract_norm="layer", do_stable_layer_norm=True,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    backbone = Wav2Vec2Model(cfg).eval()
    return XlsrSqaNet(backbone, build_head(32, (1, 2), None), (1, 2)).eval()
