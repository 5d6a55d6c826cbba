"""Streaming speech-quality students: one network, explicit state, step() == whole clip.

The student is built so that the live monitor pays per hop only for the new audio:

- a fixed complex Gabor filterbank on mel-spaced centre frequencies (a strided conv, 25 ms
  kernel by default: ``gabor_kernel``; 10 or 20 ms hop: ``feature_hop``) gives log band
  energies; its cache is the kernel's last ``gabor_kernel - feature_hop`` samples of audio;
- causal ConvNeXt-style blocks (depthwise causal conv, per-frame layer norm, pointwise MLP)
  in stages that halve the frame rate down to 25 frames/s (100, 50 and 25 at a 10 ms hop;
  50 and 25 at 20 ms), each keeping its last ``k - 1`` input frames as state;
- every 40 ms embedding is projected once to (value, attention logit) and pushed into a ring
  of the last N frames, N = window / 40 ms (the ring's length *is* the window: the runtime
  picks it by the shape of the state it creates);
- masked attention pooling plus masked mean over the ring, then a small MLP, gives the
  outputs (MOS and DNSMOS SIG/BAK/OVRL).

``step`` is the single code path: training runs it once over a whole clip with a fresh
state; the ONNX export is ``step`` itself, with the state flattened into named tensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from train.compress.cost import count_params  # noqa: F401 (the students' count is the study's)

SAMPLE_RATE = 16000
STFT_HOP = 160  # 10 ms feature frames, the default front-end hop
GABOR_KERNEL = 400  # 25 ms analysis window
FRAME_SAMPLES = 640  # 40 ms: one embedding; every hop is a multiple of it
OUTPUTS = ("mos", "sig", "bak", "ovrl")
# Speech presence: the probability that the window holds speech, trained on activity measured
# in the clean source before degradation, so it hears speech through noise that hides it from
# a level-based detector. The graph outputs a probability (a sigmoid in ``step``); training
# works on its logit.
PRESENCE = "speech"
# Stands for an open end of a mos_map's end segment in the graph's clamps.
MAP_OPEN_END = 1e4


@dataclass(frozen=True)
class StudentConfig:
    """Everything needed to rebuild a student; saved beside its weights."""

    name: str = "s"
    n_bands: int = 40
    channels: int = 64
    blocks: tuple[int, ...] = (1, 2, 2)  # blocks per stage: at 100, 50 and 25 frames/s
    kernel: int = 5
    # Dilation of each block at 25 frames/s (empty: all 1). Dilations widen the context an
    # embedding sees (about 0.5 s undilated) at no extra MACs; the state grows instead.
    dilations: tuple[int, ...] = ()
    expansion: int = 2
    embed: int = 64
    head_hidden: int = 64
    outputs: tuple[str, ...] = OUTPUTS + (PRESENCE,)
    # Training-only regulariser (identity in eval mode and in the exported graph): the
    # students overfit the few voices they train on (train MSE keeps falling while
    # validation on unseen voices stalls), so branches and the pooled vector are dropped.
    dropout: float = 0.0
    # > 0: the speech-presence logit comes from its own small MLP over the pooled vector
    # (this many hidden units; fitted by ``train.presence_refit --mlp``) instead of a row of
    # the head, which is linear in the hidden vector the quality outputs share. Tried once on
    # streamqa-s, not shipped (docs/experiments/2026-12-real-voices.md, round 7).
    presence_hidden: int = 0
    # Samples between front-end frames: 160 (100 frames/s) or 320 (50 frames/s). Each stage
    # after the first halves the rate, and the last must run at one frame per 40 ms, so a
    # 320-sample hop takes two stages. Why 320: a live 1 s hop pays per second of audio for
    # the front end and the first stage, which at 100 frames/s were 60 % of its MACs.
    feature_hop: int = STFT_HOP
    # Taps of the Gabor filters (their analysis window): 400 = 25 ms. The front end costs
    # 2 * n_bands * gabor_kernel MACs per frame, the largest single cost of a live hop
    # (docs/experiments/2026-12-real-voices.md, round 18).
    gabor_kernel: int = GABOR_KERNEL
    # Knots (raw, mapped) of a monotone piecewise-linear map of the ``mos`` output, fitted
    # after training on voices the student never heard (``train.mos_calibration``), carried
    # on beyond the end knots with the end segments' slopes; empty: no map. For a student
    # whose offset on unheard voices is shared by them; streamqa-s's is not, and its maps
    # did worse on held-out voices (docs/experiments/2026-12-real-voices.md, round 21).
    # Training never applies it.
    mos_map: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.mos_map:
            xs, ys = zip(*self.mos_map)
            if len(xs) < 2 or any(b <= a for a, b in zip(xs, xs[1:])) or any(b < a for a, b in zip(ys, ys[1:])):
                raise ValueError(f"mos_map {self.mos_map} needs at least 2 knots, raw values rising and mapped values not falling")
        if self.gabor_kernel <= self.feature_hop:  # the audio cache holds the kernel's overlap
            raise ValueError(f"gabor_kernel {self.gabor_kernel} must be longer than feature_hop {self.feature_hop}")
        if FRAME_SAMPLES != self.feature_hop * 2 ** (len(self.blocks) - 1):
            raise ValueError(f"feature_hop {self.feature_hop} with {len(self.blocks)} stages does not end "
                             f"at one frame per {FRAME_SAMPLES} samples")

    @property
    def audio_cache(self) -> int:
        """Samples of audio the front end keeps between hops: the Gabor window's overlap."""
        return self.gabor_kernel - self.feature_hop

    @property
    def feature_rate(self) -> int:
        """Front-end frames per second."""
        return SAMPLE_RATE // self.feature_hop

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "StudentConfig":
        d = json.loads(text)
        d["blocks"] = tuple(d["blocks"])
        d["outputs"] = tuple(d["outputs"])
        d["dilations"] = tuple(d.get("dilations", ()))
        d["mos_map"] = tuple((float(x), float(y)) for x, y in d.get("mos_map", ()))
        return cls(**d)


