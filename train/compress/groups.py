"""The prunable units of a network, as groups: conv channels, attention heads, FFN units,
attention-pooling units and whole transformer layers.

A :class:`Group` is everything pruning needs to know about one place in the model: how to
gate its units (for importance), how to remove some of them (physically, with
``train.compress.slicing``), and what one unit costs in parameters and MACs. The same code
covers :class:`~train.compress.nets.DistillMosNet` and a Wav2Vec2 backbone
(:class:`~train.compress.nets.XlsrSqaNet`); they differ only in attribute names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from train.compress.cost import count_params
from train.compress.device import device_of
from train.compress.nets import SAMPLE_RATE, SEGMENT_SAMPLES, DistillMosNet, XlsrSqaNet
from train.compress.slicing import head_idx, slice_conv, slice_linear, slice_norm

KINDS = ("conv", "heads", "ffn", "pool", "layer")


@dataclass
class Group:
    """``n`` units of one kind in one place of the model.

    ``gate`` installs a hook multiplying each unit's output by a gate tensor (returns the hook
    handle); ``apply`` keeps the given unit indices, physically; ``params_per_unit`` and
    ``macs_per_unit`` (per second of audio) price one unit for the greedy order.
    """

    name: str
    kind: str
    n: int
    gate: Callable[[Tensor], object]
    apply: Callable[[Tensor], None]
    params_per_unit: float
    macs_per_unit: float


def _mul_out(mod: nn.Module, shape: Callable[[Tensor], Tensor]):
    return lambda g: mod.register_forward_hook(lambda m, i, o: o * shape(g))


def _mul_in(mod: nn.Module, shape: Callable[[Tensor], Tensor]):
    return lambda g: mod.register_forward_pre_hook(lambda m, i: (i[0] * shape(g), *i[1:]))


def _shapes(model: nn.Module, samples: int) -> dict[nn.Module, tuple[int, ...]]:
    """Output shape of every conv/linear module for one input of ``samples``."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    handles = [m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, tuple(o.shape)))
               for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, samples, device=device_of(model)))
    for h in handles:
        h.remove()
    return shapes


def _layer_groups(l: int, kinds: tuple[str, ...], dim: int, seq: int, frames: float, attn: nn.Module,
                  attn_names: tuple[str, str, str, str, str], ff: nn.Module, ff_names: tuple[str, str]) -> list[Group]:
    """Head and FFN groups of one transformer layer. Distill-MOS and Wav2Vec2 layers differ
    only in attribute names: ``attn_names`` are (q, k, v, out projection, head count) on
    ``attn``, ``ff_names`` (first, second linear) on ``ff``. ``seq`` is the layer's sequence
    length for one input, ``frames`` the same per second of audio."""
    q, k, v, out, count = attn_names
    first, second = ff_names
    groups = []
    if "heads" in kinds:
        hd = attn.head_dim

        def apply_h(keep: Tensor) -> None:
            idx = head_idx(keep, hd)
            for name in (q, k, v):
                setattr(attn, name, slice_linear(getattr(attn, name), out_idx=idx))
            setattr(attn, out, slice_linear(getattr(attn, out), in_idx=idx))
            setattr(attn, count, len(keep))

        hp = 4 * dim * hd + 3 * hd
        groups.append(Group(f"layer{l}.heads", "heads", getattr(attn, count),
                            _mul_in(getattr(attn, out), lambda g: g.repeat_interleave(hd)),
                            apply_h, hp, hp * frames + 2 * seq * hd * frames))
    if "ffn" in kinds:
        def apply_f(keep: Tensor) -> None:
            setattr(ff, first, slice_linear(getattr(ff, first), out_idx=keep))
            setattr(ff, second, slice_linear(getattr(ff, second), in_idx=keep))

        groups.append(Group(f"layer{l}.ffn", "ffn", getattr(ff, first).out_features,
                            _mul_in(getattr(ff, second), lambda g: g), apply_f, 2 * dim + 1, 2 * dim * frames))
    return groups


