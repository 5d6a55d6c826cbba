"""Shared parts of the compression study: a compressible Distill-MOS, MAC counting, audio crops,
cached reference targets and the distillation fine-tuning loop.

The shipped ``ConvTransformerSQAModel`` packs its attention into ``nn.MultiheadAttention``
(one fused in-projection, a fixed head count) and adds a positional table of exactly 384
frames, so heads cannot be removed physically and it cannot run on short training crops.
:class:`DistillMosNet` is the same computation with explicit, individually sliceable
q/k/v/out projections, FFN and conv layers; :func:`from_reference` copies the shipped weights
into it (tests check the outputs match), and every compression method edits this one network.
"""

from __future__ import annotations

import argparse

import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import soxr
import torch
from torch import Tensor, nn
from torch.nn import functional as F

SAMPLE_RATE = 16000
SEGMENT_SAMPLES = 122_880  # Distill-MOS's segment; also the length of every generated clip
EXCLUDED_LANGS = ("fr", "ru")  # reserved for independent evaluation


# --------------------------------------------------------------------------------------------
# The compressible Distill-MOS
# --------------------------------------------------------------------------------------------
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
    import copy

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


# --------------------------------------------------------------------------------------------
# Size and cost
# --------------------------------------------------------------------------------------------
def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are: inputs are moved there (a GPU user prunes XLS-R there)."""
    return next(model.parameters()).device


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
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


# --------------------------------------------------------------------------------------------
# Audio and targets
# --------------------------------------------------------------------------------------------
def load_clips(split: str, n: int, *, labels_csv: Path | None = None, audio_dir: Path = Path("cache/audio"),
               manifests: Path = Path("cache/manifests"), cache_dir: Path = Path("cache/compression"), seed: int = 0,
               log: Callable[[str], None] = print) -> tuple[np.ndarray, list[str]]:
    """``n`` clips [n, 122880] of ``split`` and their speakers, cached as one .npz file.

    With ``labels_csv`` (a ``train.label`` output), clips are those of the CSV's ``split`` rows
    whose int16 audio the labeller cached in ``audio_dir``: they are read from disk, where
    rendering them again from the manifest runs every codec chain. Without it, clips are
    rendered from the manifest. Clips are drawn at random (``seed``) over the whole split, so
    every speaker of the held-out test split is represented; fr/ru never are: label CSVs carry
    no language, so a labelled clip's language is looked up in the split's manifest.
    """
    tag = f"_{labels_csv.stem}" if labels_csv is not None else ""
    out = cache_dir / f"{split}_{n}_{seed}{tag}.npz"
    if out.exists():
        z = np.load(out)
        return z["audio"], [str(s) for s in z["speakers"]]
    rng = np.random.default_rng(seed)
    audio: list[np.ndarray] = []
    speakers: list[str] = []
    from train.data.manifest import read_manifest, render_clip

    manifest = manifests / f"{split}.csv"
    if labels_csv is not None:
        from train.distill import read_labels

        listed = read_manifest(manifest) if manifest.exists() else []
        reserved = {r.clip_id for r in listed if r.lang in EXCLUDED_LANGS}
        rows = [r for r in read_labels(labels_csv, split) if r["clip_id"] not in reserved
                and (audio_dir / f"{r['sha256']}.npy").exists()]
        if len(rows) < n:
            raise ValueError(f"{labels_csv}: only {len(rows)} {split} clips have cached audio in {audio_dir}, "
                             f"{n} requested")
        for i in sorted(rng.choice(len(rows), n, replace=False)):
            audio.append(np.load(audio_dir / f"{rows[i]['sha256']}.npy").astype(np.float32) / 32768.0)
            speakers.append(rows[i].get("speaker", ""))
    else:
        mrows = [r for r in read_manifest(manifest) if r.lang not in EXCLUDED_LANGS]
        if len(mrows) < n:
            raise ValueError(f"{split}: only {len(mrows)} clips, {n} requested")
        t0 = time.time()
        for j, i in enumerate(sorted(rng.choice(len(mrows), n, replace=False))):
            audio.append(render_clip(mrows[i])[:SEGMENT_SAMPLES].astype(np.float32))
            speakers.append(mrows[i].speaker)
            if (j + 1) % 100 == 0:
                log(f"rendered {j + 1}/{n} {split} clips ({time.time() - t0:.0f}s)")
    stacked = np.stack([np.pad(a, (0, max(0, SEGMENT_SAMPLES - a.size)))[:SEGMENT_SAMPLES] for a in audio])
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out, audio=stacked, speakers=np.array(speakers))
    return stacked, speakers


def make_crops(clips: np.ndarray, crop_samples: int, per_clip: int, seed: int = 0) -> np.ndarray:
    """``per_clip`` random crops of each clip, at deterministic offsets: [N * per_clip, crop]."""
    if not 0 < crop_samples <= clips.shape[1]:
        raise ValueError(f"crop of {crop_samples} samples does not fit clips of {clips.shape[1]}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, clips.shape[1] - crop_samples + 1, size=(clips.shape[0], per_clip))
    return np.stack([clips[i, s : s + crop_samples] for i in range(clips.shape[0]) for s in starts[i]])


def check_speed_range(speed: tuple[float, float], crop_samples: int, clip_samples: int) -> None:
    """Raise ValueError unless ``speed`` = (lo, hi) is a range :func:`random_crops` can play:
    0 < lo <= hi, and a crop at the fastest speed fits in a clip. One check for the library
    and the command line, which calls it before loading gigabytes of clips."""
    lo, hi = speed
    if not 0 < lo <= hi or math.ceil(crop_samples * hi) > clip_samples:
        raise ValueError(f"speed range {lo},{hi} needs 0 < lo <= hi and crop samples x hi <= "
                         f"{clip_samples} clip samples (crop samples {crop_samples})")


def random_crops(clips: np.ndarray, crop_samples: int, n: int, rng: np.random.Generator,
                 speed: tuple[float, float] | None = None) -> np.ndarray:
    """``n`` crops of distinct random clips at random offsets: [n, crop_samples].

    With ``speed`` = (lo, hi), each crop is played at a factor drawn uniformly from [lo, hi]
    (resampled, so pitch, formants and tempo move together, as in Kaldi's speed perturbation):
    a factor f takes ``crop_samples * f`` source samples. Why: the held-out splits are held out
    by voice, and a slowed-down voice is a new, lower one that costs no labelling when the
    teacher scores the same perturbed crop on the fly. Measured on the pruned Distill-MOS, it
    lowered validation PCC (docs/compression.md), so it is off by default.
    """
    idx = rng.choice(len(clips), size=min(n, len(clips)), replace=False)
    if speed is None:
        starts = rng.integers(0, clips.shape[1] - crop_samples + 1, size=len(idx))
        return np.stack([clips[i, s : s + crop_samples] for i, s in zip(idx, starts)])
    check_speed_range(speed, crop_samples, clips.shape[1])
    factors = rng.uniform(*speed, size=len(idx))
    # Two spare source samples so the resampled segment never falls short of the crop.
    lengths = np.minimum(clips.shape[1], np.ceil(crop_samples * factors).astype(int) + 2)
    starts = rng.integers(0, clips.shape[1] - lengths + 1)
    return np.stack([soxr.resample(clips[i, s : s + length], SAMPLE_RATE, SAMPLE_RATE / f)[:crop_samples]
                     for i, s, length, f in zip(idx, starts, lengths, factors)])


@torch.no_grad()
def predict(model: nn.Module, audio: np.ndarray, batch: int = 8) -> np.ndarray:
    """Model outputs for [N, T] audio, as float64 [N]."""
    model.eval()
    dev = device_of(model)
    out = [model(torch.from_numpy(audio[i : i + batch]).to(dev)).reshape(-1) for i in range(0, len(audio), batch)]
    return torch.cat(out).double().cpu().numpy()


def cached_predict(model: nn.Module, audio: np.ndarray, path: Path) -> np.ndarray:
    """:func:`predict`, computed once and kept in ``path`` (the unpruned reference's targets)."""
    if path.exists():
        return np.load(path)
    y = predict(model, audio)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, y)
    return y


# --------------------------------------------------------------------------------------------
# Fine-tuning by distillation
# --------------------------------------------------------------------------------------------
def finetune(model: nn.Module, crops: np.ndarray, targets: np.ndarray, *, steps: int, batch: int,
             lr: float, seed: int = 0, after_step: Callable[[], None] | None = None,
             log: Callable[[str], None] = print) -> list[float]:
    """Distil ``targets`` (the unpruned model on the same crops) into ``model`` with MSE.

    Normalisation layers stay in eval mode: their statistics belong to the unpruned model and
    a few hundred small batches would only add noise to them. ``after_step`` re-applies
    constraints (sparsity masks). Returns the loss of every step.
    """
    if steps <= 0:
        return []
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = np.random.default_rng(seed)
    dev = device_of(model)
    x_all, y_all = torch.from_numpy(crops).to(dev), torch.from_numpy(targets).float().to(dev)
    losses = []
    t0 = time.time()
    for step in range(steps):
        idx = torch.from_numpy(gen.choice(len(crops), size=min(batch, len(crops)), replace=False)).to(dev)
        loss = F.mse_loss(model(x_all[idx]).reshape(-1), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"  step {step + 1}/{steps} loss={np.mean(losses[-max(1, steps // 5):]):.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    return losses


def hidden_layers(model: nn.Module) -> list[nn.Module]:
    """The blocks whose outputs layer-wise distillation matches: the transformer layers of a
    :class:`DistillMosNet` or of an XLS-R-SQA backbone (``XlsrSqaNet``)."""
    if isinstance(model, DistillMosNet):
        return list(model.layers)
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "encoder"):
        return list(backbone.encoder.layers)
    raise TypeError(f"no hidden layers known for {type(model).__name__}")


def _capture(layers: list[nn.Module], into: list) -> list:
    """Forward hooks appending each layer's output tensor (first element of a tuple) to ``into``."""
    return [layer.register_forward_hook(lambda m, i, o: into.append(o[0] if isinstance(o, tuple) else o))
            for layer in layers]


def distil_layers(student: nn.Module, teacher: nn.Module, clips: np.ndarray, *, steps: int, batch: int,
                  crop_samples: int, lr: float, hidden_weight: float = 1.0,
                  speed: tuple[float, float] | None = None, seed: int = 0,
                  log: Callable[[str], None] = print) -> list[float]:
    """Distil ``teacher`` into a pruned copy of itself: output MSE plus, weighted by
    ``hidden_weight``, the MSE of every surviving transformer layer's output against the same
    layer of the teacher (normalised by the teacher's variance), as DPHuBERT does.

    Why layer-wise: one scalar per crop is a weak signal for re-learning what removed units
    did; the hidden states give thousands of targets per crop, so far fewer steps recover the
    model. Crops are drawn afresh every step (random clip, random offset) and labelled by the
    teacher on the fly, so the budget is not limited to a fixed crop set, and ``speed`` can
    perturb them (see :func:`random_crops`). A layer removed by pruning is skipped: survivors
    are matched by their ``source_index``.
    """
    if steps <= 0:
        return []
    t_layers, s_layers = hidden_layers(teacher), hidden_layers(student)
    pairs = [(i, getattr(layer, "source_index", i)) for i, layer in enumerate(s_layers)]
    t_out: list[Tensor] = []
    s_out: list[Tensor] = []
    handles = _capture(t_layers, t_out) + _capture(s_layers, s_out)
    teacher.eval()
    student.eval()  # normalisation statistics stay those of the unpruned model
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(seed)
    dev = device_of(student)
    losses: list[float] = []
    t0 = time.time()
    try:
        for step in range(steps):
            x = torch.from_numpy(random_crops(clips, crop_samples, batch, rng, speed)).to(dev)
            t_out.clear()
            s_out.clear()
            with torch.no_grad():
                y_t = teacher(x).reshape(-1)
            y_s = student(x).reshape(-1)
            loss = F.mse_loss(y_s, y_t)
            if hidden_weight > 0 and pairs:
                hidden = sum(F.mse_loss(s_out[i], t_out[j]) / (t_out[j].var() + 1e-6) for i, j in pairs)
                loss = loss + hidden_weight * hidden / len(pairs)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if (step + 1) % max(1, steps // 10) == 0:
                log(f"  step {step + 1}/{steps} loss={np.mean(losses[-max(1, steps // 10):]):.4f} "
                    f"({time.time() - t0:.0f}s)")
    finally:
        for h in handles:
            h.remove()
    student.eval()
    return losses


def write_jsonl(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> Iterable[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tiny_distillmos_net(seed: int = 0) -> DistillMosNet:
    """A random :class:`DistillMosNet` of the real layout at toy width (tests, ``--mini``)."""
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
    """Speech-like test signals (harmonic bursts) at a spread of noise levels: [n, samples].

    Only for tests and ``--mini`` runs, where no generated speech may be available."""
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

def add_finetune_args(ap: argparse.ArgumentParser) -> None:
    """The fine-tuning budget and I/O options every compression method shares, so that the
    budgets stay equal across methods by construction."""
    ap.add_argument("--batch", type=int, default=4, help="crops per step (default 4)")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of fine-tuning (default 3e-4)")
    ap.add_argument("--crop-seconds", type=float, default=2.0, help="training crop length (default 2.0)")
    ap.add_argument("--train-clips", type=int, default=400, help="train-split clips the crops come from (default 400)")
    ap.add_argument("--train-labels", type=Path, default=None,
                    help="take the train clips from this label CSV (train.label output) and the labeller's audio "
                         "cache (cache/audio) instead of rendering them from the manifest; needed for thousands "
                         "of clips (default: render)")
    ap.add_argument("--crops-per-clip", type=int, default=2, help="crops per training clip (default 2)")
    ap.add_argument("--cache", type=Path, default=Path("cache/compression"),
                    help="clip and reference-output cache directory (default cache/compression)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--out", type=Path, required=True,
                    help="output: torch.save({'model': module, 'meta': ...}); load with weights_only=False")
