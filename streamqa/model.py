"""Load an ONNX student, check it against the model contract, and run step().

The contract (docs/architecture.md, section 2): one graph ``(audio[B, H], state_*) -> (scores[B, K],
next_*)`` whose ``metadata_props`` give the framing and meaning. Everything the runtime needs
(sample rate, hop, window, output names) is read from the file, so a retrained or user-made
student drops in without code changes; a file that breaks the contract is refused with a
message that says which part. An output named ``speech`` is optional: the probability that the
window holds speech, which the speech rule (streamqa.presence) uses instead of the level gate.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from streamqa.presence import PRESENCE_OUTPUT, detector

MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "streamqa-s"
REQUIRED_METADATA = ("sample_rate", "hop_samples", "frame_samples", "window_seconds", "outputs", "version")
SUPPORTED_VERSIONS = ("1",)

State = dict[str, np.ndarray]


class ModelError(ValueError):
    """The model file is missing, unreadable or breaks the runtime's contract."""


@dataclass(frozen=True)
class ModelInfo:
    """What the ONNX metadata says about a student."""

    name: str
    path: Path
    sample_rate: int
    hop_samples: int
    frame_samples: int
    window_seconds: float
    outputs: tuple[str, ...]
    teacher: str = ""
    params: int | None = None
    macs_per_second: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def presence(self) -> int | None:
        """Column of the speech-presence probability (streamqa.presence), None without one."""
        return self.outputs.index(PRESENCE_OUTPUT) if PRESENCE_OUTPUT in self.outputs else None

    @property
    def scores(self) -> tuple[str, ...]:
        """The quality outputs (``mos`` first): every output but the presence column, which
        is a probability, not a score."""
        return tuple(o for o in self.outputs if o != PRESENCE_OUTPUT)

    def hello(self) -> dict[str, Any]:
        """The ``model`` object of protocol v1's hello message: ``outputs`` are the quality
        scores only; ``speech_detector`` says what sets ``speech`` (docs/protocol.md)."""
        return {
            "name": self.name,
            "outputs": list(self.scores),
            "speech_detector": detector(self),
            "hop_s": self.hop_samples / self.sample_rate,
            "window_s": self.window_seconds,
        }


def _int_meta(meta: dict[str, str], key: str, path: Path) -> int:
    try:
        value = int(meta[key])
    except (KeyError, ValueError):
        raise ModelError(f"{path}: metadata '{key}' must be an integer, got {meta.get(key)!r}") from None
    if value <= 0:
        raise ModelError(f"{path}: metadata '{key}' must be positive, got {value}")
    return value


def _read_info(session: ort.InferenceSession, path: Path) -> ModelInfo:
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelError(f"{path}: not a streamqa model: metadata lacks {', '.join(missing)}")
    if meta["version"] not in SUPPORTED_VERSIONS:
        raise ModelError(f"{path}: model format version {meta['version']} is not supported ({SUPPORTED_VERSIONS})")
    sr = _int_meta(meta, "sample_rate", path)
    hop = _int_meta(meta, "hop_samples", path)
    frame = _int_meta(meta, "frame_samples", path)
    try:
        window = float(meta["window_seconds"])
    except ValueError:
        raise ModelError(f"{path}: metadata 'window_seconds' is not a number") from None
    if not math.isfinite(window) or window <= 0:
        raise ModelError(f"{path}: metadata 'window_seconds' must be positive")
    if hop % frame:
        raise ModelError(f"{path}: hop_samples {hop} is not a multiple of frame_samples {frame}")
    outputs = tuple(o.strip() for o in meta["outputs"].split(",") if o.strip())
    if not outputs or outputs[0] != "mos":
        raise ModelError(f"{path}: metadata 'outputs' must start with 'mos', got {meta['outputs']!r}")
    if len(set(outputs)) != len(outputs):
        raise ModelError(f"{path}: metadata 'outputs' names an output twice: {meta['outputs']!r}")
    params = int(meta["params"]) if meta.get("params", "").isdigit() else None
    macs = int(meta["macs_per_second"]) if meta.get("macs_per_second", "").isdigit() else None
    return ModelInfo(
        name=meta.get("name", path.stem),
        path=path,
        sample_rate=sr,
        hop_samples=hop,
        frame_samples=frame,
        window_seconds=window,
        outputs=outputs,
        teacher=meta.get("teacher", ""),
        params=params,
        macs_per_second=macs,
        metadata=meta,
    )


