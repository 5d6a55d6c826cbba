"""Export a pruned Distill-MOS (``python -m train.prune``) as a runtime model, ``streamqa-l``.

    python -m train.export_pruned runs/prune/iterative25_full_ext7_lr12.pt \\
        --out runs/prune/streamqa-l.onnx [--ship]

Distill-MOS is not a streaming model: it judges one 7.68 s segment as a whole. The runtime
only knows the students' contract ``(audio[B, H], state_*) -> (scores[B, K], next_*)``, so
the pruned network is wrapped in a step that keeps the audio itself as its state:

- ``state_ring`` ``[B, frames, 640]``: the last window of audio, oldest first, in 40 ms
  frames. Its frame axis is symbolic in the graph, so ``Model.init_state`` sizes it from
  the window exactly as it sizes a student's ring (``window_seconds`` = 7.68 s by default);
- ``state_fill`` ``[B, 1]``: how many of the ring's samples are audio (0 in a fresh state,
  capped at the ring's length).

Each step appends the hop to the ring and re-scores the segment :func:`scored_segment`
builds: the last min(fill, 122,880) samples, followed by zeros. A partly filled window (the
first hops of a stream, or a file shorter than 7.68 s in ``streamqa score``) is therefore
scored as Distill-MOS scores that audio alone, which zero-pads short input at its end, not
as a segment whose first seconds are silence. A window longer than 7.68 s is judged by its
last 7.68 s, because that is all the network can see. So every hop costs one whole
forward pass: the ``macs_per_second`` written to the metadata is that pass times the hops
per second at the default 1 s hop, what the live monitor pays per stream.

The graph goes through the dynamo exporter at its own opset (18): the TorchScript exporter
of ``train.export`` (opset 17) fails on Distill-MOS, and the dynamo graph cannot be
converted down to 17. The exporter's own graph optimiser is off: it removes the ``+ 1e-8``
of Distill-MOS's peak normalisation as an addition of zero, so a window of digital silence
(a muted call) would score NaN; ONNX Runtime still optimises the graph when it loads it.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from train.compress.checkpoint import load_pruned
from train.compress.cost import count_macs, count_params, macs_per_second_of
from train.compress.nets import SEGMENT_SAMPLES
from train.export import DEFAULT_HOP_SAMPLES, DEFAULT_WINDOW_S, FORMAT_VERSION, sha256_file
from train.students import FRAME_SAMPLES, SAMPLE_RATE

NAME = "streamqa-l"
TEACHER = "distillmos"
# The test split's Distill-MOS labels: the base rows and the real voices' rows.
TEST_LABELS = (Path("train/labels/test.distillmos.csv"), Path("train/labels/test.real.distillmos.csv"))
# The exported graph matches torch to float32 rounding (measured below 1e-4 MOS); this bound
# leaves room for other CPUs' kernels while still catching a wrong window.
MAX_EXPORT_DIFF = 1e-3


def scored_segment(ring: Tensor, fill: Tensor) -> Tensor:
    """The Distill-MOS segment ``[B, 122880]`` judged for a ring ``[B, S]`` (oldest sample
    first) of which the last ``fill`` ``[B, 1]`` samples are audio: those samples (the last
    122,880 of them at most) first, then zeros.

    Why: Distill-MOS zero-pads input shorter than its segment at the end, so a stream's first
    hops and a short file score as the teacher scores that audio alone. The zeros are written
    explicitly rather than taken from the ring, so a state that was not all zero at the start
    still scores correctly."""
    span = ring.shape[1]
    valid = torch.clamp(fill, max=SEGMENT_SAMPLES).long()
    pos = torch.arange(SEGMENT_SAMPLES, device=ring.device).unsqueeze(0)
    idx = torch.clamp(span - valid + pos, max=span - 1)
    return torch.gather(ring, 1, idx) * (pos < valid).to(ring.dtype)


class WindowStep(nn.Module):
    """``(audio[B, H], state_ring[B, F, 640], state_fill[B, 1]) -> (scores[B, 1], next_ring,
    next_fill)``: append the hop to the ring of the last window and re-score the window with
    a Distill-MOS-shaped network (``[B, 122880] -> [B]``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, audio: Tensor, state_ring: Tensor, state_fill: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, frames, frame = state_ring.shape
        span = frames * frame
        ring = torch.cat([state_ring.reshape(batch, span), audio], dim=1)[:, -span:]
        fill = torch.clamp(state_fill + audio.shape[1], max=span)
        scores = self.net(scored_segment(ring, fill)).reshape(batch, 1)
        return scores, ring.reshape(batch, frames, frame), fill


def live_macs_per_second(net: nn.Module, hop_samples: int = DEFAULT_HOP_SAMPLES) -> int:
    """MACs per second of a live stream: one forward pass over the whole segment per hop."""
    return int(count_macs(net, torch.zeros(1, SEGMENT_SAMPLES)) * SAMPLE_RATE / hop_samples)


def licence_of(package: str = TEACHER) -> dict[str, str]:
    """Licence, version and authors of the package whose weights the model derives from, read
    from its installed metadata, with the licence text: the MIT licence asks that its notice
    travel with substantial portions, and pruned weights are one."""
    meta = pkg_metadata.metadata(package)
    text = next((f.read_text() for f in pkg_metadata.files(package) or [] if f.name.upper().startswith("LICENSE")), "")
    return {"licence": meta.get("License", ""), "version": meta.get("Version", ""),
            "authors": meta.get("Author", ""), "licence_text": text.strip()}


def attribution(lic: dict[str, str]) -> str:
    """One line naming the work the weights derive from."""
    return (f"Weights derived by structured pruning and layer-wise distillation from Distill-MOS v7 "
            f"(PyPI distillmos {lic['version']}, {lic['authors']}; Stahl & Gamper, ICASSP 2025, "
            f"arXiv 2502.05356), {lic['licence']} licence")


def export_pruned(net: nn.Module, out: Path, meta: dict[str, Any], *, name: str = NAME,
                  window_s: float = DEFAULT_WINDOW_S, hop_samples: int = DEFAULT_HOP_SAMPLES) -> Path:
    """Write the :class:`WindowStep` graph of ``net`` with the runtime's metadata (and the
    pruning run's ``meta`` as provenance); returns ``out``. Works on an eval-mode copy: a
    forward pass in training mode (the MAC count runs one) would move the caller's batch-norm
    statistics."""
    net = copy.deepcopy(net).eval()
    step = WindowStep(net).eval()
    frames = round(window_s * SAMPLE_RATE / FRAME_SAMPLES)
    example = (torch.zeros(2, hop_samples), torch.zeros(2, frames, FRAME_SAMPLES), torch.zeros(2, 1))
    batch = torch.export.Dim("batch", min=1, max=4096)
    samples = torch.export.Dim("samples", min=1, max=SAMPLE_RATE * 3600)
    ring_frames = torch.export.Dim("frames", min=1, max=SAMPLE_RATE * 3600 // FRAME_SAMPLES)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(step, example, str(out), input_names=["audio", "state_ring", "state_fill"],
                      output_names=["scores", "next_ring", "next_fill"],
                      dynamic_shapes=({0: batch, 1: samples}, {0: batch, 1: ring_frames}, {0: batch}),
                      dynamo=True, external_data=False, verbose=False, optimize=False)
    lic = licence_of()
    props = {
        "name": name,
        "sample_rate": str(SAMPLE_RATE),
        "hop_samples": str(hop_samples),
        "frame_samples": str(FRAME_SAMPLES),
        "window_seconds": str(window_s),
        "outputs": "mos",
        "teacher": TEACHER,
        "params": str(count_params(net)),
        "macs_per_second": str(live_macs_per_second(net, hop_samples)),
        "macs_per_second_offline": str(macs_per_second_of(net)),
        "version": FORMAT_VERSION,
        "pooling": "each hop re-scores the last window (at most 7.68 s) as one Distill-MOS segment, a partly "
                   "filled window as its audio followed by zeros; file score = mean over consecutive "
                   "non-overlapping windows, the last window is the file's final window_seconds",
        "licence": lic["licence"],
        "attribution": attribution(lic),
        "licence_text": lic["licence_text"],
        "pruning": json.dumps(meta),
    }
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(out))
    return out