# A family spanning ~2.5 orders of magnitude in parameters.
FAMILY: dict[str, StudentConfig] = {
    # The floor of the family: 8 channels, about 2 k parameters; nearly all of its cost is the
    # fixed Gabor front end, so it shows what the learnt part contributes at all.
    "xxxs": StudentConfig("xxxs", channels=8, blocks=(0, 1, 1), embed=8, head_hidden=8, expansion=2),
    "xxs": StudentConfig("xxs", channels=16, blocks=(0, 1, 1), embed=16, head_hidden=16, expansion=2),
    "xs": StudentConfig("xs", channels=32, blocks=(0, 1, 2), embed=32, head_hidden=32),
    # ``streamqa-s``: a 12 ms Gabor window (192 taps) costs its accuracy nothing on val and
    # 20 % of its MACs (docs/experiments/2026-12-real-voices.md, rounds 18-20).
    "s": StudentConfig("s", channels=64, blocks=(1, 2, 2), embed=64, head_hidden=64, gabor_kernel=192),
    # Near the top of the shipping budget (<= 250 k parameters, <= 20 M MAC/s): wider,
    # and its depth moved to the 50 and 25 frames/s stages where a block costs less.
    "sm": StudentConfig("sm", channels=96, blocks=(0, 2, 3), embed=96, head_hidden=96),
    # ``s`` on a 20 ms front end: its 100 frames/s block moves to 50 frames/s, for the live
    # monitor's cost per hop (docs/experiments/2026-12-real-voices.md, round 8).
    "s50": StudentConfig("s50", channels=64, blocks=(2, 2), embed=64, head_hidden=64, feature_hop=320),
    "s50d": StudentConfig("s50d", channels=64, blocks=(2, 3), embed=64, head_hidden=64, feature_hop=320),
    "m": StudentConfig("m", channels=128, blocks=(1, 2, 3), embed=128, head_hidden=128),
    "l": StudentConfig("l", channels=192, blocks=(1, 3, 4), embed=192, head_hidden=192),
    "xl": StudentConfig("xl", channels=256, blocks=(1, 4, 5), embed=256, head_hidden=256, expansion=3),
}


