"""Shared fixtures: a tiny random student exported to ONNX (model tests need no training)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_student():
    torch = pytest.importorskip("torch")
    from train.students import FAMILY, Student

    torch.manual_seed(0)
    return Student(FAMILY["xxs"]).eval()


@pytest.fixture(scope="session")
def tiny_onnx(tiny_student, tmp_path_factory) -> Path:
    from train.export import export_onnx

    out = tmp_path_factory.mktemp("model") / "tiny.onnx"
    return export_onnx(tiny_student, out, {"teacher": "random-init (test fixture)"})


@pytest.fixture(scope="session")
def presence_onnx(tmp_path_factory):
    """Factory ``presence_onnx(logit)``: a tiny random student (tiny_onnx's weights) whose
    speech probability is sigmoid(``logit``) for every window, whatever the audio (the
    presence head's weights are zeroed and its bias set), so a test chooses which branch of
    the speech rule runs. ``logit=None`` gives a student without the ``speech`` output (the
    level gate decides), as older and user-made models are."""
    torch = pytest.importorskip("torch")
    import dataclasses

    from train.export import export_onnx
    from train.students import FAMILY, OUTPUTS, PRESENCE, Student

    made: dict[float | None, Path] = {}

    def make(logit: float | None) -> Path:
        if logit not in made:
            cfg = FAMILY["xxs"] if logit is not None else dataclasses.replace(FAMILY["xxs"], outputs=OUTPUTS)
            torch.manual_seed(0)
            student = Student(cfg).eval()
            if logit is not None:
                k = cfg.outputs.index(PRESENCE)
                with torch.no_grad():
                    student.head[-1].weight[k].zero_()
                    student.head[-1].bias[k] = 0.0
                    student.out_bias[k] = logit
            out = tmp_path_factory.mktemp("model") / f"presence-{logit}.onnx"
            made[logit] = export_onnx(student, out, {"teacher": "random-init (test fixture)"})
        return made[logit]

    return make


@pytest.fixture(scope="session")
def level_onnx(presence_onnx) -> Path:
    """A tiny student without the ``speech`` output: the level-based gate decides."""
    return presence_onnx(None)
