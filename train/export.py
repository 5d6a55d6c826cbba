"""Export a trained student checkpoint to the runtime's ONNX step() graph.

The graph is ``(audio[B, H], state_*) -> (scores[B, K], next_*)``; the runtime reads the
framing and meaning from ``metadata_props`` (ARCHITECTURE section 2) instead of repeating
constants. Optional int8 dynamic quantisation is offered for the linear layers.

    python -m train.export CHECKPOINT --out streamqa/models/NAME.onnx [--int8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from train.students import FRAME_SAMPLES, SAMPLE_RATE, Student, StudentConfig, count_params, macs_per_second

FORMAT_VERSION = "1"
DEFAULT_WINDOW_S = 7.68  # the teacher's segment: what the students were trained to judge
DEFAULT_HOP_SAMPLES = 16000


class _StepGraph(nn.Module):
    """Flattens the student's state dict into positional tensors for the ONNX exporter."""

    def __init__(self, student: Student, names: list[str]):
        super().__init__()
        self.student = student
        self.names = names

    def forward(self, audio: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        scores, new = self.student.step(audio, dict(zip(self.names, states)))
        return (scores, *(new[n] for n in self.names))


def save_checkpoint(path: Path, model: Student, meta: dict[str, Any]) -> None:
    """Self-describing checkpoint: config JSON + weights + training summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.cfg.to_json(), "state_dict": model.state_dict(), "meta": meta}, path)


def load_checkpoint(path: Path) -> tuple[Student, dict[str, Any]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = Student(StudentConfig.from_json(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt.get("meta", {})


def export_onnx(model: Student, out: Path, meta: dict[str, Any], *, window_s: float = DEFAULT_WINDOW_S) -> Path:
    """Write the step() graph with its metadata; returns ``out``."""
    model = model.eval()
    window_frames = round(window_s * SAMPLE_RATE / FRAME_SAMPLES)
    state = model.init_state(2, window_frames)
    names = list(state)
    audio = torch.zeros(2, DEFAULT_HOP_SAMPLES)
    dynamic: dict[str, dict[int, str]] = {"audio": {0: "batch", 1: "samples"}, "scores": {0: "batch"}}
    for n in names:
        axes = {0: "batch", 1: "frames"} if n in ("ring", "mask") else {0: "batch"}
        dynamic[f"state_{n}"] = axes
        dynamic[f"next_{n}"] = axes
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        _StepGraph(model, names),
        (audio, *state.values()),
        str(out),
        input_names=["audio", *(f"state_{n}" for n in names)],
        output_names=["scores", *(f"next_{n}" for n in names)],
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(out))
    props = {
        "name": model.cfg.name,
        "sample_rate": str(SAMPLE_RATE),
        "hop_samples": str(DEFAULT_HOP_SAMPLES),
        "frame_samples": str(FRAME_SAMPLES),
        "window_seconds": str(window_s),
        "outputs": ",".join(model.cfg.outputs),
        "params": str(count_params(model)),
        "macs_per_second": str(macs_per_second(model.cfg, window_frames)),
        "version": FORMAT_VERSION,
        "pooling": "file score = mean over consecutive non-overlapping windows; the last window is the file's final window_seconds",
        "config": model.cfg.to_json(),
    }
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(out))
    return out


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantisation of MatMul weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    proto = onnx.load(str(dst))
    props = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    props["quantization"] = "int8-dynamic"
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(dst))
    return dst


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="student checkpoint written by train.distill")
    ap.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    ap.add_argument("--window", type=float, default=DEFAULT_WINDOW_S, help="default window in seconds (metadata)")
    ap.add_argument("--int8", action="store_true", help="also write OUT with .int8.onnx: dynamic int8 weights")
    args = ap.parse_args(argv)
    model, meta = load_checkpoint(args.checkpoint)
    out = export_onnx(model, args.out, meta, window_s=args.window)
    print(f"{out}  sha256={sha256_file(out)}")
    if args.int8:
        q = quantize_int8(out, out.with_suffix(".int8.onnx"))
        print(f"{q}  sha256={sha256_file(q)}")


if __name__ == "__main__":
    main()