def window_scores_torch(net: nn.Module, audio: np.ndarray, hop_samples: int, window_samples: int) -> np.ndarray:
    """Per hop, ``net`` on the segment the exported step judges, computed directly in torch
    from the audio so far (``audio`` [B, T]): the reference :func:`verify_export` holds the
    graph to."""
    rows = []
    with torch.no_grad():
        for end in range(hop_samples, audio.shape[1] + 1, hop_samples):
            seen = audio[:, max(0, end - min(window_samples, SEGMENT_SAMPLES)) : end]
            segment = np.zeros((audio.shape[0], SEGMENT_SAMPLES), np.float32)
            segment[:, : seen.shape[1]] = seen
            rows.append(net(torch.from_numpy(segment)).reshape(-1).numpy())
    return np.stack(rows, axis=1)


def verify_export(net: nn.Module, path: Path, *, seconds: float = 10.0, seed: int = 0) -> float:
    """Step three streams (amplitude-modulated tones in noise, and digital silence) hop by hop
    through the runtime (``streamqa.model.Model``) and compare every hop's score with
    :func:`window_scores_torch`; returns the largest difference, raising ValueError above
    :data:`MAX_EXPORT_DIFF` or on a non-finite score.

    Why before shipping: the window bookkeeping (ring, fill, the zero tail) lives only in the
    graph, and a mistake there still yields plausible MOS values."""
    from streamqa.model import Model

    model = Model(path)
    hop = model.info.hop_samples
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE) // hop * hop) / SAMPLE_RATE
    audio = np.stack([0.3 * np.sin(2 * np.pi * f * t) * (1 + np.sin(2 * np.pi * 3 * t)) +
                      0.05 * k * rng.standard_normal(t.size) for k, f in ((1, 180.0), (4, 120.0), (0, 0.0))])
    audio = audio.astype(np.float32)  # the third stream is digital silence
    state = model.init_state(len(audio))
    got = []
    for start in range(0, audio.shape[1], hop):
        scores, state = model.step(audio[:, start : start + hop], state)
        got.append(scores[:, 0])
    window = model.window_frames() * model.info.frame_samples
    diff = float(np.max(np.abs(np.stack(got, axis=1) - window_scores_torch(net.eval(), audio, hop, window))))
    if not diff <= MAX_EXPORT_DIFF:  # NaN fails too
        raise ValueError(f"{path}: ONNX Runtime differs from torch by {diff:.2e} MOS (> {MAX_EXPORT_DIFF})")
    return diff