def distillmos_groups(net: DistillMosNet, kinds: tuple[str, ...], samples: int = SEGMENT_SAMPLES) -> list[Group]:
    """The prunable units of a :class:`DistillMosNet` (plain convs and linears only)."""
    shapes = _shapes(net, samples)
    sec = samples / SAMPLE_RATE
    groups: list[Group] = []
    if "conv" in kinds:
        for i, conv in enumerate(net.convs):
            spatial = math.prod(shapes[conv][2:]) / sec
            fan_in = conv.in_channels * math.prod(conv.kernel_size)
            if i + 1 < len(net.convs):
                nxt = net.convs[i + 1]
                nxt_p = nxt.out_channels * math.prod(nxt.kernel_size)
                nxt_m = nxt_p * math.prod(shapes[nxt][2:]) / sec
            else:
                nxt_p = net.fdim * net.proj.out_features
                nxt_m = nxt_p * shapes[net.proj][1] / sec

            def apply(keep: Tensor, i: int = i) -> None:
                net.convs[i] = slice_conv(net.convs[i], out_idx=keep)
                if i + 1 < len(net.convs):
                    net.convs[i + 1] = slice_conv(net.convs[i + 1], in_idx=keep)
                else:
                    feat = (keep[:, None] * net.fdim + torch.arange(net.fdim)[None, :]).reshape(-1)
                    net.norm_input = slice_norm(net.norm_input, feat)
                    net.norm_wrapper = slice_norm(net.norm_wrapper, feat)
                    net.proj = slice_linear(net.proj, in_idx=feat)

            groups.append(Group(f"conv{i}", "conv", conv.out_channels, _mul_out(conv, lambda g: g[None, :, None, None]),
                                apply, fan_in + 1 + nxt_p, fan_in * spatial + nxt_m))
    dim = net.proj.out_features
    for l, layer in enumerate(net.layers):
        seq = shapes[layer.ff1][1]
        groups += _layer_groups(l, kinds, dim, seq, seq / sec, layer.attn, ("q", "k", "v", "out", "heads"),
                                layer, ("ff1", "ff2"))
    if "pool" in kinds:
        def apply_p(keep: Tensor) -> None:
            net.pool1 = slice_linear(net.pool1, out_idx=keep)
            net.pool2 = slice_linear(net.pool2, in_idx=keep)

        frames = shapes[net.pool1][1] / sec
        groups.append(Group("pool", "pool", net.pool1.out_features, _mul_in(net.pool2, lambda g: g),
                            apply_p, dim + 2, (dim + 1) * frames))
    if "layer" in kinds and len(net.layers) > 0:
        def apply_l(keep: Tensor) -> None:
            for i, layer in enumerate(net.layers):  # which unpruned layer each survivor was
                layer.source_index = getattr(layer, "source_index", i)
            net.layers = nn.ModuleList(net.layers[int(i)] for i in keep)

        def gate_l(g: Tensor):
            handles = [layer.register_forward_hook(lambda m, i, o, j=j: i[0] + g[j] * (o - i[0]))
                       for j, layer in enumerate(net.layers)]
            return _Handles(handles)

        per_p = float(np.mean([count_params(layer) for layer in net.layers]))
        frames = shapes[net.layers[0].ff1][1] / sec
        seq = shapes[net.layers[0].ff1][1]
        per_m = float(np.mean([(count_params(layer) + 2 * seq * layer.attn.heads * layer.attn.head_dim) * frames
                               for layer in net.layers]))
        groups.append(Group("layers", "layer", len(net.layers), gate_l, apply_l, per_p, per_m))
    return groups


class _Handles:
    """Several hook handles removed together."""

    def __init__(self, handles: list) -> None:
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def xlsr_groups(model: XlsrSqaNet, kinds: tuple[str, ...], samples: int = SEGMENT_SAMPLES) -> list[Group]:
    """The prunable units of an :class:`XlsrSqaNet`: feature-encoder conv channels, attention
    heads and FFN units of the Wav2Vec2 backbone (layers are kept: the SQA head reads fixed
    hidden-state indices)."""
    bb = model.backbone
    shapes = _shapes(model, samples)
    sec = samples / SAMPLE_RATE
    groups: list[Group] = []
    convs = bb.feature_extractor.conv_layers
    if "conv" in kinds:
        for i, layer in enumerate(convs):
            conv = layer.conv
            fan_in = conv.in_channels * conv.kernel_size[0]
            if i + 1 < len(convs):
                nxt = convs[i + 1].conv
                nxt_p = nxt.out_channels * nxt.kernel_size[0]
                nxt_m = nxt_p * shapes[nxt][2] / sec
            else:
                nxt_p = bb.feature_projection.projection.out_features
                nxt_m = nxt_p * shapes[bb.feature_projection.projection][1] / sec

            def apply(keep: Tensor, i: int = i) -> None:
                lay = convs[i]
                lay.conv = slice_conv(lay.conv, out_idx=keep)
                if hasattr(lay, "layer_norm"):
                    lay.layer_norm = slice_norm(lay.layer_norm, keep)
                if i + 1 < len(convs):
                    convs[i + 1].conv = slice_conv(convs[i + 1].conv, in_idx=keep)
                else:
                    fp = bb.feature_projection
                    fp.layer_norm = slice_norm(fp.layer_norm, keep)
                    fp.projection = slice_linear(fp.projection, in_idx=keep)

            groups.append(Group(f"fe.conv{i}", "conv", conv.out_channels, _mul_out(layer, lambda g: g[None, :, None]),
                                apply, fan_in + 1 + nxt_p, fan_in * shapes[conv][2] / sec + nxt_m))
    dim = bb.config.hidden_size
    for l, layer in enumerate(bb.encoder.layers):
        ff = layer.feed_forward
        seq = shapes[ff.intermediate_dense][1]
        groups += _layer_groups(l, kinds, dim, seq, seq / sec, layer.attention,
                                ("q_proj", "k_proj", "v_proj", "out_proj", "num_heads"),
                                ff, ("intermediate_dense", "output_dense"))
    return groups


def groups_for(model: nn.Module, kinds: tuple[str, ...], samples: int) -> list[Group]:
    """The groups of ``kinds`` in a :class:`DistillMosNet` or an :class:`XlsrSqaNet`, priced for
    inputs of ``samples``; raises TypeError for any other network."""
    if isinstance(model, DistillMosNet):
        return distillmos_groups(model, kinds, samples)
    if hasattr(model, "backbone") and type(model.backbone).__name__ == "Wav2Vec2Model":
        return xlsr_groups(model, tuple(k for k in kinds if k in ("conv", "heads", "ffn")), samples)
    raise TypeError(f"no prunable structure known for {type(model).__name__}")