def band_edges(n_bands: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The n_bands + 2 mel-spaced frequencies (Hz) whose inner ones are the band centres."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    imel = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    return imel(np.linspace(mel(50.0), mel(sr / 2 - 200.0), n_bands + 2))


def gabor_filterbank(n_bands: int, kernel: int = GABOR_KERNEL, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Complex Gabor filters at mel-spaced centres, as [2 * n_bands, 1, kernel] real weights.

    A fixed filterbank in the time domain costs n_bands * 2 * kernel MACs per frame
    (3.2 M MAC/s for 40 bands), a third of a 400-point DFT, and is a plain strided conv in
    ONNX. Bandwidths follow the spacing of the mel scale, so the band energies behave like
    a log-mel spectrogram.
    """
    edges = band_edges(n_bands, sr)
    centres = edges[1:-1]
    bandwidth = np.maximum((edges[2:] - edges[:-2]) / 2.0, 40.0)  # Hz, full width ~ 2.35 sigma_f
    t = (np.arange(kernel) - (kernel - 1) / 2.0) / sr
    taper = np.hanning(kernel)
    weights = np.zeros((2 * n_bands, 1, kernel), np.float32)
    for i, (fc, bw) in enumerate(zip(centres, bandwidth)):
        sigma_t = 2.35 / (2.0 * math.pi * bw)
        env = np.exp(-0.5 * (t / sigma_t) ** 2) * taper
        env /= np.sqrt(np.sum(env**2)) + 1e-12
        weights[2 * i, 0] = env * np.cos(2 * math.pi * fc * t)
        weights[2 * i + 1, 0] = env * np.sin(2 * math.pi * fc * t)
    return weights


class CausalConv(nn.Module):
    """Conv1d over time that only looks back; its state is its last ``(kernel - 1) * dilation`` inputs."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int = 1, dilation: int = 1):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(c_in, c_out, kernel, groups=groups, dilation=dilation)

    def state_shape(self) -> tuple[int, int]:
        return (self.conv.in_channels, (self.kernel - 1) * self.conv.dilation[0])

    def forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        full = torch.cat([cache, x], dim=2)
        return self.conv(full), full[:, :, x.shape[2] :]


class Block(nn.Module):
    """Depthwise causal conv -> per-frame LayerNorm -> pointwise MLP, with a residual."""

    def __init__(self, channels: int, kernel: int, expansion: int, dropout: float = 0.0, dilation: int = 1):
        super().__init__()
        self.dropout = dropout
        self.dw = CausalConv(channels, channels, kernel, groups=channels, dilation=dilation)
        self.norm = nn.LayerNorm(channels)
        self.pw1 = nn.Linear(channels, channels * expansion)
        self.pw2 = nn.Linear(channels * expansion, channels)

    def forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        y, cache = self.dw(x, cache)
        y = self.norm(y.transpose(1, 2))
        y = self.pw2(F.gelu(self.pw1(y))).transpose(1, 2)
        return x + F.dropout(y, self.dropout, self.training), cache


class Student(nn.Module):
    """The streaming student. Use :meth:`init_state` and :meth:`step`; see module docstring."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("gabor", torch.from_numpy(gabor_filterbank(cfg.n_bands, cfg.gabor_kernel)),
                             persistent=False)
        # Per-band affine on log energies; set from data by :meth:`init_feature_norm`.
        self.feat_scale = nn.Parameter(torch.full((cfg.n_bands,), 0.25))
        self.feat_bias = nn.Parameter(torch.zeros(cfg.n_bands))
        self.stem = CausalConv(cfg.n_bands, cfg.channels, 3)
        last = len(cfg.blocks) - 1
        if cfg.dilations and len(cfg.dilations) != cfg.blocks[last]:
            raise ValueError(f"dilations {cfg.dilations} must give one per block at 25 frames/s ({cfg.blocks[last]})")
        dilation = lambda s, b: cfg.dilations[b] if s == last and cfg.dilations else 1  # noqa: E731
        self.stages = nn.ModuleList(
            nn.ModuleList(Block(cfg.channels, cfg.kernel, cfg.expansion, cfg.dropout, dilation(s, b)) for b in range(n))
            for s, n in enumerate(cfg.blocks)
        )
        self.proj = nn.Linear(cfg.channels, cfg.embed + 1)  # value + attention logit
        self.head = nn.Sequential(
            nn.Linear(2 * cfg.embed, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, len(cfg.outputs))
        )
        self.out_bias = nn.Parameter(torch.full((len(cfg.outputs),), 3.0))
        if cfg.mos_map:  # as clamps per segment: y = y0 + sum_k slope_k * (clamp(x, lo_k, hi_k) - x_{k-1})
            xs, ys = (torch.tensor(v, dtype=torch.float32) for v in zip(*cfg.mos_map))
            slopes = (ys[1:] - ys[:-1]) / (xs[1:] - xs[:-1])
            lo, hi = xs[:-1].clone(), xs[1:].clone()
            lo[0], hi[-1] = -MAP_OPEN_END, MAP_OPEN_END  # the end segments carry on
            self.register_buffer("map_lo", lo[None, :], persistent=False)
            self.register_buffer("map_hi", hi[None, :], persistent=False)
            self.register_buffer("map_slope", slopes[:, None], persistent=False)
            self.register_buffer("map_base", (ys[0] - (slopes * xs[:-1]).sum()).reshape(1, 1), persistent=False)
        self.presence_head = None
        if cfg.presence_hidden:
            if PRESENCE not in cfg.outputs:
                raise ValueError("presence_hidden needs the speech-presence output")
            self.presence_head = nn.Sequential(
                nn.Linear(2 * cfg.embed, cfg.presence_hidden), nn.GELU(), nn.Linear(cfg.presence_hidden, 1))

    # --- state -----------------------------------------------------------------------
    def state_shapes(self, window_frames: int) -> dict[str, tuple[int, ...]]:
        """Per-item shapes of the named state tensors (batch dim excluded)."""
        shapes: dict[str, tuple[int, ...]] = {"audio": (self.cfg.audio_cache,),
                                              "stem": self.stem.state_shape()}
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                shapes[f"s{s}b{b}"] = block.dw.state_shape()
        shapes["ring"] = (window_frames, self.cfg.embed + 1)
        shapes["mask"] = (window_frames,)
        return shapes

    def init_state(self, batch: int, window_frames: int) -> dict[str, Tensor]:
        """All-zero state: empty caches and an empty ring (mask 0) of ``window_frames``."""
        return {k: torch.zeros((batch, *v)) for k, v in self.state_shapes(window_frames).items()}

    # --- computation -----------------------------------------------------------------
    def log_energies(self, audio: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """Band energies [B, n_bands, H / feature_hop] of ``audio`` [B, H] given the audio cache."""
        full = torch.cat([cache, audio], dim=1)
        z = self.filterbank(full)
        energy = z.pow(2).reshape(z.shape[0], self.cfg.n_bands, 2, z.shape[2]).sum(2)
        # the new cache cut at a constant offset from the end: no Shape/Gather nodes in the graph
        return torch.log(energy + 1e-7), full[:, -self.cfg.audio_cache:]

    def filterbank(self, full: Tensor) -> Tensor:
        """The Gabor filters' outputs [B, 2 * n_bands, frames] of audio [B, T] (the cache
        included); the exported graph computes it as a 2-D conv (train.export._GraphStudent)."""
        return F.conv1d(full.unsqueeze(1), self.gabor, stride=self.cfg.feature_hop)

    def clip_energies(self, audio: Tensor) -> Tensor:
        """Band energies of whole clips [B, T] from their first sample (an empty audio cache)."""
        cache = audio.new_zeros(audio.shape[0], self.cfg.audio_cache)
        return self.log_energies(audio, cache)[0]

    def embed_frames(self, logmel: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Causal encoder: [B, bands, n * 640 / feature_hop] -> [B, n, embed + 1] at 25 frames/s."""
        new: dict[str, Tensor] = {}
        x = logmel * self.feat_scale[None, :, None] + self.feat_bias[None, :, None]
        x, new["stem"] = self.stem(x, state["stem"])
        for s, stage in enumerate(self.stages):
            if s > 0:
                x = F.avg_pool1d(x, 2)
            for b, block in enumerate(stage):
                x, new[f"s{s}b{b}"] = block(x, state[f"s{s}b{b}"])
        return self.proj(x.transpose(1, 2)), new

    def pooled(self, ring: Tensor, mask: Tensor) -> Tensor:
        """The pooled vector [B, 2 * embed] the head reads: attention and mean pooling of the ring."""
        values, logits = ring[..., :-1], ring[..., -1]
        logits = logits + (mask - 1.0) * 1e4
        # Both poolings as one [B, 2, N] x [B, N, E] product: one MatMul node in the graph
        # instead of two multiplies and four sums, for the live step's fixed cost per hop.
        rows = torch.stack([torch.softmax(logits, dim=1) * mask, mask], dim=1)
        sums = torch.matmul(rows, values) / (rows.sum(2, keepdim=True) + 1e-6)
        return F.dropout(sums.flatten(1), self.cfg.dropout, self.training)

    def head_scores(self, pooled: Tensor) -> Tensor:
        """The head on a pooled vector: [B, K] scores (the speech-presence column a logit)."""
        scores = self.head(pooled) + self.out_bias
        if self.presence_head is None:
            return scores
        k = self.cfg.outputs.index(PRESENCE)
        return torch.cat([scores[:, :k], self.presence_head(pooled), scores[:, k + 1 :]], dim=1)

    def step(self, audio: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One hop: audio [B, H] (H a multiple of 640) -> (scores [B, K], next state)."""
        logmel, audio_cache = self.log_energies(audio, state["audio"])
        frames, new = self.embed_frames(logmel, state)
        n = frames.shape[1]
        ring = torch.cat([state["ring"], frames], dim=1)[:, n:]
        mask = torch.cat([state["mask"], torch.ones_like(frames[..., 0])], dim=1)[:, n:]
        new.update(audio=audio_cache, ring=ring, mask=mask)
        return self.presence_probability(self.map_mos(self.head_scores(self.pooled(ring, mask)))), new

    def map_mos(self, scores: Tensor) -> Tensor:
        """``scores`` with the ``mos`` column (the first) through the config's ``mos_map``;
        without a map the graph gets no node for it."""
        if not self.cfg.mos_map:
            return scores
        clamped = torch.minimum(torch.maximum(scores[:, :1], self.map_lo), self.map_hi)
        mapped = torch.matmul(clamped, self.map_slope) + self.map_base
        is_mos = torch.arange(len(self.cfg.outputs), device=scores.device) == 0
        return torch.where(is_mos, mapped, scores)

    def presence_probability(self, scores: Tensor) -> Tensor:
        """``scores`` with the speech-presence logit (if any) turned into a probability."""
        if PRESENCE not in self.cfg.outputs:
            return scores
        # one Where over the columns rather than slices and a concat: fewer graph nodes per step
        is_presence = torch.arange(len(self.cfg.outputs), device=scores.device) == self.cfg.outputs.index(PRESENCE)
        return torch.where(is_presence, torch.sigmoid(scores), scores)

    def forward(self, audio: Tensor) -> Tensor:
        """Score whole clips [B, T] (T a multiple of 640) as one window: the training path."""
        state = self.init_state(audio.shape[0], audio.shape[1] // FRAME_SAMPLES)
        state = {k: v.to(audio) for k, v in state.items()}
        return self.step(audio, state)[0]

    def forward_features(self, logmel: Tensor) -> Tensor:
        """Score whole clips from precomputed log energies [B, bands, T / feature_hop] (fast
        training; the speech-presence column is a logit here)."""
        return self.head_scores(self.pooled_features(logmel))

    def pooled_features(self, logmel: Tensor) -> Tensor:
        """The pooled vectors [B, 2 * embed] of whole clips given as log energies."""
        state = self.init_state(logmel.shape[0], logmel.shape[2] * self.cfg.feature_hop // FRAME_SAMPLES)
        state = {k: v.to(logmel) for k, v in state.items()}
        frames, _ = self.embed_frames(logmel, state)
        return self.pooled(frames, torch.ones_like(frames[..., 0]))


def macs_per_second(cfg: StudentConfig, window_frames: int = 192) -> int:
    """Analytical multiply-accumulates per second of audio at a 1 s hop.

    Counts every conv/linear (frontend included) at its frame rate; the pooling head runs
    once per hop over ``window_frames`` ring entries. Checked against
    ``torch.utils.flop_counter`` in the tests.
    """
    c, e, x = cfg.channels, cfg.embed, cfg.expansion
    per_s = 0
    per_s += cfg.feature_rate * 2 * cfg.n_bands * cfg.gabor_kernel  # Gabor filterbank
    per_s += cfg.feature_rate * cfg.n_bands * c * 3  # stem
    for stage, n in enumerate(cfg.blocks):
        rate = cfg.feature_rate // (2**stage)
        per_s += n * rate * (c * cfg.kernel + 2 * c * c * x)
    per_s += 25 * c * (e + 1)  # projection of each 40 ms frame
    head = window_frames * 2 * e + 2 * e * cfg.head_hidden + cfg.head_hidden * len(cfg.outputs)
    head += 2 * e * cfg.presence_hidden + cfg.presence_hidden  # the presence MLP, if any
    return int(per_s + head)
