"""The networks the compression study edits: a compressible Distill-MOS and XLS-R-SQA as one module.

The shipped ``ConvTransformerSQAModel`` packs its attention into ``nn.MultiheadAttention``
(one fused in-projection, a fixed head count) and adds a positional table of exactly 384
frames, so heads cannot be removed physically and it cannot run on short training crops.
:class:`DistillMosNet` is the same computation with explicit, individually sliceable
q/k/v/out projections, FFN and conv layers; :func:`from_reference` copies the shipped weights
into it (tests check the outputs match), and every compression method edits this one network.

Checkpoints pickle these classes whole, so a class that moves must stay loadable under its
old module path (see ``train.compress.checkpoint``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

SAMPLE_RATE = 16000  # Distill-MOS's and XLS-R's input rate, the runtime's (train.students.SAMPLE_RATE)
SEGMENT_SAMPLES = 122_880  # Distill-MOS's segment; also the length of every generated clip


class Attention(nn.Module):
    """Self-attention with separate projections, so whole heads can be sliced out."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q = nn.Linear(dim, heads * head_dim)
        self.k = nn.Linear(dim, heads * head_dim)
        self.v = nn.Linear(dim, heads * head_dim)
        self.out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    """Post-norm transformer layer, numerically the same as ``nn.TransformerEncoderLayer``
    (relu, eps 1e-5, no dropout at inference)."""

    def __init__(self, dim: int, heads: int, head_dim: int, ffn: int):
        super().__init__()
        self.attn = Attention(dim, heads, head_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ffn)
        self.ff2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ff2(F.relu(self.ff1(x))))


class DistillMosNet(nn.Module):
    """Distill-MOS on one 7.68 s segment (or a shorter crop): waveform [B, T] -> MOS [B].

    Compressed variants change only the modules' sizes (conv channels, heads, FFN units, layer
    count) or replace a conv/linear by a factorised ``nn.Sequential``; ``forward`` is unchanged.
    """

    def __init__(self, convs: list[nn.Module], fdim: int, channels: int, pe: Tensor,
                 layers: list[EncoderLayer], dim: int, pool_hidden: int):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.fdim = fdim
        width = channels * fdim
        self.norm_input = nn.BatchNorm1d(width)
        self.norm_wrapper = nn.BatchNorm1d(width)
        self.proj = nn.Linear(width, dim)
        self.register_buffer("pe", pe)
        self.layers = nn.ModuleList(layers)
        self.norm_trans = nn.BatchNorm1d(dim)
        self.pool1 = nn.Linear(dim, pool_hidden)
        self.pool2 = nn.Linear(pool_hidden, 1)
        self.pool3 = nn.Linear(dim, 1)

    def features(self, x: Tensor) -> Tensor:
        """Peak-normalised compressed complex STFT through the CNN: [B, frames, C * F]."""
        from distillmos.sqa import _complex_compressed

        x = x / (torch.max(torch.abs(x), dim=1, keepdim=True).values + 1e-8)
        h = _complex_compressed(x, 160, 320).permute(0, 3, 1, 2)
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
        return torch.flatten(h, 1, -2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        h = self.norm_wrapper(self.norm_input(h.transpose(1, 2))).transpose(1, 2)
        h = self.proj(h)
        if h.shape[1] > self.pe.shape[1]:
            raise ValueError(f"input of {h.shape[1]} frames exceeds the {self.pe.shape[1]}-frame segment")
        h = h + self.pe[:, : h.shape[1]]
        for layer in self.layers:
            h = layer(h)
        h = self.norm_trans(h.transpose(1, 2)).transpose(1, 2)
        att = torch.softmax(self.pool2(F.relu(self.pool1(h))).transpose(1, 2), dim=2)
        pooled = torch.bmm(att, h).squeeze(1)
        return 1.0 + 4.0 * torch.sigmoid(self.pool3(pooled)).squeeze(-1)


def from_reference(ref: nn.Module) -> DistillMosNet:
    """Copy a ``distillmos.sqa.ConvTransformerSQAModel`` into a :class:`DistillMosNet`."""
    convs = [m for m in ref.cnn.cnn if isinstance(m, nn.Conv2d)]
    head = ref.transformer_pool_attn
    tw = head.transformer
    dim = tw.linear_proj.out_features
    enc_layers = list(tw.transformer_encoder.layers)
    heads = enc_layers[0].self_attn.num_heads
    layers = []
    for src in enc_layers:
        layer = EncoderLayer(dim, heads, dim // heads, src.linear1.out_features)
        wq, wk, wv = src.self_attn.in_proj_weight.detach().chunk(3)
        bq, bk, bv = src.self_attn.in_proj_bias.detach().chunk(3)
        for lin, w, b in ((layer.attn.q, wq, bq), (layer.attn.k, wk, bk), (layer.attn.v, wv, bv)):
            lin.weight.data.copy_(w)
            lin.bias.data.copy_(b)
        layer.attn.out.load_state_dict(src.self_attn.out_proj.state_dict())
        layer.norm1.load_state_dict(src.norm1.state_dict())
        layer.norm2.load_state_dict(src.norm2.state_dict())
        layer.ff1.load_state_dict(src.linear1.state_dict())
        layer.ff2.load_state_dict(src.linear2.state_dict())
        layers.append(layer)
    net = DistillMosNet(
        [copy.deepcopy(c) for c in convs], ref.cnn.fdim_cnn_out, convs[-1].out_channels,
        tw.position_encoding.pe.detach().clone(), layers, dim, head.pool.linear1.out_features,
    )
    net.norm_input.load_state_dict(head.norm_input.state_dict())
    net.norm_wrapper.load_state_dict(tw.norm.state_dict())
    net.proj.load_state_dict(tw.linear_proj.state_dict())
    net.norm_trans.load_state_dict(head.norm_trans.state_dict())
    net.pool1.load_state_dict(head.pool.linear1.state_dict())
    net.pool2.load_state_dict(head.pool.linear2.state_dict())
    net.pool3.load_state_dict(head.pool.linear3.state_dict())
    return net.eval()


def load_reference_net() -> DistillMosNet:
    """The shipped Distill-MOS weights as a :class:`DistillMosNet`."""
    from train.teachers.distillmos import load_distillmos_model

    return from_reference(load_distillmos_model())


class XlsrSqaNet(nn.Module):
    """Waveform [B, T] -> MOS [B] through a Wav2Vec2 backbone and the XLS-R-SQA head, as
    ``train.teachers.xlsr_sqa.XlsrSqaTeacher`` scores (per-utterance normalisation, centre crop
    or zero pad of the hidden states to 384 frames), but differentiable and prunable."""

    def __init__(self, backbone: nn.Module, head: nn.Module, layers: tuple[int, ...]):
        super().__init__()
        from xls_r_sqa.center_crop import CenterCrop
        from xls_r_sqa.config import FEAT_SEQ_LEN

        self.backbone, self.head, self.layers = backbone, head, tuple(layers)
        self.crop = CenterCrop(FEAT_SEQ_LEN)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-7)
        hidden = self.backbone(x, output_hidden_states=True).hidden_states
        feats = [self.crop(hidden[i]) for i in self.layers]
        q = self.head(feats[0] if len(feats) == 1 else tuple(feats))
        return 1.0 + 4.0 * q.reshape(-1)
