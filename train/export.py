"""Export a trained student checkpoint to the runtime's ONNX step() graph.

The graph is ``(audio[B, H], state_*) -> (scores[B, K], next_*)``; the runtime reads the
framing and meaning from ``metadata_props`` (docs/architecture.md, section 2) instead of repeating
constants. Optional int8 dynamic quantisation is offered for the linear layers.

Float constants of magnitude below 1e-20 are written as zero (:func:`flush_negligible`): a
CPU multiplies a subnormal operand or product through a slow microcode path, and those
weights never change a float32 sum that matters, so the graph gets faster and its outputs
change by float rounding only. The graph is the student in the layout ONNX Runtime runs
fastest (:class:`_GraphStudent`): its convs are 2-D convs over height-1 images.

    python -m train.export CHECKPOINT --out streamqa/models/NAME.onnx [--int8]
    python -m train.export streamqa/models/NAME.onnx --out streamqa/models/NAME.onnx --card

The second form writes a shipped student again through this exporter (its weights read back
by :func:`load_onnx_student`), so a bundled file gets what the exporter has learnt since it
was made; ``--card`` then puts the new sha256 into its card and docs/models.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn
from torch.nn import functional as F

from train.students import (FRAME_SAMPLES, SAMPLE_RATE, Block, CausalConv, Student, StudentConfig, count_params,
                            macs_per_second)

FORMAT_VERSION = "1"
DEFAULT_WINDOW_S = 7.68  # the teacher's segment: what the students were trained to judge
DEFAULT_HOP_SAMPLES = 16000


class _StepGraph(nn.Module):
    """The student's step() with positional tensors for the ONNX exporter, its fixed-size
    states (the audio cache and every conv's cache) packed into one ``[B, N]`` tensor,
    ``caches``, beside the ring and its mask, whose length follows the window.

    Why: ONNX Runtime pays for every input and output of a run, and a live hop of
    ``streamqa-s`` is small enough that ten of each cost it about 2 % more than four
    (docs/experiments/2026-12-export-layout.md). The runtime never looks inside a state."""

    RING = ("ring", "mask")
    NAMES = ("caches", *RING)  # the graph's state inputs, in the order pack() gives them

    def __init__(self, student: Student, shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        self.student = student
        self.packed = [n for n in shapes if n not in self.RING]
        self.shapes = {n: shapes[n] for n in self.packed}
        self.sizes = [math.prod(shapes[n]) for n in self.packed]

    def pack(self, state: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """``state`` as the graph's state inputs, :attr:`NAMES`."""
        return (torch.cat([state[n].flatten(1) for n in self.packed], dim=1), *(state[n] for n in self.RING))

    def forward(self, audio: Tensor, caches: Tensor, ring: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        parts = torch.split(caches, self.sizes, dim=1)
        state = {n: p.reshape(-1, *self.shapes[n]) for n, p in zip(self.packed, parts)}
        scores, new = self.student.step(audio, {**state, "ring": ring, "mask": mask})
        return (scores, *self.pack(new))


class _Conv2dCausal(nn.Module):
    """A student's :class:`~train.students.CausalConv` as the exported graph computes it: the
    same weights, the conv taken over a ``[B, C, 1, T]`` image and the cache kept in that
    shape (``[B, C, 1, k - 1]``), so no Unsqueeze/Squeeze pair surrounds each conv.

    Why: ONNX Runtime's CPU Conv runs a 1-D depthwise conv one channel at a time (a tiny
    matrix product per channel and item), while a 2-D Conv goes to its channel-blocked
    (NCHWc) kernels: a depthwise conv of a 1 s hop costs about half as much at batch 20,
    and step() about 12 % less. The new cache is cut at a constant offset from the end, so
    no Shape/Gather nodes compute it. Outputs differ from the 1-D form by float rounding
    only (tests/test_export_speed.py).
    """

    def __init__(self, causal: CausalConv):
        super().__init__()
        conv = causal.conv
        self.channels, self.keep = causal.state_shape()
        self.groups = conv.groups
        self.dilation = (1, conv.dilation[0])
        self.weight = nn.Parameter(conv.weight.detach().unsqueeze(2), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)

    def state_shape(self) -> tuple[int, int, int]:
        return (self.channels, 1, self.keep)

    def forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        full = torch.cat([cache, x], dim=3)
        y = F.conv2d(full, self.weight, self.bias, dilation=self.dilation, groups=self.groups)
        return y, full[..., -self.keep :] if self.keep else full[..., :0]


class _GraphBlock(nn.Module):
    """A :class:`~train.students.Block` on ``[B, C, 1, T]``. Its LayerNorm and MLP run
    channels-last; ONNX Runtime folds the transpose into the depthwise conv's NCHWc reorder."""

    def __init__(self, block: Block):
        super().__init__()
        self.dw = _Conv2dCausal(block.dw)
        self.norm, self.pw1, self.pw2 = block.norm, block.pw1, block.pw2

    def forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        y, cache = self.dw(x, cache)
        y = self.pw2(F.gelu(self.pw1(self.norm(y.permute(0, 2, 3, 1)))))
        return x + y.permute(0, 3, 1, 2), cache


class _GraphStudent(Student):
    """A student as the exported graph computes it: the same weights and outputs, in the
    layout ONNX Runtime runs fastest (a live 1 s hop about 15 % cheaper than the previous
    graph, docs/results.md "Speed"; docs/experiments/2026-12-export-layout.md). The Gabor
    filterbank and every causal conv are 2-D convs over ``[B, C, 1, T]`` images, and the
    stream stays in that shape from the stem to the last block, so the convs' caches are
    ``[B, C, 1, k - 1]`` states. The checkpoint's own layout stays the 1-D one training uses."""

    def __init__(self, model: Student):
        super().__init__(model.cfg)
        self.load_state_dict(model.state_dict())  # a copy: the caller's student is left as it is
        self.stem = _Conv2dCausal(self.stem)
        self.stages = nn.ModuleList(nn.ModuleList(_GraphBlock(b) for b in stage) for stage in self.stages)
        self.eval()

    def filterbank(self, full: Tensor) -> Tensor:
        z = F.conv2d(full[:, None, None, :], self.gabor.unsqueeze(2), stride=(1, self.cfg.feature_hop))
        return z.squeeze(2)

    def embed_frames(self, logmel: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        new: dict[str, Tensor] = {}
        x = logmel * self.feat_scale[None, :, None] + self.feat_bias[None, :, None]
        x, new["stem"] = self.stem(x.unsqueeze(2), state["stem"])
        for s, stage in enumerate(self.stages):
            if s > 0:
                x = F.avg_pool2d(x, (1, 2))
            for b, block in enumerate(stage):
                x, new[f"s{s}b{b}"] = block(x, state[f"s{s}b{b}"])
        return self.proj(x.squeeze(2).transpose(1, 2)), new


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary name, then rename: a run killed mid-write (as long runs are
    when a working session ends) leaves the previous file whole, so it can resume from it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, model: Student, meta: dict[str, Any]) -> None:
    """Self-describing checkpoint: config JSON + weights + training summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.cfg.to_json(), "state_dict": model.state_dict(), "meta": meta}, path)


def load_checkpoint(path: Path) -> tuple[Student, dict[str, Any]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = Student(StudentConfig.from_json(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt.get("meta", {})


# The metadata export_onnx writes from the model itself; the rest (the name too, which
# shipping sets) came from its ``meta``.
_OWN_METADATA = ("sample_rate", "hop_samples", "frame_samples", "window_seconds", "outputs", "params",
                 "macs_per_second", "version", "pooling", "config")


def _module_of(node_name: str) -> str:
    """The state-dict prefix of the module an exported node belongs to: its scopes are the
    module names, a child of a Sequential named in full (``/head/head.0/Gemm`` is ``head.0``)."""
    path: list[str] = []
    for scope in node_name.strip("/").split("/")[:-1]:
        if path and scope.startswith(path[-1] + "."):
            path[-1] = scope
        else:
            path.append(scope)
    return ".".join(path)


def load_onnx_student(path: Path) -> tuple[Student, dict[str, Any]]:
    """A student rebuilt from an ONNX file that :func:`export_onnx` wrote, and the ``meta``
    it was exported with: the config comes from the metadata, the weights from the
    initializers, each found by the node that uses it (a Linear's weight is stored
    transposed, the per-band affine of the log energies under a generated name). Why: a
    shipped model can then be refitted (``train.presence_refit``) on a machine that lacks its
    training checkpoint, and its quality outputs stay bit for bit."""
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    if "config" not in props:
        raise ValueError(f"{path}: no student config in its metadata (not written by train.export)")
    model = Student(StudentConfig.from_json(props["config"]))
    targets = model.state_dict()
    weights = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    for node in proto.graph.node:  # the exporter keeps equal tensors once, the others as Identity of it
        if node.op_type == "Identity" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    state: dict[str, Tensor] = {}

    def put(key: str, value: np.ndarray) -> None:
        if key not in targets:  # a causal conv's, exported by _Conv2dCausal without the .conv level
            prefix, leaf = key.rsplit(".", 1)
            key = f"{prefix}.conv.{leaf}"
        state[key] = torch.from_numpy(np.array(value, np.float32)).reshape(targets[key].shape)

    # By the node that uses each weight (its name may be another's: see the Identity above).
    slots = {"Conv": ("weight", "bias"), "LayerNormalization": ("weight", "bias"), "Gemm": ("weight", "bias")}
    for node in proto.graph.node:
        module = _module_of(node.name)
        for k, name in enumerate(node.input):
            if name not in weights:
                continue
            value = weights[name]
            if node.op_type in slots and k > 0:
                put(f"{module}.{slots[node.op_type][k - 1]}", value)
            elif node.op_type == "MatMul":  # a Linear's weight, transposed
                put(f"{module}.weight", value.T)
            elif node.op_type in ("Mul", "Add") and value.shape == (1, model.cfg.n_bands, 1):
                put("feat_scale" if node.op_type == "Mul" else "feat_bias", value)
            elif name.startswith("student."):  # a bias added on its own, out_bias
                put(name[len("student."):], value)
    model.load_state_dict(state)  # strict: every weight of the student was found

    def meta_value(text: str) -> Any:
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return text if isinstance(value, str) else value

    meta = {k: meta_value(v) for k, v in props.items() if k not in _OWN_METADATA}
    return model.eval(), meta


def export_onnx(model: Student, out: Path, meta: dict[str, Any], *, window_s: float = DEFAULT_WINDOW_S) -> Path:
    """Write the step() graph with its metadata; returns ``out``."""
    model = model.eval()
    graph = _GraphStudent(model)
    window_frames = round(window_s * SAMPLE_RATE / FRAME_SAMPLES)
    state = graph.init_state(2, window_frames)
    step = _StepGraph(graph, {n: tuple(v.shape[1:]) for n, v in state.items()})
    names = step.NAMES
    audio = torch.zeros(2, DEFAULT_HOP_SAMPLES)
    dynamic: dict[str, dict[int, str]] = {"audio": {0: "batch", 1: "samples"}, "scores": {0: "batch"}}
    for n in names:
        axes = {0: "batch", 1: "frames"} if n in step.RING else {0: "batch"}
        dynamic[f"state_{n}"] = axes
        dynamic[f"next_{n}"] = axes
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        step,
        (audio, *step.pack(state)),
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
    flush_negligible(proto)
    onnx.save(proto, str(out))
    return out


# Weights of smaller magnitude are written as zero (flush_negligible).
NEGLIGIBLE = 1e-20


def flush_negligible(proto: onnx.ModelProto) -> int:
    """Set the float32 weights and constants of ``proto`` whose magnitude is below
    :data:`NEGLIGIBLE` to zero, in place; returns how many there were.

    Why: x86 CPUs (without the denormals-are-zero mode, which ONNX Runtime does not set on
    the calling thread) take a microcode assist for every multiply whose operand *or
    product* is subnormal (below 1.2e-38). A 400-tap Gabor filterbank's outer taps of its
    widest bands decay to 1e-45: 1,764 of its 32,000 weights for 40 bands are below 1e-20, 216 of
    them subnormal, and the others' products with audio are. With only the subnormal weights
    flushed, the 2-D form of the front end was slower than the 1-D one; with these flushed
    too, a live 1 s hop is about 12 % cheaper. What they drop is below 400 x 1e-20 = 4e-18 per filter output
    for audio within [-1, 1], 1e-14 of the smallest amplitude the log energies' floor
    resolves (1e-7 in energy), so outputs change by float rounding only
    (tests/test_export_speed.py).
    """
    tensors = list(proto.graph.initializer)
    tensors += [a.t for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    flushed = 0
    for tensor in tensors:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(tensor)
        negligible = (values != 0) & (np.abs(values) < NEGLIGIBLE)
        if negligible.any():
            flushed += int(negligible.sum())
            tensor.CopyFrom(numpy_helper.from_array(np.where(negligible, np.float32(0), values), tensor.name))
    return flushed


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
    ap.add_argument("checkpoint", type=Path, help="student checkpoint written by train.distill, or an ONNX file "
                                                   "this exporter wrote")
    ap.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    ap.add_argument("--window", type=float, default=DEFAULT_WINDOW_S, help="default window in seconds (metadata)")
    ap.add_argument("--int8", action="store_true", help="also write OUT with .int8.onnx: dynamic int8 weights")
    ap.add_argument("--card", action="store_true",
                    help="OUT is a bundled model: put its new sha256 into its card and rewrite docs/models.md")
    args = ap.parse_args(argv)
    if args.checkpoint.suffix == ".onnx":
        model, meta = load_onnx_student(args.checkpoint)
        props = {p.key: p.value for p in onnx.load(str(args.checkpoint)).metadata_props}
        window = float(props["window_seconds"])  # the file's own window, not the default
    else:
        model, meta = load_checkpoint(args.checkpoint)
        window = args.window
    out = export_onnx(model, args.out, meta, window_s=window)
    print(f"{out}  sha256={sha256_file(out)}")
    if args.card:
        from train.pipeline import write_models_doc

        card_path = out.with_suffix(".json")
        card = json.loads(card_path.read_text())
        card["sha256"] = sha256_file(out)
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        write_models_doc()
    if args.int8:
        q = quantize_int8(out, out.with_suffix(".int8.onnx"))
        print(f"{q}  sha256={sha256_file(q)}")


if __name__ == "__main__":
    main()
