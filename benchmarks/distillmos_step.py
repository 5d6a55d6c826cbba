"""Distill-MOS behind the streamqa step()/state contract, so the engine can run it unchanged.

Why: the streaming benchmark must report how many live streams the *reference* scorer
(Distill-MOS, the teacher) holds in real time next to the students' figure, through the same
engine, batching and websocket path. Distill-MOS has no streaming form: each hop it re-scores
its whole 7.68 s segment, so its state is simply the last 122,880 samples and its cost per hop
is the full model's. That is the comparison the students are built to win.

    python -m benchmarks.distillmos_step --out /tmp/distillmos.onnx

The legacy TorchScript exporter fails on Distill-MOS's complex STFT; the dynamo exporter
handles it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

SAMPLE_RATE = 16000
SEGMENT = 122880  # Distill-MOS's fixed input: 7.68 s at 16 kHz
HOP_SAMPLES = 16000  # 1 s, the monitor's default hop
FRAME_SAMPLES = 640  # the runtime's framing unit; hops are whole frames


class DistillMosStep(nn.Module):
    """``(audio[B, H], state_window[B, 122880]) -> (scores[B, 1], next_window)``.

    The window slides by H each step and is scored as one Distill-MOS segment (peak
    normalisation included, inside the wrapped model). A fresh all-zero window is what the
    teacher does with short input (zero padding), so the first hops score like it would.
    """

    def __init__(self) -> None:
        super().__init__()
        from distillmos import ConvTransformerSQAModel

        self.sqa = ConvTransformerSQAModel(segmenting_in_forward=False).eval()

    def forward(self, audio: Tensor, state_window: Tensor) -> tuple[Tensor, Tensor]:
        window = torch.cat([state_window, audio], dim=1)[:, -SEGMENT:]
        scores = self.sqa(window).reshape(-1, 1)
        return scores, window


def export(out: Path) -> Path:
    """Export with the dynamo exporter and write the metadata streamqa.model requires."""
    module = DistillMosStep().eval()
    audio = torch.zeros(2, HOP_SAMPLES)
    window = torch.zeros(2, SEGMENT)
    batch = torch.export.Dim("batch", min=1, max=1024)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        module,
        (audio, window),
        str(out),
        input_names=["audio", "state_window"],
        output_names=["scores", "next_window"],
        dynamic_shapes=({0: batch}, {0: batch}),
        dynamo=True,
        external_data=False,
    )
    proto = onnx.load(str(out))
    params = sum(p.numel() for p in module.parameters())
    onnx.helper.set_model_props(proto, {
        "name": "distillmos",
        "sample_rate": str(SAMPLE_RATE),
        "hop_samples": str(HOP_SAMPLES),
        "frame_samples": str(FRAME_SAMPLES),
        "window_seconds": str(SEGMENT / SAMPLE_RATE),
        "outputs": "mos",
        "teacher": "distillmos",
        "params": str(params),
        "version": "1",
        "pooling": "each hop re-scores the last 7.68 s as one Distill-MOS segment",
    })
    onnx.save(proto, str(out))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(export(args.out))


if __name__ == "__main__":
    main()