def streams_per_core(path: Path, *, repeats: int = 20) -> dict[str, float]:
    """Median time of one live step (one stream, one thread, the default hop) and how many
    streams one core keeps in real time at that cost."""
    from streamqa.model import Model

    model = Model(path, threads=1)
    hop = model.info.hop_samples
    audio = np.random.default_rng(0).standard_normal((1, hop)).astype(np.float32) * 0.1
    state = model.init_state(1)
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        _, state = model.step(audio, state)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[2:])
    return {"step_ms": round(step_s * 1e3, 2), "streams_per_core": round(hop / model.info.sample_rate / step_s, 1)}


def ship_pruned(onnx_path: Path, net: nn.Module, meta: dict[str, Any], *, labels: list[Path],
                audio_dir: Path, command: str) -> Path:
    """Evaluate the exported model on the held-out test split through the runtime, then copy
    it into streamqa/models with a card in the students' format (plus the cost of the live
    hop, streams per core and the licence and attribution of the Distill-MOS weights), and
    regenerate docs/models.md. Refuses (ValueError) when the test split gives no accuracy:
    fewer than three clips judged to hold speech (train.evaluate.accuracy) would otherwise
    ship a card with an empty accuracy, which reads as a model nobody measured."""
    from train.evaluate import evaluate_onnx
    from train.pipeline import ship, write_models_doc

    if onnx_path.stem != NAME:
        raise ValueError(f"the shipped file must be named {NAME}.onnx, got {onnx_path.name}")
    net = copy.deepcopy(net).eval()  # see export_pruned
    runs = [meta, *meta.get("extensions", [])]
    clips = dict.fromkeys(f"{r['train_clips']} clips of {r.get('train_labels') or 'the train manifest'}" for r in runs)
    training = (f"iterative structured pruning of Distill-MOS to {meta['params']:,} parameters "
                f"({meta['params'] / meta['reference_params']:.1%}), {meta['steps']:,} steps of layer-wise "
                f"distillation from the unpruned model in {len(runs)} runs on crops of train-split clips "
                f"({'; '.join(clips)})")
    test = evaluate_onnx(onnx_path, labels, audio_dir)
    if "mos" not in test:
        raise ValueError(f"no MOS accuracy on {', '.join(map(str, labels))}: fewer than 3 of the {test['clips']} "
                         "test clips are labelled and judged to hold speech")
    lic = licence_of()
    result = {"name": NAME, "onnx": str(onnx_path), "params": count_params(net), "outputs": ["mos"],
              "macs_per_second": live_macs_per_second(net), "test": test}
    dst = ship(result, TEACHER, training, command)
    # ship() writes the students' fields; a whole-window model adds its own, and has one output
    card_path = dst.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card.update(outputs=["mos"], macs_per_second_offline=macs_per_second_of(net),
                hop_seconds=DEFAULT_HOP_SAMPLES / SAMPLE_RATE, window_seconds=DEFAULT_WINDOW_S,
                **streams_per_core(onnx_path), licence=lic["licence"], attribution=attribution(lic),
                licence_text=lic["licence_text"])
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    write_models_doc()
    return dst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m train.export_pruned", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="model saved by python -m train.prune")
    ap.add_argument("--out", type=Path, required=True, help="ONNX file to write (streamqa-l.onnx to ship it)")
    ap.add_argument("--name", default=NAME, help=f"model name in the metadata (default {NAME})")
    ap.add_argument("--ship", action="store_true",
                    help="after checking the graph against torch, evaluate it on --labels' test split and copy "
                         "it into streamqa/models with its card")
    ap.add_argument("--labels", type=Path, nargs="+", default=list(TEST_LABELS),
                    help=f"label CSVs of the held-out test split (default {' '.join(map(str, TEST_LABELS))})")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"), help="the labeller's audio cache")
    ap.add_argument("--command", default="make streamqa-l", help="how the card says to reproduce the model")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    net, meta = load_pruned(args.checkpoint)
    out = export_pruned(net, args.out, meta, name=args.name)
    diff = verify_export(net, out)
    print(f"{out}  sha256={sha256_file(out)}  max |ORT - torch| = {diff:.2e}", file=sys.stderr)
    if args.ship:
        print(f"shipped {ship_pruned(out, net, meta, labels=args.labels, audio_dir=args.audio_dir, command=args.command)}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
