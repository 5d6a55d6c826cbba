"""The teacher interface and the registry that builds teachers by name.

A teacher turns 16 kHz mono float32 clips into named quality scores. Students are distilled on
these pseudo-labels, so every teacher answers through the same small protocol and the labelling
job never needs to know which model it is running.

The registry imports a teacher's module only when that teacher is asked for: DNSMOS needs only
onnxruntime, while Distill-MOS and XLS-R-SQA pull in torch, torchaudio and transformers.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 16000


@runtime_checkable
class Teacher(Protocol):
    """A quality model scored on whole clips.

    ``outputs`` names the keys of every dict that ``score_batch`` returns, in a fixed order.
    """

    name: str
    outputs: tuple[str, ...]
    sample_rate: int

    def score_batch(self, clips: list[np.ndarray]) -> list[dict[str, float]]:
        """Score float32 16 kHz mono clips; one dict per clip, keys == ``outputs``."""
        ...


# name -> (module, class); module paths are relative to this package.
_REGISTRY: dict[str, tuple[str, str]] = {
    "distillmos": ("train.teachers.distillmos", "DistillMosTeacher"),
    "dnsmos": ("train.teachers.dnsmos", "DnsmosTeacher"),
    "dnsmos1": ("train.teachers.dnsmos", "DnsmosOneWindowTeacher"),
    "xlsr_sqa": ("train.teachers.xlsr_sqa", "XlsrSqaTeacher"),
}

TEACHER_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def teacher_class(name: str) -> type:
    """The class registered as ``name``, imported but not built (its ``outputs`` without
    loading any weights)."""
    try:
        module_name, class_name = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(TEACHER_NAMES)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def get_teacher(name: str, **kw: Any) -> Teacher:
    """Build the teacher registered as ``name``; keyword arguments go to its constructor."""
    return teacher_class(name)(**kw)


def check_clip(clip: np.ndarray, teacher: str) -> np.ndarray:
    """Return ``clip`` as a contiguous 1-D float32 array, or raise ValueError saying what is wrong.

    Teachers are fed by long unattended jobs: a wrong shape or a NaN must stop with a message
    naming the teacher rather than produce a silently meaningless label.
    """
    arr = np.ascontiguousarray(clip, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"{teacher}: clip must be 1-D mono, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{teacher}: clip is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{teacher}: clip contains NaN or infinite samples")
    return arr


def mos_by_length(
    clips: list[np.ndarray], teacher: str, score_group: Callable[[list[np.ndarray]], list[float]]
) -> list[dict[str, float]]:
    """Check the clips, score each group of equal-length clips in one call of ``score_group``
    (one forward pass, no padding that would change the score) and return ``{"mos": ...}``
    per clip in the input order."""
    checked = [check_clip(c, teacher) for c in clips]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, clip in enumerate(checked):
        by_length[clip.size].append(i)
    scores = [0.0] * len(checked)
    for indices in by_length.values():
        for i, value in zip(indices, score_group([checked[i] for i in indices])):
            scores[i] = float(value)
    return [{"mos": s} for s in scores]