def _check_signature(session: ort.InferenceSession, info: ModelInfo) -> list[str]:
    """Validate inputs/outputs; return the state names (without the ``state_`` prefix)."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    path = info.path
    audio = inputs.get("audio")
    if audio is None or audio.type != "tensor(float)" or len(audio.shape) != 2:
        raise ModelError(f"{path}: input 'audio' must be float32 [batch, samples]")
    scores = outputs.get("scores")
    if scores is None or len(scores.shape) != 2:
        raise ModelError(f"{path}: output 'scores' must be [batch, outputs]")
    if isinstance(scores.shape[1], int) and scores.shape[1] != len(info.outputs):
        raise ModelError(f"{path}: 'scores' has {scores.shape[1]} columns, metadata names {len(info.outputs)}")
    names = []
    for name, arg in inputs.items():
        if name == "audio":
            continue
        if not name.startswith("state_") or arg.type != "tensor(float)":
            raise ModelError(f"{path}: unexpected input {name!r} (only 'audio' and float 'state_*' allowed)")
        key = name[len("state_") :]
        if f"next_{key}" not in outputs:
            raise ModelError(f"{path}: state input {name!r} has no matching output 'next_{key}'")
        names.append(key)
    return names


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        raise ModelError(f"{path}: cannot load ONNX model: {exc}") from exc


class Model:
    """A loaded student: ``init_state``/``step``. Every caller, a whole file's included,
    drives it through :class:`streamqa.scorer.StreamScorer`, the one scoring path."""

    def __init__(self, path: Path, *, threads: int = 1):
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        self.session = _session(path, threads)
        self.info = _read_info(self.session, path)
        self.state_names = _check_signature(self.session, self.info)
        self._state_shapes = {
            i.name[len("state_") :]: i.shape for i in self.session.get_inputs() if i.name.startswith("state_")
        }
        # Names fixed once: step() is the live monitor's cost per hop, paid per stream.
        self._state_inputs = [f"state_{k}" for k in self.state_names]
        self._outputs = ["scores", *(f"next_{k}" for k in self.state_names)]

    def window_frames(self, window_seconds: float | None = None) -> int:
        """Ring length for a window; at least one frame."""
        w = self.info.window_seconds if window_seconds is None else window_seconds
        return max(1, round(w * self.info.sample_rate / self.info.frame_samples))

    def init_state(self, batch: int = 1, window_seconds: float | None = None) -> State:
        """Fresh zero state for ``batch`` streams; the window sets the ring length."""
        frames = self.window_frames(window_seconds)
        state = {}
        for name, shape in self._state_shapes.items():
            dims = [batch if i == 0 else (d if isinstance(d, int) else frames) for i, d in enumerate(shape)]
            state[name] = np.zeros(dims, np.float32)
        return state

    def step(self, audio: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Advance by one hop. ``audio`` [B, H] float32, H a multiple of frame_samples."""
        if audio.ndim != 2 or audio.shape[1] % self.info.frame_samples:
            raise ValueError(f"audio must be [batch, k*{self.info.frame_samples}], got {audio.shape}")
        feeds = dict(zip(self._state_inputs, (state[k] for k in self.state_names)))
        feeds["audio"] = np.ascontiguousarray(audio, np.float32)
        scores, *states = self.session.run(self._outputs, feeds)
        return scores, dict(zip(self.state_names, states))


def stack_states(states: list[State]) -> State:
    """Batch per-stream states (each with batch 1) into one state for a batched step()."""
    return {k: np.concatenate([s[k] for s in states], axis=0) for k in states[0]}


def split_state(state: State, n: int) -> list[State]:
    """Inverse of :func:`stack_states`."""
    return [{k: v[i : i + 1] for k, v in state.items()} for i in range(n)]


def bundled_models() -> list[dict[str, Any]]:
    """Model cards of the students shipped in streamqa/models (``<name>.json`` beside each ONNX)."""
    cards = []
    for card_path in sorted(MODELS_DIR.glob("*.json")):
        card = json.loads(card_path.read_text())
        card["path"] = str(MODELS_DIR / card["file"])
        cards.append(card)
    return cards


def resolve(spec: str | None) -> Path:
    """A bundled model name (default: the smallest shipped) or a path to an ONNX file."""
    spec = spec or DEFAULT_MODEL
    candidate = Path(spec)
    if candidate.suffix == ".onnx" or candidate.exists():
        return candidate
    for card in bundled_models():
        if card["name"] == spec:
            return Path(card["path"])
    names = ", ".join(c["name"] for c in bundled_models()) or "none"
    raise ModelError(f"unknown model {spec!r}: give a path to an .onnx file or one of: {names}")


def verify_bundled(path: Path) -> None:
    """Refuse a bundled model whose bytes differ from the sha256 in its card."""
    for card in bundled_models():
        if Path(card["path"]) == path:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != card["sha256"]:
                raise ModelError(f"{path}: sha256 {digest} does not match its model card ({card['sha256']})")


def load_model(spec: str | None = None, *, threads: int = 1) -> Model:
    """Resolve, verify (for bundled models) and load a student."""
    path = resolve(spec)
    verify_bundled(path)
    return Model(path, threads=threads)
